"""What the vision transformers (vit.py, eva02.py) share.

Patch embedding, multi-head attention (with optional rotary embedding),
SwiGLU, position-embedding resampling, the final norm and
pooling. Drop path, the activations, the LayerNorm, the Dense and GELU
MLP and timm's parameter names are those of every timm-layout backbone
(jaxtag/models/timm_layout.py).

Parameters are float32; `dtype` is the compute dtype (bfloat16 for
training on accelerators); attention logits, softmax and LayerNorm
statistics are float32 whatever it is.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.models import timm_layout

GLOBAL_POOLS = ('token', 'avg', 'none')


def pair(size) -> tuple[int, int]:
  """An int or an (h, w) pair -> (h, w)."""
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


class PatchEmbed(nn.Module):
  """Non-overlapping patches -> [B, h, w, D] by one strided conv ('proj')."""
  embed_dim: int
  patch_size: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    height, width = x.shape[1:3]
    if height % p or width % p:
      raise ValueError(f'Image size {height}x{width} is not a multiple of the '
                       f'patch size {p}: resize or crop to a multiple '
                       f'(config.data.image_size).')
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding='VALID',
                   use_bias=self.use_bias, dtype=self.dtype,
                   param_dtype=jnp.float32, name='proj')(x)


def resample_pos_embed(pos_embed, old_grid: tuple[int, int],
                       new_grid: tuple[int, int], num_prefix: int):
  """[1, prefix + h*w, D] learned on `old_grid` -> on `new_grid`, bicubic.

  As timm's resample_abs_pos_embed: the grid part is resized in float32
  with antialiased bicubic interpolation (the same kernel as torch's
  F.interpolate(mode='bicubic', antialias=True)), the prefix entries
  (class, register tokens) are kept.
  """
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
  dim = grid.shape[-1]
  grid = grid.astype(jnp.float32).reshape(1, *old_grid, dim)
  grid = jax.image.resize(grid, (1, *new_grid, dim), 'bicubic',
                          antialias=True)
  grid = grid.reshape(1, -1, dim).astype(pos_embed.dtype)
  return jnp.concatenate([prefix, grid], axis=1)


def rope_sin_cos(grid: tuple[int, int], head_dim: int,
                 ref_grid: tuple[int, int] | None,
                 temperature: float = 10000.0):
  """EVA02's axial rotary embedding (timm's RotaryEmbeddingCat with
  in_pixels=False) for a grid of h x w patches: (sin, cos), each
  [h*w, head_dim] float32, in the interleaved layout [f0, f0, f1, f1, ...].

  A quarter of the head's channels rotate with the row index, a quarter
  with the column index (each pair of channels shares a frequency). With
  `ref_grid` (the pretraining grid), positions are rescaled to it: index i
  of n becomes i / n * ref, so a model fine-tuned at a larger size sees
  the position range it was pretrained on.
  """
  num_bands = head_dim // 4
  exponents = jnp.arange(num_bands, dtype=jnp.float32) / num_bands
  bands = 1.0 / (temperature ** exponents)
  axes = []
  for i, n in enumerate(grid):
    t = jnp.arange(n, dtype=jnp.float32)
    if ref_grid is not None:
      t = t / n * ref_grid[i]
    axes.append(t)
  rows, cols = jnp.meshgrid(*axes, indexing='ij')
  coords = jnp.stack([rows, cols], axis=-1)  # [h, w, 2]
  angles = (coords[..., None] * bands).reshape(-1, 2 * num_bands)
  angles = jnp.repeat(angles, 2, axis=-1)
  return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x, sin, cos):
  """Rotates channel pairs (x0, x1) of x [B, N, H, hd] by the position's
  angles; computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  pairs = x32.reshape(*x.shape[:-1], -1, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1)
  rotated = rotated.reshape(x.shape)
  sin, cos = sin[None, :, None, :], cos[None, :, None, :]
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention in timm's layouts.

  `fused`: one `qkv` Linear, else `q_proj`, `k_proj`, `v_proj` (EVA02
  base and large). `bias`: 'qkv' (ViT: the fused Linear's bias), 'qv'
  (EVA: learned `q_bias` and `v_bias`, no key bias; with separate
  projections, q_proj and v_proj carry biases and k_proj none), or 'none'.
  With `rope` = (sin, cos), queries and keys of all but the first
  `num_prefix` tokens are rotated.
  """
  num_heads: int
  fused: bool = True
  bias: str = 'qkv'
  num_prefix: int = 0
  proj_init: Any = timm_layout.DENSE_INIT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, rope=None):
    batch, tokens, dim = x.shape
    heads = self.num_heads
    if self.fused:
      qkv = timm_layout.dense(3 * dim, self.dtype, use_bias=self.bias == 'qkv',
                  name='qkv')(x)
      if self.bias == 'qv':
        q_bias = self.param('q_bias', nn.initializers.zeros, (dim,))
        v_bias = self.param('v_bias', nn.initializers.zeros, (dim,))
        qkv = qkv + jnp.concatenate(
            [q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
      q, k, v = jnp.split(qkv, 3, axis=-1)
    else:
      q = timm_layout.dense(dim, self.dtype, use_bias=self.bias != 'none',
                name='q_proj')(x)
      k = timm_layout.dense(dim, self.dtype, use_bias=self.bias == 'qkv',
                name='k_proj')(x)
      v = timm_layout.dense(dim, self.dtype, use_bias=self.bias != 'none',
                name='v_proj')(x)
    q, k, v = (t.reshape(batch, tokens, heads, dim // heads)
               for t in (q, k, v))
    if rope is not None:
      npt = self.num_prefix
      q = jnp.concatenate([q[:, :npt], apply_rope(q[:, npt:], *rope)], axis=1)
      k = jnp.concatenate([k[:, :npt], apply_rope(k[:, npt:], *rope)], axis=1)
    out = jax.nn.dot_product_attention(q, k, v)
    return timm_layout.dense(dim, self.dtype, kernel_init=self.proj_init,
                 name='proj')(out.reshape(batch, tokens, dim))


class SwiGLU(nn.Module):
  """silu(gate) * x on the hidden layer. `packed`: one fc1 of twice the
  width whose first half is the gate (timm's GluMlp, EVA02-S); else
  separate fc1_g and fc1_x (timm's SwiGLU, EVA02-B/L, with `norm` on the
  hidden layer: EVA02's sub-LN)."""
  hidden: int
  packed: bool = False
  norm: bool = False
  fc2_init: Any = timm_layout.DENSE_INIT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.packed:
      fc1 = timm_layout.dense(2 * self.hidden, self.dtype, name='fc1')
      gate, y = jnp.split(fc1(x), 2, axis=-1)
    else:
      gate = timm_layout.dense(self.hidden, self.dtype, name='fc1_g')(x)
      y = timm_layout.dense(self.hidden, self.dtype, name='fc1_x')(x)
    y = nn.silu(gate) * y
    if self.norm:
      y = timm_layout.layer_norm(self.dtype, 'norm')(y)
    return timm_layout.dense(x.shape[-1], self.dtype, kernel_init=self.fc2_init,
                 name='fc2')(y)


def check_pooling(global_pool: str, class_token: bool,
                  fc_norm: bool | None) -> bool:
  """Validates the pooling options; returns whether fc_norm is used
  (timm's default: with average pooling)."""
  if global_pool not in GLOBAL_POOLS:
    raise ValueError(f'Unknown global_pool {global_pool!r} (config.model.'
                     f'backbone_kwargs.global_pool); valid: '
                     f'{", ".join(GLOBAL_POOLS)}.')
  if global_pool == 'token' and not class_token:
    raise ValueError("global_pool='token' needs class_token=True.")
  use_fc_norm = global_pool == 'avg' if fc_norm is None else fc_norm
  if use_fc_norm and global_pool != 'avg':
    raise ValueError("fc_norm=True normalises the average-pooled feature: "
                     "set global_pool='avg'.")
  return use_fc_norm


def pool_tokens(x, *, global_pool: str, num_prefix: int,
                grid: tuple[int, int], use_fc_norm: bool, dtype):
  """The final norm and pooling, as timm's forward_features + pool +
  fc_norm. Called from a backbone's compact __call__, so 'norm' and
  'fc_norm' are the backbone's.

  'token': the class token after the final norm; 'avg': the mean of the
  patch tokens, normalised after (fc_norm) or before (the final norm)
  pooling; both as [B, 1, 1, D], on which the linear head's pooling is the
  identity. 'none': the normalised patch tokens as a map [B, h, w, D], for
  heads that pool or attend themselves.
  """
  if not use_fc_norm:
    x = timm_layout.layer_norm(dtype, 'norm')(x)
  if global_pool == 'token':
    pooled = x[:, 0]
  elif global_pool == 'avg':
    pooled = jnp.mean(x[:, num_prefix:], axis=1)
    if use_fc_norm:
      pooled = timm_layout.layer_norm(dtype, 'fc_norm')(pooled)
  else:
    return x[:, num_prefix:].reshape(x.shape[0], *grid, x.shape[-1])
  return pooled[:, None, None, :]
