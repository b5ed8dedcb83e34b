"""Reading images for a builder: any file Pillow opens becomes RGB uint8.

`load_image` decodes a path or bytes fully (so a truncated or corrupt file
fails here, at build time, and never in the training pipeline), applies the
EXIF orientation, takes an animation's first frame, composites transparency
on a pad colour, scales 16-bit samples to 8 bits and optionally resizes.
A file that cannot be used raises `ImageSkipped(reason)`; builders count the
reasons with a `SkipCounter`. `stored_image` gives the bytes a builder
writes: the original file when it is already a plain RGB JPEG or PNG that
needs no change, else the decoded pixels encoded again. A source is a path,
bytes, or an object with `read_bytes()` (a tar member, a TFRecord record).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import struct
import warnings
from typing import Protocol, Sequence, Union

import numpy as np
from absl import logging
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps
from PIL import UnidentifiedImageError

from data_builders import files


class Readable(Protocol):
  """An image inside a bigger file (a tar member, a TFRecord record)."""

  def read_bytes(self) -> bytes:
    ...


Source = Union[str, os.PathLike, bytes, Readable]

# Reasons a builder skips a record; SkipCounter accepts others too, these
# are the ones load_image raises.
CORRUPT = 'corrupt'
TRUNCATED = 'truncated'
TOO_LARGE = 'too_large'
NOT_IMAGE = 'not_image'
MISSING = 'missing_file'

# Pillow's own default: about 89 megapixels (a 0.25 GB RGB image).
DEFAULT_MAX_PIXELS = 89_478_485

INTERPOLATIONS = {'area': Image.BOX, 'bilinear': Image.BILINEAR}

_EXIF_ORIENTATION = 0x0112
# The first bytes of JPEG, PNG, GIF, WebP/RIFF and BMP files.
_SIGNATURES = (b'\xff\xd8', b'\x89PNG', b'GIF8', b'RIFF', b'BM')
_ALPHA_MODES = frozenset({'RGBA', 'RGBa', 'LA', 'La', 'PA'})


class ImageSkipped(Exception):
  """The image cannot be used; `reason` is a short key for the counts."""

  def __init__(self, reason: str, detail: str = ''):
    super().__init__(reason, detail)  # both, so that it pickles
    self.reason = reason
    self.detail = detail

  def __str__(self):
    return f'{self.reason}: {self.detail}' if self.detail else self.reason


def _read(source: Source) -> bytes:
  """The bytes of a source; a FIFO or device is never opened, and an OS
  error (a symlink loop, a permission) skips the image as `unreadable`."""
  if isinstance(source, (bytes, bytearray, memoryview)):
    return bytes(source)
  if not isinstance(source, (str, os.PathLike)):
    return source.read_bytes()  # a member of a tar shard, a record
  if not os.path.lexists(source):
    raise ImageSkipped(MISSING, str(source))
  try:
    return files.read_bytes(source)
  except files.FileSkipped as e:
    raise ImageSkipped(e.reason, e.detail) from e


def _open(data: bytes, max_pixels: int) -> Image.Image:
  """Opens and fully decodes the first frame; ImageSkipped on any failure."""
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    # Set process-wide by some other library: it would let a truncated file
    # through as a grey-bottomed image.
    raise RuntimeError('PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this '
                       'process; builders need it False to skip truncated '
                       'files. Unset it before building.')
  try:
    with warnings.catch_warnings():
      # Pillow warns (and only errors at twice its limit) on huge images.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      width, height = image.size
      if width * height > max_pixels:
        raise ImageSkipped(TOO_LARGE, f'{width}x{height} pixels')
      image.seek(0)  # an animation's first frame
      image.load()
  except ImageSkipped:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageSkipped(TOO_LARGE, str(e)) from e
  except UnidentifiedImageError as e:
    # A file that starts like an image but does not parse is a broken image.
    reason = CORRUPT if data.startswith(_SIGNATURES) else NOT_IMAGE
    raise ImageSkipped(reason, 'cannot identify the image') from e
  except (OSError, SyntaxError, ValueError, EOFError, IndexError,
          struct.error) as e:
    reason = TRUNCATED if 'truncated' in str(e).lower() else CORRUPT
    raise ImageSkipped(reason, str(e)) from e
  return image


def _orientation(image: Image.Image) -> int:
  try:
    return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
  except Exception:  # pylint: disable=broad-except  (malformed EXIF block)
    return 1


def _composite(rgb: np.ndarray, alpha: np.ndarray,
               pad_color: Sequence[int]) -> np.ndarray:
  """rgb over a flat pad colour, alpha 0..255, rounded to nearest."""
  a = alpha.astype(np.uint32)[..., None]
  pad = np.asarray(pad_color, np.uint32)
  out = rgb.astype(np.uint32) * a + pad * (255 - a)
  return ((out + 127) // 255).astype(np.uint8)


def to_rgb(image: Image.Image, pad_color: Sequence[int]) -> np.ndarray:
  """Any decoded Pillow image -> uint8 [H, W, 3]."""
  mode = image.mode
  if mode.startswith('I;16') or mode == 'I':
    # 16-bit samples: 0..65535 -> 0..255 (65535 / 257 = 255).
    values = np.asarray(image).astype(np.int64)
    gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == 'F':
    gray = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  has_alpha = (mode in _ALPHA_MODES or
               (mode in ('P', 'L', 'RGB') and 'transparency' in image.info))
  if has_alpha:
    rgba = np.asarray(image.convert('RGBA'))
    return _composite(rgba[..., :3], rgba[..., 3], pad_color)
  if mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image)


def _resized(array: np.ndarray, height: int, width: int,
             interpolation: str) -> np.ndarray:
  if (height, width) == array.shape[:2]:
    return array
  resample = INTERPOLATIONS[interpolation]
  return np.asarray(Image.fromarray(array).resize((width, height), resample))


def _pad_square(array: np.ndarray, pad_color: Sequence[int]) -> np.ndarray:
  h, w = array.shape[:2]
  side = max(h, w)
  if h == w:
    return array
  out = np.empty((side, side, 3), np.uint8)
  out[...] = np.asarray(pad_color, np.uint8)
  top, left = (side - h) // 2, (side - w) // 2
  out[top:top + h, left:left + w] = array
  return out


@dataclasses.dataclass(frozen=True)
class Geometry:
  """What load_image does to the decoded pixels (all off by default)."""
  pad_color: tuple[int, int, int] = (255, 255, 255)
  resize_longest: int | None = None
  resize_shortest: int | None = None
  square: bool = False
  interpolation: str = 'area'
  max_pixels: int = DEFAULT_MAX_PIXELS
  max_side: int | None = None       # shrink (never enlarge) the longest side

  def __post_init__(self):
    if self.resize_longest and self.resize_shortest:
      raise ValueError('Give resize_longest or resize_shortest, not both.')
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f'Unknown interpolation {self.interpolation!r}; '
                       f'valid: {", ".join(INTERPOLATIONS)}.')
    if len(self.pad_color) != 3 or not all(
        0 <= int(v) <= 255 for v in self.pad_color):
      raise ValueError(f'pad_color {self.pad_color!r} must be three values '
                       'in 0..255.')

  @property
  def changes_pixels(self) -> bool:
    return bool(self.resize_longest or self.resize_shortest or self.square)

  def changes(self, height: int, width: int) -> bool:
    """Whether apply() changes an image of this size."""
    return self.changes_pixels or bool(
        self.max_side and max(height, width) > self.max_side)

  def apply(self, array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    target = self.resize_longest or self.resize_shortest
    ref = max(h, w) if self.resize_longest else min(h, w)
    if not target and self.max_side and max(h, w) > self.max_side:
      target, ref = self.max_side, max(h, w)
    if target:
      scale = target / ref
      array = _resized(array, max(1, round(h * scale)),
                       max(1, round(w * scale)), self.interpolation)
    if self.square:
      array = _pad_square(array, self.pad_color)
    return array


def load_image(source: Source, *, pad_color=(255, 255, 255),
               resize_longest: int | None = None,
               resize_shortest: int | None = None, square: bool = False,
               interpolation: str = 'area',
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """uint8 [H, W, 3] of a path or encoded bytes; raises ImageSkipped.

  resize_longest / resize_shortest scale that side to N (up or down, the
  other side rounded); square pads the result to a centred square with
  pad_color; 'area' interpolation is Pillow's BOX filter.
  """
  geometry = Geometry(tuple(pad_color), resize_longest, resize_shortest,
                      square, interpolation, max_pixels)
  return decode(_read(source), geometry)


def decode(data: bytes, geometry: Geometry) -> np.ndarray:
  """load_image on bytes, with the geometry already checked."""
  image = _open(data, geometry.max_pixels)
  if _orientation(image) != 1:
    image = ImageOps.exif_transpose(image)
  return geometry.apply(to_rgb(image, geometry.pad_color))


def encode_image(array: np.ndarray, fmt: str = 'png',
                 quality: int = 95) -> bytes:
  """PNG, JPEG or (lossy) WebP bytes of uint8 [H, W, 3]; the same array
  gives the same bytes (no timestamps or metadata are written)."""
  fmt = fmt.lower()
  buffer = io.BytesIO()
  image = Image.fromarray(np.asarray(array, np.uint8))
  if fmt == 'png':
    image.save(buffer, format='PNG', compress_level=6)
  elif fmt in ('jpeg', 'jpg'):
    image.save(buffer, format='JPEG', quality=quality)
  elif fmt == 'webp':
    image.save(buffer, format='WEBP', quality=quality)
  else:
    raise ValueError(f'Unknown image format {fmt!r}; valid: png, jpeg, '
                     'webp.')
  return buffer.getvalue()


def stored_image(source: Source, geometry: Geometry,
                 fmt: str = 'png') -> tuple[bytes, np.ndarray]:
  """(bytes to store, decoded uint8 pixels) of one image.

  The original bytes are kept when the file is a plain RGB JPEG or PNG (or
  WebP, when `fmt` is webp) with no EXIF rotation that the geometry leaves
  as it is: decoding them gives exactly the returned pixels. Anything else
  is re-encoded in `fmt`.
  """
  data = _read(source)
  image = _open(data, geometry.max_pixels)
  kept_formats = ('JPEG', 'PNG', 'WEBP') if fmt == 'webp' else ('JPEG', 'PNG')
  plain = (image.format in kept_formats and image.mode == 'RGB' and
           'transparency' not in image.info and _orientation(image) == 1 and
           not geometry.changes(image.height, image.width))
  if getattr(image, 'is_animated', False) and image.format != 'JPEG':
    plain = False  # an APNG or WebP animation decodes to its first frame
  if plain:
    return data, np.asarray(image)
  if _orientation(image) != 1:
    image = ImageOps.exif_transpose(image)
  array = geometry.apply(to_rgb(image, geometry.pad_color))
  return encode_image(array, fmt), array


class SkipCounter(collections.Counter):
  """Counts skipped records by reason; logs the first few of each."""

  def __init__(self, name: str = '', log_first: int = 5):
    super().__init__()
    self.name = name
    self.log_first = log_first
    self.first: dict[str, list[str]] = {}   # reason: the first `what`s

  def skip(self, reason: str, what: object = '', detail: str = '') -> None:
    self[reason] += 1
    if self[reason] <= self.log_first:
      self.first.setdefault(reason, []).append(str(what))
      logging.warning('%sskipped %s (%s%s)', f'{self.name}: ' if self.name
                      else '', what, reason, f': {detail}' if detail else '')

  def summary(self) -> str:
    if not self:
      return f'{self.name}: nothing skipped' if self.name else 'nothing skipped'
    counts = ', '.join(f'{reason} {n}' for reason, n in sorted(self.items()))
    return (f'{self.name}: ' if self.name else '') + (
        f'skipped {sum(self.values())} ({counts})')

  def report(self) -> None:
    """Prints and logs the counts (call at the end of a build)."""
    logging.info('%s', self.summary())
    print(self.summary(), flush=True)

  def as_dict(self) -> dict[str, int]:
    return {reason: int(n) for reason, n in sorted(self.items())}

  def first_as_dict(self) -> dict[str, list[str]]:
    """{reason: the first few files or rows skipped for it}."""
    return {reason: list(self.first[reason]) for reason in sorted(self.first)}


@dataclasses.dataclass(frozen=True)
class StoredImage:
  """What a builder keeps of one image: its bytes and pixel sums."""
  data: bytes
  height: int
  width: int
  channel_sums: tuple[float, float, float]   # for a dataset's mean pixel


def _store_one(job) -> StoredImage | ImageSkipped:
  source, geometry, fmt = job
  try:
    data, pixels = stored_image(source, geometry, fmt)
  except ImageSkipped as e:
    return e
  # Columns first in uint32 (exact below 16 million rows): 20 times faster
  # than one int64 sum over the flattened pixels.
  sums = pixels.sum(axis=0, dtype=np.uint32).sum(axis=0, dtype=np.uint64)
  return StoredImage(data, pixels.shape[0], pixels.shape[1],
                     tuple(float(s) for s in sums))


# Decoding is spread over processes only for enough images to pay for them.
PARALLEL_MIN_IMAGES = 500


def store_all(sources: Sequence[Source], geometry: Geometry, fmt: str = 'png',
              parallel_min: int = PARALLEL_MIN_IMAGES):
  """Yields a StoredImage or an ImageSkipped per source, in order.

  Over a process pool when there are at least `parallel_min` sources and
  more than one core; the order, and so the output, is the same either way.
  """
  jobs = [(s, geometry, fmt) for s in sources]
  if len(jobs) >= parallel_min and (os.cpu_count() or 1) > 1:
    import multiprocessing  # pylint: disable=g-import-not-at-top
    with multiprocessing.get_context('spawn').Pool() as pool:
      yield from pool.imap(_store_one, jobs, chunksize=16)
  else:
    yield from map(_store_one, jobs)
