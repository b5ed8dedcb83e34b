"""What the timm-compatible backbones share: drop path, activations, the
LayerNorm, the Dense and MLP layers, and the one rule from timm's names
to jaxtag's.

The backbones that reproduce timm models (vit.py, eva02.py, convnext.py,
swinv2.py) name their flax modules after timm's, so that a timm state dict
maps one to one by rule (`timm_to_jaxtag`):
- a numbered child joins its parent: `stages.1.blocks.0.mlp.fc1` ->
  `stages_1/blocks_0/mlp/fc1`, `blocks.3.attn.qkv` -> `blocks_3/attn/qkv`;
- a 2-D `weight` is a Linear's: transposed into the Dense `kernel`;
- a 4-D `weight` is a Conv2d's: OIHW -> HWIO (a depthwise conv's [C,1,k,k]
  becomes flax's [k,k,1,C] with feature_group_count=C);
- a 1-D `weight` is a LayerNorm's `scale`; any other leaf (bias, gamma,
  cls_token, pos_embed, logit_scale, q_bias, ...) keeps its name and shape;
- timm's classifier, `head` (ViT, EVA) or `head.fc` (ConvNeXt, SwinV2), is
  the linear head's `head/Dense_0`, and ConvNeXt's `head.norm` its pooled
  LayerNorm (jaxtag/models/heads/linear.py, `norm=True`); the rest lies
  under `backbone/`.
Keys a backbone recomputes (buffers) are left out by its own `skip`
pattern.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtag import trees

# timm's act_layer names -> the function; 'gelu_tanh' is what the WD v3
# models were trained with (flax's default GELU).
ACTIVATIONS = {
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
}
# timm's trunc_normal_(std=.02) cuts at +-2 (absolute), a hundred standard
# deviations: in effect a normal draw.
DENSE_INIT = nn.initializers.normal(0.02)
_NUMBERED = re.compile(r'\.(\d+)(?=\.|$)')
_HEAD = {'head': 'head/Dense_0', 'head.fc': 'head/Dense_0',
         'head.norm': 'head/norm'}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown act_layer {name!r} (config.model.'
                     f'backbone_kwargs.act_layer); valid: '
                     f'{", ".join(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def layer_norm(dtype: Any, name: str | None = None,
               epsilon: float = 1e-6) -> nn.LayerNorm:
  """A LayerNorm with float32 parameters and statistics; timm's epsilon
  is 1e-6 but for SwinV2 (1e-5)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


def dense(features: int, dtype: Any, *, use_bias: bool = True,
          kernel_init=DENSE_INIT, name: str | None = None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype,
                  param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


class Mlp(nn.Module):
  """fc1, activation, fc2 (timm's Mlp), with an optional LayerNorm
  ('norm') on the hidden layer."""
  hidden: int
  act_layer: str = 'gelu'
  norm: bool = False
  fc2_init: Any = DENSE_INIT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = activation(self.act_layer)(
        dense(self.hidden, self.dtype, name='fc1')(x))
    if self.norm:
      y = layer_norm(self.dtype, 'norm')(y)
    return dense(x.shape[-1], self.dtype, kernel_init=self.fc2_init,
                 name='fc2')(y)


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


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
  """Per-stage lists of per-block rates rising linearly from 0 to `rate`
  over all blocks, as timm's (calculate_drop_path_rates(stagewise=True)
  for staged models; a plain transformer is one stage)."""
  rates = np.linspace(0.0, rate, sum(depths)).tolist()
  out, start = [], 0
  for depth in depths:
    out.append(rates[start:start + depth])
    start += depth
  return out


# ------------------------------------------------------- timm's names ---

def jaxtag_path(key: str, ndim: int) -> str:
  """A timm state-dict key -> the Tagger's parameter path."""
  module, _, leaf = key.rpartition('.')
  if module in _HEAD:
    path = _HEAD[module]
  else:
    path = '/'.join(p for p in ('backbone', _NUMBERED.sub(r'_\1', module)
                                .replace('.', '/')) if p)
  if leaf == 'weight':
    leaf = {1: 'scale', 2: 'kernel', 4: 'kernel'}.get(ndim)
    if leaf is None:
      raise ValueError(f'{key}: a {ndim}-D weight is neither a LayerNorm, '
                       'Linear nor Conv2d weight.')
  return f'{path}/{leaf}'


def _layout(key: str, ndim: int):
  """The axis order that turns a timm tensor into jaxtag's, or None."""
  if key.endswith('.weight') and ndim == 2:
    return (1, 0)
  if key.endswith('.weight') and ndim == 4:
    return (2, 3, 1, 0)
  return None


def timm_to_jaxtag(state_dict, skip: re.Pattern | None = None
                   ) -> dict[str, np.ndarray]:
  """{timm key: array} -> {Tagger parameter path: array}, transposing
  Linear and Conv2d weights (a view, not a copy) and leaving out the keys
  that `skip` matches (buffers jaxtag recomputes from the input size)."""
  out = {}
  for key, value in state_dict.items():
    if skip is not None and skip.search(key):
      continue
    value = np.asarray(value)
    path = jaxtag_path(key, value.ndim)
    if path in out:
      raise ValueError(f'Two timm keys map to {path} (the second: {key}).')
    axes = _layout(key, value.ndim)
    out[path] = value if axes is None else np.transpose(value, axes)
  return out


def timm_shapes_to_jaxtag(shapes) -> dict[str, tuple[int, ...]]:
  """{timm key: shape} -> {Tagger parameter path: shape}: what
  `timm_to_jaxtag` makes of a state dict with these shapes."""
  out = {}
  for key, shape in shapes.items():
    axes = _layout(key, len(shape))
    out[jaxtag_path(key, len(shape))] = tuple(
        shape if axes is None else (shape[a] for a in axes))
  return out


def mismatches(converted: dict[str, tuple[int, ...]],
               expected: dict[str, tuple[int, ...]]) -> list[str]:
  """Every way two {path: shape} maps differ: keys only in one of them,
  and shapes that disagree. Empty when they match one to one."""
  problems = [f'{k}: not in jaxtag\'s model' for k in sorted(set(converted)
                                                            - set(expected))]
  problems += [f'{k}: missing from the timm state dict'
               for k in sorted(set(expected) - set(converted))]
  problems += [f'{k}: timm {converted[k]}, jaxtag {expected[k]}'
               for k in sorted(set(converted) & set(expected))
               if tuple(converted[k]) != tuple(expected[k])]
  return problems


def param_shapes(variables) -> dict[str, tuple[int, ...]]:
  """A Tagger's (abstract) variables -> {'backbone/...': shape} of its
  params."""
  params = variables['params'] if 'params' in variables else variables
  return {k: tuple(leaf.shape) for k, leaf in trees.flatten(params).items()}
