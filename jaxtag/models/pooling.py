"""Global pooling of a feature map [B, H, W, D] -> [B, D]."""
import jax.numpy as jnp

POOLS = {
    'gap': lambda x: jnp.mean(x, axis=(1, 2)),
    # ML-GCN pools with the max: a small object anywhere still fires.
    'gmp': lambda x: jnp.max(x, axis=(1, 2)),
}


def pool(x, kind: str):
  if kind not in POOLS:
    raise ValueError(f'Unknown pooling {kind!r} (config.model.pool); '
                     f'valid: {", ".join(sorted(POOLS))}.')
  return POOLS[kind](x)
