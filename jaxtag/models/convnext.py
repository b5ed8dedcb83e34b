"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), NHWC, as timm's.

Returns the last stage's feature map [B, H/32, W/32, D]. timm's classifier
pools, applies a LayerNorm (`head.norm`) and then the linear layer: in
jaxtag that is the linear head with `head_kwargs.norm=True` and the default
`pool='gap'`, so that the head keeps the masked pooling of native-size
evaluation and the spatial map stays available to other heads.

The layers match timm's `ConvNeXt` with its defaults (conv_mlp=False, the
'patch' stem, output stride 32): a k x k/k stem conv and LayerNorm; stages
after the first open with a LayerNorm and a 2x2/2 conv; each block is a
depthwise 7x7 conv, LayerNorm, Linear 4x, GELU, Linear, the layer
scale `gamma` and drop path on the residual branch. LayerNorms use eps
1e-6. The GELU is exact unless `act_layer='gelu_tanh'` (the WD v3 models'
choice). Modules are named after timm's (jaxtag/models/timm_layout.py), so a
timm state dict maps one to one: `timm_to_jaxtag`.

Parameters are float32; the computation runs in `dtype` (bfloat16 for
training), with LayerNorm statistics in float32.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import timm_layout

# timm's ConvNeXt has no buffers; nothing in its state dict is dropped.
TIMM_BUFFERS = re.compile(r'(?!)')


def _layer_norm(dtype, name: str):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


class Mlp(nn.Module):
  hidden: int
  act_layer: str
  dtype: Any

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=jnp.float32)
    y = timm_layout.activation(self.act_layer)(
        dense(self.hidden, name='fc1')(x))
    return dense(x.shape[-1], name='fc2')(y)


class Block(nn.Module):
  kernel_size: int
  mlp_ratio: float
  act_layer: str
  ls_init_value: float | None
  drop_path: float
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    dim = x.shape[-1]
    k = self.kernel_size
    y = nn.Conv(dim, (k, k), padding=[(k // 2, k // 2)] * 2,
                feature_group_count=dim, dtype=self.dtype,
                param_dtype=jnp.float32, name='conv_dw')(x)
    y = _layer_norm(self.dtype, 'norm')(y)
    y = Mlp(int(self.mlp_ratio * dim), self.act_layer, self.dtype,
            name='mlp')(y)
    if self.ls_init_value is not None:
      gamma = self.param('gamma', nn.initializers.constant(self.ls_init_value),
                         (dim,), jnp.float32)
      y = y * gamma.astype(self.dtype)
    return x + timm_layout.DropPath(self.drop_path)(y, train=train)


class Stage(nn.Module):
  dim: int
  depth: int
  downsample: bool
  drop_paths: Sequence[float]
  kernel_size: int
  mlp_ratio: float
  act_layer: str
  ls_init_value: float | None
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.downsample:
      x = _layer_norm(self.dtype, 'downsample_0')(x)
      x = nn.Conv(self.dim, (2, 2), (2, 2), padding='VALID', dtype=self.dtype,
                  param_dtype=jnp.float32, name='downsample_1')(x)
    for j in range(self.depth):
      x = Block(self.kernel_size, self.mlp_ratio, self.act_layer,
                self.ls_init_value, self.drop_paths[j], self.dtype,
                name=f'blocks_{j}')(x, train=train)
    return x


class ConvNeXt(nn.Module):
  """timm's `convnext_*` backbone: image [B,H,W,3] -> features [B,h,w,D]."""
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  kernel_size: int = 7
  patch_size: int = 4
  mlp_ratio: float = 4.0
  act_layer: str = 'gelu'  # or 'gelu_tanh' (timm's act_layer)
  # Layer scale's initial value (timm's ls_init_value); None: no layer scale.
  ls_init_value: float | None = 1e-6
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if len(self.depths) != len(self.dims):
      raise ValueError(f'ConvNeXt: depths {tuple(self.depths)} and dims '
                       f'{tuple(self.dims)} need one entry per stage.')
    p = self.patch_size
    x = nn.Conv(self.dims[0], (p, p), (p, p), padding='VALID',
                dtype=self.dtype, param_dtype=jnp.float32,
                name='stem_0')(x.astype(self.dtype))
    x = _layer_norm(self.dtype, 'stem_1')(x)
    rates = timm_layout.drop_path_rates(self.drop_path_rate, self.depths)
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      x = Stage(dim, depth, i > 0, rates[i], self.kernel_size,
                self.mlp_ratio, self.act_layer, self.ls_init_value,
                self.dtype, name=f'stages_{i}')(x, train=train)
    return x


ConvNeXtTiny = functools.partial(ConvNeXt, depths=(3, 3, 9, 3),
                                 dims=(96, 192, 384, 768))
ConvNeXtSmall = functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                  dims=(96, 192, 384, 768))
ConvNeXtBase = functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                 dims=(128, 256, 512, 1024))


def timm_to_jaxtag(state_dict) -> dict[str, Any]:
  """timm ConvNeXt state dict -> {'backbone/...' | 'head/...': array}; the
  head entries are the linear head's with `norm=True`."""
  return timm_layout.convert(state_dict, TIMM_BUFFERS)
