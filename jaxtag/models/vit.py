"""Vision Transformer (ViT) in timm's layout.

  config.model.backbone = 'vit_base_patch16'
  config.model.backbone_kwargs = {'img_size': 448}
  # SmilingWolf/JAX-CV's layout (no class token, the final norm then the
  # mean, flax's tanh GELU):
  config.model.backbone_kwargs = {'img_size': 448, 'class_token': False,
                                  'global_pool': 'avg', 'fc_norm': False,
                                  'act_layer': 'gelu_tanh'}

The options are timm's VisionTransformer's, with the same defaults:
`img_size` is the size the position embedding is learned at (its grid is
img_size / patch_size); any other input size, a multiple of the patch, gets
the embedding resampled bicubically, as timm's dynamic_img_size does.
`class_token`, `reg_tokens` (register tokens, after the class token),
`no_embed_class` (no position embedding on those prefix tokens),
`init_values` (layer scale, `ls1`/`ls2`), `act_layer` ('gelu' or
'gelu_tanh'), `drop_path_rate` (rising linearly over the blocks).

`global_pool` says what reaches the head (jaxtag/models/transformer.py,
`pool_tokens`): 'token' and 'avg' give a pooled [B, 1, 1, D] on which the
linear head's pooling is the identity, so backbone + linear head reproduce
timm's logits with timm's weights (`timm_to_jaxtag`); 'none' gives the
normalised patch tokens as a map [B, h, w, D] for heads that pool or attend
themselves. `fc_norm` (default: with 'avg') normalises after pooling
instead of before.

The WD v3 ViT (SmilingWolf/wd-vit-tagger-v3) is timm's
vit_base_patch16_224 at img_size 448 with 10,861 classes; the model_args
of its config.json say which of these options it sets.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import timm_layout
from jaxtag.models import transformer as tfm


class LayerScale(nn.Module):
  init_values: float

  @nn.compact
  def __call__(self, x):
    gamma = self.param('gamma', nn.initializers.constant(self.init_values),
                       (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  num_heads: int
  mlp_hidden: int
  qkv_bias: bool = True
  init_values: float | None = None
  act_layer: str = 'gelu'
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    def scaled(y, name):
      return (LayerScale(self.init_values, name=name)(y)
              if self.init_values else y)

    y = tfm.Attention(self.num_heads, bias='qkv' if self.qkv_bias else 'none',
                      dtype=self.dtype, name='attn')(
                          timm_layout.layer_norm(self.dtype, 'norm1')(x))
    x = x + timm_layout.DropPath(self.drop_path)(scaled(y, 'ls1'),
                                                 train=train)
    y = timm_layout.Mlp(self.mlp_hidden, self.act_layer, dtype=self.dtype,
                name='mlp')(timm_layout.layer_norm(self.dtype, 'norm2')(x))
    return x + timm_layout.DropPath(self.drop_path)(scaled(y, 'ls2'),
                                                    train=train)


class VisionTransformer(nn.Module):
  """Returns [B, 1, 1, D] ('token', 'avg') or [B, h, w, D] ('none')."""
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  img_size: Any = 224
  qkv_bias: bool = True
  class_token: bool = True
  reg_tokens: int = 0
  no_embed_class: bool = False
  global_pool: str = 'token'
  fc_norm: bool | None = None
  init_values: float | None = None
  act_layer: str = 'gelu'
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    use_fc_norm = tfm.check_pooling(self.global_pool, self.class_token,
                                    self.fc_norm)
    # An unknown name fails before tracing.
    timm_layout.activation(self.act_layer)
    dim = self.embed_dim
    x = tfm.PatchEmbed(dim, self.patch_size, dtype=self.dtype,
                       name='patch_embed')(x.astype(self.dtype))
    batch, grid = x.shape[0], x.shape[1:3]
    x = x.reshape(batch, -1, dim)

    prefix = []
    if self.class_token:
      prefix.append(self.param('cls_token', nn.initializers.normal(1e-6),
                               (1, 1, dim)))
    if self.reg_tokens:
      prefix.append(self.param('reg_token', nn.initializers.normal(1e-6),
                               (1, self.reg_tokens, dim)))
    num_prefix = sum(p.shape[1] for p in prefix)
    trained_grid = tuple(s // self.patch_size for s in tfm.pair(self.img_size))
    embedded_prefix = 0 if self.no_embed_class else num_prefix
    pos_embed = self.param(
        'pos_embed', nn.initializers.normal(0.02),
        (1, embedded_prefix + trained_grid[0] * trained_grid[1], dim))
    pos_embed = tfm.resample_pos_embed(pos_embed, trained_grid, grid,
                                       embedded_prefix).astype(self.dtype)
    prefix = [jnp.broadcast_to(p, (batch, *p.shape[1:])).astype(self.dtype)
              for p in prefix]
    if self.no_embed_class:
      x = jnp.concatenate(prefix + [x + pos_embed], axis=1)
    else:
      x = jnp.concatenate(prefix + [x], axis=1) + pos_embed

    rates = timm_layout.drop_path_rates(self.drop_path_rate, [self.depth])[0]
    for i in range(self.depth):
      x = Block(self.num_heads, int(dim * self.mlp_ratio),
                qkv_bias=self.qkv_bias, init_values=self.init_values,
                act_layer=self.act_layer, drop_path=rates[i], dtype=self.dtype,
                name=f'blocks_{i}')(x, train=train)
    return tfm.pool_tokens(x, global_pool=self.global_pool,
                           num_prefix=num_prefix, grid=grid,
                           use_fc_norm=use_fc_norm, dtype=self.dtype)


# timm's vit_{small,base,large}_patch{16,14}_224 (and _384: the same
# layers; set img_size).
VitSmallPatch16 = functools.partial(VisionTransformer, patch_size=16,
                                    embed_dim=384, depth=12, num_heads=6)
VitBasePatch16 = functools.partial(VisionTransformer, patch_size=16,
                                   embed_dim=768, depth=12, num_heads=12)
VitLargePatch16 = functools.partial(VisionTransformer, patch_size=16,
                                    embed_dim=1024, depth=24, num_heads=16)
VitLargePatch14 = functools.partial(VisionTransformer, patch_size=14,
                                    embed_dim=1024, depth=24, num_heads=16)


def timm_to_jaxtag(state_dict):
  """A timm VisionTransformer state dict -> {Tagger parameter path: array}
  ('backbone/...' and the linear head's 'head/Dense_0/...')."""
  return timm_layout.timm_to_jaxtag(state_dict)
