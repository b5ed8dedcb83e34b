"""danbooru: Danbooru posts as a tagger dataset, from the layouts people hold.

  python -m jaxtag.data.build danbooru --manual_dir DUMP --data_dir DIR \
      [--set resize=512] [--set num_general=5000] ...

Reads, in place and never extracted:
- images from tar shards (`original/*.tar`, members `<id>.<ext>`), from a
  gwern folder tree (`original/` or `512px/`), or from TFRecord files in the
  WD tagger layout (`record_shards_train/`, with its selected_tags.csv);
- post metadata from parquet, SQLite or JSON Lines files with Danbooru's
  column names (both gwern schemas: a `tags` list, or `tag_string_*`).
Writes `tags` (the rating as one of four `rating:*` tags, then the top tags
of each chosen category by train count), `id` and the image. Options and
layouts: README.md beside this file.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os

import tensorflow_datasets as tfds
from etils import epath

from data_builders import beam_build
from data_builders import images
from data_builders import manual
from data_builders import splits
from data_builders import tag_stats
from data_builders.danbooru import metadata
from data_builders.danbooru import tar_index
from data_builders.danbooru import tfrecord

# Danbooru category ids of the tag_string_* fields.
_TAG_STRINGS = {'tag_string_general': tag_stats.GENERAL,
                'tag_string_artist': tag_stats.ARTIST,
                'tag_string_copyright': tag_stats.COPYRIGHT,
                'tag_string_character': tag_stats.CHARACTER,
                'tag_string_meta': tag_stats.META}
_SELECTABLE = ('general', 'character', 'copyright', 'artist', 'meta')
# The four ratings in label order. Newer dumps rate g/s/q/e; older ones
# s/q/e, where s ("safe") covered what is now g and s.
RATINGS = ('general', 'sensitive', 'questionable', 'explicit')
IMAGE_EXTENSIONS = frozenset({'jpg', 'jpeg', 'png', 'gif', 'webp', 'bmp'})
IMAGE_SOURCES = ('auto', 'tar', 'original', '512px', 'tfrecord')
# The WD layout's record folders and the splits they hold.
TFRECORD_FOLDERS = {'train': 'record_shards_train',
                    'validation': 'record_shards_val',
                    'test': 'record_shards_test'}
STORED_FORMATS = ('jpeg', 'png', 'webp')


@dataclasses.dataclass
class DanbooruConfig(tfds.core.BuilderConfig):
  images: str = 'auto'              # auto | tar | original | 512px | tfrecord
  tar_glob: str = 'original/*.tar,recent/*.tar,updates/*/*.tar,images/*.tar'
  metadata_dir: str = 'metadata'    # a folder, or one parquet/SQLite file
  metadata_table: str = ''          # SQLite: the posts table (default: found)
  categories: tuple[str, ...] = ('general', 'character')
  num_general: int = 5000           # top-K by train count, per category
  num_character: int = 2000
  num_other: int = 1000             # artist, copyright and meta, each
  min_count: int = 1                # train images a tag needs
  min_count_character: int = 0      # the same for characters; 0: min_count
  min_general_tags: int = 0         # posts with fewer general tags are left out
  ratings: bool = True              # the rating as four rating:* tags
  vocabulary: str = ''              # a selected_tags.csv fixing the labels
  resize: int = 0                   # longest side, padded to a square; 0: off
  max_side: int = 0                 # longest side shrunk to at most N; 0: off
  pad_color: tuple[int, ...] = (255, 255, 255)
  interpolation: str = 'area'       # 'area' | 'bilinear'
  image_format: str = 'jpeg'        # re-encoded images: jpeg | png | webp
  split_fractions: str = 'train=0.9,validation=0.05,test=0.05'
  split_ranges: str = ''            # e.g. train=0-899,validation=950-999


class SkipRow(Exception):
  """A metadata row that gives no example; the argument is the reason."""


@dataclasses.dataclass
class Post:
  id: int
  rating: str | None                # one letter, g/s/q/e
  file_ext: str
  tags: list[tuple[int, str]]       # (category, name)


def _flag(value) -> bool:
  if isinstance(value, str):
    return value.strip().lower() in ('true', 't', '1', 'yes')
  return bool(value)


def post_id(row: dict) -> int:
  """The row's id; SkipRow('no_id' or 'bad_id') when it has none."""
  raw_id = row.get('id')
  if raw_id is None or str(raw_id).strip() == '':
    raise SkipRow('no_id')
  try:
    return int(str(raw_id).strip())
  except ValueError:
    raise SkipRow('bad_id') from None


def parse_post(row: dict) -> Post:
  """A Post of either schema; SkipRow(reason) for rows to leave out."""
  number = post_id(row)
  if _flag(row.get('is_deleted', False)):
    raise SkipRow('deleted')
  if _flag(row.get('is_banned', False)):
    raise SkipRow('banned')
  rating = str(row.get('rating') or '').strip().lower()[:1] or None
  tags = []
  if isinstance(row.get('tags'), list):     # 2017-2020
    for tag in row['tags']:
      try:
        tags.append((int(str(tag['category'])), str(tag['name'])))
      except (KeyError, TypeError, ValueError):
        continue
  else:                                      # 2021+
    for field, category in _TAG_STRINGS.items():
      tags.extend((category, name) for name in
                  str(row.get(field) or '').split())
  ext = str(row.get('file_ext') or '').strip().lower().lstrip('.')
  return Post(number, rating, ext, tags)


def parse_split_ranges(text: str) -> dict[str, list[tuple[int, int]]]:
  """'train=0-899,validation=950-999' -> {split: [(low, high), ...]}: the
  ranges of id % 1000 (inclusive) of each split; '+' joins ranges."""
  out = {}
  taken = set()
  for part in text.split(','):
    name, sep, ranges = part.partition('=')
    name = name.strip()
    try:
      if not sep or not name:
        raise ValueError
      spans = []
      for span in ranges.split('+'):
        low, dash, high = span.strip().partition('-')
        low, high = int(low), int(high) if dash else int(low)
        if not 0 <= low <= high <= 999:
          raise ValueError
        spans.append((low, high))
    except ValueError:
      raise ValueError(f'split_ranges = {text!r}: write ranges of id % 1000 '
                       'as train=0-899,validation=950-999 (inclusive, '
                       'within 0-999, joined by + for several).') from None
    values = {v for low, high in spans for v in range(low, high + 1)}
    if values & taken or name in out:
      raise ValueError(f'split_ranges = {text!r}: the ranges overlap.')
    taken |= values
    out[name] = spans
  return out


def split_of_id(number: int, ranges: dict[str, list[tuple[int, int]]]):
  """The split whose ranges hold number % 1000, or None."""
  rest = number % 1000
  for name, spans in ranges.items():
    if any(low <= rest <= high for low, high in spans):
      return name
  return None


def _rating_names(posts: list[Post]) -> dict[str, str]:
  """Rating letter -> rating name; 's' is 'general' in a dump without 'g'."""
  has_g = any(p.rating == 'g' for p in posts)
  return {'g': 'general', 's': 'sensitive' if has_g else 'general',
          'q': 'questionable', 'e': 'explicit'}


def bucket_path(root: epath.Path, tree: str, post: Post) -> epath.Path:
  """original/<id % 1000 as 4 digits>/<id>.<ext>, or 512px/.../<id>.jpg."""
  ext = 'jpg' if tree == '512px' else post.file_ext
  return root / tree / f'{post.id % 1000:04d}' / f'{post.id}.{ext}'


def _row_tag_ids(row: dict, ids: dict[str, int]) -> None:
  """Adds the ids a 2017-2020 row's `tags` list carries."""
  for tag in row.get('tags') or ():
    try:
      ids.setdefault(str(tag['name']), int(str(tag['id'])))
    except (KeyError, TypeError, ValueError):
      continue


def tar_shards(root: epath.Path, patterns: str) -> list[epath.Path]:
  """The shards the comma-separated glob patterns find, pattern by pattern
  and by name within one."""
  shards = []
  for pattern in (p.strip() for p in patterns.split(',')):
    if pattern:
      shards += [p for p in sorted(root.glob(pattern))
                 if p.is_file() and p not in shards]
  return shards


def tar_members(shards, counter: images.SkipCounter
                ) -> dict[int, tar_index.Member]:
  """{post id: member} of the shards' image members named <id>.<ext>.

  Counts `not_image` (another extension), `bad_member_name`, and
  `duplicate_member` (an id met again: the first shard keeps it), and the
  faults of indexing (`bad_header`, `truncated`).
  """
  found = {}
  for shard in shards:
    index = tar_index.load(shard)
    for reason, n in index.faults.items():
      counter[reason] += n
    for name, offset, size in index.members:
      stem, _, ext = name.rsplit('/', 1)[-1].rpartition('.')
      where = f'{shard.name}:{name}'
      if ext.lower() not in IMAGE_EXTENSIONS:
        counter.skip('not_image', where)
        continue
      try:
        number = int(stem)
      except ValueError:
        counter.skip('bad_member_name', where)
        continue
      if number in found:
        counter.skip('duplicate_member', where)
        continue
      found[number] = index.member(offset, size)
  return found


class Danbooru(beam_build.BeamBuilder, manual.ManualBuilder):
  """Danbooru posts with their general, character and rating tags."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [DanbooruConfig(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS.format(name='danbooru')

  def _info(self):
    return self.dataset_info(__doc__)

  # --- options ----------------------------------------------------------------

  def _check_options(self):
    c = self.builder_config
    if c.images not in IMAGE_SOURCES:
      raise ValueError(f'danbooru: images={c.images!r}; valid: '
                       f'{", ".join(IMAGE_SOURCES)}.')
    unknown = sorted(set(c.categories) - set(_SELECTABLE))
    if unknown:
      raise ValueError(f'danbooru: categories {unknown} unknown; valid: '
                       f'{", ".join(_SELECTABLE)}.')
    if c.resize and c.max_side:
      raise ValueError('danbooru: give resize (padded square) or max_side '
                       '(aspect kept), not both.')
    if c.split_ranges:
      parse_split_ranges(c.split_ranges)

  def image_format(self) -> str:
    fmt = self.builder_config.image_format
    if fmt not in STORED_FORMATS:
      raise ValueError(f'danbooru: image_format={fmt!r}; valid: '
                       f'{", ".join(STORED_FORMATS)}.')
    return fmt

  def geometry(self) -> images.Geometry:
    geometry = super().geometry()
    if self.builder_config.max_side:
      geometry = dataclasses.replace(geometry,
                                     max_side=self.builder_config.max_side)
    return geometry

  def split_fractions(self) -> dict[str, float]:
    """The splits in order; by id ranges their share of ids is shown."""
    c = self.builder_config
    if c.split_ranges:
      return {name: sum(h - l + 1 for l, h in spans) / 1000
              for name, spans in parse_split_ranges(c.split_ranges).items()}
    if getattr(self, '_folder_splits', None):
      return dict.fromkeys(self._folder_splits, 0.0)
    return super().split_fractions()

  def _image_source(self, root: epath.Path) -> str:
    c = self.builder_config
    source = c.images
    if source == 'auto':
      if any((root / f).is_dir() for f in TFRECORD_FOLDERS.values()):
        source = 'tfrecord'
      elif tar_shards(root, c.tar_glob):
        source = 'tar'
      else:
        source = 'original' if (root / 'original').exists() else '512px'
    if source == 'tar':
      if not tar_shards(root, c.tar_glob):
        raise FileNotFoundError(f'danbooru: no tar shard in {root} matches '
                                f'tar_glob={c.tar_glob!r}.')
    elif source == 'tfrecord':
      if not any((root / f).is_dir() for f in TFRECORD_FOLDERS.values()):
        raise FileNotFoundError(
            f'danbooru: {root} has none of '
            f'{", ".join(TFRECORD_FOLDERS.values())} (images=tfrecord).')
    elif not (root / source).exists():
      raise FileNotFoundError(
          f'danbooru: {root} holds no images: give tar shards '
          f'(tar_glob={c.tar_glob!r}), original/ or 512px/ folders, or '
          'record_shards_train/ (option `images`).')
    return source

  # --- the build --------------------------------------------------------------

  def _split_generators(self, dl_manager):
    self._check_options()
    root = self.manual_root(dl_manager)
    source = self._image_source(root)
    if source == 'tfrecord':
      records = self._tfrecord_records(root)
    else:
      records = self._post_records(root, source)
    return self.split_generators(records)

  def _assign(self, number: int, ranges, fractions, folder_split=None):
    if ranges:
      return split_of_id(number, ranges)
    return folder_split or splits.assign_split(number, fractions)

  def _post_records(self, root, source):
    """{split: [Record]} of metadata posts with images in tars or folders."""
    c = self.builder_config
    skipped = images.SkipCounter('metadata')
    posts, all_ids, tag_ids = self._read_posts(root, skipped,
                                               need_ext=source != 'tar')
    extra = {'images_tree': source}
    if source == 'tar':
      shards = tar_shards(root, c.tar_glob)
      tar_skipped = images.SkipCounter('tar')
      members = tar_members(shards, tar_skipped)
      for number in sorted(members.keys() - all_ids):
        tar_skipped.skip('not_in_metadata', number)
      extra.update(tar_shards=len(shards))
      self.metadata.report.skipped['tar'] = tar_skipped.as_dict()
      tar_skipped.report()
      located = []
      for post in posts:
        if post.id in members:
          located.append((post, members[post.id]))
        else:
          skipped.skip('missing_file', post.id)
    else:
      located = []
      for post in posts:
        path = bucket_path(root, source, post)
        if path.exists():
          located.append((post, os.fspath(path)))
        else:
          skipped.skip('missing_file', path)
    ranges = parse_split_ranges(c.split_ranges) if c.split_ranges else None
    fractions = self.split_fractions()
    by_split = collections.defaultdict(list)
    for post, image in located:
      general = sum(1 for cat, _ in post.tags if cat == tag_stats.GENERAL)
      if general < c.min_general_tags:
        skipped.skip('few_general_tags', post.id)
        continue
      split = self._assign(post.id, ranges, fractions)
      if split is None:
        skipped.skip('outside_split_ranges', post.id)
        continue
      by_split[split].append((post, image))
    ratings = _rating_names([p for p, _ in located])
    vocabulary_path = self.option_path(c.vocabulary, root, 'vocabulary')
    if vocabulary_path:
      label_of = self._fixed_vocabulary(vocabulary_path, tag_ids)
    else:
      label_of = self._top_k_vocabulary(
          [p for p, _ in by_split['train']], ratings, tag_ids)
    dropped = collections.Counter()
    records = collections.defaultdict(list)
    for split in fractions:
      for post, image in by_split[split]:
        labels = self._labels(post, ratings, label_of, dropped)
        records[split].append(manual.Record(post.id, image, labels,
                                            {'id': post.id}))
    self.start_report(
        skipped, **extra, rating_letters=ratings,
        vocabulary_sha256=hashlib.sha256(vocabulary_path.read_bytes())
        .hexdigest() if vocabulary_path else None,
        tags_outside_vocabulary=sum(dropped.values()),
        posts_per_split={s: len(by_split[s]) for s in fractions})
    return records

  def _read_posts(self, root, skipped, need_ext: bool):
    """([Post] in metadata order, every id the metadata names, tag ids).

    Rows are streamed and only what a Post keeps stays in memory.
    """
    c = self.builder_config
    folder = root / c.metadata_dir
    if not folder.exists():
      raise FileNotFoundError(f'danbooru: {folder} does not exist (option '
                              '`metadata_dir`: a folder of parquet, SQLite '
                              'or JSON Lines files, or one such file).')
    post_files, tag_files = metadata.metadata_sources(folder)
    if not post_files:
      raise FileNotFoundError(f'danbooru: no metadata in {folder}: '
                              '*.parquet, *.db/*.sqlite or *.json(l) '
                              '(option `metadata_dir`).')
    posts, all_ids = [], set()
    tag_ids = metadata.tag_ids(tag_files, post_files)
    for row in metadata.read_rows(post_files, skipped, c.metadata_table):
      _row_tag_ids(row, tag_ids)
      try:
        number = post_id(row)
      except SkipRow as e:
        skipped.skip(str(e), row.get('id'))
        continue
      if number in all_ids:  # the first row of an id is the one kept
        skipped.skip('duplicate_id', number)
        continue
      all_ids.add(number)
      try:
        post = parse_post(row)
      except SkipRow as e:
        skipped.skip(str(e), number)
        continue
      if (need_ext or post.file_ext) and post.file_ext not in IMAGE_EXTENSIONS:
        skipped.skip('not_image', post.id, post.file_ext)
        continue
      posts.append(post)
    return posts, all_ids, tag_ids

  def _tfrecord_records(self, root):
    """{split: [Record]} of TFRecord files in the WD layout; the labels are
    their label_indexes, rows of the selected_tags.csv beside them."""
    c = self.builder_config
    vocabulary_path = self.option_path(c.vocabulary or 'selected_tags.csv',
                                       root, 'vocabulary')
    rows = tag_stats.read_vocabulary(vocabulary_path)
    # ratings=false drops the rating rows; the other labels move up.
    kept = [i for i, r in enumerate(rows)
            if c.ratings or r.category != tag_stats.RATING]
    new_label = {old: new for new, old in enumerate(kept)}
    self.metadata.tags = [dataclasses.replace(rows[i], count=0) for i in kept]
    general_rows = {i for i, r in enumerate(rows)
                    if r.category == tag_stats.GENERAL}
    ranges = parse_split_ranges(c.split_ranges) if c.split_ranges else None
    folders = {s: root / f for s, f in TFRECORD_FOLDERS.items()
               if (root / f).is_dir()}
    if not ranges:
      self._folder_splits = list(folders)
    skipped = images.SkipCounter('tfrecord')
    records = collections.defaultdict(list)
    seen = set()
    files = 0
    for folder_split, folder in folders.items():
      for path in sorted(p for p in folder.iterdir() if p.is_file()):
        files += 1
        index = tfrecord.load(path)
        for reason, n in index.faults.items():
          skipped[reason] += n
        for i in range(len(index)):
          number = int(index.ids[i])
          labels = index.labels_of(i)
          if any(not 0 <= label < len(rows) for label in labels):
            raise ValueError(
                f'danbooru: {path}, image_id {number}: label_indexes '
                f'{labels} go past the {len(rows)} rows of '
                f'{vocabulary_path}; give the selected_tags.csv these '
                'records were written with (option `vocabulary`).')
          if number in seen:
            skipped.skip('duplicate_id', number)
            continue
          seen.add(number)
          if sum(1 for v in labels if v in general_rows) < c.min_general_tags:
            skipped.skip('few_general_tags', number)
            continue
          split = self._assign(number, ranges, {}, folder_split)
          if split is None:
            skipped.skip('outside_split_ranges', number)
            continue
          records[split].append(manual.Record(
              number, index.image(i),
              sorted({new_label[v] for v in labels if v in new_label}),
              {'id': number}))
    self.metadata.report.skipped['tfrecord'] = skipped.as_dict()
    skipped.report()
    self.start_report(
        None, images_tree='tfrecord', tfrecord_files=files,
        vocabulary_sha256=hashlib.sha256(vocabulary_path.read_bytes())
        .hexdigest(),
        posts_per_split={s: len(r) for s, r in records.items()})
    return records

  # --- labels -----------------------------------------------------------------

  def _top_k_vocabulary(self, train_posts, ratings, tag_ids):
    """{(category, name): label} and the metadata's tag rows: the four
    ratings, then per chosen category its top-K train tags."""
    c = self.builder_config
    rows = []
    if c.ratings:
      # Ratings are no Danbooru tags: they have no id.
      rows += [tag_stats.TagRow(tag_stats.NO_TAG_ID, f'rating:{r}',
                                tag_stats.RATING, 0)
               for r in RATINGS]
    counts = collections.Counter(t for p in train_posts for t in set(p.tags))
    limits = {'general': c.num_general, 'character': c.num_character}
    minimum = {'character': c.min_count_character or c.min_count}
    for name in c.categories:
      category = tag_stats.CATEGORY_NAMES[name]
      least = minimum.get(name, c.min_count)
      ranked = sorted(((n, tag) for (cat, tag), n in counts.items()
                       if cat == category and n >= least),
                      key=lambda x: (-x[0], x[1]))
      rows += [tag_stats.TagRow(tag_ids.get(tag, tag_stats.NO_TAG_ID), tag,
                                category, 0)
               for _, tag in ranked[:limits.get(name, c.num_other)]]
    self.metadata.tags = rows
    return {(r.category, r.name): i for i, r in enumerate(rows)}

  def _fixed_vocabulary(self, path, tag_ids):
    """{(category, name): label} from a selected_tags.csv, in its order;
    category-9 rows named 'general' or 'rating:general' are the ratings.
    A row's tag_id is the file's, else the metadata's (ratings: none)."""
    rows = tag_stats.read_vocabulary(path)
    self.metadata.tags = [dataclasses.replace(
        r, count=0, tag_id=r.tag_id if r.tag_id != tag_stats.NO_TAG_ID
        or r.category == tag_stats.RATING
        else tag_ids.get(r.name, tag_stats.NO_TAG_ID)) for r in rows]
    label_of = {}
    for i, r in enumerate(rows):
      if r.category == tag_stats.RATING:
        label_of[(tag_stats.RATING, r.name.removeprefix('rating:'))] = i
      else:
        label_of.setdefault((r.category, r.name), i)
        label_of.setdefault((None, r.name), i)
    return label_of

  def _labels(self, post, ratings, label_of, dropped) -> list[int]:
    labels = set()
    if self.builder_config.ratings and post.rating in ratings:
      key = (tag_stats.RATING, ratings[post.rating])
      if key in label_of:
        labels.add(label_of[key])
      elif label_of.get((tag_stats.RATING, f'rating:{key[1]}')) is not None:
        labels.add(label_of[(tag_stats.RATING, f'rating:{key[1]}')])
    for category, name in post.tags:
      label = label_of.get((category, name), label_of.get((None, name)))
      if label is None:
        dropped[name] += 1
      else:
        labels.add(label)
    return sorted(labels)
