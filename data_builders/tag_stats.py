"""The metadata every jaxtag builder writes beside dataset_info.json.

- `selected_tags.csv` (tag_id,name,category,count) in label order; tag_id
  is the tag's id in its source, NO_TAG_ID (-1) when it has none;
- `label_stats.npz`: the train split's tag counts and sparse co-occurrence
  (format in jaxtag/data/tag_metadata.py, which also reads it);
- `build_report.json`: skip counts per reason, the options used, examples
  per split and builder-specific statistics (a mean pixel, duplicate-label
  candidates).

A builder gives `DatasetMetadata()` to its DatasetInfo, fills it while it
generates, and TFDS calls `save_metadata` at the end of the build.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse
import tensorflow_datasets as tfds
from etils import epath

from data_builders import files
from jaxtag.data import tag_metadata

BUILD_REPORT = 'build_report.json'

# Danbooru's tag categories (9 is the WD taggers' rating category).
GENERAL, ARTIST, COPYRIGHT, CHARACTER, META, RATING = (
    tag_metadata.GENERAL, tag_metadata.ARTIST, tag_metadata.COPYRIGHT,
    tag_metadata.CHARACTER, tag_metadata.META, tag_metadata.RATING)
CATEGORY_NAMES = {name: i for i, name in tag_metadata.CATEGORIES.items()}

TagRow = tag_metadata.TagRow
NO_TAG_ID = tag_metadata.NO_TAG_ID   # tag_id of a tag its source gives none
read_selected_tags = tag_metadata.read_selected_tags


def label_statistics(label_lists: Iterable[Sequence[int]], num_classes: int):
  """(counts [C], sparse co-occurrence [C, C] with diag == counts, images).

  Built from a sparse [N, C] indicator, so the cost is in the pairs that
  occur, never C * C.
  """
  indptr, indices = [0], []
  for labels in label_lists:
    labels = np.unique(np.asarray(labels, np.int64))
    if labels.size and (labels[0] < 0 or labels[-1] >= num_classes):
      raise ValueError(f'Label ids {labels.tolist()} outside 0..'
                       f'{num_classes - 1}.')
    indices.extend(labels.tolist())
    indptr.append(len(indices))
  num_images = len(indptr) - 1
  hot = scipy.sparse.csr_array(
      (np.ones(len(indices), np.int64), np.asarray(indices, np.int64),
       np.asarray(indptr, np.int64)), shape=(num_images, num_classes))
  cooccurrence = scipy.sparse.csr_array(hot.T @ hot)
  cooccurrence.sort_indices()
  counts = np.asarray(hot.sum(axis=0), np.int64).reshape(num_classes)
  return counts, cooccurrence, num_images


@dataclasses.dataclass
class BuildReport:
  """What a build did: the JSON stored as build_report.json."""
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  skipped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
  # The first files or rows skipped before any image is read, per reason
  # ({'metadata': {'bad_encoding': ['a.txt', ...]}}).
  first_skipped: dict[str, dict[str, list[str]]] = dataclasses.field(
      default_factory=dict)
  examples: dict[str, int] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True,
                      default=_jsonable) + '\n'

  @classmethod
  def from_json(cls, text: str) -> 'BuildReport':
    return cls(**json.loads(text))


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (set, frozenset)):
    return sorted(value)
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  return str(value)


class DatasetMetadata(tfds.core.Metadata):
  """selected_tags.csv, label_stats.npz and build_report.json.

  Fill `tags` (TagRow per label, count = train images), `set_statistics`
  from the train split's label lists, and `report`.
  """

  def __init__(self):
    self.tags: list[TagRow] = []
    self.counts = None
    self.cooccurrence = None
    self.num_images = 0
    self.report = BuildReport()

  def set_statistics(self, label_lists: Iterable[Sequence[int]]) -> None:
    """Train-split statistics; also writes the counts into `tags`."""
    counts, self.cooccurrence, self.num_images = label_statistics(
        label_lists, len(self.tags))
    self.counts = counts
    self.tags = [dataclasses.replace(t, count=int(n))
                 for t, n in zip(self.tags, counts)]

  # Built in memory and written whole through epath, so that a gs:// data_dir
  # works and the bytes do not depend on whether the target can seek.
  def save_metadata(self, data_dir):
    data_dir = epath.Path(data_dir)
    if self.counts is None:
      self.set_statistics([])
    (data_dir / tag_metadata.SELECTED_TAGS).write_bytes(
        tag_metadata.selected_tags_bytes(self.tags))
    (data_dir / tag_metadata.LABEL_STATS).write_bytes(
        tag_metadata.label_stats_bytes(self.counts, self.cooccurrence,
                                       self.num_images))
    (data_dir / BUILD_REPORT).write_text(self.report.to_json())

  def load_metadata(self, data_dir):
    data_dir = epath.Path(data_dir)
    if (data_dir / tag_metadata.SELECTED_TAGS).exists():
      self.tags = tag_metadata.read_selected_tags(
          data_dir / tag_metadata.SELECTED_TAGS)
    if (data_dir / tag_metadata.LABEL_STATS).exists():
      self.counts, self.cooccurrence, self.num_images = (
          tag_metadata.load_label_stats(data_dir / tag_metadata.LABEL_STATS))
    if (data_dir / BUILD_REPORT).exists():
      self.report = BuildReport.from_json(
          (data_dir / BUILD_REPORT).read_text())


def normalise_tag(name: str) -> str:
  """A tag as Danbooru writes it: trimmed, spaces as underscores, lower case.

  Kaomoji such as `^_^` or `>_<` keep their underscores; only spaces change.
  """
  return '_'.join(name.strip().lower().split())


def read_vocabulary(path: epath.PathLike) -> list[TagRow]:
  """A fixed vocabulary: a selected_tags.csv, or a tags.txt (one tag a
  line, DeepDanbooru style, category general)."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'Vocabulary file {path} does not exist.')
  text = files.read_text(path)
  if path.suffix == '.txt':
    names = [line.strip() for line in text.splitlines()]
    return [TagRow(NO_TAG_ID, n, GENERAL, 0) for n in names if n]
  return tag_metadata.parse_selected_tags(text, path)


def read_aliases(path: epath.PathLike) -> dict[str, str]:
  """{alias: canonical name} from a JSON object or a two-column CSV
  (`alias,canonical`, an optional header of those words); names are
  normalised with normalise_tag."""
  path = epath.Path(path)
  text = files.read_text(path)
  if path.suffix == '.json':
    pairs = json.loads(text).items()
  else:
    pairs = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
      if not row or (number == 1 and [c.strip() for c in row[:2]] == [
          'alias', 'canonical']):
        continue
      if len(row) != 2:
        raise ValueError(f'{path}, line {number}: write `alias,canonical`.')
      pairs.append(row)
  aliases = {normalise_tag(a): normalise_tag(c) for a, c in pairs}
  for alias, canonical in aliases.items():
    if canonical in aliases:
      raise ValueError(f'{path}: {alias!r} -> {canonical!r}, which is itself '
                       f'an alias of {aliases[canonical]!r}; map both to the '
                       'final name.')
  return aliases
