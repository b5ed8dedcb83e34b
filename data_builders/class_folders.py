"""Single-label datasets kept as one folder per class; shared by the
image_folder and animeface_character builders.

A dataset is a list of `Item`s (the file, its path relative to the root,
its class name and any per-file features). This module maps class names
through an alias map, fixes the class vocabulary (sorted names, so the
ids do not depend on the order a file system lists folders in) and assigns
stratified splits by the file path; manual.ManualBuilder writes the
examples.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders import files
from data_builders import manual
from data_builders import split_writer
from data_builders import splits
from data_builders import tag_stats

IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.webp', '.bmp',
                              '.gif', '.tif', '.tiff'})
DEFAULT_FRACTIONS = 'train=0.7,validation=0.15,test=0.15'


@dataclasses.dataclass(frozen=True)
class Item:
  path: str                    # the file on disk
  key: str                     # path relative to the dataset root, '/'-separated
  class_name: str
  features: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# --- alias maps ---------------------------------------------------------------

def _pairs_from_text(text: str, where: str) -> dict[str, str]:
  """'alias=canonical' pairs separated by commas or new lines; '#' starts
  a comment. A line 'alias,canonical' (CSV) is read the same way."""
  out = {}
  for raw in text.replace('\r', '').split('\n'):
    raw = raw.split('#', 1)[0].strip()
    if not raw:
      continue
    parts = [raw] if '=' not in raw else raw.split(',')
    for part in parts:
      sep = '=' if '=' in part else ','
      alias, found, canonical = (s.strip() for s in part.partition(sep))
      if not found or not alias or not canonical:
        raise ValueError(f'{where}: cannot read {part.strip()!r}; write '
                         'alias=canonical (e.g. mato_sakura=matou_sakura), '
                         'one pair per line or separated by commas.')
      out[alias] = canonical
  return out


def parse_aliases(value: str | Mapping[str, str] | None,
                  option: str = 'aliases') -> dict[str, str]:
  """{alias: canonical} from a mapping, a file (JSON object, or text with
  one alias=canonical per line) or inline text 'a=b,c=d'.

  Chains (a -> b -> c) resolve to the end; a cycle is an error.
  """
  if not value:
    return {}
  if isinstance(value, Mapping):
    pairs = {str(k): str(v) for k, v in value.items()}
  elif '=' not in value and epath.Path(value).exists():
    text = files.read_text(epath.Path(value))
    if text.lstrip().startswith('{'):
      try:
        pairs = {str(k): str(v) for k, v in json.loads(text).items()}
      except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f'{option} file {value}: not a JSON object of '
                         f'alias: canonical ({e}).') from None
    else:
      pairs = _pairs_from_text(text, f'{option} file {value}')
  elif '=' in value:
    pairs = _pairs_from_text(value, option)
  else:
    raise ValueError(f'{option} = {value!r} is neither a file that exists '
                     'nor inline pairs like saber_arutoria_pendoragon=saber.')
  resolved = {}
  for alias in pairs:
    seen, name = [alias], pairs[alias]
    while name in pairs:
      if name in seen:
        raise ValueError(f'{option}: the aliases loop: '
                         f'{" -> ".join(seen + [name])}.')
      seen.append(name)
      name = pairs[name]
    resolved[alias] = name
  return resolved


# --- files --------------------------------------------------------------------

def is_image_file(name: str) -> bool:
  return (not name.startswith('.') and
          os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)


def listdir(path: str) -> list[str]:
  """Sorted entries, hidden ones left out."""
  return sorted(n for n in os.listdir(path) if not n.startswith('.'))


def scan_class_folders(root: str) -> list[Item]:
  """Items of <root>/<class>/**/<image>: files in nested folders belong to
  the class folder they are under (flattened). Other files are ignored."""
  items = []
  for class_name in listdir(root):
    class_dir = os.path.join(root, class_name)
    if not os.path.isdir(class_dir):
      continue
    for dirpath, dirnames, filenames in os.walk(class_dir):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      for name in sorted(filenames):
        if is_image_file(name):
          path = os.path.join(dirpath, name)
          key = os.path.relpath(path, root).replace(os.sep, '/')
          items.append(Item(path, key, class_name))
  return items


# --- vocabulary, splits, examples ---------------------------------------------

def apply_aliases(items: Iterable[Item],
                  aliases: Mapping[str, str]) -> list[Item]:
  return [dataclasses.replace(i, class_name=aliases.get(i.class_name,
                                                        i.class_name))
          for i in items]


def class_vocabulary(items: Sequence[Item]) -> list[str]:
  """The class names, sorted: label ids do not depend on listing order."""
  return sorted({i.class_name for i in items})


def assign_splits(items: Sequence[Item],
                  fractions: str) -> dict[str, list[Item]]:
  """{split: items in key order}, each class divided in `fractions`, each
  file's split a function of its relative path (jaxtag splits module)."""
  parsed = splits.parse_fractions(fractions, 'split_fractions')
  by_key = {i.key: i for i in items}
  chosen = splits.stratified_splits(((i.key, i.class_name) for i in items),
                                    parsed, salt='class_folders')
  out = {name: [] for name in parsed}
  for key in sorted(chosen):
    out[chosen[key]].append(by_key[key])
  return out


def split_records(builder: manual.ManualBuilder, items: Sequence[Item],
                  skipped: Mapping[str, int] | None = None) -> dict:
  """{split: [manual.Record]} of class-folder items under the builder
  config's aliases, min_images and split_fractions; sets the classes as
  the labels (category 4, character) and starts the report."""
  config = builder.builder_config
  skipped = collections.Counter(skipped or {})
  items = apply_aliases(items, parse_aliases(config.aliases))
  sizes = collections.Counter(i.class_name for i in items)
  small = {name for name, n in sizes.items() if n < config.min_images}
  if small:
    skipped['class_below_min_images'] += sum(sizes[n] for n in small)
    items = [i for i in items if i.class_name not in small]
  if not items:
    raise ValueError(f'{builder.name}: no images found in class folders '
                     f'(after min_images = {config.min_images}); the layout '
                     'is ROOT/<class>/<image>.{jpg,png,...}.')
  classes = class_vocabulary(items)
  split_writer.begin(builder, (tag_stats.TagRow(tag_stats.NO_TAG_ID, name,
                                                tag_stats.CHARACTER, 0)
                               for name in classes),
                     skipped, classes=len(classes))
  ids = {name: i for i, name in enumerate(classes)}
  return {split: [manual.Record(
      i.key, i.path, [ids[i.class_name]],
      {'label': ids[i.class_name], 'id': splits.stable_id(i.key),
       'path': i.key, **i.features}) for i in split_items]
          for split, split_items in assign_splits(
              items, config.split_fractions).items()}


# The features of a class-folder example besides manual's image, tags, id.
FEATURES = {
    'label': np.int64,                 # the class id, also the one tag
    'path': tfds.features.Text(),      # the file under the root
}
