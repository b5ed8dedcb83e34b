r"""Writes v_cap once per image: the feature cache of config.model.semantic.

  python -m jaxtag.semantic_cache --config configs/addgcn_caption_danbooru.py \
      --config.model.semantic.captioner=runs/captioner --out runs/vcap

For each of the config's train, eval and test splits, `<out>/<split>.npy`
[N, D] float32 holds the frozen captioner's v_cap of every record, in record
order, computed on the image as the evaluation sees it (square, resized to
config.data.image_size, the tagger's normalisation undone and the
captioner's applied: jaxtag/models/semantic.py). Then train with
`--config.model.semantic.captioner= --config.model.semantic.cache=<out>`:
faster steps, at the price of features from the un-augmented image.
"""
from __future__ import annotations

import functools
import io
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

from jaxtag import models
from jaxtag.data import labels
from jaxtag.data import pipeline
from jaxtag.data import sources
from jaxtag.data.normalize import normalize
from jaxtag.models import semantic as semantic_lib



def _define_flags():
  """The command's flags, defined only when it runs as a command: other
  modules define --config and --out too."""
  config_flags.DEFINE_config_file('config', None, 'The tagger config (with '
                                  'model.semantic.captioner set).')
  flags.DEFINE_string('out', None, 'Folder for <split>.npy.')
  flags.mark_flags_as_required(['config', 'out'])


def write_cache(config, out: str, splits=None) -> dict[str, float]:
  """Writes <out>/<split>.npy; returns images per second for each split."""
  module = semantic_lib.build(config.model.semantic, config.data,
                              models.BACKBONES)
  if module is None:
    raise ValueError('Set config.model.semantic.captioner to the captioner '
                     'run whose features to cache.')
  size = config.data.image_size
  variables = semantic_lib.frozen_variables(
      module, config.model.semantic.captioner, (1, size, size, 3))
  preprocess = functools.partial(
      normalize, mean=tuple(config.data.mean),
      std=tuple(config.data.std), dtype=jnp.float32)
  apply = jax.jit(lambda v, image: module.apply(v, preprocess(image)))
  splits = splits or (config.dataset.train_split, config.dataset.eval_split,
                      config.dataset.test_split)
  rates = {}
  for split in dict.fromkeys(splits):
    source, _ = sources.open_split(config.dataset, split)
    batches = pipeline.create_eval_iterator(
        source, data_config=config.data, num_classes=1,
        label_feature=config.dataset.label_feature,
        global_batch_size=config.eval.batch_size, process_index=0,
        process_count=1, encoder=_NoLabels(), geometry='square')
    out_rows = np.zeros((len(source), module.context_dim), np.float32)
    start = time.perf_counter()
    for batch in batches:
      values = np.asarray(apply(variables, batch['image']))
      keep = batch['mask'] > 0
      out_rows[batch['index'][keep]] = values[keep]
    rates[split] = len(source) / (time.perf_counter() - start)
    buffer = io.BytesIO()
    np.save(buffer, out_rows)
    folder = epath.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{split}.npy').write_bytes(buffer.getvalue())
  return rates


class _NoLabels(labels.MultiHot):
  """The cache needs images only: every record encodes to nothing."""

  def __init__(self):
    super().__init__(1)

  @property
  def spec(self):
    return {}

  def encode(self, ids, seed, position):
    del ids, seed, position
    return {}


def main(argv):
  del argv
  rates = write_cache(flags.FLAGS.config, flags.FLAGS.out)
  for split, rate in rates.items():
    print(f'{split}: {rate:.1f} img/s')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
