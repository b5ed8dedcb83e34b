"""Evaluation image geometry: how a whole image becomes the network's input.

Chosen by `config.eval.geometry` (training always uses square crops):
- `square`: the whole image resized to size x size (aspect not kept).
- `pad`: the longest side resized to `size`, aspect kept, centred on a white
  size x size canvas (the WD tagger convention).
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


def pad(image: Image.Image, size: int,
        resample: int = Image.BILINEAR) -> np.ndarray:
  width, height = image.size
  scale = size / max(width, height)
  w = max(1, round(width * scale))
  h = max(1, round(height * scale))
  canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
  top, left = (size - h) // 2, (size - w) // 2
  canvas[top:top + h, left:left + w] = np.asarray(
      image.resize((w, h), resample), np.uint8)
  return canvas


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
