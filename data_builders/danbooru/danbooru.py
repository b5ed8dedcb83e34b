"""danbooru: a gwern Danbooru20xx dump (or a slice of one) as a tagger dataset.

  python -m jaxtag.data.build danbooru --manual_dir DUMP --data_dir DIR \
      [--set resize=512] [--set num_general=5000] ...

Reads both metadata schemas (2017-2020: a `tags` list, every value a
string; 2021+: `tag_string_*`), images from `original/` or `512px/`, and
writes `tags` (the rating as one of four `rating:*` tags, then the top
general and character tags by train count), `id`, and the image. Options
and layout: README.md beside this file.
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath

from data_builders import files
from data_builders import images
from data_builders import manual
from data_builders import splits
from data_builders import tag_stats

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


@dataclasses.dataclass
class DanbooruConfig(tfds.core.BuilderConfig):
  images: str = 'auto'              # 'original' | '512px' | 'auto'
  metadata_dir: str = 'metadata'
  categories: tuple[str, ...] = ('general', 'character')
  num_general: int = 5000           # top-K by train count, per category
  num_character: int = 2000
  num_other: int = 1000             # artist, copyright and meta, each
  min_count: int = 1
  ratings: bool = True              # the rating as four rating:* tags
  vocabulary: str = ''              # a selected_tags.csv fixing the labels
  resize: int = 0                   # longest side, padded to a square; 0: off
  pad_color: tuple[int, ...] = (255, 255, 255)
  interpolation: str = 'area'       # 'area' | 'bilinear'
  image_format: str = 'jpeg'        # re-encoded images: 'jpeg' | 'png'
  split_fractions: str = 'train=0.9,validation=0.05,test=0.05'


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


def parse_post(row: dict) -> Post:
  """A Post of either schema; SkipRow(reason) for rows to leave out."""
  raw_id = row.get('id')
  if raw_id is None or str(raw_id).strip() == '':
    raise SkipRow('no_id')
  try:
    post_id = int(str(raw_id).strip())
  except ValueError:
    raise SkipRow('bad_id') from None
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
  return Post(post_id, rating, ext, tags)


def _rating_names(posts: list[Post]) -> dict[str, str]:
  """Rating letter -> rating name; 's' is 'general' in a dump without 'g'."""
  has_g = any(p.rating == 'g' for p in posts)
  return {'g': 'general', 's': 'sensitive' if has_g else 'general',
          'q': 'questionable', 'e': 'explicit'}


def bucket_path(root: epath.Path, tree: str, post: Post) -> epath.Path:
  """original/<id % 1000 as 4 digits>/<id>.<ext>, or 512px/.../<id>.jpg."""
  ext = 'jpg' if tree == '512px' else post.file_ext
  return root / tree / f'{post.id % 1000:04d}' / f'{post.id}.{ext}'


def _metadata_files(folder: epath.Path) -> tuple[list, list]:
  """(post files, tag files): posts*.json of 2021+ dumps, else every
  *.json(l) but tags*.json."""
  found = sorted(p for p in folder.glob('*.json*') if p.is_file())
  tag_files = [p for p in found if p.name.startswith('tags')]
  posts = [p for p in found if p.name.startswith('posts')] or [
      p for p in found if p not in tag_files]
  return posts, tag_files


def _read_rows(paths, counter: images.SkipCounter) -> Iterator[dict]:
  """The JSON objects of JSON-lines files, a line at a time (a dump is
  gigabytes): UTF-8, a BOM dropped; a line that is not UTF-8 is counted
  as bad_encoding, a file that cannot be read by files.FileSkipped's
  reasons."""
  for path in paths:
    try:
      f = files.open_binary(path)
    except files.FileSkipped as e:
      counter.skip(e.reason, path.name, e.detail)
      continue
    with f:
      for number, data in enumerate(f, start=1):
        if number == 1:
          data = data.removeprefix(codecs.BOM_UTF8)
        try:
          line = data.decode('utf-8').strip()
        except UnicodeDecodeError:
          counter.skip(files.BAD_ENCODING, f'{path.name}:{number}')
          continue
        if not line:
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          counter.skip('bad_json', f'{path.name}:{number}')
          continue
        if isinstance(row, dict):
          yield row
        else:
          counter.skip('bad_json', f'{path.name}:{number}')


def _tag_ids(tag_files) -> dict[str, int]:
  """Danbooru tag ids by name, from tags*.json (2021+ dumps)."""
  ids = {}
  for row in _read_rows(tag_files, images.SkipCounter('tags')):
    try:
      ids[str(row['name'])] = int(str(row['id']))
    except (KeyError, ValueError):
      continue
  return ids


def _row_tag_ids(row: dict, ids: dict[str, int]) -> None:
  """Adds the ids a 2017-2020 row's `tags` list carries."""
  for tag in row.get('tags') or ():
    try:
      ids.setdefault(str(tag['name']), int(str(tag['id'])))
    except (KeyError, TypeError, ValueError):
      continue


class Danbooru(manual.ManualBuilder):
  """Danbooru posts with their general, character and rating tags."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [DanbooruConfig(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS.format(name='danbooru')

  def _info(self):
    return self.dataset_info(__doc__)

  def _check_options(self):
    c = self.builder_config
    if c.images not in ('auto', 'original', '512px'):
      raise ValueError(f'danbooru: images={c.images!r}; valid: auto, '
                       'original, 512px.')
    unknown = sorted(set(c.categories) - set(_SELECTABLE))
    if unknown:
      raise ValueError(f'danbooru: categories {unknown} unknown; valid: '
                       f'{", ".join(_SELECTABLE)}.')

  def _split_generators(self, dl_manager):
    self._check_options()
    c = self.builder_config
    root = self.manual_root(dl_manager)
    tree = c.images
    if tree == 'auto':
      tree = 'original' if (root / 'original').exists() else '512px'
    if not (root / tree).exists():
      raise FileNotFoundError(f'danbooru: {root / tree} does not exist; the '
                              'dump needs original/ or 512px/ (option '
                              '`images`).')
    posts, skipped, tag_ids = self._read_posts(root, tree)
    fractions = self.split_fractions()
    by_split = collections.defaultdict(list)
    for post, path in posts:
      by_split[splits.assign_split(post.id, fractions)].append((post, path))
    ratings = _rating_names([p for p, _ in posts])
    vocabulary_path = self.option_path(c.vocabulary, root, 'vocabulary')
    if vocabulary_path:
      label_of = self._fixed_vocabulary(vocabulary_path)
    else:
      label_of = self._top_k_vocabulary(
          [p for p, _ in by_split['train']], ratings, tag_ids)
    dropped = collections.Counter()
    records = collections.defaultdict(list)
    for split in fractions:
      for post, path in by_split[split]:
        labels = self._labels(post, ratings, label_of, dropped)
        records[split].append(manual.Record(post.id, path, labels,
                                            {'id': post.id}))
    self.start_report(
        skipped, images_tree=tree,
        rating_letters=ratings,
        vocabulary_sha256=hashlib.sha256(vocabulary_path.read_bytes())
        .hexdigest() if vocabulary_path else None,
        tags_outside_vocabulary=sum(dropped.values()),
        posts_per_split={s: len(by_split[s]) for s in fractions})
    return self.split_generators(records)

  def _read_posts(self, root, tree):
    """([(Post, image path)], metadata skip counts, Danbooru tag ids)."""
    c = self.builder_config
    post_files, tag_files = _metadata_files(root / c.metadata_dir)
    if not post_files:
      raise FileNotFoundError(f'danbooru: no metadata/*.json in '
                              f'{root / c.metadata_dir} (option '
                              '`metadata_dir`).')
    skipped = images.SkipCounter('metadata')
    # Rows are streamed and only what a Post keeps stays in memory.
    posts, seen, tag_ids = [], set(), _tag_ids(tag_files)
    for row in _read_rows(post_files, skipped):
      _row_tag_ids(row, tag_ids)
      try:
        post = parse_post(row)
      except SkipRow as e:
        skipped.skip(str(e), row.get('id'))
        continue
      if post.id in seen:
        skipped.skip('duplicate_id', post.id)
        continue
      seen.add(post.id)
      if post.file_ext not in IMAGE_EXTENSIONS:
        skipped.skip('not_image', post.id, post.file_ext)
        continue
      path = bucket_path(root, tree, post)
      if not path.exists():
        skipped.skip('missing_file', path)
        continue
      posts.append((post, os.fspath(path)))
    return posts, skipped, tag_ids

  def _top_k_vocabulary(self, train_posts, ratings, tag_ids):
    """{(category, name): label} and the metadata's tag rows: the four
    ratings, then per chosen category its top-K train tags."""
    c = self.builder_config
    rows = []
    if c.ratings:
      rows += [tag_stats.TagRow(-1, f'rating:{r}', tag_stats.RATING, 0)
               for r in RATINGS]
    counts = collections.Counter(t for p in train_posts for t in set(p.tags))
    limits = {'general': c.num_general, 'character': c.num_character}
    for name in c.categories:
      category = tag_stats.CATEGORY_NAMES[name]
      ranked = sorted(((n, tag) for (cat, tag), n in counts.items()
                       if cat == category and n >= c.min_count),
                      key=lambda x: (-x[0], x[1]))
      rows += [tag_stats.TagRow(tag_ids.get(tag, -1), tag, category, 0)
               for _, tag in ranked[:limits.get(name, c.num_other)]]
    self.metadata.tags = rows
    return {(r.category, r.name): i for i, r in enumerate(rows)}

  def _fixed_vocabulary(self, path):
    """{(category, name): label} from a selected_tags.csv, in its order;
    category-9 rows named 'general' or 'rating:general' are the ratings."""
    rows = tag_stats.read_vocabulary(path)
    self.metadata.tags = [dataclasses.replace(r, count=0) for r in rows]
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
