"""What the builders of a local raw dataset (a `manual_dir`) share.

`ManualBuilder` is a GeneratorBasedBuilder that
- finds the raw folder (`--manual_dir` / `config.dataset.manual_dir`) and
  says how to pass it when it is missing;
- writes byte-identical shards (data_builders/deterministic_writer.py);
- turns `Record`s into examples with `generate`: images decoded and stored
  in order (over processes for big splits), bad ones skipped and counted,
  the train split's labels collected for label_stats.npz, the skip counts,
  options and example counts written to build_report.json and printed.
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_builders import deterministic_writer
from data_builders import images
from data_builders import splits
from data_builders import tag_stats


def _spill_through_epath() -> None:
  """Lets TFDS spill a big split to disk without TensorFlow.

  TFDS's writer keeps a split's examples in memory up to 1 GB and then
  writes them to 1,000 temporary bucket files through tf.io.gfile, which
  fails without TensorFlow (jaxtag has none). The same bucket files, in
  the same byte layout, are written here with etils.epath.
  """
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return
  except ImportError:
    pass
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top

  def add(self, key, data: bytes):
    if not self._fobj:
      path = epath.Path(self._path)
      path.parent.mkdir(parents=True, exist_ok=True)
      self._fobj = path.open('wb')
    self._fobj.write(shuffle._hkey_to_bytes(key))  # pylint: disable=protected-access
    self._fobj.write(struct.pack('=Q', len(data)))
    self._fobj.write(data)
    self._length += 1
    self._size += len(data)

  def flush(self):
    if self._fobj:
      self._fobj.close()
      self._fobj = None

  def read_values(self):
    self.flush()
    path = epath.Path(self._path)
    if not path.exists():
      return
    with path.open('rb') as f:
      while buff := f.read(shuffle.HKEY_SIZE_BYTES):
        size = struct.unpack('=Q', f.read(8))[0]
        yield shuffle._read_hkey(buff), f.read(size)  # pylint: disable=protected-access

  def del_file(self):
    epath.Path(self._path).unlink(missing_ok=True)

  for method in (add, flush, read_values, del_file):
    setattr(shuffle._Bucket, method.__name__, method)  # pylint: disable=protected-access


_spill_through_epath()


def option_fields(config) -> dict[str, dataclasses.Field]:
  """{name: field} of a builder config's own options (not TFDS's fields)."""
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return {f.name: f for f in dataclasses.fields(config)
          if f.name not in base}


def options_of(config) -> dict[str, Any]:
  return {name: getattr(config, name) for name in sorted(option_fields(config))}


@dataclasses.dataclass
class Record:
  """One example before its image is read."""
  key: Any                      # unique within the dataset, sorts the shards
  source: images.Source         # image path or bytes
  labels: Sequence[int]         # label ids of the `tags` feature
  features: dict[str, Any] = dataclasses.field(default_factory=dict)


INSTRUCTIONS = ('Pass the folder with the raw files as `python -m '
                'jaxtag.data.build {name} --manual_dir DIR`, or set '
                'config.dataset.manual_dir for training; the layout is in '
                'data_builders/{name}/README.md.')


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders that read a manual_dir; see the module doc."""

  # Store the dataset's mean pixel (train split, as stored) in the report.
  MEAN_PIXEL = False

  def _example_writer(self):
    # The default writer's bytes change from process to process.
    return deterministic_writer.DeterministicExampleWriter(
        file_format=self.info.file_format)

  def dataset_info(self, description: str, **features) -> tfds.core.DatasetInfo:
    """image (square when the config has `resize`), tags, id and
    `features`, with the DatasetMetadata every builder writes."""
    side = getattr(self.builder_config, 'resize', 0) or None
    return tfds.core.DatasetInfo(
        builder=self,
        description=description,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(side, side, 3),
                                         encoding_format=None),
            'tags': tfds.features.Sequence(np.int64),
            'id': np.int64,
            **features,
        }),
        metadata=tag_stats.DatasetMetadata(),
    )

  def manual_root(self, dl_manager) -> epath.Path:
    """The raw folder, after checking the shared options (so that a bad
    value fails before any file is read)."""
    self.geometry()
    self.image_format()
    if hasattr(self.builder_config, 'split_fractions'):  # VOC, COCO: fixed
      self.split_fractions()
    root = dl_manager.manual_dir
    if root is None or not epath.Path(root).exists():
      raise FileNotFoundError(
          f'{self.name}: the raw dataset folder {root} does not exist. '
          + INSTRUCTIONS.format(name=self.name))
    return epath.Path(root)

  @property
  def metadata(self) -> tag_stats.DatasetMetadata:
    return self.info.metadata

  def start_report(self, skipped: images.SkipCounter | None = None,
                   **extra) -> None:
    """Records the options and what was skipped before any image is read."""
    report = self.metadata.report
    report.options = options_of(self.builder_config)
    if skipped is not None:
      report.skipped['metadata'] = skipped.as_dict()
      report.first_skipped['metadata'] = skipped.first_as_dict()
      skipped.report()
    report.extra.update(extra)

  def geometry(self) -> images.Geometry:
    """From the config's `resize` (longest side, padded to a square),
    `resize_shortest`, `pad_color` and `interpolation` where it has them."""
    c = self.builder_config
    longest = getattr(c, 'resize', 0) or None
    try:
      return images.Geometry(
          pad_color=tuple(getattr(c, 'pad_color', (255, 255, 255))),
          resize_longest=longest,
          resize_shortest=getattr(c, 'resize_shortest', 0) or None,
          square=bool(longest),
          interpolation=getattr(c, 'interpolation', 'area'))
    except ValueError as e:
      raise ValueError(f'{self.name} options: {e}') from None

  def split_fractions(self) -> dict[str, float]:
    return splits.parse_fractions(self.builder_config.split_fractions)

  def option_path(self, value: str, root: epath.Path,
                  option: str) -> epath.Path | None:
    """A file option: absolute, or relative to the raw folder, or to the
    working directory; None when empty."""
    if not value:
      return None
    for path in (epath.Path(value), root / value):
      if path.exists():
        return path
    raise FileNotFoundError(f'{self.name}: {option}={value!r} names no file '
                            f'(looked in the working directory and {root}).')

  def image_format(self) -> str:
    fmt = getattr(self.builder_config, 'image_format', 'png')
    if fmt not in ('png', 'jpeg'):
      raise ValueError(f'{self.name}: image_format={fmt!r}; valid: png, '
                       'jpeg.')
    return fmt

  def _generate_examples(self, *args, **kwargs):
    # The split generators of these builders return `generate(...)`.
    raise NotImplementedError

  def split_generators(self, records: dict[str, Sequence[Record]]):
    """{split: generator} for the splits that have records (TFDS cannot
    write an empty split); the empty ones are named in the report."""
    empty = [s for s in self.split_fractions() if not records.get(s)]
    if len(empty) == len(self.split_fractions()):
      raise ValueError(f'{self.name}: no usable record in the raw folder; '
                       'see the skip counts above.')
    for split in empty:
      logging.warning('%s: split %r has no records and is left out.',
                      self.name, split)
    self.metadata.report.extra['empty_splits'] = empty
    return {split: self.generate(split, records[split])
            for split in self.split_fractions() if split not in empty}

  def generate(self, split: str, records: Sequence[Record]
               ) -> Iterable[tuple[Any, dict[str, Any]]]:
    """(key, example) of each record whose image can be read."""
    counter = images.SkipCounter(split)
    train_labels = []
    sums, pixels = np.zeros(3), 0
    stored_all = images.store_all([r.source for r in records],
                                  self.geometry(), self.image_format())
    for record, stored in zip(records, stored_all):
      if isinstance(stored, images.ImageSkipped):
        counter.skip(stored.reason, skipped_what(record), stored.detail)
        continue
      if split == 'train':
        train_labels.append(record.labels)
        sums += stored.channel_sums
        pixels += stored.height * stored.width
      yield record.key, example_of(record, stored)
    self.finish_split(split, len(records), counter, train_labels, sums,
                      pixels)

  def finish_split(self, split: str, num_records: int,
                   counter: images.SkipCounter, train_labels, sums,
                   pixels: int) -> None:
    """The split's skip counts and examples in the report; for train, the
    label statistics and the mean pixel (`sums` / `pixels`)."""
    report = self.metadata.report
    report.skipped[split] = counter.as_dict()
    report.examples[split] = num_records - sum(counter.values())
    counter.report()
    if split == 'train':
      self.metadata.set_statistics(train_labels)
      if self.MEAN_PIXEL:
        report.extra['mean_pixel'] = [round(float(v), 4)
                                      for v in np.asarray(sums) /
                                      max(pixels, 1)]


def skipped_what(record: Record) -> object:
  """What a skipped record's log line names: its file, else its key."""
  return record.source if isinstance(record.source, str) else record.key


def example_of(record: Record, stored: images.StoredImage) -> dict[str, Any]:
  return {'image': stored.data, 'tags': np.asarray(record.labels, np.int64),
          **record.features}
