"""Swin Transformer V2 (Liu et al. 2022), NHWC, as timm's.

Returns the final LayerNorm's output [B, H/32, W/32, D]; timm's classifier
average-pools it and applies one linear layer, which is jaxtag's linear
head with the default `pool='gap'`.

The layers match timm's `SwinTransformerV2` (timm 1.0.31):
- a p x p/p patch-embedding conv and LayerNorm (eps 1e-5 throughout);
- stages after the first open with V2 patch merging: the 2x2 neighbours
  concatenated, a bias-free Linear to twice the width, then the LayerNorm;
  an odd side is padded by one row or column first;
- res-post-norm blocks: x + drop_path(norm1(attention(x))), then
  x + drop_path(norm2(mlp(x)));
- scaled cosine attention: cosine similarity of q and k times
  exp(min(logit_scale, log 100)), per head;
- the continuous relative position bias: a 2-512-heads MLP (`cpb_mlp`) on
  log-spaced relative coordinates, 16 * sigmoid of its output;
- the q and v biases, no k bias; an exact GELU in the MLP unless
  `act_layer='gelu_tanh'` (the WD v3 model's choice).

The window follows the image size. `window_size` (one value, or one per
stage) is the largest window; each block computes its window from the
feature map it receives, as timm does for a model built at that img_size:
a side no larger than the window is one window of that side and is not
shifted; a larger side keeps the window, shifts odd blocks by half of it,
and is padded with zeros at the end to a multiple of it (the cyclic shift
comes before the padding, and the shifted-window mask is that of the
padded map). The relative position tables and the masks are computed from
the shapes at trace time; timm's buffers for them (TIMM_BUFFERS) are never
imported. `pretrained_window_sizes` scales the relative coordinates as in
timm's window-size fine-tuned models (0: by the window itself).

Parameters are float32; the computation runs in `dtype`, with the
attention logits, softmax and LayerNorm statistics in float32.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.models import timm_layout

# Non-persistent buffers of timm's model; older checkpoints may hold them.
TIMM_BUFFERS = re.compile(
    r'\.(relative_coords_table|relative_position_index|attn_mask|k_bias)$')


def _layer_norm(dtype, name: str):
  return timm_layout.layer_norm(dtype, name, epsilon=1e-5)


def window_and_shift(size, window: int, shifted: bool):
  """The (h, w) window and shift of a block on a map of `size` (h, w)."""
  win = tuple(min(s, window) for s in size)
  shift = tuple(0 if s <= window or not shifted else window // 2
                for s in size)
  return win, shift


def relative_coords_table(window, pretrained_window) -> np.ndarray:
  """[2wh-1, 2ww-1, 2] relative offsets, log-spaced into [-1, 1]."""
  axes = [np.arange(-(w - 1), w, dtype=np.float32) for w in window]
  table = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1)
  reference = pretrained_window if pretrained_window[0] > 0 else window
  table = table / np.array([max(r - 1, 1) for r in reference], np.float32)
  table = table * 8
  return (np.sign(table) * np.log2(np.abs(table) + 1.0) /
          np.log2(8)).astype(np.float32)


def relative_position_index(window) -> np.ndarray:
  """[N, N] index of each token pair's offset in the flattened table."""
  wh, ww = window
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww),
                                indexing='ij')).reshape(2, -1)
  offset = coords[:, :, None] - coords[:, None, :]
  return ((offset[0] + wh - 1) * (2 * ww - 1) + offset[1] + ww - 1).astype(
      np.int32)


def _partition(x, window):
  """[B, H, W, C] -> [B * nW, wh * ww, C], windows in row-major order."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, wh * ww, c)


def _merge(windows, window, size):
  wh, ww = window
  h, w = size
  c = windows.shape[-1]
  x = windows.reshape(-1, h // wh, w // ww, wh, ww, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def window_regions(padded, window, shift) -> np.ndarray | None:
  """[nW, N] region label of each token of each window of the shifted,
  padded map (tokens of different regions do not attend to each other);
  None without a shift. Regions are cut as timm cuts them, from the end of
  the padded map."""
  if not any(shift):
    return None
  labels = np.zeros((1, *padded, 1), np.float32)
  cuts = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
  count = 0
  for h0, h1 in cuts[0]:
    for w0, w1 in cuts[1]:
      labels[:, h0:h1, w0:w1, :] = count
      count += 1
  return _partition(labels, window)[..., 0]


def _l2_normalize(x):
  # torch.nn.functional.normalize: x / max(|x|, 1e-12), with its gradient:
  # 0 through the norm where the norm is clamped. Clamping the squared norm
  # before the square root keeps a zero vector (a blank patch's k, as V2
  # has no k bias) from giving sqrt's infinite slope times 0 = NaN.
  return x * jax.lax.rsqrt(
      jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


class WindowAttention(nn.Module):
  num_heads: int
  window: tuple[int, int]
  pretrained_window: tuple[int, int]
  dtype: Any

  def _position_bias(self):
    table = jnp.asarray(relative_coords_table(self.window,
                                              self.pretrained_window))
    hidden = nn.relu(nn.Dense(512, param_dtype=jnp.float32,
                              name='cpb_mlp_0')(table))
    bias = nn.Dense(self.num_heads, use_bias=False, param_dtype=jnp.float32,
                    name='cpb_mlp_2')(hidden).reshape(-1, self.num_heads)
    n = self.window[0] * self.window[1]
    index = relative_position_index(self.window).reshape(-1)
    bias = bias[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    return 16 * jax.nn.sigmoid(bias)

  @nn.compact
  def __call__(self, x, regions=None):
    batch, n, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32, name='qkv')(x)
    zeros = nn.initializers.zeros
    q_bias = self.param('q_bias', zeros, (dim,), jnp.float32)
    v_bias = self.param('v_bias', zeros, (dim,), jnp.float32)
    qkv = qkv + jnp.concatenate(
        [q_bias, jnp.zeros_like(q_bias), v_bias]).astype(self.dtype)
    q, k, v = jnp.moveaxis(qkv.reshape(batch, n, 3, self.num_heads, head_dim),
                           2, 0)
    q = _l2_normalize(q.astype(jnp.float32)).astype(self.dtype)
    k = _l2_normalize(k.astype(jnp.float32)).astype(self.dtype)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k,
                        preferred_element_type=jnp.float32)
    logit_scale = self.param('logit_scale',
                             nn.initializers.constant(math.log(10.0)),
                             (self.num_heads, 1, 1), jnp.float32)
    logits = (logits * jnp.exp(jnp.minimum(logit_scale, math.log(100.0))) +
              self._position_bias())
    if regions is not None:
      num_windows = regions.shape[0]
      mask = jnp.where(regions[:, :, None] != regions[:, None, :], -100.0, 0.0)
      logits = (logits.reshape(-1, num_windows, self.num_heads, n, n) +
                mask[None, :, None]).reshape(batch, self.num_heads, n, n)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(batch, n, dim)
    return nn.Dense(dim, dtype=self.dtype, param_dtype=jnp.float32,
                    name='proj')(out)


class Block(nn.Module):
  num_heads: int
  window_size: int
  shifted: bool
  pretrained_window: int
  mlp_ratio: float
  act_layer: str
  drop_path: float
  dtype: Any

  def _attention(self, x):
    _, h, w, _ = x.shape
    window, shift = window_and_shift((h, w), self.window_size, self.shifted)
    if any(shift):
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    padded = tuple(-(-s // k) * k for s, k in zip((h, w), window))
    x = jnp.pad(x, ((0, 0), (0, padded[0] - h), (0, padded[1] - w), (0, 0)))
    regions = window_regions(padded, window, shift)
    attention = WindowAttention(
        self.num_heads, window, (self.pretrained_window,) * 2, self.dtype,
        name='attn')
    y = attention(_partition(x, window),
                  None if regions is None else jnp.asarray(regions))
    y = _merge(y, window, padded)[:, :h, :w]
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    return y

  @nn.compact
  def __call__(self, x, *, train: bool):
    drop_path = timm_layout.DropPath(self.drop_path)
    x = x + drop_path(_layer_norm(self.dtype, 'norm1')(self._attention(x)),
                      train=train)
    y = timm_layout.Mlp(int(x.shape[-1] * self.mlp_ratio), self.act_layer,
                        dtype=self.dtype, name='mlp')(x)
    return x + drop_path(_layer_norm(self.dtype, 'norm2')(y), train=train)


class PatchMerging(nn.Module):
  out_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = h + h % 2, w + w % 2
    # Channel order (row offset fastest): (0,0), (1,0), (0,1), (1,1).
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype,
                 param_dtype=jnp.float32, name='reduction')(
                     x.reshape(b, h // 2, w // 2, 4 * c))
    return _layer_norm(self.dtype, 'norm')(x)


class PatchEmbed(nn.Module):
  dim: int
  patch_size: int
  dtype: Any

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.dim, (p, p), (p, p), padding='VALID', dtype=self.dtype,
                param_dtype=jnp.float32, name='proj')(x)
    return _layer_norm(self.dtype, 'norm')(x)


class Stage(nn.Module):
  dim: int
  depth: int
  num_heads: int
  downsample: bool
  window_size: int
  pretrained_window: int
  mlp_ratio: float
  act_layer: str
  drop_paths: Sequence[float]
  dtype: Any

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.downsample:
      x = PatchMerging(self.dim, self.dtype, name='downsample')(x)
    for j in range(self.depth):
      x = Block(self.num_heads, self.window_size, j % 2 == 1,
                self.pretrained_window, self.mlp_ratio, self.act_layer,
                self.drop_paths[j], self.dtype, name=f'blocks_{j}')(
                    x, train=train)
    return x


def _per_stage(value, stages: int, name: str) -> tuple[int, ...]:
  values = (value,) * stages if isinstance(value, int) else tuple(value)
  if len(values) != stages or not all(isinstance(v, int) for v in values):
    raise ValueError(f'SwinV2: {name} {value!r} must be one int or one per '
                     f'stage ({stages}).')
  return values


class SwinV2(nn.Module):
  """timm's `swinv2_*` backbone: image [B,H,W,3] -> features [B,h,w,D]."""
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int | Sequence[int] = 8
  pretrained_window_sizes: int | Sequence[int] = 0
  patch_size: int = 4
  mlp_ratio: float = 4.0
  act_layer: str = 'gelu'  # or 'gelu_tanh' (timm's act_layer)
  drop_path_rate: float = 0.1  # timm's default for SwinV2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    stages = len(self.depths)
    heads = _per_stage(tuple(self.num_heads), stages, 'num_heads')
    windows = _per_stage(self.window_size, stages, 'window_size')
    pretrained = _per_stage(self.pretrained_window_sizes, stages,
                            'pretrained_window_sizes')
    x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype,
                   name='patch_embed')(x.astype(self.dtype))
    rates = timm_layout.drop_path_rates(self.drop_path_rate, self.depths)
    for i, depth in enumerate(self.depths):
      x = Stage(self.embed_dim * 2**i, depth, heads[i], i > 0, windows[i],
                pretrained[i], self.mlp_ratio, self.act_layer, rates[i],
                self.dtype, name=f'layers_{i}')(x, train=train)
    return _layer_norm(self.dtype, 'norm')(x)


SwinV2Tiny = functools.partial(SwinV2, embed_dim=96, depths=(2, 2, 6, 2),
                               num_heads=(3, 6, 12, 24))
SwinV2Small = functools.partial(SwinV2, embed_dim=96, depths=(2, 2, 18, 2),
                                num_heads=(3, 6, 12, 24))
SwinV2Base = functools.partial(SwinV2, embed_dim=128, depths=(2, 2, 18, 2),
                               num_heads=(4, 8, 16, 32))


def timm_to_jaxtag(state_dict) -> dict[str, Any]:
  """timm SwinV2 state dict -> {'backbone/...' | 'head/...': array}, the
  buffers (TIMM_BUFFERS) left out."""
  return timm_layout.timm_to_jaxtag(state_dict, skip=TIMM_BUFFERS)
