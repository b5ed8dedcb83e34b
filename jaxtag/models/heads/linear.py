"""The baseline head: global pooling, then one linear layer per tag."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models import pooling


class LinearHead(nn.Module):
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train: bool, feature_mask=None):
    del train
    x = pooling.pool(features, self.pool, feature_mask)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      param_dtype=jnp.float32)(x)
    return logits.astype(jnp.float32)
