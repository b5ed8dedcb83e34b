"""image_folder: a single-label dataset kept as one folder per class.

  python -m jaxtag.data.build image_folder --manual_dir ROOT --data_dir DIR \
      [--set aliases=mato_sakura=matou_sakura] [--set split_fractions=...]

ROOT/<class>/<file>.{jpg,png,webp,...} (the torchvision ImageFolder layout);
files in folders nested under a class folder belong to that class. Layout
and options: README.md beside this file.
"""
from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from data_builders import class_folders
from data_builders import manual
from data_builders import split_writer


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  # Classes that are one character under two names: a file (JSON object or
  # one alias=canonical a line) or inline 'alias=canonical,alias=canonical'.
  aliases: str = ''
  split_fractions: str = class_folders.DEFAULT_FRACTIONS
  min_images: int = 1      # classes with fewer images (after aliases) dropped
  pad_color: tuple[int, ...] = (255, 255, 255)  # behind transparency
  image_format: str = 'png'   # for images that are re-encoded: 'png' | 'jpeg'


class ImageFolder(manual.ManualBuilder):
  """Single-label images, one folder per class."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [ImageFolderConfig(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual.INSTRUCTIONS.format(
      name='image_folder')

  def _info(self):
    return self.dataset_info(__doc__, **class_folders.FEATURES)

  def _split_generators(self, dl_manager):
    root = os.fspath(self.manual_root(dl_manager))
    return split_writer.generators(self, class_folders.split_records(
        self, class_folders.scan_class_folders(root)))
