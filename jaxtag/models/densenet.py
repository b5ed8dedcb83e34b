"""DenseNet-121/169 (growth 32, bottleneck 4x, compression 0.5), NHWC.

Returns the feature map after the final BatchNorm and ReLU, which is where
ML-GCN's global max pooling reads from.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class DenseNet(nn.Module):
  block_sizes: Sequence[int]
  growth: int = 32
  bn_size: int = 4
  compression: float = 0.5
  init_features: int = 64
  width: float = 1.0
  small_stem: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=jnp.float32, padding='SAME')
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             param_dtype=jnp.float32)
    growth = max(int(round(self.growth * self.width)), 1)
    features = max(int(round(self.init_features * self.width)), 1)
    x = x.astype(self.dtype)
    if self.small_stem:
      x = conv(features, (3, 3), name='stem_conv')(x)
    else:
      x = conv(features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
               name='stem_conv')(x)
    x = nn.relu(norm(name='stem_norm')(x))
    if not self.small_stem:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, layers in enumerate(self.block_sizes):
      for _ in range(layers):
        y = conv(self.bn_size * growth, (1, 1))(nn.relu(norm()(x)))
        y = conv(growth, (3, 3))(nn.relu(norm()(y)))
        x = jnp.concatenate([x, y], axis=-1)
      if i < len(self.block_sizes) - 1:  # transition: compress and halve
        channels = int(x.shape[-1] * self.compression)
        x = conv(channels, (1, 1))(nn.relu(norm()(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
    return nn.relu(norm(name='final_norm')(x))


DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16))
DenseNet169 = functools.partial(DenseNet, block_sizes=(6, 12, 32, 32))
