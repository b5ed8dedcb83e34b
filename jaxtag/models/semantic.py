"""Caption semantic features (seed 004): v_cap from a frozen captioner.

Seed 004 feeds ADD-GCN's dynamic graph with a semantic vector per image
taken from an anime-adapted captioner: the captioner's spatial tensor M_cap
(its annotation vectors, the grid its attention reads) pooled to v_cap.
Here that is the encoder of a Show, Attend and Tell run
(jaxtag/models/captioner.py): its backbone, then its `annotate`
projection, pooled over the real cells (`pooling` 'avg', the default, or
'max').

`CaptionSemantics` runs inside the tagger's jitted step on the same
(augmented) image the tagger sees, so training and test features come from
the same kind of input. It is frozen: its output is behind
`stop_gradient`, its backbone runs in inference mode (its batch-norm
statistics never move), and the trainer zeroes its parameter updates
(`FROZEN` below). The image reaches it normalised for the tagger; it undoes
that and applies the captioner's own normalisation.

`config.model.semantic.captioner` names the captioner's workdir: its
config.json gives the architecture, its latest checkpoint the weights
(loaded when the tagger's run starts). The alternative, a cache of v_cap
computed once per image (`config.model.semantic.cache`, written by
`python -m jaxtag.semantic_cache`), trades that for speed: it is computed
on the un-augmented image at the evaluation geometry.
"""
from __future__ import annotations

import io
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxtag.models import pooling

# The parameters the optimiser must leave alone (optim.scale_by_param_group).
FROZEN = ('^semantic/', 0.0)
# Where a captioner's weights go in the tagger: (captioner, tagger) prefixes.
RENAMES = (('backbone/', 'semantic/backbone/'),
           ('head/annotate/', 'semantic/annotate/'))


def pool_annotations(a, mask, how: str):
  """[B, L, D] annotations, [B, L] real cells -> [B, D]."""
  if how == 'avg':
    return jnp.sum(a * mask[..., None], 1) / jnp.maximum(
        jnp.sum(mask, 1, keepdims=True), 1.0)
  if how == 'max':
    return jnp.max(jnp.where(mask[..., None] > 0, a, -jnp.inf), axis=1)
  raise ValueError(f'Unknown semantic pooling {how!r} '
                   '(config.model.semantic.pooling); valid: avg, max.')


class CaptionSemantics(nn.Module):
  backbone: nn.Module
  context_dim: int
  pooling: str = 'avg'
  # Images arrive as (x / 255 - tagger_mean) / tagger_std.
  tagger_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  tagger_std: tuple[float, ...] = (0.5, 0.5, 0.5)
  captioner_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  captioner_std: tuple[float, ...] = (0.5, 0.5, 0.5)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, image_mask=None):
    as_float = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    x = image.astype(jnp.float32) * as_float(self.tagger_std) + as_float(
        self.tagger_mean)
    x = (x - as_float(self.captioner_mean)) / as_float(self.captioner_std)
    features = self.backbone(x.astype(self.dtype), train=False)
    b, h, w, d = features.shape
    mask = (jnp.ones((b, h * w), jnp.float32) if image_mask is None else
            pooling.downsample_mask(image_mask, h, w).reshape(
                b, h * w).astype(jnp.float32))
    a = nn.Dense(self.context_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 name='annotate')(features.reshape(b, h * w, d))
    v = pool_annotations(a.astype(jnp.float32), mask, self.pooling)
    return jax.lax.stop_gradient(v)


def captioner_config(workdir: str) -> dict:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(
        f'config.model.semantic.captioner: {path} does not exist; give the '
        'workdir of a trained captioner run (configs/captioner_*.py).')
  config = json.loads(path.read_text())
  if config.get('model', {}).get('head') != 'show_attend_tell':
    raise ValueError(f'config.model.semantic.captioner: {workdir} is not a '
                     'captioner run (its model.head is '
                     f'{config.get("model", {}).get("head")!r}, not '
                     "'show_attend_tell').")
  return config


def build(semantic_config, data_config, backbones) -> CaptionSemantics | None:
  """The frozen encoder that config.model.semantic asks for, or None."""
  if not semantic_config.captioner:
    return None
  config = captioner_config(semantic_config.captioner)
  model = config['model']
  head_kwargs = model.get('head_kwargs', {})
  backbone = backbones[model['backbone']](**model.get('backbone_kwargs', {}))
  return CaptionSemantics(
      backbone=backbone, context_dim=int(head_kwargs.get('context_dim', 512)),
      pooling=semantic_config.pooling,
      tagger_mean=tuple(data_config.mean), tagger_std=tuple(data_config.std),
      captioner_mean=tuple(config['data']['mean']),
      captioner_std=tuple(config['data']['std']))


def frozen_variables(module: CaptionSemantics, captioner_workdir: str,
                     image_shape) -> dict:
  """The module's variables filled from the captioner's latest checkpoint
  (RENAMES, less the 'semantic/' prefix the tagger adds)."""
  from jaxtag import trees  # pylint: disable=g-import-not-at-top
  from jaxtag import warm_start  # pylint: disable=g-import-not-at-top
  template = jax.eval_shape(module.init, jax.random.key(0),
                            jnp.zeros(image_shape, jnp.float32))
  loaded = warm_start.read(captioner_workdir)
  renames = [(src, dst.removeprefix('semantic/')) for src, dst in RENAMES]
  out = {}
  for collection, tree in template.items():
    moved = warm_start.renamed(loaded[collection], renames)

    def fill(key, leaf, moved=moved, collection=collection):
      if key not in moved:
        raise ValueError(f'The captioner in {captioner_workdir} has nothing '
                         f'for {collection}/semantic/{key}; is it a '
                         'show_attend_tell run of the same architecture?')
      return jnp.asarray(moved[key], leaf.dtype)

    out[collection] = trees.map_with_names(fill, tree)
  return out


class CachedFeatures:
  """A split's records with a precomputed feature added to each."""

  def __init__(self, source, name: str, values, path: str = ''):
    if len(values) != len(source):
      raise ValueError(f'The feature cache {path} has {len(values)} rows but '
                       f'the split has {len(source)} records: write it again '
                       'with python -m jaxtag.semantic_cache.')
    self.source, self.name, self.values = source, name, values

  def __len__(self):
    return len(self.source)

  def __getitem__(self, record):
    return {**self.source[record], self.name: self.values[record]}


def open_cache(cache_dir: str, split: str):
  """v_cap [N, D] float32 of `split` from a cache folder."""
  path = epath.Path(cache_dir) / f'{split}.npy'
  if not path.exists():
    raise FileNotFoundError(
        f'config.model.semantic.cache: {path} does not exist; write the cache '
        'with python -m jaxtag.semantic_cache --config CONFIG --out '
        f'{cache_dir}.')
  return np.load(io.BytesIO(path.read_bytes())).astype(np.float32)
