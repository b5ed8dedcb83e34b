"""Images for serving: any Pillow mode to RGB, then the run's eval geometry.

Files are turned by their EXIF orientation; transparent images (RGBA, LA,
palette with transparency) are composited on white, the pad colour of the
WD taggers; 16-bit and float images are scaled to 8 bits
(jaxtag/data/geometry.py: `upright`, `to_rgb`). The geometry (square, pad, native) and interpolation are those
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


to_rgb = geometry_lib.to_rgb


def upright_rgb(image: Image.Image) -> Image.Image:
  """A decoded file's image as the model sees it: turned by its EXIF
  orientation, then RGB with alpha on white (jaxtag.tag, jaxtag.serve)."""
  return to_rgb(geometry_lib.upright(image))


def open_image(path: str) -> Image.Image:
  """Decodes a file now (a truncated one fails here) and returns it
  upright (EXIF orientation) in RGB."""
  with Image.open(path) as image:
    image.load()
    return upright_rgb(image)


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
