"""Features for classical character recognition (Guan & Ge).

Hand-made: every image is resized to 224x224 (cv2.INTER_LINEAR), then
- Hu moments (7) of the grey image, cv2.HuMoments(cv2.moments(grey));
- Haralick texture (13) of the grey image, mahotas, averaged over the 4
  directions, with `use_x_minus_y_variance=False`: mahotas' default, which
  the authors' code uses, so features stay comparable with theirs. Feature
  10 is then the variance of the values of p_{x-y} (mahotas' choice), not
  Haralick's difference variance (True would give that);
- a joint colour histogram 8x8x8 (512) in 'hsv' (the paper's text; OpenCV's
  uint8 hue runs 0-179, so the hue bins cover [0, 180)) or 'bgr' (the
  authors' code), L2-normalised as cv2.normalize does by default.
Concatenated: 532 values, min-max scaled by a scaler fitted on the train split
only (`fit_scaler`). Images are computed in worker processes
(`handcrafted_batch(..., workers=N)`).

CNN: `CnnFeatures(workdir)` loads any jaxtag run (config.json and its latest
checkpoint) and gives the globally pooled backbone features
(output='pooled') or the head's output scores (output='scores'), batched
through one jitted function.
"""
from __future__ import annotations

import json
import multiprocessing

import numpy as np

SIZE = 224
HIST_BINS = (8, 8, 8)
COLOR_SPACES = ('hsv', 'bgr')
NUM_HANDCRAFTED = 7 + 13 + int(np.prod(HIST_BINS))   # 532


def _cv2():
  try:
    import cv2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('Hand-made character features need the `characters` '
                      'extra: pip install -e ".[characters]"') from e
  return cv2


def resize(image: np.ndarray) -> np.ndarray:
  """[H, W, 3] uint8 RGB -> [224, 224, 3]."""
  return _cv2().resize(np.ascontiguousarray(image), (SIZE, SIZE),
                       interpolation=_cv2().INTER_LINEAR)


def grey(image: np.ndarray) -> np.ndarray:
  return _cv2().cvtColor(image, _cv2().COLOR_RGB2GRAY)


def hu_moments(image: np.ndarray) -> np.ndarray:
  """7 Hu invariants of the grey image."""
  cv2 = _cv2()
  return cv2.HuMoments(cv2.moments(grey(image))).ravel()


def haralick(image: np.ndarray) -> np.ndarray:
  """13 Haralick features of the grey image, mean over 4 directions."""
  import mahotas  # pylint: disable=import-outside-toplevel
  return mahotas.features.haralick(grey(image), use_x_minus_y_variance=False
                                   ).mean(axis=0)


def color_histogram(image: np.ndarray, color_space: str = 'hsv'
                    ) -> np.ndarray:
  """Joint 8x8x8 histogram, L2-normalised, flattened (512)."""
  cv2 = _cv2()
  if color_space == 'hsv':
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)   # H in 0..179
    ranges = [0, 180, 0, 256, 0, 256]
  elif color_space == 'bgr':
    pixels = np.ascontiguousarray(image[..., ::-1])
    ranges = [0, 256, 0, 256, 0, 256]
  else:
    raise ValueError(f'Unknown color_space {color_space!r}; valid: '
                     f'{", ".join(COLOR_SPACES)}.')
  hist = cv2.calcHist([pixels], [0, 1, 2], None, list(HIST_BINS), ranges)
  return cv2.normalize(hist, hist).ravel()


def handcrafted(image: np.ndarray, color_space: str = 'hsv') -> np.ndarray:
  """The 532 unscaled hand-made features of one RGB uint8 image."""
  image = resize(image)
  return np.concatenate([hu_moments(image), haralick(image),
                         color_histogram(image, color_space)]
                        ).astype(np.float64)


def _handcrafted_star(args):
  return handcrafted(*args)


def handcrafted_batch(images, color_space: str = 'hsv', workers: int = 1
                      ) -> np.ndarray:
  """[N, 532] for a sequence of RGB uint8 images, in `workers` processes."""
  jobs = [(im, color_space) for im in images]
  if workers > 1 and len(jobs) > 1:
    with multiprocessing.get_context('spawn').Pool(workers) as pool:
      rows = pool.map(_handcrafted_star, jobs, chunksize=16)
  else:
    rows = [_handcrafted_star(j) for j in jobs]
  return np.stack(rows) if rows else np.zeros((0, NUM_HANDCRAFTED))


def fit_scaler(train: np.ndarray):
  """A min-max scaler fitted on the train features only."""
  from sklearn.preprocessing import MinMaxScaler  # pylint: disable=import-outside-toplevel
  return MinMaxScaler().fit(train)


class CnnFeatures:
  """Pooled backbone features (or output scores) of a jaxtag run."""

  OUTPUTS = ('pooled', 'scores')

  def __init__(self, workdir: str, output: str = 'pooled',
               batch_size: int = 64):
    # pylint: disable=import-outside-toplevel
    import jax
    import jax.numpy as jnp
    import ml_collections
    from etils import epath

    from jaxtag import models
    from jaxtag import trees
    from jaxtag import warm_start
    from jaxtag.data.normalize import normalize
    if output not in self.OUTPUTS:
      raise ValueError(f'Unknown CNN feature output {output!r}; valid: '
                       f'{", ".join(self.OUTPUTS)}.')
    path = epath.Path(workdir) / 'config.json'
    if not path.exists():
      raise FileNotFoundError(f'{path} is missing: cnn:PATH must be a jaxtag '
                              'workdir (config.json and checkpoints/).')
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    loaded = warm_start.read(workdir)
    flat = loaded['params']
    num_classes = next(v.shape[-1] for k, v in sorted(flat.items())
                       if k.startswith('head/') and k.endswith('kernel'))
    model = models.build_model(config.model, num_classes)
    self.size = int(config.data.image_size)
    self.batch_size = int(batch_size)
    mean, std = tuple(config.data.mean), tuple(config.data.std)
    variables = {c: trees.unflatten(v) for c, v in loaded.items() if v}

    def features(variables, image):
      x = normalize(image, mean=mean, std=std, dtype=jnp.float32)
      if output == 'pooled':
        fmap = model.apply(variables, x, train=False,
                           method=lambda m, x, train: m.backbone(x,
                                                                 train=train))
        return fmap.astype(jnp.float32).mean(axis=(1, 2))
      out = model.apply(variables, x, method=model.predict)
      out = out['logits'] if isinstance(out, dict) else out
      return out.astype(jnp.float32)

    self._fn = jax.jit(features)
    self._variables = variables

  def __call__(self, images) -> np.ndarray:
    """[N, D] for a sequence of RGB uint8 images (resized to the run's
    image size); padded to whole batches, so one shape compiles."""
    cv2 = _cv2()
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = [cv2.resize(np.ascontiguousarray(im), (self.size, self.size),
                          interpolation=cv2.INTER_AREA)
               for im in images[start:start + self.batch_size]]
      n = len(chunk)
      batch = np.zeros((self.batch_size, self.size, self.size, 3), np.uint8)
      batch[:n] = np.stack(chunk)
      out.append(np.asarray(self._fn(self._variables, batch))[:n])
    return np.concatenate(out).astype(np.float64)
