"""Image decoding in a bounded pool.

At most `workers` images are decoded at once, each checked against the
pixel limit from its header before its pixels are read, and each worker
turns its image into the model's input (the run's geometry, a few hundred
pixels a side) before taking the next one. So the decoded pixels held at
once are bounded by workers x --max_megapixels x 4 bytes (Pillow keeps RGB
in 32-bit pixels; converting from another mode briefly holds a second
copy), however many requests arrive; waiting requests hold only their
compressed bodies (at most --max_queue x --max_mb).

`return_large_frees_to_os` makes that memory go back to the system after
each image: glibc would otherwise raise its mmap threshold after the first
large free and keep later images' pixels in its heaps (measured: 30
concurrent 49-megapixel PNGs left 380 MB allocated; with it, none).
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import warnings
from concurrent import futures
from typing import Any, Callable

from PIL import Image

from jaxtag.serving import images as images_lib
from jaxtag.serving.server import body as body_lib
from jaxtag.serving.server.errors import RequestError


def decode_image(body: bytes, *, max_bytes: int, max_pixels: int):
  """The request body as an RGB PIL image, or a RequestError."""
  if not body:
    raise RequestError(400, 'The request has no image: send the image '
                       "file's bytes as the POST body.")
  if len(body) > max_bytes:
    raise body_lib.too_large(len(body), max_bytes, close=False)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(body)) as image:
        pixels = image.size[0] * image.size[1]
        if pixels > max_pixels:
          raise RequestError(
              413, f'The image is {image.size[0]}x{image.size[1]} '
              f'({pixels / 1e6:.1f} megapixels); this server takes at most '
              f'{max_pixels / 1e6:.1f} (--max_megapixels).')
        image.load()
        return images_lib.upright_rgb(image)
  except RequestError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise RequestError(413, f'The image is too large to decode: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many types for bytes that are not a (whole) image.
    raise RequestError(415, 'The file is not an image that can be decoded '
                       '(PNG, JPEG, WebP, GIF, BMP, TIFF); Pillow says '
                       f'{type(e).__name__}.') from e


# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3


def return_large_frees_to_os(threshold: int = 4 * 2**20) -> bool:
  """Fixes glibc's mmap threshold, so that allocations of `threshold`
  bytes or more (Pillow's 16 MB pixel blocks) are mapped and returned when
  freed. False where the C library is not glibc."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
  except (OSError, AttributeError):
    return False


class DecodePool:
  """Decodes request bodies and prepares the model input, `workers` at a
  time. Pillow releases the GIL while it decodes, so threads run in
  parallel."""

  def __init__(self, prepare: Callable[[Any], Any], *, workers: int,
               max_bytes: int, max_pixels: int):
    if workers < 1:
      raise ValueError(f'--decode_workers must be at least 1, got {workers}.')
    self.prepare = prepare
    self.max_bytes, self.max_pixels = max_bytes, max_pixels
    self._pool = futures.ThreadPoolExecutor(workers,
                                            thread_name_prefix='decode')

  def _decode(self, body: bytes):
    image = decode_image(body, max_bytes=self.max_bytes,
                         max_pixels=self.max_pixels)
    try:
      return self.prepare(image)
    finally:
      image.close()

  async def __call__(self, body: bytes):
    """The model input of an image body, or a RequestError."""
    return await asyncio.get_running_loop().run_in_executor(
        self._pool, self._decode, body)

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
