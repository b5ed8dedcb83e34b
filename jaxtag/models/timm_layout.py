"""What the timm-compatible backbones share: drop path, and timm's names.

The backbones that reproduce timm models (convnext.py, swinv2.py) name
their flax modules after timm's, so that a timm state dict maps one to one
by rule:
- a numbered child joins its parent: `stages.1.blocks.0.mlp.fc1` ->
  `stages_1/blocks_0/mlp/fc1`;
- a 2-D `weight` is a Linear's: transposed into the Dense `kernel`;
- a 4-D `weight` is a Conv2d's: OIHW -> HWIO (a depthwise conv's [C,1,k,k]
  becomes flax's [k,k,1,C] with feature_group_count=C);
- a 1-D `weight` is a LayerNorm's `scale`; any other leaf (bias, gamma,
  logit_scale, q_bias, ...) keeps its name and shape.
timm's classifier `head.fc` is the linear head's Dense and `head.norm` its
pooled-feature LayerNorm (jaxtag/models/heads/linear.py, `norm=True`).
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# timm's act_layer names -> the function; 'gelu_tanh' is what the WD v3
# models were trained with (flax's default GELU).
ACTIVATIONS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
}
_NUMBERED = re.compile(r'\.(\d+)(?=\.|$)')
_HEAD = {'head.fc': 'head/Dense_0', 'head.norm': 'head/norm'}


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch per sample while training,
  scaling the kept ones by 1 / (1 - rate); the identity at eval. Draws from
  the 'dropout' rng, which the trainer passes."""
  rate: float

  @nn.compact
  def __call__(self, x, *, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown act_layer {name!r}; valid: '
                     f'{", ".join(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def drop_path_rates(rate: float, depths) -> list[list[float]]:
  """Per-stage lists of per-block rates rising linearly from 0 to `rate`
  over all blocks, as timm's calculate_drop_path_rates(stagewise=True)."""
  rates = np.linspace(0.0, rate, sum(depths)).tolist()
  out, start = [], 0
  for depth in depths:
    out.append(rates[start:start + depth])
    start += depth
  return out


def jaxtag_name(key: str, ndim: int) -> str:
  """timm state-dict key -> jaxtag parameter path under the Tagger
  ('backbone/...' or 'head/...')."""
  module, _, leaf = key.rpartition('.')
  if module in _HEAD:
    path = _HEAD[module]
  else:
    path = 'backbone/' + _NUMBERED.sub(r'_\1', module).replace('.', '/')
  if leaf == 'weight':
    leaf = {1: 'scale', 2: 'kernel', 4: 'kernel'}.get(ndim)
    if leaf is None:
      raise ValueError(f'{key}: a {ndim}-D weight is neither a LayerNorm, '
                       'Linear nor Conv2d weight.')
  return f'{path}/{leaf}'


def jaxtag_value(value, ndim: int, leaf: str):
  """A timm tensor as jaxtag holds it (a view where a transpose will do)."""
  if leaf == 'weight' and ndim == 2:
    return np.transpose(value)
  if leaf == 'weight' and ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  return value


def convert(state_dict, buffers: re.Pattern) -> dict[str, np.ndarray]:
  """{timm key: array} -> {jaxtag path: array}, dropping the keys that
  `buffers` matches (constants jaxtag recomputes from the input size)."""
  out = {}
  for key, value in state_dict.items():
    if buffers.search(key):
      continue
    ndim = len(value.shape)
    path = jaxtag_name(key, ndim)
    if path in out:
      raise ValueError(f'Two timm keys map to {path} (the second: {key}).')
    out[path] = jaxtag_value(value, ndim, key.rpartition('.')[2])
  return out
