"""coco2014: MS-COCO 2014 as the multi-label literature uses it, 80 labels.

  python -m jaxtag.data.build coco2014 --manual_dir DIR --data_dir DIR

DIR holds train2014/, val2014/ and annotations/instances_{train,val}2014.json.
An image's labels are the categories of its annotations, in the order of
category id. Splits: `train` is train2014 and `test` is val2014 (the
protocol); --set validation_fraction=F also holds out a stable fraction of
train2014 as `validation`. Images without annotations are skipped and
counted (82,081 train and 40,137 val images remain, the numbers the
literature reports) unless keep_unlabelled is set. Layout and options:
README.md beside this file.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os

import tensorflow_datasets as tfds

from data_builders import manual
from data_builders import split_writer
from data_builders import splits
from data_builders import tag_stats

_SETS = {'train': 'train2014', 'test': 'val2014'}


@dataclasses.dataclass
class Coco2014Config(tfds.core.BuilderConfig):
  validation_fraction: float = 0.0   # of train2014, held out by a stable hash
  keep_unlabelled: bool = False      # keep images with no annotation


def read_instances(path: str):
  """(categories [(id, name)] by id, [(image id, file name, [category
  ids])]) of an instances_*.json."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: extract '
                            'annotations_trainval2014.zip into --manual_dir.')
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  try:
    categories = sorted((int(c['id']), c['name']) for c in data['categories'])
    labels = collections.defaultdict(set)
    for a in data['annotations']:
      labels[int(a['image_id'])].add(int(a['category_id']))
    image_list = sorted((int(i['id']), i['file_name'], sorted(labels[int(
        i['id'])])) for i in data['images'])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{path} is not a COCO instances file (missing or bad '
                     f'field {e}).') from None
  return categories, image_list


class Coco2014(manual.ManualBuilder):
  """MS-COCO 2014, multi-label classification over the 80 categories."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [Coco2014Config(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Extract train2014.zip, val2014.zip and annotations_trainval2014.zip '
      'into one folder and pass it as --manual_dir; layout in '
      'data_builders/coco2014/README.md.')

  def _info(self):
    # id: the COCO image id.
    return self.dataset_info(__doc__, file_name=tfds.features.Text())

  def _split_generators(self, dl_manager):
    c = self.builder_config
    if not 0.0 <= c.validation_fraction < 1.0:
      raise ValueError('coco2014 option validation_fraction must be in '
                       f'[0, 1), got {c.validation_fraction}.')
    root = os.fspath(self.manual_root(dl_manager))
    by_split, scan, categories = {}, collections.Counter(), None
    for split, image_set in _SETS.items():
      cats, image_list = read_instances(os.path.join(
          root, 'annotations', f'instances_{image_set}.json'))
      if categories is not None and cats != categories:
        raise ValueError(f'instances_{image_set}.json lists other categories '
                         'than instances_train2014.json.')
      categories = cats
      index = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
      kept = []
      for image_id, file_name, cat_ids in image_list:
        if not cat_ids and not c.keep_unlabelled:
          scan['no_labels'] += 1
          continue
        kept.append(manual.Record(
            image_id, os.path.join(root, image_set, file_name),
            [index[i] for i in cat_ids],
            {'id': image_id, 'file_name': file_name}))
      by_split[split] = kept
    if c.validation_fraction:
      fractions = {'train': 1.0 - c.validation_fraction,
                   'validation': c.validation_fraction}
      train = by_split.pop('train')
      for name in ('train', 'validation'):
        by_split[name] = [r for r in train if splits.assign_split(
            r.key, fractions, salt='coco2014') == name]
    split_writer.begin(self, (tag_stats.TagRow(cat_id, name,
                                               tag_stats.GENERAL, 0)
                              for cat_id, name in categories), scan)
    return split_writer.generators(self, by_split)
