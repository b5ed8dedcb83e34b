"""Beam search for sequence decoders (labels and captions), in pure jnp with
fixed shapes.

`search` is the one search; `beam_search` calls it for label decoders.
What is searched:
- A hypothesis is at most `max_steps` tokens after `start`. It ends at its
  first `end` or, without one, after `max_steps` tokens.
- The `banned` tokens are never emitted, and the tokens below `unique_below`
  at most once per hypothesis (a label set has no repeats; words may repeat).
- Its score is the sum of its tokens' log-probabilities. Each step's
  distribution is the softmax of the step's logits over the tokens still
  allowed, so a decoder that spends mass on a repeat does not lose it.
- A finished hypothesis keeps its score (its only continuation is `end` at
  no cost) and competes with the live ones; no length normalisation.
- With `beam_width=1` this is greedy decoding. Ties go to the lower beam and
  token.

Besides the beams, the search keeps, for each token, the highest probability
it reached as the next token of any live beam at any step; label decoders
score images for ranking metrics (mAP) with it.

For label decoders the vocabulary is the `sequence` label encoding's
(jaxtag/data/labels.py): labels 0..C-1, START = C, END = C + 1.

The loop is unrolled in Python: `step_fn` may call flax submodules, which
cannot run inside a lax loop, and `max_steps` is small (a few tens).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

# step_fn(state, tokens [B, K]) -> (logits [B, K, V], state). Every leaf of
# `state` is [B, K, ...]: the search reorders beams along axis 1.
StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


class Beams(NamedTuple):
  sequences: jax.Array     # [B, K, max_steps] int32, `end` after the end
  log_probs: jax.Array     # [B, K] float32, best first
  token_probs: jax.Array   # [B, V] float32, each token's highest probability


class BeamResult(NamedTuple):
  sequences: jax.Array     # [B, K, max_steps] int32, END after the end
  log_probs: jax.Array     # [B, K] float32, best first
  label_probs: jax.Array   # [B, C] float32, each label's highest probability


def search(step_fn: StepFn, state, *, vocab_size: int, beam_width: int,
           max_steps: int, start: int, end: int, banned=(),
           unique_below: int = 0) -> Beams:
  """The `beam_width` best hypotheses per image, best first.

  state: the decoder's initial state, each leaf [B, K, ...] (identical
  along K).
  """
  if beam_width < 1 or max_steps < 1:
    raise ValueError(f'beam_width ({beam_width}) and max_steps ({max_steps}) '
                     'must be at least 1.')
  batch = jax.tree.leaves(state)[0].shape[0]
  k, v = beam_width, vocab_size
  tokens = jnp.full((batch, k), start, jnp.int32)
  # Only beam 0 is real at first: the others would repeat it.
  scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((batch, 1))
  finished = jnp.zeros((batch, k), bool)
  used = jnp.zeros((batch, k, unique_below), bool)
  sequences = jnp.full((batch, k, max_steps), end, jnp.int32)
  token_probs = jnp.zeros((batch, v), jnp.float32)
  banned = jnp.isin(jnp.arange(v), jnp.asarray(banned, jnp.int32))
  # A finished beam's only continuation: `end`, at no cost.
  only_end = jnp.where(jnp.arange(v) == end, 0.0, -jnp.inf)
  reorder = jax.vmap(lambda x, parent: x[parent])

  for t in range(max_steps):
    logits, state = step_fn(state, tokens)
    blocked = banned | jnp.pad(used, ((0, 0), (0, 0), (0, v - unique_below)))
    log_p = jax.nn.log_softmax(
        jnp.where(blocked, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
    live = ~finished & jnp.isfinite(scores)
    token_probs = jnp.maximum(token_probs, jnp.max(
        jnp.where(live[..., None], jnp.exp(log_p), 0.0), axis=1))
    step = jnp.where(finished[..., None], only_end, log_p)
    candidates = (scores[..., None] + step).reshape(batch, k * v)
    scores, flat = jax.lax.top_k(candidates, k)
    parent, tokens = flat // v, (flat % v).astype(jnp.int32)
    state = jax.tree.map(lambda x: reorder(x, parent), state)
    used = reorder(used, parent) | jax.nn.one_hot(
        tokens, v, dtype=bool)[..., :unique_below]
    finished = reorder(finished, parent) | (tokens == end)
    sequences = reorder(sequences, parent).at[:, :, t].set(tokens)
  return Beams(sequences, scores, token_probs)


def beam_search(step_fn: StepFn, state, *, num_labels: int, beam_width: int,
                max_steps: int) -> BeamResult:
  """`search` over label sequences: no label twice, START never emitted."""
  start, end = num_labels, num_labels + 1
  beams = search(step_fn, state, vocab_size=num_labels + 2,
                 beam_width=beam_width, max_steps=max_steps, start=start,
                 end=end, banned=(start,), unique_below=num_labels)
  return BeamResult(beams.sequences, beams.log_probs,
                    beams.token_probs[:, :num_labels])


def multi_hot(sequences: jax.Array, num_labels: int) -> jax.Array:
  """Labels of token sequences [..., T] as multi-hot [..., C] float32."""
  hot = jax.nn.one_hot(sequences, num_labels + 2, dtype=jnp.float32)
  return jnp.max(hot[..., :num_labels], axis=-2)
