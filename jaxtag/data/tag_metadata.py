"""The tag list and train-split label statistics written with a dataset.

Two files sit beside a dataset's dataset_info.json:
- `selected_tags.csv`: `tag_id,name,category,count`, one row per label in
  label order (the WD-tagger layout). `read_selected_tags` also reads the
  community files of that name, which write ids and counts as floats.
  `tag_id` is metadata, never the label index (that is the row's position):
  the tag's id in its source (Danbooru's tag id; COCO's category id), or
  -1 (`NO_TAG_ID`) when the source has none (synthetic data, tag folders,
  class folders, rating rows). Builds before tag ids were kept numbered
  the rows 0..C-1; a file whose ids are exactly that is read as having
  none, so an old dataset loads with -1 ids rather than invented ones.
- `label_stats.npz`: the train split's `counts` [C], `num_images` and the
  co-occurrence matrix stored sparse (`cooccurrence_data`, `_indices`,
  `_indptr`, `_shape`: CSR of the pairs that co-occur), so 10,000 tags cost
  memory in proportion to the pairs seen, not C * C.
"""
from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
import scipy.sparse
from absl import logging
from etils import epath

LABEL_STATS = 'label_stats.npz'
SELECTED_TAGS = 'selected_tags.csv'
_HEADER = ('tag_id', 'name', 'category', 'count')
# A tag without an id in its source (no Danbooru tag has a negative id).
NO_TAG_ID = -1

# Danbooru's tag categories by id, as selected_tags.csv writes them (9 is the
# WD taggers' rating category).
GENERAL, ARTIST, COPYRIGHT, CHARACTER, META, RATING = 0, 1, 3, 4, 5, 9
CATEGORIES = {GENERAL: 'general', ARTIST: 'artist', COPYRIGHT: 'copyright',
              CHARACTER: 'character', META: 'meta', RATING: 'rating'}


@dataclasses.dataclass
class TagMetadata:
  names: list[str]
  categories: np.ndarray     # [C] Danbooru category: 0 general, 4 character, 9 rating
  counts: np.ndarray         # [C] train images per tag
  # [C, C] scipy.sparse.csr_array, train images with both tags; diag == counts.
  cooccurrence: scipy.sparse.csr_array
  num_images: int
  # [C] the tags' ids in their source (Danbooru's), NO_TAG_ID where none;
  # metadata only. None: no tag has one.
  tag_ids: np.ndarray | None = None

  def __post_init__(self):
    if self.tag_ids is None:
      self.tag_ids = np.full(len(self.names), NO_TAG_ID, np.int64)
    self.tag_ids = np.asarray(self.tag_ids, np.int64)
    if self.tag_ids.shape != (len(self.names),):
      raise ValueError(f'{self.tag_ids.shape[0]} tag ids for '
                       f'{len(self.names)} tags.')

  def cooccurrence_dense(self) -> np.ndarray:
    """int64 [C, C]; only for vocabularies small enough to hold densely."""
    return np.asarray(scipy.sparse.csr_array(self.cooccurrence).toarray(),
                      np.int64)


@dataclasses.dataclass(frozen=True)
class TagRow:
  tag_id: int
  name: str
  category: int
  count: int


def _integer(value: str, path, line: int, column: str,
             empty: int = 0) -> int:
  """'470575', '470575.0' or '' (-> empty) as an int."""
  value = value.strip()
  if not value:
    return empty
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f'{path}, line {line}: {column} {value!r} is not a '
                     'number.') from None
  if number != int(number):
    raise ValueError(f'{path}, line {line}: {column} {value!r} is not a '
                     'whole number.')
  return int(number)


def parse_selected_tags(text: str, path='selected_tags.csv') -> list[TagRow]:
  """The rows of a selected_tags.csv, in file order (= label order).

  Reads jaxtag's own files and the WD-tagger ones, whose tag_id and count
  are floats ("470575.0") and whose names hold parentheses, colons and
  kaomoji; names are kept exactly as written. An empty or missing tag_id
  is NO_TAG_ID, and so is every id of a file numbered 0..C-1 (see
  `known_tag_ids`).
  """
  reader = csv.DictReader(io.StringIO(text.lstrip('\ufeff'), newline=''))
  missing = [c for c in ('name', 'category') if c not in (reader.fieldnames
                                                          or ())]
  if missing:
    raise ValueError(f'{path} lacks the column(s) {", ".join(missing)}; a '
                     'selected_tags.csv has the header '
                     f'{",".join(_HEADER)}.')
  rows = []
  for line, row in enumerate(reader, start=2):
    name = row['name']
    if name is None or name == '':
      raise ValueError(f'{path}, line {line}: empty tag name.')
    rows.append(TagRow(
        tag_id=_integer(row.get('tag_id') or '', path, line, 'tag_id',
                        empty=NO_TAG_ID),
        name=name,
        category=_integer(row['category'] or '', path, line, 'category'),
        count=_integer(row.get('count') or '', path, line, 'count')))
  ids = known_tag_ids([r.tag_id for r in rows])
  return [dataclasses.replace(r, tag_id=int(i)) for r, i in zip(rows, ids)]


def known_tag_ids(ids) -> np.ndarray:
  """int64 ids, all NO_TAG_ID when they are exactly 0..C-1.

  jaxtag builds (and bundles) written before tag ids were kept numbered
  their rows so; no source gives its tags those ids in label order, so such
  a column says nothing about the tags.
  """
  ids = np.asarray(ids, np.int64).reshape(-1)
  if ids.size and np.array_equal(ids, np.arange(ids.size)):
    return np.full(ids.size, NO_TAG_ID, np.int64)
  return ids


def read_selected_tags(path: epath.PathLike) -> list[TagRow]:
  path = epath.Path(path)
  return parse_selected_tags(path.read_text(encoding='utf-8'), path)


def selected_tags_bytes(rows: list[TagRow]) -> bytes:
  table = io.StringIO(newline='')
  writer = csv.writer(table, lineterminator='\n')
  writer.writerow(_HEADER)
  for r in rows:
    writer.writerow([int(r.tag_id), r.name, int(r.category), int(r.count)])
  return table.getvalue().encode('utf-8')


def label_stats_bytes(counts, cooccurrence, num_images: int) -> bytes:
  """label_stats.npz of counts [C] and a (sparse or dense) [C, C] matrix."""
  matrix = scipy.sparse.csr_array(cooccurrence, dtype=np.int64)
  matrix.sum_duplicates()
  matrix.sort_indices()
  stats = io.BytesIO()
  np.savez(stats, counts=np.asarray(counts, np.int64),
           num_images=np.int64(num_images),
           cooccurrence_data=matrix.data.astype(np.int64),
           cooccurrence_indices=matrix.indices.astype(np.int64),
           cooccurrence_indptr=matrix.indptr.astype(np.int64),
           cooccurrence_shape=np.asarray(matrix.shape, np.int64))
  return stats.getvalue()


def load_label_stats(path: epath.PathLike):
  """(counts [C], sparse cooccurrence [C, C], num_images) of an npz."""
  path = epath.Path(path)
  # np.load seeks inside the zip; a bucket file is read whole first.
  with np.load(io.BytesIO(path.read_bytes())) as stats:
    if 'cooccurrence_data' in stats:
      matrix = scipy.sparse.csr_array(
          (stats['cooccurrence_data'], stats['cooccurrence_indices'],
           stats['cooccurrence_indptr']),
          shape=tuple(stats['cooccurrence_shape']))
    elif 'cooccurrence' in stats:
      logging.warning('%s holds a dense co-occurrence matrix (an older '
                      'build); rebuild the dataset to store it sparse.', path)
      matrix = scipy.sparse.csr_array(stats['cooccurrence'].astype(np.int64))
    else:
      raise ValueError(f'{path} has no co-occurrence statistics; rebuild the '
                       'dataset with `python -m jaxtag.data.build`.')
    return stats['counts'], matrix, int(stats['num_images'])


def load_tag_metadata(data_dir: epath.PathLike) -> TagMetadata:
  csv_path = epath.Path(data_dir) / SELECTED_TAGS
  npz_path = epath.Path(data_dir) / LABEL_STATS
  for path in (csv_path, npz_path):
    if not path.exists():
      raise FileNotFoundError(
          f'{path} is missing: the dataset in {data_dir} was not built by a '
          'jaxtag builder or was built incompletely. Rebuild it with '
          '`python -m jaxtag.data.build NAME/CONFIG --data_dir DIR`.')
  rows = read_selected_tags(csv_path)
  counts, matrix, num_images = load_label_stats(npz_path)
  if matrix.shape != (len(rows), len(rows)) or len(counts) != len(rows):
    raise ValueError(f'{npz_path} describes {len(counts)} labels but '
                     f'{csv_path} lists {len(rows)}; rebuild the dataset.')
  return TagMetadata(
      names=[r.name for r in rows],
      categories=np.array([r.category for r in rows], np.int64),
      counts=counts, cooccurrence=matrix, num_images=num_images,
      tag_ids=np.array([r.tag_id for r in rows], np.int64))
