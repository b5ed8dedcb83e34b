"""Global pooling of a feature map [B, H, W, D] -> [B, D], optionally masked.

A mask [B, H, W] (1 on real cells) comes with native-size evaluation, where
images are padded inside their shape bucket: padded cells must not count.
"""
import jax.numpy as jnp


def _gap(x, mask):
  if mask is None:
    return jnp.mean(x, axis=(1, 2))
  m = mask[..., None].astype(x.dtype)
  return jnp.sum(x * m, axis=(1, 2)) / jnp.maximum(jnp.sum(m, axis=(1, 2)), 1)


def _gmp(x, mask):
  # ML-GCN pools with the max: a small object anywhere still fires.
  if mask is None:
    return jnp.max(x, axis=(1, 2))
  low = jnp.finfo(x.dtype).min
  return jnp.max(jnp.where(mask[..., None] > 0, x, low), axis=(1, 2))


POOLS = {'gap': _gap, 'gmp': _gmp}


def pool(x, kind: str, mask=None):
  if kind not in POOLS:
    raise ValueError(f'Unknown pooling {kind!r} (config.model.pool); '
                     f'valid: {", ".join(sorted(POOLS))}.')
  return POOLS[kind](x, mask)


def downsample_mask(mask, height: int, width: int):
  """A pixel mask [B, H, W] -> [B, h, w]: a cell counts if any pixel does."""
  b, big_h, big_w = mask.shape
  if big_h % height == 0 and big_w % width == 0:
    cells = mask.reshape(b, height, big_h // height, width, big_w // width)
    return jnp.max(cells, axis=(2, 4))
  # 'SAME' padding makes h = ceil(H / stride): take each cell's first pixel.
  rows = (jnp.arange(height) * big_h) // height
  cols = (jnp.arange(width) * big_w) // width
  return mask[:, rows][:, :, cols]
