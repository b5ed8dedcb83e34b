"""Where the indexes of tar shards and TFRecord files are cached.

An index is written once per input file into `<cache>/<kind>/`, where
<cache> is $JAXTAG_CACHE, else $XDG_CACHE_HOME/jaxtag, else ~/.cache/jaxtag.
Its name is the input's file name and a hash of its absolute path; it
records the input's size and modification time, and an index whose input
has changed either is built again. The inputs are only ever read.
"""
from __future__ import annotations

import hashlib
import os

from absl import logging
from etils import epath


def cache_dir() -> epath.Path:
  """The folder the indexes are cached in (see the module doc)."""
  root = os.environ.get('JAXTAG_CACHE')
  if not root:
    xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache')
    root = os.path.join(xdg, 'jaxtag')
  return epath.Path(root)


def identity(path: epath.Path) -> tuple[int, int]:
  """(size, modification time in ns): what invalidates a cached index."""
  if '://' not in os.fspath(path):
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns
  stat = path.stat()
  return stat.length, int(stat.mtime * 1e9)


def index_path(path: epath.Path, kind: str, suffix: str) -> epath.Path:
  """<cache>/<kind>/<file name>.<16 hex of the absolute path><suffix>."""
  name = os.fspath(path)
  if '://' not in name:
    name = os.path.abspath(name)
  digest = hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]
  return cache_dir() / kind / f'{path.name}.{digest}{suffix}'


def write(target: epath.Path, data: bytes) -> None:
  """Writes through a temporary file, so that a reader never sees half an
  index; a cache that cannot be written is logged and only costs the next
  build a scan."""
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f'{target.name}.tmp{os.getpid()}'
    tmp.write_bytes(data)
    tmp.rename(target)
  except OSError as e:
    logging.warning('Could not cache an index at %s (%s); set JAXTAG_CACHE '
                    'to a writable folder.', target, e)
