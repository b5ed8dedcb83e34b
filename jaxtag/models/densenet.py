"""DenseNet-121/169 (growth 32, bottleneck 4x, compression 0.5), NHWC.

Returns the feature map after the final BatchNorm and ReLU, which is where
ML-GCN's global max pooling reads from.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import layers


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
    conv, norm = layers.conv_and_norm(self.dtype, train)
    growth = layers.scaled(self.growth, self.width)
    x = layers.stem(x.astype(self.dtype),
                    layers.scaled(self.init_features, self.width),
                    small_stem=self.small_stem, conv=conv, norm=norm)
    for i, num_layers in enumerate(self.block_sizes):
      for _ in range(num_layers):
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
