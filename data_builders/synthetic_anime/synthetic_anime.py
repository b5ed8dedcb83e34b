"""synthetic_anime: generated anime-like illustrations with Danbooru-style tags.

  python -m jaxtag.data.build synthetic_anime/tiny --data_dir DIR

Configs: tiny (64 px, a few hundred images, seconds), default (96 px, 12k
train images, the main job's dataset), large (512 px, 100k train images, for
accelerator benchmarks), large_4k (the same 512 px images, 4k train, for
pipeline benchmarks on a CPU). Written as array_record; the same version and config
give byte-identical shards on any machine.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import multiprocessing
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_builders import deterministic_writer
from data_builders.synthetic_anime import annotate
from data_builders.synthetic_anime import cooccur as cooccur_lib
from data_builders.synthetic_anime import faces as faces_lib
from data_builders.synthetic_anime import render
from data_builders.synthetic_anime import vocab
from jaxtag.data import tag_metadata

# Rendering is spread over processes only when a split is big enough to pay
# for starting them.
_PARALLEL_MIN_EXAMPLES = 2000


@dataclasses.dataclass
class SyntheticAnimeConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  num_train: int = 256
  num_validation: int = 64
  num_test: int = 64
  drop_prob: float = 0.05   # chance that a present general tag is left out
  seed: int = 0
  style: str = 'anime'      # 'photo': the same scenes photographed (photo.py)
  faces: bool = False       # one example per named character's face (faces.py)
  face_margin: float = 0.15  # faces: margin around the head box, per side
  crop_size: int = 64       # faces: side of the stored crop
  face_jitter: float = 0.0   # faces: palette, blur and noise (faces.perturb)
  face_occlusion: float = 0.0  # faces: chance of an occluder per crop
  structure: str = 'default'  # 'cooccur': implied tags (cooccur.py)


class TagStatistics(tfds.core.Metadata):
  """selected_tags.csv and label_stats.npz (co-occurrence stored sparse),
  written beside dataset_info.json."""

  def __init__(self):
    self.counts = None
    self.cooccurrence = None
    self.num_images = 0
    self.report = None   # build_report.json, when the config makes one

  # Built in memory and written whole through epath, so that a gs:// data_dir
  # works and the bytes do not depend on whether the target can seek.
  def save_metadata(self, data_dir):
    table = io.StringIO(newline='')
    writer = csv.writer(table)
    writer.writerow(['tag_id', 'name', 'category', 'count'])
    for i, name in enumerate(vocab.TAGS):
      # Made-up tags have no Danbooru id.
      writer.writerow([tag_metadata.NO_TAG_ID, name, vocab.CATEGORIES[i],
                       int(self.counts[i])])
    (epath.Path(data_dir) / 'selected_tags.csv').write_bytes(
        table.getvalue().encode())
    (epath.Path(data_dir) / tag_metadata.LABEL_STATS).write_bytes(
        tag_metadata.label_stats_bytes(self.counts, self.cooccurrence,
                                       self.num_images))
    if self.report is not None:
      (epath.Path(data_dir) / BUILD_REPORT).write_text(
          json.dumps(self.report, indent=2, sort_keys=True) + '\n')

  def load_metadata(self, data_dir):
    path = epath.Path(data_dir) / tag_metadata.LABEL_STATS
    if path.exists():
      self.counts, self.cooccurrence, self.num_images = (
          tag_metadata.load_label_stats(path))
    report = epath.Path(data_dir) / BUILD_REPORT
    if report.exists():
      self.report = json.loads(report.read_text())


BUILD_REPORT = 'build_report.json'


def _scene(config, split, index):
  return annotate.sample_scene(config.seed, split, index, config.drop_prob,
                               config.structure)


def _multi_hot(config, split, num, field):
  out = np.zeros((num, len(vocab.TAGS)), np.int64)
  for i in range(num):
    out[i, getattr(_scene(config, split, i), field)] = 1
  return out


def label_structure_report(config) -> dict:
  """Per tag, the test AP from the other true labels alone (cooccur.py)."""
  train_x = _multi_hot(config, 'train', config.num_train, 'tags_clean')
  train_y = _multi_hot(config, 'train', config.num_train, 'tags')
  test_x = _multi_hot(config, 'test', config.num_test, 'tags_clean')
  test_y = _multi_hot(config, 'test', config.num_test, 'tags')
  ap = cooccur_lib.label_ceiling(train_x, train_y, test_x, test_y)
  return {
      'label_ceiling_ap': {t: (None if a != a else round(float(a), 6))
                           for t, a in zip(vocab.TAGS, ap)},
      'hard_tags': list(cooccur_lib.HARD_TAGS),
      'implied_by': {t: list(g) for t, (g, _, _) in
                     cooccur_lib.IMPLIED.items()},
      'method': 'L2 logistic regression (C=1) from the other tags\' clean '
                'labels to the stored label, fitted on train, AP on test',
      'num_train': config.num_train, 'num_test': config.num_test}


def _example(args):
  """Renders one example; None when rendering fails (skipped and counted)."""
  config, split, index = args
  scene = _scene(config, split, index)
  try:
    png, boxes = render.render(scene, size=config.image_size,
                               seed=config.seed,
                               split_id=annotate.SPLIT_IDS[split], index=index,
                               style=config.style)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Could not render %s[%d]: %s', split, index, e)
    return index, None
  faces = [tfds.features.BBox(*b) for b in boxes]
  face_chars = [vocab.TAG_ID[f.character] if f.character else -1
                for f in scene.figures]
  return index, {
      'image': png, 'tags': scene.tags, 'tags_clean': scene.tags_clean,
      'characters': scene.characters, 'faces': faces,
      'face_characters': face_chars, 'caption': scene.caption,
      'id': annotate.SPLIT_IDS[split] * 10_000_000 + index}


# This module's docstring is the datasets' description in dataset_info.json:
# editing it changes every config's build. The cooccur and cooccur_tiny
# configs (tags implied by other tags, and build_report.json with the
# label-structure ceiling) are documented in cooccur.py.
class SyntheticAnime(tfds.core.GeneratorBasedBuilder):
  """Anime-like figures with general, character and rating tags."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      SyntheticAnimeConfig(name='tiny', description='64 px, 256/64/64 images',
                           image_size=64, num_train=256, num_validation=64,
                           num_test=64),
      SyntheticAnimeConfig(name='default',
                           description='96 px, 12000/1000/2000 images',
                           image_size=96, num_train=12000,
                           num_validation=1000, num_test=2000),
      SyntheticAnimeConfig(name='large',
                           description='512 px, 100000/5000/5000 images',
                           image_size=512, num_train=100000,
                           num_validation=5000, num_test=5000),
      # The first images of `large` (same seed and size, so the same
      # pixels), few enough to build in about a minute on 2 cores.
      SyntheticAnimeConfig(name='large_4k',
                           description='512 px, 4000/500/500 images',
                           image_size=512, num_train=4000,
                           num_validation=500, num_test=500),
      # The scenes of `default` (same seed and size), photographed: the
      # photo domain of the captioner's anime adaptation (Lan et al. 2022).
      SyntheticAnimeConfig(name='photo',
                           description='default\'s scenes in a photographic '
                           'style, 96 px, 12000/1000/2000 images',
                           image_size=96, num_train=12000,
                           num_validation=1000, num_test=2000, style='photo'),
      SyntheticAnimeConfig(name='photo_tiny',
                           description='tiny\'s scenes in a photographic style',
                           image_size=64, num_train=256, num_validation=64,
                           num_test=64, style='photo'),
      # Face crops of the first 6000/500/1000 scenes of `default`, drawn at
      # 128 px (character recognition, Guan & Ge; see faces.py).
      # Each crop in another palette, blurred and noisy, and 40% occluded:
      # hard enough that the methods separate (faces.py).
      SyntheticAnimeConfig(name='faces', description='64 px face crops of '
                           'named characters from 6000/500/1000 scenes, '
                           'colour-jittered and partly occluded',
                           image_size=128, num_train=6000, num_validation=500,
                           num_test=1000, faces=True, crop_size=64,
                           face_jitter=1.0, face_occlusion=0.4,
                           version='1.1.0',
                           release_notes={'1.1.0': 'Palette jitter, blur, '
                                          'noise and occluders.'}),
      SyntheticAnimeConfig(name='faces_tiny', description='32 px face crops '
                           'from 400/80/120 scenes, as faces', image_size=64,
                           num_train=400, num_validation=80, num_test=120,
                           faces=True, crop_size=32, face_jitter=1.0,
                           face_occlusion=0.4, version='1.1.0',
                           release_notes={'1.1.0': 'Palette jitter, blur, '
                                          'noise and occluders.'}),
      # default's size and renderer; hard tags implied by other tags and a
      # long tail (cooccur.py).
      SyntheticAnimeConfig(name='cooccur', description='96 px, 12000/1000/'
                           '2000 images whose small tags are implied by '
                           'other tags (cooccur.py)', image_size=96,
                           num_train=12000, num_validation=1000,
                           num_test=2000, structure='cooccur'),
      SyntheticAnimeConfig(name='cooccur_tiny', description='64 px, 256/64/'
                           '64 images, as cooccur', image_size=64,
                           num_train=256, num_validation=64, num_test=64,
                           structure='cooccur'),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def _info(self):
    s = self.builder_config.image_size
    if self.builder_config.faces:
      return tfds.core.DatasetInfo(
          builder=self, description=faces_lib.__doc__,
          features=faces_lib.features(self.builder_config.crop_size),
          metadata=faces_lib.FaceStatistics())
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 3),
                                         encoding_format='png'),
            'tags': tfds.features.Sequence(np.int64),
            'tags_clean': tfds.features.Sequence(np.int64),
            'characters': tfds.features.Sequence(np.int64),
            'faces': tfds.features.Sequence(tfds.features.BBoxFeature()),
            'face_characters': tfds.features.Sequence(np.int64),
            'caption': tfds.features.Text(),
            'id': np.int64,
        }),
        metadata=TagStatistics(),
    )

  def _example_writer(self):
    # The default writer's bytes change from process to process.
    return deterministic_writer.DeterministicExampleWriter(
        file_format=self.info.file_format)

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    self._record_train_statistics(c)
    return {'train': self._generate_examples('train', c.num_train),
            'validation': self._generate_examples('validation',
                                                  c.num_validation),
            'test': self._generate_examples('test', c.num_test)}

  def _record_train_statistics(self, c):
    """Tag counts and co-occurrence of the train split's (noisy) tags."""
    if c.faces:
      return self.info.metadata.record(c)
    num_tags = len(vocab.TAGS)
    multi_hot = np.zeros((c.num_train, num_tags), np.int64)
    for i in range(c.num_train):
      multi_hot[i, _scene(c, 'train', i).tags] = 1
    stats = self.info.metadata
    stats.counts = multi_hot.sum(0)
    stats.cooccurrence = multi_hot.T @ multi_hot
    stats.num_images = c.num_train
    if c.structure != 'default':
      stats.report = label_structure_report(c)

  def _generate_examples(self, split, num_examples):
    c = self.builder_config
    jobs = ((c, split, i) for i in range(num_examples))
    skipped = 0
    if c.faces:
      yield from _face_examples(c, split, num_examples)
      return
    if num_examples >= _PARALLEL_MIN_EXAMPLES and (os.cpu_count() or 1) > 1:
      with multiprocessing.get_context('spawn').Pool() as pool:
        results = list(pool.imap(_example, jobs, chunksize=64))
    else:
      results = map(_example, jobs)
    for index, example in results:
      if example is None:
        skipped += 1
        logging.warning('%s: skipped %d examples so far.', split, skipped)
        continue
      yield index, example


def _face_examples(config, split, num_examples):
  for i in range(num_examples):
    yield from faces_lib.face_examples(config, split, i)
