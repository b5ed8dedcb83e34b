"""Per-example operations: decode, crop, flip, resize (uint8 in, uint8 out).

They work on uint8 HWC arrays with Pillow, which releases the GIL, so
grain's reader threads decode in parallel.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

from jaxtag.data import geometry as geometry_lib


def decode_png(data: bytes) -> Image.Image:
  """Decodes PNG/JPEG bytes to RGB; raises on a corrupt image."""
  return decode_image(data)


# JPEG's DCT scaling: libjpeg decodes at 1/2, 1/4 or 1/8 of the size for a
# fraction of the work (it skips the high-frequency coefficients).
_DCT_SCALES = (8, 4, 2)


def reduction(width: int, height: int, shortest: int | None = None,
              longest: int | None = None) -> int:
  """The largest DCT scale (1, 2, 4 or 8) that keeps the shorter side at
  least `shortest` pixels and the longer side at least `longest`."""
  for scale in _DCT_SCALES:
    if ((not shortest or min(width, height) // scale >= shortest) and
        (not longest or max(width, height) // scale >= longest)):
      return scale
  return 1


def open_image(data: bytes) -> Image.Image:
  """The image's header: size and format, nothing decoded yet."""
  return Image.open(io.BytesIO(data))


def decode_scaled(image: Image.Image, scale: int = 1,
                  upright: bool = False) -> tuple[Image.Image, int]:
  """Decodes an opened image to RGB: (image, the scale applied); raises on
  a corrupt image.

  A JPEG with scale 2, 4 or 8 is decoded that many times smaller (Pillow's
  draft: libjpeg's DCT scaling), to ceil(side / scale) pixels a side, the
  pixel at (x, y) of the full decode falling at (x / scale, y / scale).
  Pillow offers no reduced decoding for WebP or PNG: any other image, and
  scale 1, decode in full, and the scale applied is 1. Transparency is
  composited on white; with `upright`, the image is turned as its EXIF
  orientation says (evaluation: the WD preprocessing contract,
  jaxtag/data/geometry.py).
  """
  width, height = image.size
  if scale > 1 and image.format == 'JPEG':
    # Asking for floor(side / scale) makes Pillow choose exactly `scale`.
    image.draft(image.mode if image.mode in ('RGB', 'L') else None,
                (width // scale, height // scale))
  image.load()  # decode now, so a truncated file fails here
  # The scale applied is read from the decoded size, not assumed: Pillow
  # may decline (a file it cannot scale, an image drafted before).
  applied = round(width / image.width)
  if upright:
    image = geometry_lib.upright(image)
  return geometry_lib.to_rgb(image), applied


def decode_image(data: bytes, shortest: int | None = None,
                 longest: int | None = None) -> Image.Image:
  """Decodes image bytes to RGB; raises on a corrupt image. With
  `shortest` / `longest`, a JPEG more than twice as large as needed is
  decoded at the reduced size that keeps its sides at least that long
  (`reduction`, `decode_scaled`)."""
  image = open_image(data)
  scale = reduction(*image.size, shortest, longest) if (
      shortest or longest) else 1
  return decode_scaled(image, scale)[0]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: Sequence[float],
                            ratio: Sequence[float] = (3 / 4, 4 / 3)):
  """(left, top, right, bottom) of a crop with area fraction in `scale`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  side = min(height, width)  # fall back to the centre square
  top, left = (height - side) // 2, (width - side) // 2
  return left, top, left + side, top + side


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: Sequence[float]):
  """A square crop whose side is sqrt(area fraction) of the shorter side."""
  side = int(round(min(height, width) * math.sqrt(rng.uniform(*scale))))
  side = max(1, min(side, height, width))
  top = int(rng.integers(0, height - side + 1))
  left = int(rng.integers(0, width - side + 1))
  return left, top, left + side, top + side


# config.data.interpolation -> Pillow filter. 'area' is Pillow's BOX filter:
# each output pixel is the mean of the input pixels its footprint covers
# (weighted at the edges), which is OpenCV's INTER_AREA when shrinking, the
# interpolation Vallet & Sakamoto resize with. 'bicubic' is the filter of
# SmilingWolf's wd-tagger demo app after it pads to a square (its reference
# front end), 'lanczos' that of ComfyUI-WD14-Tagger and of kohya's script
# when it enlarges; Pillow widens every filter's support when shrinking, so
# all four are antialiased.
INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'area': Image.BOX,
                  'bicubic': Image.BICUBIC, 'lanczos': Image.LANCZOS}


def resample(interpolation: str,
             key: str = 'config.data.interpolation') -> int:
  """The Pillow filter of `interpolation`; an unknown name lists the valid
  ones and names the config `key` it came from."""
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f'Unknown {key} {interpolation!r}; '
                     f'valid: {", ".join(INTERPOLATIONS)}.')
  return INTERPOLATIONS[interpolation]


def crop_resize(image: Image.Image, box, size: int, flip: bool,
                interpolation: str = 'bilinear') -> np.ndarray:
  """Crops `box`, resizes to size x size, optionally mirrors."""
  out = image.resize((size, size), resample(interpolation), box=box)
  if flip:
    out = out.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, dtype=np.uint8)


def mean_pixel(source, max_images: int | None = None) -> tuple[float, ...]:
  """The mean RGB value, in [0, 1], of every pixel of a split's images
  (the first `max_images`): the `config.data.mean` of Vallet & Sakamoto's
  preprocessing, which subtracts the training set's mean pixel."""
  total, count = np.zeros(3, np.float64), 0
  for i in range(min(len(source), max_images or len(source))):
    pixels = np.asarray(decode_png(source[i]['image']), np.float64)
    total += pixels.reshape(-1, 3).sum(axis=0)
    count += pixels.shape[0] * pixels.shape[1]
  return tuple(float(v) for v in total / (255.0 * max(count, 1)))
