"""Tar shards read in place: each shard's member offsets, indexed once.

Danbooru corpora come as tar shards of 3-4 GB (nyanko7/danbooru2023:
`original/data-0000.tar`, members named `<id>.<ext>`). They are never
extracted: the shard's headers are read once (one seek per member) into an
index of member name -> (data offset, size), and an image is then one seek
and one read.

The index of a shard is cached as JSON in `<cache>/tar_index/`
(index_cache.py: $JAXTAG_CACHE or ~/.cache/jaxtag), and built again when
the shard's size or modification time changes. The shards are only read.

Faults found while indexing are counted, not fatal:
- `bad_header`: a header that does not parse (a bad checksum); the scan
  steps over it block by block to the next valid header, so the members
  after it are still found;
- `truncated`: a member whose data runs past the end of the file, or a
  header cut off by it (a download that stopped).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tarfile

from etils import epath

from data_builders.danbooru import index_cache

INDEX_VERSION = 1
_BLOCK = 512


@dataclasses.dataclass(frozen=True, slots=True)   # millions of them
class Member:
  """One file inside a shard: read with one seek and one read."""
  path: str           # the shard
  offset: int         # of the member's data in the shard
  size: int

  def read_bytes(self) -> bytes:
    with epath.Path(self.path).open('rb') as f:
      f.seek(self.offset)
      return f.read(self.size)


@dataclasses.dataclass
class ShardIndex:
  """What indexing a shard found."""
  path: str
  members: list[tuple[str, int, int]]   # (name, data offset, size)
  faults: dict[str, int]                # bad_header, truncated

  def member(self, offset: int, size: int) -> Member:
    return Member(self.path, offset, size)


def scan(path: epath.PathLike) -> ShardIndex:
  """Reads every header of the shard (regular files only)."""
  path = epath.Path(path)
  size, _ = index_cache.identity(path)
  members, faults = [], {'bad_header': 0, 'truncated': 0}
  with path.open('rb') as f:
    # ignore_zeros: an invalid header is skipped block by block instead of
    # ending the scan (tarfile would silently stop there otherwise).
    tar = tarfile.open(fileobj=f, mode='r:', ignore_zeros=True)
    expected = 0   # where the next header should start
    while expected < size:
      try:
        info = tar.next()
      except tarfile.ReadError:
        faults['truncated'] += 1   # a header cut off by the end of the file
        break
      if info is None:
        break
      if info.offset > expected:
        faults['bad_header'] += 1
      expected = info.offset_data + -(-info.size // _BLOCK) * _BLOCK
      if info.offset_data + info.size > size:
        faults['truncated'] += 1   # and the scan ends: nothing follows
        break
      if info.isreg():
        members.append((info.name, info.offset_data, info.size))
  return ShardIndex(os.fspath(path), members,
                    {k: v for k, v in faults.items() if v})


def load(path: epath.PathLike) -> ShardIndex:
  """The shard's index: from the cache when the shard is unchanged, else
  scanned and cached."""
  path = epath.Path(path)
  target = index_cache.index_path(path, 'tar_index', '.json')
  size, mtime_ns = index_cache.identity(path)
  if target.exists():
    try:
      cached = json.loads(target.read_text())
      if (cached.get('version') == INDEX_VERSION and
          cached['size'] == size and cached['mtime_ns'] == mtime_ns):
        return ShardIndex(os.fspath(path),
                          [tuple(m) for m in cached['members']],
                          cached['faults'])
    except (ValueError, KeyError, TypeError):
      pass  # a damaged cache file is built again
  index = scan(path)
  index_cache.write(target, json.dumps({
      'version': INDEX_VERSION, 'shard': index.path, 'size': size,
      'mtime_ns': mtime_ns, 'faults': index.faults,
      'members': index.members}).encode('utf-8'))
  return index
