"""image_folder: a single-label dataset kept as one folder per class.

  python -m jaxtag.data.build image_folder --manual_dir ROOT --data_dir DIR \
      [--set aliases=mato_sakura=matou_sakura] [--set split_fractions=...]

ROOT/<class>/<file>.{jpg,png,webp,...} (the torchvision ImageFolder layout);
files in folders nested under a class folder belong to that class. Layout
and options: README.md beside this file.
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_builders import class_folders
from data_builders import split_writer


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  # Classes that are one character under two names: a file (JSON object or
  # one alias=canonical a line) or inline 'alias=canonical,alias=canonical'.
  aliases: str = ''
  split_fractions: str = class_folders.DEFAULT_FRACTIONS
  min_images: int = 1      # classes with fewer images (after aliases) dropped
  pad_color: tuple[int, int, int] = (255, 255, 255)  # behind transparency


class ImageFolder(split_writer.ImageRecordBuilder):
  """Single-label images, one folder per class."""

  BUILDER_CONFIGS = [ImageFolderConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Pass the folder that holds one sub-folder per class as --manual_dir.')

  def _features(self):
    return class_folders.base_features()

  def _split_generators(self, dl_manager):
    c = self.builder_config
    root = split_writer.manual_root(dl_manager)
    records = class_folders.split_records(
        self.info.metadata, class_folders.scan_class_folders(root), c)
    return self._splits(records)

