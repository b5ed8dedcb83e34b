"""Pure jnp losses, chosen by name; keyword-only (*, logits, labels, ...).

Every loss works in float32 whatever the model's computation dtype, and
takes an `example_mask` so that padded eval rows count for nothing.
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp


def _masked_mean(per_example, example_mask):
  if example_mask is None:
    return jnp.mean(per_example)
  example_mask = example_mask.astype(jnp.float32)
  return jnp.sum(per_example * example_mask) / jnp.maximum(
      jnp.sum(example_mask), 1.0)


def sigmoid_bce(*, logits, labels, label_weights=None, label_mask=None,
                example_mask=None):
  """Binary cross-entropy per tag, summed over tags, averaged over images.

  label_weights: [C] per-tag weights; label_mask: [C] or [B, C], 0 ignores
  that label; example_mask: [B], 0 drops the row from sum and count.
  """
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  # log(1 + exp(-|x|)) form: finite for any logit.
  per_label = (jnp.maximum(logits, 0) - logits * labels
               + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  if label_weights is not None:
    per_label = per_label * jnp.asarray(label_weights, jnp.float32)
  if label_mask is not None:
    per_label = per_label * jnp.asarray(label_mask, jnp.float32)
  return _masked_mean(jnp.sum(per_label, axis=-1), example_mask)


def softmax_ce(*, logits, labels, example_mask=None):
  """Single-label cross-entropy; labels are int class ids [B]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32),
                               axis=-1)[:, 0]
  return _masked_mean(-picked, example_mask)


LOSSES = {
    'sigmoid_bce': sigmoid_bce,
    'softmax_ce': softmax_ce,
}


def get_loss(name: str, **kwargs):
  """The loss `name` with `config.loss.kwargs` bound, checked by name."""
  if name not in LOSSES:
    raise ValueError(f'Unknown loss {name!r} (config.loss.name); valid: '
                     f'{", ".join(sorted(LOSSES))}.')
  fn = LOSSES[name]
  # The batch supplies logits, labels and the masks; the config the rest.
  accepted = set(inspect.signature(fn).parameters) - {
      'logits', 'labels', 'example_mask'}
  unknown = set(kwargs) - accepted
  if unknown:
    raise ValueError(f'Unknown key(s) {sorted(unknown)} in config.loss.kwargs '
                     f'for {name!r}; valid: {", ".join(sorted(accepted))}.')
  return functools.partial(fn, **kwargs) if kwargs else fn
