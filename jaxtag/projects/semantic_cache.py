r"""Writes a provided feature once per image: the cache of a feature provider.

  python -m jaxtag.projects.semantic_cache --config configs/addgcn_caption_danbooru.py \
      --config.model.features.semantic.captioner=runs/captioner --out runs/vcap

For each of the config's train, eval and test splits, `<out>/<split>.npy`
[N, D] float32 holds the feature that the model's provider computes in the
step (`--feature`, default the only one: v_cap of a frozen captioner,
jaxtag/models/semantic.py) for every record, in record order, computed on
the image as the evaluation sees it (square, resized to
config.data.image_size, normalised in float32 with the tagger's mean and
std). The model
is the config's, through the eval-only predictor (jaxtag/predictor.py),
with its starting weights (the provider's frozen weights among them).
Then train with `--config.model.features.semantic.captioner=
--config.model.features.semantic.cache=<out>`: faster steps, at the price
of features from the un-augmented image.
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

from jaxtag import predictor as predictor_lib
from jaxtag.data.normalize import normalize


def _define_flags():
  """The command's flags, defined only when it runs as a command: other
  modules define --config and --out too."""
  config_flags.DEFINE_config_file('config', None, 'The tagger config (with '
                                  'its feature provider set to compute).')
  flags.DEFINE_string('out', None, 'Folder for <split>.npy.')
  flags.DEFINE_string('feature', None, 'The provided feature to cache '
                      '(default: the only one the model computes).')
  flags.mark_flags_as_required(['config', 'out'])


def write_cache(config, out: str, splits=None,
                feature: str | None = None) -> dict[str, float]:
  """Writes <out>/<split>.npy; returns images per second for each split."""
  predictor = predictor_lib.Predictor(config)
  computed = sorted(predictor.model.providers or ())
  if feature is None and len(computed) == 1:
    feature = computed[0]
  if feature not in computed:
    raise ValueError(
        f'The model computes the features {computed or "none"}; set a '
        'provider in config.model.features that computes the one to cache '
        '(config.model.features.semantic.captioner: the captioner run whose '
        'features to cache) and name it with --feature.')
  # On one device, as host arrays: the model's variables are replicated.
  variables = jax.device_get(predictor.starting_variables())
  model = predictor.model
  # Normalised in float32 whatever the tagger's compute dtype.
  preprocess = functools.partial(
      normalize, mean=tuple(config.data.mean),
      std=tuple(config.data.std), dtype=jnp.float32,
      channel_order=config.data.get('channel_order', 'RGB'))
  apply = jax.jit(lambda v, image: model.apply(
      {'params': v.params, 'batch_stats': v.batch_stats,
       'constants': v.constants},
      preprocess(image), method='provided')[feature])
  splits = splits or (config.dataset.train_split, config.dataset.eval_split,
                      config.dataset.test_split)
  rates = {}
  for split in dict.fromkeys(splits):
    source = predictor.source(split)
    out_rows = None
    start = time.perf_counter()
    for batch in predictor.eval_batches(split, geometry='square'):
      values = np.asarray(apply(variables, batch['image']))
      if out_rows is None:
        out_rows = np.zeros((len(source), *values.shape[1:]), np.float32)
      keep = batch['mask'] > 0
      out_rows[batch['index'][keep]] = values[keep]
    rates[split] = len(source) / (time.perf_counter() - start)
    buffer = io.BytesIO()
    np.save(buffer, out_rows)
    folder = epath.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{split}.npy').write_bytes(buffer.getvalue())
  return rates


def main(argv):
  del argv
  rates = write_cache(flags.FLAGS.config, flags.FLAGS.out,
                      feature=flags.FLAGS.feature)
  for split, rate in rates.items():
    print(f'{split}: {rate:.1f} img/s')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
