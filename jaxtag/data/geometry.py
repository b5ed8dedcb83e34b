"""Evaluation image geometry: how a whole image becomes the network's input.

Chosen by `config.eval.geometry` (training always uses square crops):
- `square`: the whole image resized to size x size (aspect not kept).
- `pad`: the WD tagger contract (`pad` below, the one function that
  jaxtag.tag, jaxtag.serve and evaluation call): the image, upright by its
  EXIF orientation (`upright`) and with any alpha composited on white
  (`to_rgb`), is centred on a white square of its longest side, which is
  then resized to size x size with the stated filter. Padding before the
  resize, as SmilingWolf's wd-tagger demo app does, makes the pixels equal
  that app's for the same filter (bicubic, the WD configs' default).
- `native`: the shortest side resized to `size`, aspect kept. Images are
  batched by shape bucket so that a split compiles one program per bucket,
  not one per image: bucket r of `config.eval.bucket_aspects` holds images
  whose longest/shortest ratio is at most r, padded (top-left) to
  size x ceil(size * r / 32) * 32, in landscape or portrait. An
  `image_mask` [H, W] marks the real pixels, and pooling ignores the rest.
  Images longer than the last ratio are shrunk to fit its bucket.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

GEOMETRIES = ('square', 'pad', 'native')
# Backbones downsample by 32; bucket sides that are multiples of it map
# every feature cell onto whole pixels of the mask.
STRIDE = 32
PAD_VALUE = 255


def check(geometry: str) -> None:
  if geometry not in GEOMETRIES:
    raise ValueError(f'Unknown config.eval.geometry {geometry!r}; valid: '
                     f'{", ".join(GEOMETRIES)}.')


def bucket_shapes(size: int, aspects: Sequence[float]) -> list[tuple[int, int]]:
  """(height, width) of every bucket: the square, then landscape/portrait."""
  aspects = sorted(float(a) for a in aspects)
  if not aspects or aspects[0] < 1.0:
    raise ValueError('config.eval.bucket_aspects must be ratios >= 1, '
                     f'got {tuple(aspects)}.')
  shapes = [(size, size)]
  for r in aspects:
    long = max(size, int(math.ceil(size * r / STRIDE)) * STRIDE)
    for shape in ((size, long), (long, size)):
      if shape not in shapes:
        shapes.append(shape)
  return shapes


def bucket_of(height: int, width: int, shapes: list[tuple[int, int]]) -> int:
  """The smallest bucket of the image's orientation that holds it."""
  size = min(shapes[0])
  short, long = min(height, width), max(height, width)
  scaled_long = long * size / short
  landscape = width > height
  fitting = [i for i, (h, w) in enumerate(shapes)
             if (w >= h if landscape else h >= w)]
  for i in sorted(fitting, key=lambda i: max(shapes[i])):
    if scaled_long <= max(shapes[i]) + 1e-6:
      return i
  return max(fitting, key=lambda i: max(shapes[i]))


def image_size(data: bytes) -> tuple[int, int] | None:
  """(height, width) from the image header alone; None when unreadable."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
    return height, width
  except Exception:  # pylint: disable=broad-except
    return None


def square(image: Image.Image, size: int,
           resample: int = Image.BILINEAR) -> np.ndarray:
  return np.asarray(image.resize((size, size), resample), np.uint8)


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


def upright(image: Image.Image) -> Image.Image:
  """The image turned as its EXIF orientation says (itself when it has
  none), as cameras and browsers show it."""
  return ImageOps.exif_transpose(image)


def pad_square(image: Image.Image) -> Image.Image:
  """An RGB image centred on a white square of its longest side."""
  width, height = image.size
  side = max(width, height)
  if width == height:
    return image
  canvas = Image.new('RGB', (side, side), (PAD_VALUE,) * 3)
  canvas.paste(image, ((side - width) // 2, (side - height) // 2))
  return canvas


def pad(image: Image.Image, size: int,
        resample: int = Image.BICUBIC) -> np.ndarray:
  """The `pad` geometry of an upright RGB image (`upright`, `to_rgb`):
  padded to a centred white square, then resized to size x size."""
  return np.asarray(pad_square(to_rgb(image)).resize((size, size), resample),
                    np.uint8)


def native(image: Image.Image, shape: tuple[int, int],
           resample: int = Image.BILINEAR):
  """(pixels [H, W, 3] uint8 placed top-left, mask [H, W] uint8)."""
  bucket_h, bucket_w = shape
  width, height = image.size
  scale = min(min(bucket_h, bucket_w) / min(width, height),
              max(bucket_h, bucket_w) / max(width, height))
  w = min(bucket_w, max(1, round(width * scale)))
  h = min(bucket_h, max(1, round(height * scale)))
  pixels = np.zeros((bucket_h, bucket_w, 3), np.uint8)
  pixels[:h, :w] = np.asarray(image.resize((w, h), resample), np.uint8)
  mask = np.zeros((bucket_h, bucket_w), np.uint8)
  mask[:h, :w] = 1
  return pixels, mask
