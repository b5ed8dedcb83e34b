"""The eval loop: padded, masked batches so every process runs the same steps.

The eval step runs the model's prediction path, which never receives
ground truth, and turns its outputs into per-tag scores with the
objective. Its outputs stay sharded along the batch: each process pulls only
its own rows, and with several processes the rows meet on process 0 alone
(through the run's workdir, which every process of a run shares for its
checkpoints anyway), where the metric suite runs once per evaluation.
"""
from __future__ import annotations

import csv
import functools
import io
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxtag import metrics as metrics_lib
from jaxtag import sharding
from jaxtag import thresholds as thresholds_lib
from jaxtag.data import captions as captions_lib
from jaxtag.data import tag_metadata as tag_metadata_lib

ROW_KEYS = ('scores', 'labels', 'mask', 'index')


def eval_step(state, batch, *, model, objective, preprocess, predict_keys,
              train_keys):
  variables = {'params': state.params, 'batch_stats': state.batch_stats,
               'constants': state.constants}
  image = preprocess(batch['image'])
  spatial = ({'image_mask': batch['image_mask']} if 'image_mask' in batch
             else {})
  outputs = model.apply(variables, image, method='predict', **spatial,
                        **{k: batch[k] for k in predict_keys})
  scores = objective.scores(outputs)
  if hasattr(model.head, 'predict'):
    # The prediction path differs from training (and saw no labels): the
    # eval loss needs the training pass, teacher features included.
    outputs = model.apply(variables, image, train=False, **spatial,
                          **{k: batch[k] for k in train_keys})
  loss, _ = objective.loss(outputs, batch, example_mask=batch['mask'])
  return {'scores': scores.astype(jnp.float32), 'labels': batch['labels'],
          'mask': batch['mask'], 'index': batch['index'],
          'loss_sum': loss * jnp.sum(batch['mask'])}


def make_eval_step(model, objective, mesh, state_shardings, *, preprocess,
                   predict_keys=(), train_keys=()) -> Callable:
  rows = sharding.batch_sharding(mesh)
  out = {k: rows for k in ROW_KEYS}
  out['loss_sum'] = sharding.replicated(mesh)
  return jax.jit(
      functools.partial(eval_step, model=model, objective=objective,
                        preprocess=preprocess, predict_keys=predict_keys,
                        train_keys=train_keys),
      in_shardings=(state_shardings, rows), out_shardings=out)


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in global row order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, parts = set(), []
  for shard in shards:
    start = shard.index[0].start or 0
    if start not in seen:  # replicas along the model axis repeat rows
      seen.add(start)
      parts.append(np.asarray(shard.data))
  return np.concatenate(parts)


def _merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  order = np.argsort(merged['index'], kind='stable')
  return {k: v[order] for k, v in merged.items()}


def _gather_to_process0(local: dict[str, np.ndarray], workdir: str,
                        tag: str) -> dict[str, np.ndarray] | None:
  """Process 0 gets every process's rows; the others get None."""
  if jax.process_count() == 1:
    return local
  folder = epath.Path(workdir) / 'eval_rows' / tag
  folder.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **local)
  (folder / f'process_{jax.process_index()}.npz').write_bytes(
      buffer.getvalue())
  multihost_utils.sync_global_devices(f'jaxtag_eval_rows_{tag}')
  if jax.process_index() != 0:
    return None
  parts = []
  for p in range(jax.process_count()):
    with np.load(io.BytesIO((folder / f'process_{p}.npz').read_bytes())) as f:
      parts.append({k: f[k] for k in f.files})
  folder.rmtree()
  return _merge(parts)


def predict(step_fn, state, batches, mesh, workdir: str = '',
            tag: str = 'eval') -> dict[str, np.ndarray] | None:
  """Scores, labels and index of the real rows, in record order, on
  process 0 (None on the others); 'loss' is the mean eval loss."""
  parts, loss_sum, skipped = [], 0.0, getattr(batches, 'skipped_images', None)
  for batch in batches:
    out = step_fn(state, sharding.to_global(batch, mesh))
    rows = {k: _local_rows(out[k]) for k in ROW_KEYS}
    keep = rows['mask'] > 0
    parts.append({k: rows[k][keep] for k in ('scores', 'labels', 'index')})
    loss_sum += float(out['loss_sum'])
  if not parts:
    raise ValueError('The evaluation split produced no batches.')
  merged = _gather_to_process0(_merge(parts), workdir, tag)
  if merged is None:
    return None
  merged['loss'] = loss_sum / max(len(merged['index']), 1)
  if skipped is not None and skipped.count:
    logging.warning('%s: %d image(s) skipped on process 0 (undecodable or '
                    'not encodable).', tag, skipped.count)
  return merged


def label_mask(source, index, feature: str, num_classes: int) -> np.ndarray:
  """[N, C] float32 of the rows `index` of `source`: 0 for the tag ids
  that each record's `feature` lists (left out of the metrics), else 1.

  Read on the host from the records themselves, so the eval step and the
  batches are the same whether or not a dataset has such labels.
  """
  mask = np.ones((len(index), num_classes), np.float32)
  for row, record in enumerate(np.asarray(index)):
    example = source[int(record)]
    if feature not in example:
      raise ValueError(f'config.dataset.label_mask_feature = {feature!r} is '
                       'not a feature of the dataset (it has '
                       f'{", ".join(sorted(example))}); set it to one that '
                       "lists tag ids, or to ''.")
    ids = np.asarray(example[feature], np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
      raise ValueError(f'{feature} holds tag id {int(ids.max())}, outside the '
                       f'{num_classes} tags of selected_tags.csv; rebuild '
                       'the dataset.')
    mask[row, ids] = 0.0
  return mask


def score(pred: dict[str, np.ndarray], *, task: str, eval_config,
          tag_metadata, thresholds=None):
  """(metrics, pred, thresholds): the task's metric suite on `pred`.

  Multi-label: `thresholds` (a fitted record) is applied, or, when None,
  the config's policy is fitted on these very predictions.
  """
  if task == 'captioning':
    # scores: decoded token ids; labels: [R, T + 2] references per image.
    hyps = [captions_lib.hypothesis_words(t) for t in pred['scores']]
    refs = [captions_lib.reference_words(r) for r in pred['labels']]
    keep = [i for i, r in enumerate(refs) if r]
    result = metrics_lib.bleu([hyps[i] for i in keep],
                              [refs[i] for i in keep])
  elif task == 'single_label':
    result = metrics_lib.single_label_metrics(pred['scores'], pred['labels'])
    result['most_confused'] = [
        [tag_metadata.names[t], tag_metadata.names[p], n] for t, p, n in
        metrics_lib.most_confused_pairs(pred['scores'], pred['labels'])]
  else:
    if thresholds is None:
      thresholds = thresholds_lib.fit(eval_config, pred['scores'],
                                      pred['labels'], tag_metadata)
    # [N, C] label_mask (see label_mask): 0 drops that pair from the metrics.
    mask = pred.get('label_mask')
    pred['ap'] = metrics_lib.average_precision(pred['scores'], pred['labels'],
                                               mask)
    pred['threshold'] = thresholds_lib.apply(thresholds, pred['scores'])
    result = metrics_lib.multilabel_metrics(
        pred['scores'], pred['labels'], threshold=pred['threshold'],
        top_k=eval_config.top_k, ap=pred['ap'], mask=mask)
    result['thresholds'] = thresholds['policy']
  result['loss'] = pred['loss']
  result['num_examples'] = int(len(pred['index']))
  return result, pred, thresholds


def write_results(workdir: str, name: str, result: dict, pred: dict, *, tags,
                  task: str, thresholds, header: dict,
                  vocabulary=None) -> None:
  """`<name>.json`, the per-tag, per-class or per-image caption CSV, and
  `thresholds.json`."""
  folder = epath.Path(workdir)
  (folder / f'{name}.json').write_text(json.dumps(
      {**header, 'metrics': result}, indent=2))
  if task == 'captioning':
    write_captions_csv(folder / f'{name}_captions.csv', pred, vocabulary)
  elif task == 'single_label':
    write_per_class_csv(folder / f'{name}_per_class.csv', pred, tags)
  else:
    write_per_tag_csv(folder / f'{name}_per_tag.csv', pred, tags)
    if name == 'results' and thresholds is not None:
      thresholds_lib.save(workdir, thresholds)
  logging.info('Wrote %s', folder / f'{name}.json')


def _category_name(category) -> str:
  return tag_metadata_lib.CATEGORIES.get(int(category), str(int(category)))


def write_per_tag_csv(path, pred: dict[str, np.ndarray], tag_metadata) -> None:
  """tag, category, train/test counts, AP, its threshold, and precision and
  recall at the thresholds that `pred['threshold']` holds."""
  scores, labels = pred['scores'], pred['labels'] > 0.5
  threshold = np.broadcast_to(pred['threshold'], scores.shape)
  # Pairs that label_mask leaves out count neither as predicted nor as true.
  valid = (pred['label_mask'] > 0 if 'label_mask' in pred
           else np.ones_like(labels))
  labels = labels & valid
  predicted = (scores >= threshold) & valid
  correct = (predicted & labels).sum(0)
  n_pred, n_true = predicted.sum(0), labels.sum(0)
  ap = pred['ap']
  per_tag = np.asarray(pred['threshold'])
  per_tag = per_tag if per_tag.ndim == 1 else None  # a linear one varies
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['tag', 'category', 'train_count', 'test_count', 'AP',
                   'threshold', 'precision', 'recall'])
  for c, name in enumerate(tag_metadata.names):
    writer.writerow([
        name, _category_name(tag_metadata.categories[c]),
        int(tag_metadata.counts[c]), int(n_true[c]),
        '' if np.isnan(ap[c]) else f'{ap[c]:.4f}',
        '' if per_tag is None else f'{per_tag[c]:.4f}',
        f'{correct[c] / n_pred[c]:.4f}' if n_pred[c] else '0.0000',
        f'{correct[c] / n_true[c]:.4f}' if n_true[c] else ''])
  epath.Path(path).write_text(out.getvalue())


def write_captions_csv(path, pred: dict[str, np.ndarray], vocabulary) -> None:
  """Per image: its record index, the decoded caption and its first
  reference (as the vocabulary spells it: unknown words read <unk>)."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['index', 'caption', 'reference'])
  for index, tokens, refs in zip(pred['index'], pred['scores'],
                                 pred['labels']):
    writer.writerow([int(index),
                     ' '.join(vocabulary.decode(tokens.astype(np.int64))),
                     ' '.join(vocabulary.decode(refs[0]))])
  epath.Path(path).write_text(out.getvalue())


def write_per_class_csv(path, pred: dict[str, np.ndarray],
                        tag_metadata) -> None:
  """class, test count, top-1 accuracy, and the class it is most often
  mistaken for, with how often."""
  scores, labels = pred['scores'], pred['labels'].astype(np.int64)
  accuracy = metrics_lib.per_class_accuracy(scores, labels)
  confusion = metrics_lib.confusion_matrix(scores, labels)
  np.fill_diagonal(confusion, 0)
  count = np.bincount(labels, minlength=scores.shape[1])
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['class', 'test_count', 'accuracy', 'most_confused_with',
                   'times'])
  for c, name in enumerate(tag_metadata.names):
    if count[c] == 0:
      continue
    worst = int(np.argmax(confusion[c]))
    times = int(confusion[c, worst])
    writer.writerow([name, int(count[c]), f'{accuracy[c]:.4f}',
                     tag_metadata.names[worst] if times else '', times])
  epath.Path(path).write_text(out.getvalue())
