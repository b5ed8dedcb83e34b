"""TFRecord files in the WD tagger layout, read without TensorFlow.

The WD v3 taggers (SmilingWolf, JAX-CV) were trained from TFRecord files
whose records are tf.train.Example protos with
  image_id (int64), image_bytes (bytes: a JPEG), label_indexes (int64 list:
  rows of the selected_tags.csv beside the records).

A TFRecord file is a run of records, each
  length: uint64 LE | masked_crc32c(length bytes): uint32 LE |
  data: `length` bytes | masked_crc32c(data): uint32 LE
where masked_crc32c(x) = (rotate-right-15(crc) + 0xa282ead8) mod 2**32 of
the CRC-32C (Castagnoli) of x. Both CRCs are checked:
- a bad length CRC means the framing is lost: the rest of the file is
  skipped and counted once as `bad_framing`;
- a bad data CRC, or data that does not parse as the layout above: the
  record is skipped and counted as `corrupt` (the length was sound, so the
  next record is still found);
- a file that ends inside a record: `truncated`.

The index of a file (each record's offset, id and labels) is built in one
read and cached like the tar indexes (index_cache.py), as .npz.
"""
from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Iterator

import numpy as np
from etils import epath
from tensorflow_datasets.proto import tf_example_pb2

from data_builders import images
from data_builders.danbooru import index_cache

INDEX_VERSION = 1
_MASK_DELTA = 0xa282ead8
_HEADER = struct.Struct('<QI')
_FOOTER = struct.Struct('<I')


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of data."""
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('Reading TFRecord files needs google-crc32c: pip '
                      'install "jaxtag[danbooru]".') from None
  return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff


@dataclasses.dataclass(frozen=True)
class Fault:
  """A record that could not be read; `reason` is the count's key."""
  reason: str
  offset: int


def read_records(f: io.BufferedIOBase) -> Iterator[tuple[int, bytes] | Fault]:
  """(offset of the data, data) of each sound record, or a Fault."""
  while True:
    start = f.tell()
    header = f.read(_HEADER.size)
    if not header:
      return
    if len(header) < _HEADER.size:
      yield Fault('truncated', start)
      return
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
      yield Fault('bad_framing', start)
      return
    data = f.read(length)
    footer = f.read(_FOOTER.size)
    if len(data) < length or len(footer) < _FOOTER.size:
      yield Fault('truncated', start)
      return
    if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
      yield Fault('corrupt', start)
      continue
    yield start + _HEADER.size, data


def parse_wd_example(data: bytes) -> tuple[int, bytes, list[int]]:
  """(image_id, image_bytes, label_indexes); ValueError when the record is
  not a tf.train.Example with those three features."""
  try:
    example = tf_example_pb2.Example.FromString(data)
  except Exception as e:  # pylint: disable=broad-except  (protobuf DecodeError)
    raise ValueError(f'not a tf.train.Example: {e}') from None
  feature = example.features.feature
  try:
    image_id = feature['image_id'].int64_list.value[0]
    image = feature['image_bytes'].bytes_list.value[0]
  except (KeyError, IndexError):
    raise ValueError('no image_id or image_bytes feature') from None
  labels = list(feature['label_indexes'].int64_list.value) if (
      'label_indexes' in feature) else []
  return int(image_id), bytes(image), [int(i) for i in labels]


@dataclasses.dataclass(frozen=True, slots=True)   # millions of them
class RecordImage:
  """The image of one record, read with one seek and one read."""
  path: str
  offset: int         # of the record's data
  length: int

  def read_bytes(self) -> bytes:
    with epath.Path(self.path).open('rb') as f:
      f.seek(self.offset)
      data = f.read(self.length)
    try:
      return parse_wd_example(data)[1]
    except ValueError as e:
      raise images.ImageSkipped(images.CORRUPT, str(e)) from None


@dataclasses.dataclass
class RecordIndex:
  """The sound records of one file and the faults met."""
  path: str
  offsets: np.ndarray      # int64 [N], of each record's data
  lengths: np.ndarray      # int64 [N]
  ids: np.ndarray          # int64 [N]
  label_starts: np.ndarray  # int64 [N + 1] into labels
  labels: np.ndarray       # int64, every record's label_indexes in a row
  faults: dict[str, int]

  def __len__(self):
    return len(self.ids)

  def labels_of(self, i: int) -> list[int]:
    return self.labels[self.label_starts[i]:self.label_starts[i + 1]].tolist()

  def image(self, i: int) -> RecordImage:
    return RecordImage(self.path, int(self.offsets[i]), int(self.lengths[i]))


def scan(path: epath.PathLike) -> RecordIndex:
  """Reads the whole file once, checking every CRC."""
  path = epath.Path(path)
  offsets, lengths, ids, starts, labels = [], [], [], [0], []
  faults = {}
  with path.open('rb') as f:
    for item in read_records(f):
      if isinstance(item, Fault):
        faults[item.reason] = faults.get(item.reason, 0) + 1
        continue
      offset, data = item
      try:
        image_id, _, label_indexes = parse_wd_example(data)
      except ValueError:
        faults['corrupt'] = faults.get('corrupt', 0) + 1
        continue
      offsets.append(offset)
      lengths.append(len(data))
      ids.append(image_id)
      labels.extend(label_indexes)
      starts.append(len(labels))
  as_array = lambda v: np.asarray(v, np.int64)  # pylint: disable=unnecessary-lambda-assignment
  return RecordIndex(str(path), as_array(offsets), as_array(lengths),
                     as_array(ids), as_array(starts), as_array(labels), faults)


_FAULT_KEYS = ('bad_framing', 'corrupt', 'truncated')


def load(path: epath.PathLike) -> RecordIndex:
  """The file's index: cached when the file is unchanged, else scanned."""
  path = epath.Path(path)
  target = index_cache.index_path(path, 'tfrecord_index', '.npz')
  size, mtime_ns = index_cache.identity(path)
  if target.exists():
    try:
      with target.open('rb') as f:
        cached = np.load(io.BytesIO(f.read()))
        if cached['identity'].tolist() == [INDEX_VERSION, size, mtime_ns]:
          faults = dict(zip(_FAULT_KEYS, cached['faults'].tolist()))
          return RecordIndex(str(path), cached['offsets'], cached['lengths'],
                             cached['ids'], cached['label_starts'],
                             cached['labels'],
                             {k: v for k, v in faults.items() if v})
    except (ValueError, KeyError, OSError):
      pass  # a damaged cache file is built again
  index = scan(path)
  buffer = io.BytesIO()
  np.savez(buffer, identity=np.asarray([INDEX_VERSION, size, mtime_ns],
                                       np.int64),
           offsets=index.offsets, lengths=index.lengths, ids=index.ids,
           label_starts=index.label_starts, labels=index.labels,
           faults=np.asarray([index.faults.get(k, 0) for k in _FAULT_KEYS],
                             np.int64))
  index_cache.write(target, buffer.getvalue())
  return index
