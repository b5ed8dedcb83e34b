"""The eval loop: padded, masked batches so every process runs the same steps.

Scores come back replicated, so every process holds the full [N, C] matrix
in record order and computes the same metrics.
"""
from __future__ import annotations

import csv
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxtag import metrics as metrics_lib
from jaxtag import sharding

BATCH_KEYS = ('image', 'labels', 'mask', 'index')


def model_extras(batch: dict[str, Any]) -> dict[str, Any]:
  """Batch features other than image and labels go to the model by name."""
  return {k: v for k, v in batch.items() if k not in BATCH_KEYS}


def eval_step(state, batch, *, model, loss_fn):
  logits = model.apply({'params': state.params,
                        'batch_stats': state.batch_stats},
                       batch['image'], train=False, **model_extras(batch))
  logits = logits.astype(jnp.float32)
  loss = loss_fn(logits=logits, labels=batch['labels'],
                 example_mask=batch['mask'])
  return {'scores': jax.nn.sigmoid(logits), 'labels': batch['labels'],
          'mask': batch['mask'], 'index': batch['index'],
          'loss_sum': loss * jnp.sum(batch['mask'])}


def make_eval_step(model, loss_fn, mesh, state_shardings) -> Callable:
  return jax.jit(functools.partial(eval_step, model=model, loss_fn=loss_fn),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def predict(step_fn, state, batches, mesh) -> dict[str, np.ndarray]:
  """Runs every batch; returns scores, labels and index of the real rows."""
  parts, loss_sum = [], 0.0
  for batch in batches:
    out = jax.device_get(step_fn(state, sharding.to_global(batch, mesh)))
    keep = out['mask'] > 0
    parts.append({k: out[k][keep] for k in ('scores', 'labels', 'index')})
    loss_sum += float(out['loss_sum'])
  if not parts:
    raise ValueError('The evaluation split produced no batches.')
  merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  order = np.argsort(merged['index'], kind='stable')
  merged = {k: v[order] for k, v in merged.items()}
  merged['loss'] = loss_sum / max(len(merged['index']), 1)
  return merged


def evaluate(step_fn, state, batches, mesh, *, threshold: float,
             top_k: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  pred = predict(step_fn, state, batches, mesh)
  result = metrics_lib.multilabel_metrics(
      pred['scores'], pred['labels'], threshold=threshold, top_k=top_k)
  result['loss'] = pred['loss']
  result['num_examples'] = int(len(pred['index']))
  return result, pred


def write_per_tag_csv(path: str, pred: dict[str, np.ndarray], tag_metadata,
                      threshold: float) -> None:
  """tag, category, train count, AP, and precision/recall at the threshold."""
  scores, labels = pred['scores'], pred['labels'] > 0.5
  predicted = scores >= threshold
  correct = (predicted & labels).sum(0)
  n_pred, n_true = predicted.sum(0), labels.sum(0)
  ap = metrics_lib.average_precision(scores, labels.astype(np.float32))
  with epath.Path(path).open('w') as f:
    writer = csv.writer(f)
    writer.writerow(['tag', 'category', 'train_count', 'test_count', 'AP',
                     'precision', 'recall'])
    for c, name in enumerate(tag_metadata.names):
      writer.writerow([
          name, int(tag_metadata.categories[c]), int(tag_metadata.counts[c]),
          int(n_true[c]), '' if np.isnan(ap[c]) else f'{ap[c]:.4f}',
          f'{correct[c] / n_pred[c]:.4f}' if n_pred[c] else '0.0000',
          f'{correct[c] / n_true[c]:.4f}' if n_true[c] else ''])
