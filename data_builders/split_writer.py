"""The example loop shared by builders that read one image file per record.

Each record is (key, image path, other features). The image goes through
data_builders.images (decoded fully at build time; unreadable files are
skipped and counted by reason); the counts and the number written land in
the build report, and are printed when the split is done. The train
split's label statistics are computed from the examples actually written,
so an unreadable image leaves no trace in them.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from data_builders import deterministic_writer
from data_builders import images
from data_builders import tag_stats

# tfds.core.BuilderConfig's own fields: not build options.
_TFDS_CONFIG_FIELDS = frozenset(
    f.name for f in dataclasses.fields(tfds.core.BuilderConfig))


def build_options(config) -> dict[str, Any]:
  """A builder config's own option fields, for the build report."""
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name not in _TFDS_CONFIG_FIELDS}


def image_examples(records: Iterable[tuple[str, str, Mapping[str, Any]]],
                   geometry: images.Geometry, split: str,
                   metadata: tag_stats.DatasetMetadata):
  """(key, example) for each record whose image reads; `metadata.tags`
  must be set before the train split runs."""
  skipped = images.SkipCounter(split)
  written = 0
  train_labels = []
  for key, path, features in records:
    try:
      data, _ = images.stored_image(path, geometry)
    except images.ImageSkipped as e:
      skipped.skip(e.reason, key, e.detail)
      continue
    written += 1
    if split == 'train':
      train_labels.append(features.get('tags', ()))
    yield key, {'image': data, **features}
  if not written:
    raise ValueError(f'Split {split!r}: every image was skipped '
                     f'({skipped.summary()}); check the image files.')
  if split == 'train':
    metadata.set_statistics(train_labels)
  skipped.report()
  metadata.report.skipped[split] = skipped.as_dict()
  metadata.report.examples[split] = written


def begin(metadata: tag_stats.DatasetMetadata, tags, config,
          counts: Mapping[str, int] | None = None) -> None:
  """Sets the label rows and the build options, and reports the records
  skipped while reading the layout (before any image is read)."""
  metadata.tags = list(tags)
  metadata.report.options = build_options(config)
  scan = images.SkipCounter('scan')
  scan.update({reason: n for reason, n in (counts or {}).items() if n})
  scan.report()
  metadata.report.skipped['scan'] = scan.as_dict()


def manual_root(dl_manager) -> str:
  """--manual_dir as a str path; a clear error when it is not a folder."""
  root = str(dl_manager.manual_dir) if dl_manager.manual_dir else ''
  if not root or not os.path.isdir(root):
    raise FileNotFoundError(
        f'manual_dir {root!r} is not a folder. Pass the dataset folder with '
        '`--manual_dir DIR` (python -m jaxtag.data.build) or '
        'config.dataset.manual_dir.')
  return root


class ImageRecordBuilder(tfds.core.GeneratorBasedBuilder,
                         skip_registration=True):
  """A builder whose `_split_generators` returns `self._splits({split:
  records})`; shards are written byte-identically in any process.

  A subclass gives BUILDER_CONFIGS (one named 'default'), `_features()`
  ({name: feature}, 'image' included) and `_split_generators`; its module
  docstring is the dataset's description.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  DEFAULT_CONFIG_NAME = 'default'

  def _features(self) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=sys.modules[type(self).__module__].__doc__,
        features=tfds.features.FeaturesDict(self._features()),
        metadata=tag_stats.DatasetMetadata())

  def _splits(self, records_by_split: Mapping[str, list]) -> dict:
    """Example generators of the splits that have records; an empty split
    (a small class-folder set cut in fractions) is left out and reported."""
    empty = sorted(s for s, r in records_by_split.items() if not r)
    if empty:
      logging.warning('%s: no records for split(s) %s; left out.',
                      self.name, ', '.join(empty))
      self.info.metadata.report.extra['empty_splits'] = empty
    return {split: self._generate_examples(split, records)
            for split, records in records_by_split.items() if records}

  def _example_writer(self):
    return deterministic_writer.DeterministicExampleWriter(
        file_format=self.info.file_format)

  def _geometry(self) -> images.Geometry:
    return images.Geometry(pad_color=tuple(
        getattr(self.builder_config, 'pad_color', (255, 255, 255))))

  def _generate_examples(self, split, records):
    yield from image_examples(records, self._geometry(), split,
                              self.info.metadata)
