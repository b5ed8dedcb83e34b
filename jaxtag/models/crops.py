"""Random square crops inside each image's real pixels, in a jitted step.

A multi-crop prediction (Vallet & Sakamoto's 10-crop baseline) needs the
crops before the backbone. Native-size evaluation pads each image
top-left inside its shape bucket; `image_mask` tells the real height and
width, and every crop stays inside them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crops(image, image_mask=None, *, num: int, size: int, key):
  """[num * B, size, size, ...]: view v of image i is row v * B + i.

  image [B, H, W, ...]; image_mask [B, H, W] (1 on real pixels, placed
  top-left) or None for whole images. The offsets are uniform per image
  and view; an image smaller than `size` is cropped from its corner.
  """
  b, height, width = image.shape[:3]
  if size > min(height, width):
    raise ValueError(f'Crops of {size} px do not fit {height} x {width} '
                     'images.')
  if image_mask is None:
    real_h = jnp.full((b,), height)
    real_w = jnp.full((b,), width)
  else:
    real_h = jnp.sum(image_mask[:, :, 0] > 0, axis=1)
    real_w = jnp.sum(image_mask[:, 0, :] > 0, axis=1)
  room_h = jnp.clip(real_h - size, 0, height - size)
  room_w = jnp.clip(real_w - size, 0, width - size)
  u = jax.random.uniform(key, (2, num, b))
  top = jnp.floor(u[0] * (room_h + 1)).astype(jnp.int32)
  left = jnp.floor(u[1] * (room_w + 1)).astype(jnp.int32)
  top = jnp.minimum(top, room_h)
  left = jnp.minimum(left, room_w)

  def crop(img, t, l):
    start = (t, l) + (0,) * (img.ndim - 2)
    return jax.lax.dynamic_slice(img, start, (size, size, *img.shape[2:]))

  per_view = jax.vmap(jax.vmap(crop, in_axes=(0, 0, 0)),
                      in_axes=(None, 0, 0))(image, top, left)
  return per_view.reshape(num * b, size, size, *image.shape[3:])
