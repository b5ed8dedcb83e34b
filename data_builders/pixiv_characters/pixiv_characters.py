"""pixiv_characters: character-labelled illustrations collected as Vallet &
Sakamoto collected theirs from Pixiv.

  python -m jaxtag.data.build pixiv_characters --manual_dir FOLDER \
      --data_dir DIR [--set resize_shortest=256] [--set num_top=100] ...

A metadata file (CSV or JSON Lines) lists each post's image and tags. The
labels are the `num_top` most frequent character tags plus every character
tag sharing at least `min_shared` images with them; multi-image posts are
left out; pairs of labels that may name one character (more than half of
one's images shared, or names a small edit distance apart) are reported in
build_report.json for an alias map (`aliases`) to merge. The train split's
mean pixel is stored in build_report.json. Options and layout: README.md.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import os

import tensorflow_datasets as tfds

from data_builders import files
from data_builders import images
from data_builders import manual
from data_builders import splits
from data_builders import tag_stats


@dataclasses.dataclass
class PixivCharactersConfig(tfds.core.BuilderConfig):
  metadata: str = ''            # default: metadata.jsonl or metadata.csv
  characters: str = ''          # file of character tags; default: rows' `characters`
  num_top: int = 100            # the N most frequent character tags
  min_shared: int = 5000        # ... plus those sharing >= M images with them
  aliases: str = ''             # alias map merging labels (CSV or JSON)
  overlap: float = 0.5          # duplicate candidates: shared / smaller set >
  max_name_distance: int = 2    # ... or Levenshtein distance of names <=
  tag_separator: str = ' '      # between tags in a CSV `tags` column
  resize_shortest: int = 0      # shortest side to N (256 in the paper); 0: off
  interpolation: str = 'area'   # 'area' (OpenCV INTER_AREA) | 'bilinear'
  image_format: str = 'jpeg'    # re-encoded images: 'jpeg' | 'png'
  split_fractions: str = 'train=0.9,validation=0.05,test=0.05'


def levenshtein(a: str, b: str) -> int:
  """Edits (insert, delete, substitute one character) turning a into b."""
  previous = list(range(len(b) + 1))
  for i, ca in enumerate(a, start=1):
    current = [i]
    for j, cb in enumerate(b, start=1):
      current.append(min(previous[j] + 1, current[j - 1] + 1,
                         previous[j - 1] + (ca != cb)))
    previous = current
  return previous[-1]


@dataclasses.dataclass
class Post:
  id: int
  file: str
  page_count: int
  tags: list[str]
  characters: list[str] | None


def _tag_list(value, separator: str) -> list[str]:
  if value is None:
    return []
  if isinstance(value, list):
    parts = value
  else:
    text = str(value).strip()
    parts = json.loads(text) if text.startswith('[') else text.split(
        separator if separator.strip() else None)
  return [tag_stats.normalise_tag(str(p)) for p in parts if str(p).strip()]


def read_posts(path, separator: str, counter: images.SkipCounter):
  """Posts of a .csv or .jsonl metadata file; bad rows counted."""
  text = files.read_text(path)
  if path.suffix == '.csv':
    rows = csv.DictReader(io.StringIO(text))
  else:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          counter.skip('bad_row', f'{path.name}:{number}')
  posts = []
  for row in rows:
    try:
      post_id = int(str(row['id']).strip())
      page_count = int(float(str(row.get('page_count') or 1)))
      file = str(row['file']).strip()
    except (KeyError, TypeError, ValueError):
      counter.skip('bad_row', row.get('id') if isinstance(row, dict) else row)
      continue
    characters = row.get('characters')
    posts.append(Post(post_id, file, page_count,
                      _tag_list(row.get('tags'), separator),
                      None if characters in (None, '') else
                      _tag_list(characters, separator)))
  return posts


def select_labels(character_sets: list[list[str]], num_top: int,
                  min_shared: int) -> list[str]:
  """The num_top most frequent characters, then those (most frequent
  first) in at least min_shared images together with a top one."""
  counts = collections.Counter(c for chars in character_sets for c in chars)
  ranked = sorted(counts, key=lambda c: (-counts[c], c))
  top = ranked[:num_top]
  top_set = set(top)
  shared = collections.Counter()
  for chars in character_sets:
    if top_set & set(chars):
      shared.update(c for c in chars if c not in top_set)
  return top + [c for c in ranked[num_top:] if shared[c] >= min_shared]


def duplicate_candidates(names: list[str], label_sets: list[list[int]],
                         overlap: float, max_distance: int) -> list[dict]:
  """Pairs of labels that may be one character, with why."""
  counts, cooccurrence, _ = tag_stats.label_statistics(label_sets, len(names))
  cooccurrence = cooccurrence.tocsr()
  out = []
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      both = int(cooccurrence[i, j])
      fraction = both / max(1, min(counts[i], counts[j]))
      distance = levenshtein(names[i], names[j])
      reasons = [r for r, hit in (('overlap', fraction > overlap),
                                  ('name', distance <= max_distance)) if hit]
      if reasons:
        out.append({'labels': [names[i], names[j]], 'shared_images': both,
                    'shared_fraction': round(fraction, 4),
                    'name_distance': distance, 'why': reasons})
  return out


class PixivCharacters(manual.ManualBuilder):
  """Illustrations labelled with the characters they show."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      PixivCharactersConfig(name='default',
                            description='Every option at its default.'),
      PixivCharactersConfig(name='paper', resize_shortest=256,
                            description='Shortest side 256 (area), as in '
                            'Vallet & Sakamoto.'),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS.format(
      name='pixiv_characters')
  MEAN_PIXEL = True

  def _info(self):
    return self.dataset_info(__doc__)

  def _metadata_path(self, root):
    c = self.builder_config
    if c.metadata:
      return self.option_path(c.metadata, root, 'metadata')
    for name in ('metadata.jsonl', 'metadata.csv'):
      if (root / name).exists():
        return root / name
    raise FileNotFoundError(f'pixiv_characters: no metadata.jsonl or '
                            f'metadata.csv in {root}; name the file with '
                            '--set metadata=PATH.')

  def _split_generators(self, dl_manager):
    c = self.builder_config
    root = self.manual_root(dl_manager)
    skipped = images.SkipCounter('metadata')
    posts = read_posts(self._metadata_path(root), c.tag_separator, skipped)
    character_file = self.option_path(c.characters, root, 'characters')
    known = None
    if character_file:
      known = {tag_stats.normalise_tag(line) for line in
               files.read_text(character_file).splitlines()
               if line.strip()}
    aliases_file = self.option_path(c.aliases, root, 'aliases')
    aliases = tag_stats.read_aliases(aliases_file) if aliases_file else {}
    kept, seen = [], set()
    for post in posts:
      if post.id in seen:
        skipped.skip('duplicate_id', post.id)
        continue
      seen.add(post.id)
      if post.page_count > 1:
        skipped.skip('multi_image', post.id)
        continue
      path = os.path.join(os.fspath(root), post.file)
      if not os.path.exists(path):
        skipped.skip('missing_file', post.file)
        continue
      if post.characters is not None:
        chars = post.characters
      elif known is not None:
        chars = [t for t in post.tags if t in known]
      else:
        raise ValueError('pixiv_characters: the metadata rows have no '
                         '`characters` field; give the list of character '
                         'tags with --set characters=FILE.')
      chars = sorted({aliases.get(t, t) for t in chars})
      kept.append((post, path, chars))
    names = select_labels([chars for _, _, chars in kept], c.num_top,
                          c.min_shared)
    label_of = {name: i for i, name in enumerate(names)}
    self.metadata.tags = [tag_stats.TagRow(tag_stats.NO_TAG_ID, n,
                                           tag_stats.CHARACTER, 0)
                          for n in names]
    fractions = self.split_fractions()
    records = collections.defaultdict(list)
    all_labels = []
    for post, path, chars in kept:
      labels = sorted(label_of[t] for t in chars if t in label_of)
      if not labels:
        skipped.skip('no_selected_character', post.id)
        continue
      all_labels.append(labels)
      records[splits.assign_split(post.id, fractions)].append(
          manual.Record(post.id, path, labels, {'id': post.id}))
    candidates = duplicate_candidates(names, all_labels, c.overlap,
                                      c.max_name_distance)
    for pair in candidates:
      print('pixiv_characters: possible duplicate labels '
            f'{pair["labels"][0]!r} and {pair["labels"][1]!r} '
            f'({", ".join(pair["why"])}: {pair["shared_images"]} images '
            f'shared, fraction {pair["shared_fraction"]}, name distance '
            f'{pair["name_distance"]})', flush=True)
    self.start_report(skipped, duplicate_candidates=candidates,
                      aliases=aliases,
                      posts_per_split={s: len(records[s]) for s in fractions})
    return self.split_generators(records)
