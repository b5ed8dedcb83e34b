"""Pieces every CNN backbone shares: conv/BatchNorm factories and the stem."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def scaled(channels: int, width: float) -> int:
  """A channel count times the width multiplier, at least 1."""
  return max(int(round(channels * width)), 1)


def conv_and_norm(dtype: Any, train: bool, kernel_init=None):
  """Bias-free convs and BatchNorms computing in `dtype`, params in float32."""
  conv = functools.partial(
      nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
      padding='SAME',
      **({'kernel_init': kernel_init} if kernel_init is not None else {}))
  norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                           momentum=0.9, epsilon=1e-5, dtype=dtype,
                           param_dtype=jnp.float32)
  return conv, norm


def stem(x, features: int, *, small_stem: bool, conv, norm):
  """7x7/2 conv + max-pool (/4 in all), or one 3x3/1 conv for tiny images.

  Called from a backbone's compact __call__, so its layers belong to that
  backbone as `stem_conv` and `stem_norm`.
  """
  if small_stem:
    x = conv(features, (3, 3), name='stem_conv')(x)
  else:
    x = conv(features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
             name='stem_conv')(x)
  x = nn.relu(norm(name='stem_norm')(x))
  if not small_stem:
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  return x
