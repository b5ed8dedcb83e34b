"""EVA-02 in timm's layout (timm's Eva class with its eva02_* settings).

  config.model.backbone = 'eva02_large_patch14'
  config.model.backbone_kwargs = {'img_size': 448}   # WD v3's EVA02-L

What sets EVA-02 apart from the plain ViT (vit.py):
- Rotary position embedding on queries and keys of the patch tokens, on
  top of the learned absolute one (transformer.rope_sin_cos): timm's
  RotaryEmbeddingCat, its positions rescaled to `ref_feat_shape`, the
  pretraining grid (16 x 16 for every eva02: 224 / 14). The rotation
  follows the input's grid, so any input size works; the absolute
  embedding is resampled from `img_size` as in vit.py.
- A SwiGLU MLP of hidden width int(D * 4 * 2 / 3): packed into one fc1
  for small (timm's GluMlp), separate fc1_g / fc1_x with a LayerNorm on
  the hidden layer for base and large (`scale_mlp`: the sub-LN).
- Query and value biases without a key bias: `q_bias` and `v_bias` beside
  one bias-free `qkv` (small), or q_proj / k_proj / v_proj with k_proj
  bias-free (`qkv_fused=False`: base and large).
- Average pooling over the patch tokens then `fc_norm` by default
  (`global_pool`, `fc_norm` as in vit.py), optional layer scale
  (`init_values`: `gamma_1`, `gamma_2`) and register tokens (`reg_tokens`).

timm's eva02_*_patch14_224 and _448 share their layers; only img_size
differs. WD v3's EVA02-L (SmilingWolf/wd-eva02-large-tagger-v3) is
eva02_large_patch14_448 with 10,861 classes.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import timm_layout
from jaxtag.models import transformer as tfm


class Block(nn.Module):
  num_heads: int
  mlp_hidden: int
  qkv_fused: bool = True
  qkv_bias: bool = True
  swiglu_mlp: bool = True
  scale_mlp: bool = False
  num_prefix: int = 1
  init_values: float | None = None
  drop_path: float = 0.0
  # timm's fix_init_weight: deeper blocks start with smaller output layers.
  out_init_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, rope, *, train: bool):
    out_init = nn.initializers.normal(0.02 * self.out_init_scale)

    def scaled(y, name):
      if self.init_values is None:
        return y
      gamma = self.param(name, nn.initializers.constant(self.init_values),
                         (y.shape[-1],))
      return y * gamma.astype(y.dtype)

    attn = tfm.Attention(self.num_heads, fused=self.qkv_fused,
                         bias='qv' if self.qkv_bias else 'none',
                         num_prefix=self.num_prefix, proj_init=out_init,
                         dtype=self.dtype, name='attn')
    y = attn(timm_layout.layer_norm(self.dtype, 'norm1')(x), rope)
    x = x + timm_layout.DropPath(self.drop_path)(scaled(y, 'gamma_1'),
                                                 train=train)
    if self.swiglu_mlp:
      # Without the sub-LN timm packs the gate into fc1 (GluMlp).
      mlp = tfm.SwiGLU(self.mlp_hidden, packed=not self.scale_mlp,
                       norm=self.scale_mlp, fc2_init=out_init,
                       dtype=self.dtype, name='mlp')
    else:
      mlp = timm_layout.Mlp(self.mlp_hidden, norm=self.scale_mlp,
                            fc2_init=out_init, dtype=self.dtype, name='mlp')
    y = mlp(timm_layout.layer_norm(self.dtype, 'norm2')(x))
    return x + timm_layout.DropPath(self.drop_path)(scaled(y, 'gamma_2'),
                                                    train=train)


class Eva02(nn.Module):
  """Returns [B, 1, 1, D] ('token', 'avg') or [B, h, w, D] ('none')."""
  patch_size: int = 14
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4 * 2 / 3
  img_size: Any = 224
  ref_feat_shape: Any = (16, 16)
  qkv_fused: bool = True
  qkv_bias: bool = True
  swiglu_mlp: bool = True
  scale_mlp: bool = False
  class_token: bool = True
  reg_tokens: int = 0
  global_pool: str = 'avg'
  fc_norm: bool | None = None
  init_values: float | None = None
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    use_fc_norm = tfm.check_pooling(self.global_pool, self.class_token,
                                    self.fc_norm)
    dim = self.embed_dim
    x = tfm.PatchEmbed(dim, self.patch_size, dtype=self.dtype,
                       name='patch_embed')(x.astype(self.dtype))
    batch, grid = x.shape[0], x.shape[1:3]
    x = x.reshape(batch, -1, dim)

    prefix = []
    if self.class_token:
      prefix.append(self.param('cls_token', nn.initializers.normal(0.02),
                               (1, 1, dim)))
    if self.reg_tokens:
      prefix.append(self.param('reg_token', nn.initializers.normal(0.02),
                               (1, self.reg_tokens, dim)))
    num_prefix = sum(p.shape[1] for p in prefix)
    trained_grid = tuple(s // self.patch_size for s in tfm.pair(self.img_size))
    pos_embed = self.param(
        'pos_embed', nn.initializers.normal(0.02),
        (1, num_prefix + trained_grid[0] * trained_grid[1], dim))
    pos_embed = tfm.resample_pos_embed(pos_embed, trained_grid, grid,
                                       num_prefix).astype(self.dtype)
    prefix = [jnp.broadcast_to(p, (batch, *p.shape[1:])).astype(self.dtype)
              for p in prefix]
    x = jnp.concatenate(prefix + [x], axis=1) + pos_embed

    ref = (None if self.ref_feat_shape is None
           else tfm.pair(self.ref_feat_shape))
    rope = tfm.rope_sin_cos(grid, dim // self.num_heads, ref)
    rates = timm_layout.drop_path_rates(self.drop_path_rate, [self.depth])[0]
    for i in range(self.depth):
      x = Block(self.num_heads, int(dim * self.mlp_ratio),
                qkv_fused=self.qkv_fused, qkv_bias=self.qkv_bias,
                swiglu_mlp=self.swiglu_mlp,
                scale_mlp=self.scale_mlp, num_prefix=num_prefix,
                init_values=self.init_values, drop_path=rates[i],
                out_init_scale=1 / math.sqrt(2.0 * (i + 1)), dtype=self.dtype,
                name=f'blocks_{i}')(x, rope, train=train)
    return tfm.pool_tokens(x, global_pool=self.global_pool,
                           num_prefix=num_prefix, grid=grid,
                           use_fc_norm=use_fc_norm, dtype=self.dtype)


# timm's eva02_{small,base,large}_patch14_{224,448} (the 448s: img_size=448).
Eva02SmallPatch14 = functools.partial(Eva02, embed_dim=384, depth=12,
                                      num_heads=6)
Eva02BasePatch14 = functools.partial(Eva02, embed_dim=768, depth=12,
                                     num_heads=12, qkv_fused=False,
                                     scale_mlp=True)
Eva02LargePatch14 = functools.partial(Eva02, embed_dim=1024, depth=24,
                                      num_heads=16, qkv_fused=False,
                                      scale_mlp=True)


# Buffers that timm recomputes (non-persistent in timm 1.0; a state dict
# saved with them still imports): the rotary tables and the zero key bias.
_BUFFERS = re.compile(r'(^|\.)rope\.|\.k_bias$')


def timm_to_jaxtag(state_dict):
  """A timm Eva state dict -> {Tagger parameter path: array}
  ('backbone/...' and the linear head's 'head/Dense_0/...'). The rotary
  embedding and the zero key bias are not parameters: jaxtag computes
  them, and drops them where a state dict holds them."""
  return timm_layout.timm_to_jaxtag(state_dict, skip=_BUFFERS)
