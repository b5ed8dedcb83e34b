"""ResNet v1.5 (the stride sits on the bottleneck's 3x3 conv), NHWC.

`width` scales every channel count and `small_stem` swaps the 7x7/2 conv and
max-pool for one 3x3/1 conv, so tiny variants run on tiny images in tests.

`symmetric_padding` pads every conv by k // 2 on each side, as torchvision
does. With the default 'SAME', a stride-2 3x3 conv on an even size pads
only the bottom and right, so ImageNet weights imported from torchvision
(jaxtag/serving/import_weights.py) would see features shifted by a pixel;
set it when starting from them. Otherwise the layers match torchvision's
ResNet (v1.5, BatchNorm eps 1e-5, no conv biases).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import layers


class BasicBlock(nn.Module):
  filters: int
  strides: int
  conv: Any
  norm: Any
  zero_init_last: bool = False

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last
                  else nn.initializers.ones)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           name='proj_conv')(residual)
      residual = self.norm(name='proj_norm')(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  filters: int
  strides: int
  conv: Any
  norm: Any
  zero_init_last: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
    # v1.5: downsample in the 3x3 conv rather than the first 1x1.
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * self.expansion, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last
                  else nn.initializers.ones)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * self.expansion, (1, 1),
                           (self.strides, self.strides), name='proj_conv')(x)
      residual = self.norm(name='proj_norm')(residual)
    return nn.relu(residual + y)


def _symmetric(conv):
  """`conv` padding k // 2 on both sides of each axis unless told."""
  def make(features, kernel_size, strides=(1, 1), **kwargs):
    kwargs.setdefault('padding', [(k // 2, k // 2) for k in kernel_size])
    return conv(features, kernel_size, strides, **kwargs)
  return make


class ResNet(nn.Module):
  """Returns the last feature map [B, H, W, D]; pooling belongs to the head."""
  stage_sizes: Sequence[int]
  block: Any
  width: float = 1.0
  small_stem: bool = False
  zero_init_last: bool = False
  symmetric_padding: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv, norm = layers.conv_and_norm(
        self.dtype, train,
        kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'))
    if self.symmetric_padding:
      conv = _symmetric(conv)
    x = layers.stem(x.astype(self.dtype), layers.scaled(64, self.width),
                    small_stem=self.small_stem, conv=conv, norm=norm)
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = self.block(layers.scaled(64 * 2**i, self.width),
                       strides=2 if i > 0 and j == 0 else 1, conv=conv,
                       norm=norm, zero_init_last=self.zero_init_last)(x)
    return x


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                              block=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3),
                              block=BottleneckBlock)
