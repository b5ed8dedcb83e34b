"""Beam search for label decoders, in pure jnp with fixed shapes.

The vocabulary is the `sequence` label encoding's (jaxtag/data/labels.py):
labels 0..C-1, START = C, END = C + 1. What is searched:
- A hypothesis is at most `max_steps` tokens after START. It ends at its
  first END or, without one, after `max_steps` labels.
- No label appears twice in a hypothesis, and START is never emitted.
- Its score is the sum of its tokens' log-probabilities. Each step's
  distribution is the softmax of the step's logits over the tokens still
  allowed (labels not yet emitted, and END), so a decoder that spends mass
  on a repeat does not lose it.
- A finished hypothesis keeps its score and competes with the live ones
  (no length normalisation: CNN-RNN's label sets are short).

Besides the beams, the search keeps, for each label, the highest
probability it reached as the next token of any live beam at any step;
label decoders score images for ranking metrics (mAP) with it.

The loop is unrolled in Python: `step_fn` may call flax submodules, which
cannot run inside a lax loop, and `max_steps` is small (a few tens).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# step_fn(state, tokens [B, K]) -> (logits [B, K, C + 2], state). Every leaf
# of `state` is [B, K, ...]: the search reorders beams along axis 1.
StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


class BeamResult(NamedTuple):
  sequences: jax.Array     # [B, K, max_steps] int32, END after a hypothesis ends
  log_probs: jax.Array     # [B, K] float32, best first
  label_probs: jax.Array   # [B, C] float32, each label's highest probability


def beam_search(step_fn: StepFn, state, *, num_labels: int, beam_width: int,
                max_steps: int) -> BeamResult:
  """The `beam_width` best hypotheses per image, best first.

  state: the decoder's initial state, each leaf [B, K, ...] (identical
  along K). Ties between equal scores go to the lower beam and token.
  """
  if beam_width < 1 or max_steps < 1:
    raise ValueError(f'beam_width ({beam_width}) and max_steps ({max_steps}) '
                     'must be at least 1.')
  batch = jax.tree.leaves(state)[0].shape[0]
  start, end, vocab = num_labels, num_labels + 1, num_labels + 2
  k = beam_width
  tokens = jnp.full((batch, k), start, jnp.int32)
  # Only beam 0 is real at first: the others would repeat it.
  scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
  finished = jnp.zeros((batch, k), bool)
  used = jnp.zeros((batch, k, num_labels), bool)
  sequences = jnp.full((batch, k, max_steps), end, jnp.int32)
  label_probs = jnp.zeros((batch, num_labels), jnp.float32)
  # A finished beam's only continuation: END, at no cost.
  only_end = jnp.where(jnp.arange(vocab) == end, 0.0, -jnp.inf)
  reorder = jax.vmap(lambda x, parent: x[parent])

  for t in range(max_steps):
    logits, state = step_fn(state, tokens)
    blocked = jnp.concatenate(
        [used, jnp.ones((batch, k, 1), bool), jnp.zeros((batch, k, 1), bool)],
        axis=-1)
    log_p = jax.nn.log_softmax(
        jnp.where(blocked, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
    live = ~finished & jnp.isfinite(scores)
    label_probs = jnp.maximum(label_probs, jnp.max(
        jnp.where(live[..., None], jnp.exp(log_p[..., :num_labels]), 0.0),
        axis=1))
    step = jnp.where(finished[..., None], only_end, log_p)
    candidates = (scores[..., None] + step).reshape(batch, k * vocab)
    scores, flat = jax.lax.top_k(candidates, k)
    parent, tokens = flat // vocab, (flat % vocab).astype(jnp.int32)
    state = jax.tree.map(lambda x: reorder(x, parent), state)
    used = reorder(used, parent) | jax.nn.one_hot(
        tokens, vocab, dtype=bool)[..., :num_labels]
    finished = reorder(finished, parent) | (tokens == end)
    sequences = reorder(sequences, parent).at[:, :, t].set(tokens)
  return BeamResult(sequences, scores, label_probs)


def multi_hot(sequences: jax.Array, num_labels: int) -> jax.Array:
  """Labels of token sequences [..., T] as multi-hot [..., C] float32."""
  hot = jax.nn.one_hot(sequences, num_labels + 2, dtype=jnp.float32)
  return jnp.max(hot[..., :num_labels], axis=-2)
