"""The model's input from uint8 pixels: (x / 255 - mean) / std, on device.

One function for the trainer, the bundle, ONNX export and the character
features, so that every path feeds a model the numbers it was trained on.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


CHANNEL_ORDERS = ('RGB', 'BGR')


def normalize(image, *, mean: Sequence[float], std: Sequence[float], dtype,
              channel_order: str = 'RGB'):
  """RGB pixels 0-255 (uint8 or float) -> (x / 255 - mean) / std in `dtype`,
  as one multiply-add in float32, in `channel_order` (config.data.
  channel_order: 'BGR' flips the channels first; mean and std are in that
  order)."""
  if channel_order not in CHANNEL_ORDERS:
    raise ValueError(f'Unknown config.data.channel_order {channel_order!r}; '
                     f'valid: {", ".join(CHANNEL_ORDERS)}.')
  if channel_order == 'BGR':
    image = image[..., ::-1]
  scale = jnp.asarray([1.0 / (255.0 * s) for s in std], jnp.float32)
  shift = jnp.asarray([m / s for m, s in zip(mean, std)], jnp.float32)
  return (image.astype(jnp.float32) * scale - shift).astype(dtype)
