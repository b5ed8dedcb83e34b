"""Beam search for caption decoders, in pure jnp with fixed shapes.

Unlike label decoding (jaxtag/models/beam_search.py), words may repeat. A
hypothesis is at most `max_steps` tokens after START and ends at its first
END (or after `max_steps` tokens). The `banned` tokens (PAD, START) are never
emitted. Its score is the sum of its tokens' log-probabilities under the
softmax over the tokens that are not banned; no length normalisation. A
finished hypothesis keeps its score (its only continuation is END at no
cost) and competes with the live ones. With `beam_width=1` this is greedy
decoding. Ties go to the lower beam and token.

The loop is unrolled in Python: `step_fn` may call flax submodules.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# step_fn(state, tokens [B, K]) -> (logits [B, K, V], state); every leaf of
# `state` is [B, K, ...].
StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


class CaptionBeams(NamedTuple):
  sequences: jax.Array    # [B, K, max_steps] int32, END after a caption ends
  log_probs: jax.Array    # [B, K] float32, best first


def beam_search(step_fn: StepFn, state, *, vocab_size: int, beam_width: int,
                max_steps: int, start: int, end: int,
                banned=()) -> CaptionBeams:
  if beam_width < 1 or max_steps < 1:
    raise ValueError(f'beam_width ({beam_width}) and max_steps ({max_steps}) '
                     'must be at least 1.')
  batch = jax.tree.leaves(state)[0].shape[0]
  k, v = beam_width, vocab_size
  tokens = jnp.full((batch, k), start, jnp.int32)
  scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
  finished = jnp.zeros((batch, k), bool)
  sequences = jnp.full((batch, k, max_steps), end, jnp.int32)
  blocked = jnp.isin(jnp.arange(v), jnp.asarray(banned, jnp.int32))
  only_end = jnp.where(jnp.arange(v) == end, 0.0, -jnp.inf)
  reorder = jax.vmap(lambda x, parent: x[parent])
  for t in range(max_steps):
    logits, state = step_fn(state, tokens)
    log_p = jax.nn.log_softmax(
        jnp.where(blocked, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
    step = jnp.where(finished[..., None], only_end, log_p)
    candidates = (scores[..., None] + step).reshape(batch, k * v)
    scores, flat = jax.lax.top_k(candidates, k)
    parent, tokens = flat // v, (flat % v).astype(jnp.int32)
    state = jax.tree.map(lambda x: reorder(x, parent), state)
    finished = reorder(finished, parent) | (tokens == end)
    sequences = reorder(sequences, parent).at[:, :, t].set(tokens)
  return CaptionBeams(sequences, scores)
