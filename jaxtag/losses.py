"""Pure jnp losses, keyword-only (*, logits, labels, ...).

jaxtag/objectives.py chooses and combines them by `config.loss.name`.

Every loss works in float32 whatever the model's computation dtype. The
batch losses take an `example_mask` so that padded eval rows count for
nothing; `multilabel_softmax` returns per-example values [B], which its
objective averages with `masked_mean`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(per_example, example_mask=None):
  """The mean over the rows that `example_mask` [B] keeps (all if None)."""
  if example_mask is None:
    return jnp.mean(per_example)
  example_mask = example_mask.astype(jnp.float32)
  return jnp.sum(per_example * example_mask) / jnp.maximum(
      jnp.sum(example_mask), 1.0)


SIGMOID_BCE_REDUCTIONS = ('sum_over_tags', 'mean_over_tags')


def sigmoid_bce(*, logits, labels, label_weights=None, label_mask=None,
                example_mask=None, reduction='sum_over_tags'):
  """Binary cross-entropy per tag, summed over tags, averaged over images.

  label_weights: [C] per-tag weights; label_mask: [C] or [B, C], 0 ignores
  that label; example_mask: [B], 0 drops the row from sum and count.
  reduction 'mean_over_tags' divides the per-image sum by C, as ML-GCN's
  and ADD-GCN's reference code (MultiLabelSoftMarginLoss) do: the loss and
  its gradient are C times smaller, so a clip_norm binds C times later.
  """
  if reduction not in SIGMOID_BCE_REDUCTIONS:
    raise ValueError(f'Unknown sigmoid_bce reduction {reduction!r} '
                     '(config.loss.kwargs.reduction); valid: '
                     f'{", ".join(SIGMOID_BCE_REDUCTIONS)}.')
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  # log(1 + exp(-|x|)) form: finite for any logit.
  per_label = (jnp.maximum(logits, 0) - logits * labels
               + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  if label_weights is not None:
    per_label = per_label * jnp.asarray(label_weights, jnp.float32)
  if label_mask is not None:
    per_label = per_label * jnp.asarray(label_mask, jnp.float32)
  per_image = jnp.sum(per_label, axis=-1)
  if reduction == 'mean_over_tags':
    per_image = per_image / per_label.shape[-1]
  return masked_mean(per_image, example_mask)


def softmax_ce(*, logits, labels, label_smoothing=0.0, example_mask=None):
  """Single-label cross-entropy; labels are int class ids [B].

  label_smoothing eps puts 1 - eps on the class and eps / C on every class.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32),
                               axis=-1)[:, 0]
  per_example = -picked
  if label_smoothing:
    per_example = ((1.0 - label_smoothing) * per_example
                   - label_smoothing * jnp.mean(log_probs, axis=-1))
  return masked_mean(per_example, example_mask)


def multilabel_softmax(*, logits, labels):
  """Vallet & Sakamoto's multi-label softmax, per example [B]:

    E_i = -log(sum_{j in Y_i} exp(C_ij) / sum_{j in L} exp(C_ij)),

  the log of the softmax mass on the label set. With one positive it is
  the ordinary softmax cross-entropy. A row without positives has no
  defined value (log 0); it gets 0 here, and the objective leaves it out
  of the mean (`has_positive`).
  """
  logits = logits.astype(jnp.float32)
  positive = labels > 0.5
  # A row without positives takes its whole row instead, so the value is
  # exactly 0 and every gradient stays finite.
  positive = jnp.where(has_positive(labels)[:, None], positive, True)
  low = jnp.finfo(jnp.float32).min
  on_labels = jax.nn.logsumexp(jnp.where(positive, logits, low), axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - on_labels


def has_positive(labels):
  """[B] bool: the row has at least one label."""
  return jnp.any(labels > 0.5, axis=-1)


def sequence_ce(*, logits, targets, target_mask, example_mask=None):
  """Per-step softmax cross-entropy, averaged over the valid steps.

  logits [B, T, V], targets [B, T] int ids, target_mask [B, T] (0 past END).
  Every valid step of the batch counts once, so long label lists weigh more
  than short ones, as in a language model.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32),
                               axis=-1)[..., 0]
  weight = target_mask.astype(jnp.float32)
  if example_mask is not None:
    weight = weight * example_mask.astype(jnp.float32)[:, None]
  return -jnp.sum(picked * weight) / jnp.maximum(jnp.sum(weight), 1.0)
