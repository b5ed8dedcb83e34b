"""animeface_character: Nagadomi's anime face character dataset.

  python -m jaxtag.data.build animeface_character --manual_dir ROOT \
      --data_dir DIR [--set aliases=FILE]

About 170 characters, 160x160 face crops, single label. ROOT is either
layout (or the folder above it):
- animeface-character-dataset/thumb/<NNN>_<name>/*.png, with `ignore`
  files (images to leave out) and `color.csv` (file, hair R,G,B, eye R,G,B);
- moeimouto-faces/<NNN>_<name>/*.png.
The class is <name>, the `NNN_` prefix stripped. Layout and options:
README.md beside this file.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from data_builders import class_folders
from data_builders import files
from data_builders import manual
from data_builders import split_writer

# Where the class folders may sit under --manual_dir, first match wins.
_LAYOUTS = ('animeface-character-dataset/thumb', 'thumb', 'moeimouto-faces')
_PREFIX = re.compile(r'^\d+_')
IGNORE_FILE = 'ignore'
COLOR_FILE = 'color.csv'
NO_COLOR = (-1, -1, -1)


@dataclasses.dataclass
class AnimefaceCharacterConfig(tfds.core.BuilderConfig):
  aliases: str = ''        # as image_folder: file or 'alias=canonical,...'
  split_fractions: str = class_folders.DEFAULT_FRACTIONS
  min_images: int = 1
  strip_prefix: bool = True   # '000_hatsune_miku' -> 'hatsune_miku'
  pad_color: tuple[int, ...] = (255, 255, 255)
  image_format: str = 'png'   # for images that are re-encoded: 'png' | 'jpeg'


def find_class_root(root: str) -> str:
  """The folder that holds the <NNN>_<name> class folders."""
  for layout in _LAYOUTS:
    candidate = os.path.join(root, layout)
    if os.path.isdir(candidate):
      return candidate
  if any(_PREFIX.match(n) and os.path.isdir(os.path.join(root, n))
         for n in class_folders.listdir(root)):
    return root
  raise FileNotFoundError(
      f'{root} holds none of {", ".join(_LAYOUTS)} and no <NNN>_<name> class '
      'folders; pass the folder of the animeface-character-dataset (or of '
      'moeimouto-faces) as --manual_dir.')


def read_ignore(path: str) -> set[str]:
  """File names listed in an `ignore` file (one a line, paths allowed)."""
  if not os.path.exists(path):
    return set()
  return {os.path.basename(line.strip())
          for line in files.read_text(path).splitlines() if line.strip()}


def _rgb(values, path: str, line: int) -> tuple[int, int, int]:
  try:
    rgb = tuple(int(float(v)) for v in values)
  except ValueError:
    raise ValueError(f'{path}, line {line}: colour {values} is not three '
                     'numbers.') from None
  if not all(0 <= v <= 255 for v in rgb):
    raise ValueError(f'{path}, line {line}: colour {rgb} is outside 0..255.')
  return rgb


def read_colors(path: str) -> dict[str, tuple[tuple[int, ...], ...]]:
  """{file name: (hair RGB, eye RGB)} of a color.csv; a header row (any
  first row whose colours are not numbers) is skipped."""
  if not os.path.exists(path):
    return {}
  rows = list(csv.reader(io.StringIO(files.read_text(path))))
  out = {}
  for line, row in enumerate(rows, start=1):
    row = [c.strip() for c in row]
    if not any(row):
      continue
    if len(row) < 7:
      raise ValueError(f'{path}, line {line}: expected file,hair R,G,B,eye '
                       f'R,G,B (7 columns), found {len(row)}.')
    if line == 1 and not row[1].replace('.', '', 1).isdigit():
      continue  # a header
    out[os.path.basename(row[0])] = (_rgb(row[1:4], path, line),
                                     _rgb(row[4:7], path, line))
  return out


def scan(root: str, strip_prefix: bool):
  """(items with hair_color / eye_color features, skip counts)."""
  class_root = find_class_root(root)
  items, counts = [], collections.Counter()
  for folder in class_folders.listdir(class_root):
    folder_path = os.path.join(class_root, folder)
    if not os.path.isdir(folder_path):
      continue
    name = _PREFIX.sub('', folder) if strip_prefix else folder
    ignored = read_ignore(os.path.join(folder_path, IGNORE_FILE))
    colors = read_colors(os.path.join(folder_path, COLOR_FILE))
    for file in class_folders.listdir(folder_path):
      if not class_folders.is_image_file(file):
        continue
      if file in ignored:
        counts['ignored'] += 1
        continue
      hair, eye = colors.get(file, (NO_COLOR, NO_COLOR))
      counts['no_color'] += file not in colors
      key = f'{folder}/{file}'
      items.append(class_folders.Item(
          os.path.join(folder_path, file), key, name,
          {'hair_color': hair, 'eye_color': eye}))
  return items, counts


class AnimefaceCharacter(manual.ManualBuilder):
  """Anime face crops, one character per image."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [AnimefaceCharacterConfig(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS.format(
      name='animeface_character')

  def _info(self):
    # color.csv's colours; (-1, -1, -1) when the file has no row.
    colour = tfds.features.Tensor(shape=(3,), dtype=np.int64)
    return self.dataset_info(__doc__, **class_folders.FEATURES,
                             hair_color=colour, eye_color=colour)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    items, counts = scan(os.fspath(self.manual_root(dl_manager)),
                         c.strip_prefix)
    missing_color = counts.pop('no_color', 0)
    records = class_folders.split_records(self, items, counts)
    self.metadata.report.extra['images_without_color'] = missing_color
    return split_writer.generators(self, records)
