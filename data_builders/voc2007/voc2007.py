"""voc2007: PASCAL VOC 2007 image classification, 20 labels, multi-label.

  python -m jaxtag.data.build voc2007 --manual_dir DIR --data_dir DIR

DIR holds VOCdevkit/VOC2007 (or is it, or VOCdevkit): JPEGImages/<id>.jpg
and ImageSets/Main/<class>_<set>.txt, lines '<id> <1|-1|0>'. Labels come
from the set files (1 present, -1 absent, 0 difficult): `tags` are the
present classes, `tags_difficult` the difficult ones, which the protocol
leaves out of the metrics. Splits: `train` is trainval and `test` is test
(the published protocol), or with --set train_set=train, `train`,
`validation` (VOC val) and `test`. Layout and options: README.md beside
this file.
"""
from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_builders import manual
from data_builders import split_writer
from data_builders import splits
from data_builders import tag_stats

CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
           'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
           'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
_TRAIN_SETS = {'trainval': {'train': 'trainval', 'test': 'test'},
               'train': {'train': 'train', 'validation': 'val',
                         'test': 'test'}}
PRESENT, ABSENT, DIFFICULT = 1, -1, 0


@dataclasses.dataclass
class Voc2007Config(tfds.core.BuilderConfig):
  train_set: str = 'trainval'     # 'trainval' (protocol) or 'train'
  # Also list difficult labels in `tags`, as ML-GCN trains (they stay in
  # tags_difficult, so evaluation can still leave them out).
  difficult_as_positive: bool = False


def find_year_root(root: str) -> str:
  """The VOC2007 folder under --manual_dir."""
  for candidate in (os.path.join(root, 'VOCdevkit', 'VOC2007'),
                    os.path.join(root, 'VOC2007'), root):
    if os.path.isdir(os.path.join(candidate, 'ImageSets', 'Main')):
      return candidate
  raise FileNotFoundError(
      f'{root} holds no VOCdevkit/VOC2007/ImageSets/Main; pass the folder '
      'where the VOC 2007 tars were extracted as --manual_dir.')


def read_set_labels(year_root: str, image_set: str):
  """{image id: [C] int8 of 1 / -1 / 0} of one set, or None when the set's
  files are all absent. A missing file among present ones is an error."""
  main = os.path.join(year_root, 'ImageSets', 'Main')
  paths = [os.path.join(main, f'{c}_{image_set}.txt') for c in CLASSES]
  present = [os.path.exists(p) for p in paths]
  if not any(present):
    return None
  if not all(present):
    missing = [p for p, ok in zip(paths, present) if not ok]
    raise FileNotFoundError(f'VOC set {image_set!r} lacks {missing[0]} '
                            f'({len(missing)} class file(s) missing).')
  labels = collections.defaultdict(lambda: np.full(len(CLASSES), ABSENT,
                                                   np.int8))
  for c, path in enumerate(paths):
    with open(path, encoding='utf-8') as f:
      for line_no, line in enumerate(f, start=1):
        fields = line.split()
        if not fields:
          continue
        if len(fields) != 2 or fields[1] not in ('1', '-1', '0'):
          raise ValueError(f'{path}, line {line_no}: expected '
                           f"'<id> <1|-1|0>', found {line.strip()!r}.")
        labels[fields[0]][c] = int(fields[1])
  return dict(labels)


def records(year_root: str, labels: dict,
            difficult_as_positive: bool) -> list[manual.Record]:
  """The records of one set, in id order."""
  positive = (PRESENT, DIFFICULT) if difficult_as_positive else (PRESENT,)
  out = []
  for image_id in sorted(labels):
    row = labels[image_id]
    out.append(manual.Record(
        image_id, os.path.join(year_root, 'JPEGImages', f'{image_id}.jpg'),
        np.flatnonzero(np.isin(row, positive)).tolist(),
        {'tags_difficult': np.flatnonzero(row == DIFFICULT).tolist(),
         'id': _numeric_id(image_id), 'name': image_id}))
  return out


def _numeric_id(image_id: str) -> int:
  """VOC 2007 ids are six digits ('000005' -> 5); any other name gets a
  stable hash."""
  return int(image_id) if image_id.isdigit() else splits.stable_id(image_id)


class Voc2007(manual.ManualBuilder):
  """PASCAL VOC 2007, multi-label classification."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [Voc2007Config(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Extract VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar into '
      'one folder and pass it as --manual_dir; layout in '
      'data_builders/voc2007/README.md.')

  def _info(self):
    return self.dataset_info(
        __doc__, tags_difficult=tfds.features.Sequence(np.int64),
        name=tfds.features.Text())

  def _split_generators(self, dl_manager):
    c = self.builder_config
    if c.train_set not in _TRAIN_SETS:
      raise ValueError(f'Unknown voc2007 option train_set={c.train_set!r}; '
                       f'valid: {", ".join(_TRAIN_SETS)}.')
    year_root = find_year_root(os.fspath(self.manual_root(dl_manager)))
    split_writer.begin(self, (tag_stats.TagRow(tag_stats.NO_TAG_ID, name,
                                                tag_stats.GENERAL, 0)
                              for name in CLASSES))
    extra = self.metadata.report.extra
    out = {}
    for split, image_set in _TRAIN_SETS[c.train_set].items():
      labels = read_set_labels(year_root, image_set)
      if labels is None:
        if split == 'train':
          raise FileNotFoundError(
              f'{year_root}/ImageSets/Main has no *_{image_set}.txt files: '
              'extract VOCtrainval_06-Nov-2007.tar there.')
        logging.warning('voc2007: no *_%s.txt set files; the %s split is '
                        'left out.', image_set, split)
        extra[f'{split}_missing'] = image_set
        continue
      extra[f'{split}_difficult_labels'] = int(sum(
          (row == DIFFICULT).sum() for row in labels.values()))
      out[split] = records(year_root, labels, c.difficult_as_positive)
    return split_writer.generators(self, out)
