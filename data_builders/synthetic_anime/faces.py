"""Face crops of synthetic_anime: one example per named character's face.

The `faces` and `faces_tiny` configs of synthetic_anime draw the parent's
scenes (same seed, same splits), cut each named character's head box out with
a margin, make the cut square and move it inside the image, and resize it to
`crop_size`. Generic (unnamed) figures are left out. Each example's `tags` is
the single character of that face, as an id into the character-only
selected_tags.csv this config writes (category 4), so
`config.dataset.label_encoding = 'class_id'` reads it directly.

Characters that share a hair colour (e.g. yuki/shiro, kuro/rin, aoi/sora)
differ only in smaller cues (hair length, eyes, accessories), which is what
separates the recognition methods.

Flat synthetic colours alone make a colour histogram nearly decisive, so the
`faces` config disturbs every crop as real collections are disturbed
(`perturb`, strength `face_jitter`): another artist's palette (a hue shift
of up to 25 degrees, saturation x0.55-1.25, brightness x0.7-1.2, so that
white and silver hair, or blue and purple, overlap), a blur, sensor-like
noise, and with probability `face_occlusion` an occluder (a hand, a speech
bubble, another figure: a filled ellipse or rectangle of a random colour
over 8-30% of the crop). Every draw comes from the face's own stream
(seed, split, scene, face), so a build is reproducible.
"""
from __future__ import annotations

import csv
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from PIL import ImageDraw
import scipy.sparse
from scipy import ndimage

from data_builders.synthetic_anime import annotate
from data_builders.synthetic_anime import render
from data_builders.synthetic_anime import vocab
from jaxtag.data import tag_metadata

# The character tags of the parent vocabulary, in vocabulary order; a face's
# label is its index here.
CHARACTERS = [t for i, t in enumerate(vocab.TAGS) if vocab.CATEGORIES[i] == 4]
CHARACTER_ID = {t: i for i, t in enumerate(CHARACTERS)}


def crop_box(box, margin: float, height: int = 1, width: int = 1
             ) -> tuple[float, float, float, float]:
  """The square crop around a normalised (ymin, xmin, ymax, xmax) box.

  In pixels of a height x width image, the box grows by `margin` of its
  longer side on every side, becomes a square of that side (at most the
  image's shorter side), and is shifted so that it lies inside the image.
  Returns the crop, normalised."""
  ymin, xmin, ymax, xmax = (float(v) for v in box)
  if not (0 <= ymin < ymax <= 1 and 0 <= xmin < xmax <= 1):
    raise ValueError(f'Face box {box} is not a normalised (ymin, xmin, ymax, '
                     'xmax) box inside the image.')
  h, w = float(height), float(width)
  side = min(max((ymax - ymin) * h, (xmax - xmin) * w) * (1 + 2 * margin),
             h, w)
  cy, cx = (ymin + ymax) / 2 * h, (xmin + xmax) / 2 * w
  top = min(max(cy - side / 2, 0.0), h - side)
  left = min(max(cx - side / 2, 0.0), w - side)
  return top / h, left / w, (top + side) / h, (left + side) / w


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
  """A normalised crop as integer (top, left, bottom, right), inside."""
  top, left, bottom, right = box
  t, l = int(round(top * height)), int(round(left * width))
  b, r = int(round(bottom * height)), int(round(right * width))
  t, l = min(max(t, 0), height - 1), min(max(l, 0), width - 1)
  return t, l, max(min(b, height), t + 1), max(min(r, width), l + 1)


def crop(image: np.ndarray, box, margin: float, size: int
         ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  """Crops one face ([H, W, 3] uint8) and resizes it to size x size."""
  h, w = image.shape[:2]
  norm = crop_box(box, margin, h, w)
  t, l, b, r = pixel_box(norm, h, w)
  face = Image.fromarray(image[t:b, l:r]).resize((size, size),
                                                Image.BILINEAR)
  return np.asarray(face), (t / h, l / w, b / h, r / w)


def _hsv_jitter(rgb: np.ndarray, hue: float, sat: float, val: float
                ) -> np.ndarray:
  """float [.., 3] RGB in [0, 1], hue shifted by `hue` (a fraction of the
  circle), saturation and value scaled; back to RGB in [0, 1]."""
  hsv = np.asarray(Image.fromarray(
      np.round(rgb * 255).astype(np.uint8)).convert('HSV'), np.float32) / 255
  hsv[..., 0] = (hsv[..., 0] + hue) % 1.0
  hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 1)
  hsv[..., 2] = np.clip(hsv[..., 2] * val, 0, 1)
  out = Image.fromarray(np.round(hsv * 255).astype(np.uint8), 'HSV')
  return np.asarray(out.convert('RGB'), np.float32) / 255


def perturb(face: np.ndarray, rng: np.random.Generator, strength: float,
            occlusion: float) -> np.ndarray:
  """uint8 [S, S, 3] crop -> the crop in another palette, blurred, noisy and
  perhaps occluded (module docstring). strength 0 and occlusion 0 return it
  unchanged."""
  if strength <= 0 and occlusion <= 0:
    return face
  size = face.shape[0]
  image = face.astype(np.float32) / 255
  if strength > 0:
    image = _hsv_jitter(
        image, hue=strength * rng.uniform(-25, 25) / 360,
        sat=1 + strength * rng.uniform(-0.45, 0.25),
        val=1 + strength * rng.uniform(-0.3, 0.2))
  if rng.uniform() < occlusion:
    layer = Image.fromarray(np.round(image * 255).astype(np.uint8))
    area = rng.uniform(0.08, 0.30) * size * size
    aspect = rng.uniform(0.5, 2.0)
    h, w = np.sqrt(area * aspect), np.sqrt(area / aspect)
    cy, cx = rng.uniform(0, size, 2)
    shape = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw = ImageDraw.Draw(layer)
    if rng.uniform() < 0.5:
      draw.ellipse(shape, fill=colour, outline=(20, 20, 20))
    else:
      draw.rectangle(shape, fill=colour, outline=(20, 20, 20))
    image = np.asarray(layer, np.float32) / 255
  if strength > 0:
    sigma = strength * rng.uniform(0, 0.012) * size
    image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    image += rng.normal(0, strength * 0.03, image.shape).astype(np.float32)
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def face_examples(config, split: str, index: int) -> list[tuple[str, dict]]:
  """The face examples of the parent's scene `index` of `split`."""
  scene = annotate.sample_scene(config.seed, split, index, config.drop_prob)
  if not any(f.character for f in scene.figures):
    return []
  png, boxes = render.render(scene, size=config.image_size, seed=config.seed,
                             split_id=annotate.SPLIT_IDS[split], index=index,
                             style=config.style)
  image = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))
  out = []
  for k, (fig, box) in enumerate(zip(scene.figures, boxes)):
    if not fig.character:
      continue
    face, cut = crop(image, box, config.face_margin, config.crop_size)
    face = perturb(face, np.random.default_rng(
        [config.seed, annotate.SPLIT_IDS[split], index, k, 3]),
                   config.face_jitter, config.face_occlusion)
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, format='PNG', optimize=False,
                               compress_level=6)
    label = [CHARACTER_ID[fig.character]]
    out.append((f'{index}_{k}', {
        'image': buf.getvalue(), 'tags': label, 'tags_clean': label,
        'characters': label, 'face_box': np.asarray(box, np.float32),
        'crop_box': np.asarray(cut, np.float32),
        'id': annotate.SPLIT_IDS[split] * 10_000_000 + index * 10 + k}))
  return out


def character_counts(config) -> np.ndarray:
  """Train faces per character, from the scenes alone (no drawing)."""
  counts = np.zeros(len(CHARACTERS), np.int64)
  for i in range(config.num_train):
    scene = annotate.sample_scene(config.seed, 'train', i, config.drop_prob)
    for fig in scene.figures:
      if fig.character:
        counts[CHARACTER_ID[fig.character]] += 1
  return counts


class FaceStatistics(tfds.core.Metadata):
  """selected_tags.csv (the characters, category 4) and label_stats.npz."""

  def __init__(self):
    self.counts = None
    self.num_images = 0

  def save_metadata(self, data_dir):
    table = io.StringIO(newline='')
    writer = csv.writer(table)
    writer.writerow(['tag_id', 'name', 'category', 'count'])
    for i, name in enumerate(CHARACTERS):
      writer.writerow([tag_metadata.NO_TAG_ID, name, 4, int(self.counts[i])])
    (epath.Path(data_dir) / 'selected_tags.csv').write_bytes(
        table.getvalue().encode())
    # One character per face: the co-occurrence is diagonal.
    (epath.Path(data_dir) / tag_metadata.LABEL_STATS).write_bytes(
        tag_metadata.label_stats_bytes(
            self.counts, scipy.sparse.diags_array(self.counts),
            self.num_images))

  def load_metadata(self, data_dir):
    path = epath.Path(data_dir) / tag_metadata.LABEL_STATS
    if path.exists():
      self.counts, _, self.num_images = tag_metadata.load_label_stats(path)

  def record(self, config):
    self.counts = character_counts(config)
    self.num_images = int(self.counts.sum())


def features(crop_size: int):
  """The faces configs' FeaturesDict."""
  box = tfds.features.Tensor(shape=(4,), dtype=np.float32)
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(crop_size, crop_size, 3),
                                   encoding_format='png'),
      'tags': tfds.features.Sequence(np.int64),
      'tags_clean': tfds.features.Sequence(np.int64),
      'characters': tfds.features.Sequence(np.int64),
      'face_box': box,      # the head box, normalised in the parent image
      'crop_box': box,      # the square cut, normalised in the parent image
      'id': np.int64,
  })
