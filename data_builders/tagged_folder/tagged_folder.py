"""tagged_folder: a folder tree of images, each beside a same-name .txt caption.

  python -m jaxtag.data.build tagged_folder --manual_dir FOLDER --data_dir DIR \
      [--set vocabulary=selected_tags.csv] [--set resize=512]

The format people keep their own collections (and LoRA training sets) in:
`a/b.png` with `a/b.txt` holding `tag one, tag_two, ...` (", " or ","
separated). Tag names are normalised (spaces to underscores, lower case,
`\\(` to `(`). A selected_tags.csv at the folder's root, or `--set
vocabulary=PATH`, fixes the labels; tags outside it are dropped and
counted. Options and layout: README.md beside this file.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os

import tensorflow_datasets as tfds

from data_builders import files
from data_builders import images
from data_builders import manual
from data_builders import splits
from data_builders import tag_stats

IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.gif', '.webp',
                              '.bmp', '.tif', '.tiff'})


@dataclasses.dataclass
class TaggedFolderConfig(tfds.core.BuilderConfig):
  vocabulary: str = ''              # default: <root>/selected_tags.csv if any
  min_count: int = 1                # without a vocabulary: train images a tag needs
  max_tags: int = 0                 # without a vocabulary: the most frequent N; 0 all
  resize: int = 0                   # longest side, padded to a square; 0: off
  pad_color: tuple[int, ...] = (255, 255, 255)
  interpolation: str = 'area'       # 'area' | 'bilinear'
  image_format: str = 'png'         # re-encoded images: 'png' | 'jpeg'
  split_fractions: str = 'train=0.9,validation=0.05,test=0.05'


def parse_caption(text: str) -> list[str]:
  """Normalised tags of a caption, in order, without repeats."""
  tags = []
  for part in text.replace('\n', ',').split(','):
    tag = tag_stats.normalise_tag(part.replace('\\(', '(').replace('\\)', ')'))
    if tag and tag not in tags:
      tags.append(tag)
  return tags


class TaggedFolder(manual.ManualBuilder):
  """Images with same-name .txt captions of comma-separated tags."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [TaggedFolderConfig(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS.format(
      name='tagged_folder')

  def _info(self):
    return self.dataset_info(__doc__, path=tfds.features.Text())

  def _split_generators(self, dl_manager):
    c = self.builder_config
    root = self.manual_root(dl_manager)
    skipped = images.SkipCounter('files')
    items = []   # (relative path, absolute path, tags)

    def relative_to_root(path):
      return os.path.relpath(path, os.fspath(root)).replace(os.sep, '/')

    def unreadable_folder(error: OSError):
      skipped.skip(files.UNREADABLE, relative_to_root(error.filename),
                   error.strerror or str(error))

    for folder, dirs, names in os.walk(os.fspath(root),
                                       onerror=unreadable_folder):
      dirs.sort()
      for name in sorted(names):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTENSIONS:
          continue
        path = os.path.join(folder, name)
        relative = relative_to_root(path)
        caption = os.path.join(folder, stem + '.txt')
        if not os.path.lexists(caption):
          skipped.skip('no_caption', relative)
          continue
        # Captions are counted by their own path: bad_encoding, unreadable
        # (a symlink loop, a permission), not_regular_file (a FIFO).
        text = files.read_or_skip(caption, skipped, relative_to_root(caption))
        if text is not None:
          items.append((relative, path, parse_caption(text)))
    if not items:
      raise FileNotFoundError(f'tagged_folder: no image with a .txt caption '
                              f'under {root}.')
    fractions = self.split_fractions()
    split_of = {rel: splits.assign_split(rel, fractions) for rel, _, _ in items}
    vocabulary_path = self.option_path(c.vocabulary, root, 'vocabulary')
    if vocabulary_path is None and (root / 'selected_tags.csv').exists():
      vocabulary_path = root / 'selected_tags.csv'
    if vocabulary_path:
      rows = tag_stats.read_vocabulary(vocabulary_path)
    else:
      rows = self._vocabulary([t for rel, _, t in items
                               if split_of[rel] == 'train'])
    self.metadata.tags = [dataclasses.replace(r, count=0) for r in rows]
    label_of = {}
    for i, row in enumerate(rows):
      label_of.setdefault(tag_stats.normalise_tag(row.name), i)
    dropped = collections.Counter()
    records = collections.defaultdict(list)
    for relative, path, tags in items:
      labels = sorted({label_of[t] for t in tags if t in label_of})
      dropped.update(t for t in tags if t not in label_of)
      records[split_of[relative]].append(manual.Record(
          relative, path, labels,
          {'id': splits.stable_id(relative), 'path': relative}))
    self.start_report(
        skipped,
        vocabulary=os.fspath(vocabulary_path) if vocabulary_path else None,
        vocabulary_sha256=hashlib.sha256(vocabulary_path.read_bytes())
        .hexdigest() if vocabulary_path else None,
        tags_outside_vocabulary=sum(dropped.values()),
        most_dropped_tags=dict(dropped.most_common(20)))
    return self.split_generators(records)

  def _vocabulary(self, train_tags) -> list[tag_stats.TagRow]:
    """Train tags with at least min_count images, most frequent first;
    `rating:*` tags are category 9, the others general."""
    c = self.builder_config
    counts = collections.Counter(t for tags in train_tags for t in tags)
    ranked = sorted((t for t, n in counts.items() if n >= c.min_count),
                    key=lambda t: (-counts[t], t))
    if c.max_tags:
      ranked = ranked[:c.max_tags]
    return [tag_stats.TagRow(tag_stats.NO_TAG_ID, t,
                             tag_stats.RATING if t.startswith('rating:')
                             else tag_stats.GENERAL, 0)
            for t in ranked]
