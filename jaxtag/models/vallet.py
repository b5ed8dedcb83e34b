"""Vallet & Sakamoto's 16-layer plain CNN (their Table 1), NHWC.

  conv 64 7x7/2, max-pool 3x3/2
  conv 128 3x3/2, 4x conv 128 3x3, max-pool 3x3/2
  5x conv 256 3x3, max-pool 3x3/2
  5x conv 512 3x3

Every conv has a bias and a ReLU, and there is no normalisation: the paper
has none. Kernels are Glorot-uniform (their Sec. 2.4). Biases are 0 in the
lowest layer and 1 in every other one, so that most hidden units are active
at the start; the head (jaxtag/models/heads/vallet.py) holds the uppermost
layer, whose biases are 0. `hidden_bias` and `kernel_init` change these
for short runs: with pixels in [0, 1] the image-dependent part of each
activation is small beside a bias of 1, and under Glorot it halves at each
ReLU, so a short run can stay at the label prior (see docs/methods/vallet.md). The
total stride is 32, as the eval geometry assumes. `width` scales every
channel count, for CPU-sized variants.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import layers

# Glorot keeps the variance of a linear layer; through 16 ReLUs it halves
# at each, which He's fan-in scaling makes up for.
KERNEL_INITS = {'glorot': nn.initializers.glorot_uniform(),
                'he': nn.initializers.he_normal()}
# (channels, convs, stride of the first conv) per stage; a 3x3/2 max-pool
# follows every stage but the last.
STAGES = ((128, 5, 2), (256, 5, 1), (512, 5, 1))


def _pool(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class Vallet(nn.Module):
  """Returns the last feature map [B, H/32, W/32, 512 * width]."""
  width: float = 1.0
  hidden_bias: float = 1.0    # initial bias of layers 2-16 (the paper: 1)
  kernel_init: str = 'glorot'   # 'glorot' (the paper) or 'he'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train  # no dropout nor normalisation in the convolutional part
    if self.kernel_init not in KERNEL_INITS:
      raise ValueError(f'Unknown config.model.backbone_kwargs.kernel_init '
                       f'{self.kernel_init!r}; valid: '
                       f'{", ".join(KERNEL_INITS)}.')

    def conv(features, kernel, stride=1, bias=self.hidden_bias, name=None):
      return nn.Conv(layers.scaled(features, self.width), (kernel, kernel),
                     (stride, stride), padding=kernel // 2, dtype=self.dtype,
                     param_dtype=jnp.float32,
                     kernel_init=KERNEL_INITS[self.kernel_init],
                     bias_init=nn.initializers.constant(bias), name=name)

    x = nn.relu(conv(64, 7, 2, bias=0.0, name='conv1')(x.astype(self.dtype)))
    x = _pool(x)
    layer = 2
    for stage, (channels, convs, stride) in enumerate(STAGES):
      for i in range(convs):
        x = nn.relu(conv(channels, 3, stride if i == 0 else 1,
                         name=f'conv{layer}')(x))
        layer += 1
      if stage < len(STAGES) - 1:
        x = _pool(x)
    return x
