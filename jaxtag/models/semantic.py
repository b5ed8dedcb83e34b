"""Caption semantic features (Lan et al. 2022): v_cap from a frozen captioner.

Lan et al. (2022) feed ADD-GCN's dynamic graph with a semantic vector per image
taken from an anime-adapted captioner: the captioner's spatial tensor M_cap
(its annotation vectors, the grid its attention reads) pooled to v_cap.
Here that is the encoder of a Show, Attend and Tell run
(jaxtag/models/captioner.py): its backbone, then its `annotate`
projection, pooled over the real cells (`pooling` 'avg', the default, or
'max').

The provider `captioner` (jaxtag/models/features.py) gives a head's
declared feature (config.model.features.semantic, say) in one of two ways:
- `captioner`: the captioner run's workdir; its config.json gives the
  architecture, its latest checkpoint the weights (taken when the tagger's
  run starts, through the same mechanism as config.init). Then
  `CaptionSemantics` runs inside the tagger's jitted step on the same
  (augmented) image the tagger sees, so training and test features come
  from the same kind of input. It is frozen: its output is behind
  `stop_gradient`, its backbone runs in inference mode, and its weights
  live in the tagger's 'constants' collection, which is never trained.
  The image reaches it normalised for the tagger; it undoes that and
  applies the captioner's own normalisation.
- `cache`: a folder of v_cap computed once per image (written by
  `python -m jaxtag.projects.semantic_cache`), which trades that for speed: it is
  computed on the un-augmented image at the evaluation geometry.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxtag.models import pooling

# Where a captioner's weights go in CaptionSemantics: (captioner, module)
# prefixes of 'collection/parameter' paths.
RENAMES = (('params/backbone/', 'params/backbone/'),
           ('params/head/annotate/', 'params/annotate/'),
           ('batch_stats/backbone/', 'batch_stats/backbone/'))


def pool_annotations(a, mask, how: str):
  """[B, L, D] annotations, [B, L] real cells -> [B, D]."""
  if how == 'avg':
    return jnp.sum(a * mask[..., None], 1) / jnp.maximum(
        jnp.sum(mask, 1, keepdims=True), 1.0)
  if how == 'max':
    return jnp.max(jnp.where(mask[..., None] > 0, a, -jnp.inf), axis=1)
  raise ValueError(f'Unknown semantic pooling {how!r} (the pooling of '
                   'config.model.features); valid: avg, max.')


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


def captioner_config(workdir: str, where: str) -> dict:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(
        f'{where}: {path} does not exist; give the workdir of a trained '
        'captioner run (configs/captioner_*.py).')
  config = json.loads(path.read_text())
  if config.get('model', {}).get('head') != 'show_attend_tell':
    raise ValueError(f'{where}: {workdir} is not a captioner run (its '
                     f'model.head is {config.get("model", {}).get("head")!r}, '
                     "not 'show_attend_tell').")
  return config


@dataclasses.dataclass
class CaptionerFeature:
  """The provider `captioner`: v_cap of a frozen captioner. Options:
  `captioner` (its run's workdir: computed in the step) or `cache` (a
  folder of <split>.npy: read per record), and `pooling`."""
  feature: str
  data_config: Any = dataclasses.field(repr=False)
  backbones: Any = dataclasses.field(repr=False)
  captioner: str = ''
  pooling: str = 'avg'
  cache: str = ''

  def __post_init__(self):
    where = f'config.model.features.{self.feature}'
    if self.captioner and self.cache:
      raise ValueError(f'Set one of {where}.captioner (computed in the step) '
                       f'and {where}.cache, not both.')
    if not (self.captioner or self.cache):
      raise ValueError(
          f'{where} needs captioner (the workdir of a trained captioner run, '
          'computed in the step) or cache (a folder written by python -m '
          'jaxtag.projects.semantic_cache).')
    self._module = None
    if self.captioner:
      config = captioner_config(self.captioner, f'{where}.captioner')
      model = config['model']
      head_kwargs = model.get('head_kwargs', {})
      backbone = self.backbones[model['backbone']](
          **model.get('backbone_kwargs', {}))
      self._module = CaptionSemantics(
          backbone=backbone,
          context_dim=int(head_kwargs.get('context_dim', 512)),
          pooling=self.pooling,
          tagger_mean=tuple(self.data_config.mean),
          tagger_std=tuple(self.data_config.std),
          captioner_mean=tuple(config['data']['mean']),
          captioner_std=tuple(config['data']['std']))

  def module(self) -> CaptionSemantics | None:
    return self._module

  def init_sources(self, prefix: str) -> list[Any]:
    """The captioner's encoder, from its latest checkpoint, under `prefix`
    ('constants/providers_semantic/')."""
    if not self.captioner:
      return []
    from jaxtag import warm_start  # pylint: disable=g-import-not-at-top
    return [warm_start.Source(
        path=self.captioner,
        renames=tuple((src, prefix + dst) for src, dst in RENAMES),
        what=f'config.model.features.{self.feature}.captioner')]

  def open(self, source, split: str):
    if not self.cache:
      return source
    return CachedFeatures(source, self.feature,
                          open_cache(self.cache, split, self.feature),
                          f'{self.cache}/{split}.npy')


class CachedFeatures:
  """A split's records with a precomputed feature added to each."""

  def __init__(self, source, name: str, values, path: str = ''):
    if len(values) != len(source):
      raise ValueError(f'The feature cache {path} has {len(values)} rows but '
                       f'the split has {len(source)} records: write it again '
                       'with python -m jaxtag.projects.semantic_cache.')
    self.source, self.name, self.values = source, name, values
    # What the feature looks like in a batch: {name: (shape, dtype)}.
    self.feature_specs = {name: (values.shape[1:], np.float32)}

  def __len__(self):
    return len(self.source)

  def __getitem__(self, record):
    return {**self.source[record], self.name: self.values[record]}


def open_cache(cache_dir: str, split: str, feature: str = 'semantic'):
  """v_cap [N, D] float32 of `split` from a cache folder."""
  path = epath.Path(cache_dir) / f'{split}.npy'
  if not path.exists():
    raise FileNotFoundError(
        f'config.model.features.{feature}.cache: {path} does not exist; write '
        'the cache with python -m jaxtag.projects.semantic_cache --config CONFIG --out '
        f'{cache_dir}.')
  return np.load(io.BytesIO(path.read_bytes())).astype(np.float32)
