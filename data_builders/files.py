"""Reading the files in a user's folder: regular files only, text by one rule.

Every builder that reads captions, tag lists or metadata people write, and
`jaxtag.tag` for existing tag files, reads them here:
- Only regular files are opened. A FIFO, a device or a socket is
  `not_regular_file` and is never opened (opening a FIFO blocks until a
  writer comes); the type is checked with os.stat first, and again with
  fstat on a non-blocking descriptor, in case the file changed between.
- An OS error on one file (a symlink loop, a dangling link, a permission)
  is `unreadable`.
- Text is UTF-8, with or without a BOM (the BOM is dropped), or UTF-16
  with its BOM (either byte order). Anything else is `bad_encoding`: bytes
  that are not valid in the encoding, and text holding a NUL character,
  which is what UTF-16 or UTF-32 without a BOM, or a binary file, reads as.
  Latin-1 and other legacy encodings are not guessed: save such a file as
  UTF-8.

A file that cannot be used raises `FileSkipped(reason, path, detail)`, a
ValueError whose message names the file: a builder counts it with
`read_or_skip` and goes on when the file is one of many (a caption), and
lets it stop the build when the file is the only one of its kind (a
vocabulary). Paths with a scheme (gs://) are read through etils.epath,
which has no FIFOs to fear.
"""
from __future__ import annotations

import codecs
import dataclasses
import os
import stat

BAD_ENCODING = 'bad_encoding'
UNREADABLE = 'unreadable'
NOT_REGULAR = 'not_regular_file'

# (BOM, codec) in the order they are tried. No UTF-32: its BOMs start like
# UTF-16's, and a UTF-32 file decoded as UTF-16 holds NULs, so it is
# refused as bad_encoding.
_BOMS = ((codecs.BOM_UTF8, 'utf-8-sig'), (codecs.BOM_UTF16_LE, 'utf-16-le'),
         (codecs.BOM_UTF16_BE, 'utf-16-be'))


class FileSkipped(ValueError):
  """The file cannot be used; `reason` is a short key for the counts."""

  def __init__(self, reason: str, path: object, detail: str):
    super().__init__(reason, path, detail)  # all three, so that it pickles
    self.reason = reason
    self.path = path
    self.detail = detail

  def __str__(self):
    return f'{self.path}: {self.detail} ({self.reason})'


@dataclasses.dataclass(frozen=True)
class Text:
  """A decoded file: its text (no BOM) and the encoding to write it back
  in: 'utf-8', 'utf-8-sig' (with a BOM) or 'utf-16-le'/'utf-16-be' (with
  a BOM)."""
  text: str
  encoding: str


def kind(mode: int) -> str:
  """What a non-regular file is, in words ('a FIFO')."""
  for test, name in ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a FIFO'),
                     (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a device'),
                     (stat.S_ISBLK, 'a device')):
    if test(mode):
      return name
  return 'not a regular file'


def _is_remote(path) -> bool:
  return '://' in os.fspath(path) if isinstance(path, (str, os.PathLike)) \
      else False


def check_regular(path) -> os.stat_result:
  """The stat of a regular file (symlinks followed), without opening it;
  FileSkipped when it is anything else or cannot be reached."""
  try:
    info = os.stat(path)
  except FileNotFoundError as e:
    detail = ('a dangling symlink' if os.path.islink(path)
              else 'no such file')
    raise FileSkipped(UNREADABLE, path, detail) from e
  except OSError as e:
    raise FileSkipped(UNREADABLE, path, e.strerror or str(e)) from e
  if not stat.S_ISREG(info.st_mode):
    raise FileSkipped(NOT_REGULAR, path, f'{kind(info.st_mode)}, not opened')
  return info


def open_binary(path):
  """A regular file opened for reading bytes; FileSkipped for anything
  else. The caller closes it (`with files.open_binary(p) as f:`)."""
  if _is_remote(path):
    from etils import epath  # pylint: disable=import-outside-toplevel
    try:
      return epath.Path(path).open('rb')
    except OSError as e:
      raise FileSkipped(UNREADABLE, path, e.strerror or str(e)) from e
  check_regular(path)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
  except OSError as e:
    raise FileSkipped(UNREADABLE, path, e.strerror or str(e)) from e
  mode = os.fstat(fd).st_mode
  if not stat.S_ISREG(mode):  # replaced since the stat above
    os.close(fd)
    raise FileSkipped(NOT_REGULAR, path, f'{kind(mode)}, not read')
  return os.fdopen(fd, 'rb')


def read_bytes(path) -> bytes:
  """The bytes of a regular file; FileSkipped for anything else."""
  with open_binary(path) as f:
    try:
      return f.read()
    except OSError as e:
      raise FileSkipped(UNREADABLE, path, e.strerror or str(e)) from e


def decode(data: bytes, path: object = '') -> Text:
  """Text of a file's bytes by the rule above; FileSkipped(bad_encoding)."""
  encoding, body = 'utf-8', data
  for bom, name in _BOMS:
    if data.startswith(bom):
      encoding, body = name, data[len(bom):]
      break
  codec = 'utf-8' if encoding == 'utf-8-sig' else encoding
  try:
    text = body.decode(codec)
  except UnicodeDecodeError as e:
    raise FileSkipped(
        BAD_ENCODING, path,
        f'not {codec.upper()} (at byte {len(data) - len(body) + e.start}: '
        f'{body[e.start:e.start + 4]!r}); save it as UTF-8') from None
  if '\0' in text:
    raise FileSkipped(
        BAD_ENCODING, path,
        f'holds NUL characters as {codec.upper()}: UTF-16 or UTF-32 without '
        'a BOM, or not text; save it as UTF-8')
  return Text(text, encoding)


def read(path) -> Text:
  """The decoded text of a regular file, with its encoding."""
  return decode(read_bytes(path), path)


def read_text(path) -> str:
  """The text of a regular file by the rule above; FileSkipped if none."""
  return read(path).text


def encode(text: str, encoding: str) -> bytes:
  """`text` in an encoding of `Text.encoding`, with its BOM if it has one."""
  if encoding == 'utf-8-sig':
    return codecs.BOM_UTF8 + text.encode('utf-8')
  if encoding == 'utf-16-le':
    return codecs.BOM_UTF16_LE + text.encode('utf-16-le')
  if encoding == 'utf-16-be':
    return codecs.BOM_UTF16_BE + text.encode('utf-16-be')
  return text.encode(encoding)


def read_or_skip(path, counter, what: object = None) -> str | None:
  """The text of `path`, or None after counting why not in `counter` (an
  images.SkipCounter) under `what` (default: the path)."""
  try:
    return read_text(path)
  except FileSkipped as e:
    counter.skip(e.reason, path if what is None else what, e.detail)
    return None
