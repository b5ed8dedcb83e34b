"""Small real-layout dataset folders for the builder tests, made at test time.

The image helpers make the awkward files a real dump holds (a corrupt
JPEG, a CMYK JPEG, an RGBA PNG, a 16-bit PNG, an EXIF-rotated JPEG); the
folder writers lay them out as the datasets do (see
../shared/reference/DATASETS.md).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def solid(color, size=(12, 8), mode='RGB') -> Image.Image:
  """A flat image of `size` (width, height)."""
  return Image.new(mode, size, tuple(color))


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def jpeg(color=(200, 30, 30), size=(12, 8)) -> bytes:
  return encoded(solid(color, size), 'JPEG', quality=95)


def png(color=(30, 200, 30), size=(12, 8)) -> bytes:
  return encoded(solid(color, size), 'PNG')


def rgba_png(rgba=(200, 100, 0, 128), size=(6, 4)) -> bytes:
  return encoded(solid(rgba, size, 'RGBA'), 'PNG')


def cmyk_jpeg(cmyk=(255, 0, 0, 0), size=(16, 16)) -> bytes:
  return encoded(solid(cmyk, size, 'CMYK'), 'JPEG', quality=95)


def png16(values: np.ndarray) -> bytes:
  """A 16-bit grayscale PNG of uint16 `values`."""
  return encoded(Image.fromarray(np.asarray(values, np.uint16)), 'PNG')


def exif_rotated_png(pixels: np.ndarray, orientation: int = 6) -> bytes:
  """A PNG of `pixels` as stored, with an EXIF orientation tag."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encoded(Image.fromarray(np.asarray(pixels, np.uint8)), 'PNG',
                 exif=exif)


def exif_rotated_jpeg(orientation: int = 6, size=(16, 8)) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encoded(solid((90, 90, 200), size), 'JPEG', exif=exif)


def corrupt_jpeg() -> bytes:
  """A JPEG whose header parses and whose entropy-coded data is garbage."""
  data = bytearray(encoded(Image.fromarray(
      np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)),
      'JPEG'))
  start = data.find(b'\xff\xda') + 5
  data[start:start + 12] = b'\xff' * 12
  return bytes(data)


def truncated_jpeg() -> bytes:
  data = encoded(Image.fromarray(
      np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8)),
      'JPEG')
  return data[:len(data) // 2]


def animated_gif(colors=((255, 0, 0), (0, 0, 255)), size=(8, 8)) -> bytes:
  frames = [solid(c, size) for c in colors]
  buffer = io.BytesIO()
  frames[0].save(buffer, format='GIF', save_all=True,
                 append_images=frames[1:], duration=100, loop=0)
  return buffer.getvalue()
