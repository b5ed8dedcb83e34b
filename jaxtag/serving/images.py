"""Images for serving: any Pillow mode to RGB, then the run's eval geometry.

Transparent images (RGBA, LA, palette with transparency) are composited on
white, the pad colour of the WD taggers; 16-bit and float images are scaled
to 8 bits. The geometry (square, pad, native) and interpolation are those
the run was evaluated with (jaxtag/data/geometry.py), so served scores
equal evaluated ones.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxtag.data import geometry as geometry_lib
from jaxtag.data import ops

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.gif', '.tif',
              '.tiff', '.avif', '.jxl')


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
  """Any Pillow image as RGB; transparency composited on `background`."""
  if image.mode == 'RGB':
    return image
  if image.mode.startswith('I') or image.mode == 'F':
    # 16/32-bit integers and floats: full scale is 65535, or 255 for
    # integers that stay below it, or 1.0 for floats that do.
    pixels = np.asarray(image, np.float64)
    if image.mode == 'F':
      top = 1.0 if pixels.max(initial=0.0) <= 1.0 else 255.0
    else:
      top = 255.0 if pixels.max(initial=0.0) <= 255.0 else 65535.0
    image = Image.fromarray(
        np.clip(np.round(pixels / top * 255.0), 0, 255).astype(np.uint8))
  if image.mode == 'P' and 'transparency' in image.info:
    image = image.convert('RGBA')
  if image.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
    rgba = image.convert('RGBA')
    canvas = Image.new('RGBA', rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert('RGB')
  return image.convert('RGB')


def open_image(path: str) -> Image.Image:
  """Decodes a file now (a truncated one fails here) and returns RGB."""
  with Image.open(path) as image:
    image.load()
    return to_rgb(image)


def from_array(array) -> Image.Image:
  """A uint8 array [H, W], [H, W, 3] or [H, W, 4] as an RGB image."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f'Image arrays must be uint8 (0-255); got {array.dtype}.')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3
                                  and array.shape[-1] not in (3, 4)):
    raise ValueError('Image arrays are [H, W], [H, W, 3] (RGB) or '
                     f'[H, W, 4] (RGBA); got shape {array.shape}.')
  return to_rgb(Image.fromarray(array))


def as_image(item) -> Image.Image:
  """A path, a PIL image or a uint8 array, as an RGB PIL image."""
  if isinstance(item, (str, os.PathLike)):
    return open_image(os.fspath(item))
  if isinstance(item, Image.Image):
    return to_rgb(item)
  return from_array(item)


class Geometry:
  """The model input of an image: pixels and, for native geometry, the
  shape bucket and the mask of real pixels."""

  def __init__(self, preprocess):
    geometry_lib.check(preprocess.geometry)
    self.preprocess = preprocess
    self.size = int(preprocess.size)
    self.resample = ops.resample(preprocess.interpolation)
    self.shapes = None
    if preprocess.geometry == 'native':
      self.shapes = geometry_lib.bucket_shapes(self.size,
                                               preprocess.bucket_aspects)

  def __call__(self, image: Image.Image):
    """(bucket, pixels [H, W, 3] uint8, mask [H, W] uint8 or None)."""
    kind = self.preprocess.geometry
    if kind == 'pad':
      return 0, geometry_lib.pad(image, self.size, self.resample), None
    if kind == 'native':
      bucket = geometry_lib.bucket_of(image.size[1], image.size[0],
                                      self.shapes)
      pixels, mask = geometry_lib.native(image, self.shapes[bucket],
                                         self.resample)
      return bucket, pixels, mask
    return 0, geometry_lib.square(image, self.size, self.resample), None
