"""The baseline head: global pooling, then one linear layer per tag.

`norm=True` puts a LayerNorm (eps 1e-6) between the pooling and the linear
layer: timm's ConvNeXt classifier (`head.norm`) and the ViT/EVA `fc_norm`
of average-pooled transformers, whose pretrained weights it carries.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import pooling


class LinearHead(nn.Module):
  num_classes: int
  pool: str = 'gap'
  norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train: bool, feature_mask=None):
    del train
    x = pooling.pool(features, self.pool, feature_mask)
    if self.norm:
      x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32,
                       use_fast_variance=False, name='norm')(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      param_dtype=jnp.float32)(x)
    return logits.astype(jnp.float32)
