"""jaxtag: multi-label taggers for anime illustrations in JAX/Flax."""
