"""Bundles of randomly initialised tiny models, written without training.

A bundle made here holds the trainer's own initial state (train.Trainable),
so its predictions can be compared with the trainer's eval step on the same
batch. The tag list mixes categories and lacks two of the four WD ratings.
"""
import atexit
import functools
import os
import shutil
import tempfile

import jax
import numpy as np

from jaxtag import config as config_lib
from jaxtag import sharding
from jaxtag import train
from jaxtag.data import tag_metadata
from jaxtag.serving import bundle as bundle_lib

NAMES = ['1girl', 'rating:general', 'hakurei_reimu', '^_^', 'long_hair',
         'rating:explicit', 'smile_(happy)', 'kirisame_marisa', 'solo',
         'white_background']
CATEGORIES = [0, 9, 4, 0, 0, 9, 0, 4, 0, 0]


def metadata(names=NAMES, categories=CATEGORIES):
  n = len(names)
  counts = np.arange(n, 0, -1) * 10
  return tag_metadata.TagMetadata(
      names=list(names), categories=np.asarray(categories), counts=counts,
      cooccurrence=np.diag(counts), num_images=200)


def tiny_config(spec='configs/default.py:tiny', **changes):
  config = config_lib.load_config_file(spec)
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def make_bundle(directory, config, *, seed=0, thresholds=None):
  """(bundle dir, Trainable, state) of `config` with random weights."""
  mesh = sharding.create_mesh()
  tags = metadata()
  config.seed = seed
  trainable = train.Trainable(config, mesh, num_classes=len(NAMES),
                              num_train_steps=10, tag_metadata=tags)
  state = trainable.fresh_state()
  variables = jax.device_get({'params': state.params,
                              'batch_stats': state.batch_stats,
                              'constants': state.constants})
  n = len(NAMES)
  if thresholds is None:
    thresholds = {
        'run': {'policy': 'global', 'tags': NAMES, 'per_tag': [0.5] * n},
        'by_category': {'general': 0.35, 'character': 0.85},
        'per_tag': {'category': [0.35, 0.5, 0.85, 0.35, 0.35, 0.5, 0.35,
                                 0.85, 0.35, 0.35],
                    'f1': list(np.linspace(0.1, 0.9, n))}}
  os.makedirs(directory, exist_ok=True)
  bundle_lib.write_bundle(
      str(directory), config=config, variables=variables, names=NAMES,
      categories=CATEGORIES, counts=tags.counts, thresholds=thresholds,
      preprocess=bundle_lib.Preprocess.from_config(config),
      info={'step': 0, 'workdir': ''})
  return str(directory), trainable, state


def eval_batch(trainable, images):
  """A batch for the trainer's eval step: images and empty labels."""
  n = len(images)
  batch = {k: np.zeros((n, *shape), dtype)
           for k, (shape, dtype) in trainable.encoder.spec.items()}
  batch.update(image=np.asarray(images, np.uint8),
               mask=np.ones(n, np.float32), index=np.arange(n, dtype=np.int32))
  return batch


def trainer_scores(trainable, state, images):
  """The trainer's eval-step scores [N, C] in model order."""
  out = trainable.eval_step(
      state, sharding.to_global(eval_batch(trainable, images),
                                trainable.mesh))
  return np.asarray(jax.device_get(out['scores']))


@functools.lru_cache(maxsize=None)
def shared_bundle():
  """(dir, Trainable, state, loaded Bundle) of configs/default.py:tiny with
  random weights, made once per test process: every test module that tags
  with it shares one compilation."""
  directory = tempfile.mkdtemp(prefix='jaxtag_bundle_')
  atexit.register(shutil.rmtree, directory, ignore_errors=True)
  directory, trainable, state = make_bundle(directory, tiny_config())
  return directory, trainable, state, bundle_lib.load_bundle(directory)
