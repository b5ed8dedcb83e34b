"""The multi-label task: per-tag scores [N, C], judged on thresholds.

Metrics: mAP, CP/CR/CF1, OP/OR/OF1, their top-k, and per-image metrics
(jaxtag/metrics.py), with the run's threshold policy (config.eval.
thresholds, fitted on the eval split) applied; beside them the WD v3
cards' metrics, which fit their own thresholds (metrics.equal_pr_metrics):
macro-F1 at each tag's P = R threshold, and macro-F1, micro-F1 and MCC at
the one global threshold where macro precision equals macro recall; `<name>_per_tag.csv`; the
precision-recall, per-tag AP and label-graph figures. Served as the WD
tagger front ends do: ratings, general and character tags above their
thresholds.
"""
from __future__ import annotations

import csv
import io
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from jaxtag import metrics as metrics_lib
from jaxtag import thresholds as thresholds_lib
from jaxtag.data import tag_metadata as tag_metadata_lib
from jaxtag.tasks import base


class MultiLabel(base.Task):
  name: ClassVar[str] = 'multi_label'
  summary_keys: ClassVar[tuple[str, ...]] = (
      'mAP', 'CF1', 'OF1', 'F1_macro_PR', 'CF1_top3', 'OF1_top3', 'loss')
  # Whether conversion tunes per-tag thresholds on the validation split.
  tunes_on_validation: ClassVar[bool] = True

  # ---------------------------------------------------------- evaluation ---

  def score(self, pred, *, eval_config, thresholds=None):
    if thresholds is None:
      thresholds = thresholds_lib.fit(eval_config, pred['scores'],
                                      pred['labels'], self.tags)
    # [N, C] label_mask (evaluate.label_mask): 0 drops that pair.
    mask = pred.get('label_mask')
    pred['ap'] = metrics_lib.average_precision(pred['scores'], pred['labels'],
                                               mask)
    pred['threshold'] = thresholds_lib.apply(thresholds, pred['scores'])
    result = metrics_lib.multilabel_metrics(
        pred['scores'], pred['labels'], threshold=pred['threshold'],
        top_k=eval_config.top_k, ap=pred['ap'], mask=mask)
    result.update(metrics_lib.equal_pr_metrics(pred['scores'],
                                               pred['labels'], mask))
    result['thresholds'] = thresholds['policy']
    return result, pred, thresholds

  def write_files(self, folder, name, pred):
    write_per_tag_csv(epath.Path(folder) / f'{name}_per_tag.csv', pred,
                      self.tags)

  def figures(self, pred, *, title='', graphs=None, images=None):
    from jaxtag import plots  # pylint: disable=g-import-not-at-top
    del images
    tags, prefix = self.tags, f'{title}: ' if title else ''
    names = list(tags.names)
    return {
        'pr': plots.pr_figure(pred['scores'], pred['labels'],
                              pred['threshold'], tags.categories,
                              title=f'{prefix}precision-recall'),
        'ap_bars': plots.ap_bar_figure(pred['ap'], names, tags.counts,
                                       tags.categories,
                                       title=f'{prefix}per-tag AP'),
        'ap_vs_count': plots.ap_vs_count_figure(
            pred['ap'], tags.counts, tags.categories, names,
            title=f'{prefix}per-tag AP against train count'),
        **plots.graph_figures(graphs, names, prefix)}

  # ---------------------------------------------------------- conversion ---

  def bundle_labels(self):
    return list(self.tags.names), self.tags.categories, self.tags.counts

  def bundle_tag_ids(self):
    return self.tags.tag_ids

  def bundle_thresholds(self, eval_config, workdir, predict):
    """`run`: the policy the run saved (fitted on the validation split when
    training did not finish); `by_category`; `per_tag`: `category`, `f1`
    and `precision_recall` (tuned on the validation split)."""
    scores = labels = None
    if self.tunes_on_validation:
      pred = predict()
      scores, labels = pred['scores'], pred['labels']
    if (epath.Path(workdir) / thresholds_lib.FILENAME).exists():
      run_record = thresholds_lib.load(workdir)
    elif scores is not None:
      logging.warning('%s has no thresholds.json (training did not finish); '
                      'fitting config.eval.thresholds on the validation '
                      'split.', workdir)
      run_record = thresholds_lib.fit(eval_config, scores, labels, self.tags)
    else:
      run_record = {'policy': 'global', 'tags': list(self.tags.names),
                    'per_tag': [float(eval_config.threshold)]
                               * len(self.tags.names)}
    return thresholds_lib.tuned(eval_config, scores, labels, self.tags,
                                run_record)

  # -------------------------------------------------------------- bundle ---

  def bundle_output(self, scores, gather_index):
    # A rating the model lacks reads the appended zero column.
    zeros = jnp.zeros((scores.shape[0], 1), scores.dtype)
    return jnp.concatenate([scores, zeros], axis=1)[:, gather_index]

  # ------------------------------------------------------- tag and serve ---

  def empty_scores(self, num_tags):
    return np.zeros((0, num_tags), np.float32)

  def thresholds(self, tagger, scores):
    scores = np.asarray(scores, np.float32)
    out = np.array(np.broadcast_to(
        tagger.bundle.threshold_values(scores, tagger.policy), scores.shape))
    if tagger.overrides['all'] is not None:
      out[:] = tagger.overrides['all']
    for name in ('general', 'character'):
      if tagger.overrides[name] is not None:
        out[:, tagger.groups[name]] = tagger.overrides[name]
    return out

  def results(self, tagger, scores):
    """'rating' (all four), 'general', 'character' (and 'other' for further
    categories) of tag -> score, at or above their thresholds (every tag
    with the tagger's `all_scores`), highest first."""
    scores = np.asarray(scores, np.float32)
    thresholds = self.thresholds(tagger, scores)
    names = tagger.names
    out = []
    for row, limit in zip(scores, thresholds):
      result = {'rating': {names[i]: float(row[i])
                           for i in tagger.groups['rating']}}
      for group, index in tagger.groups.items():
        if group == 'rating':
          continue
        keep = (index if tagger.all_scores
                else index[row[index] >= limit[index]])
        keep = keep[np.argsort(-row[keep], kind='stable')]
        result[group] = {names[i]: float(row[i]) for i in keep}
      out.append(result)
    return out

  def text_file(self, result, existing, tags_text):
    return tags_text(result, existing)

  def csv_header(self):
    return ['file', 'rating', 'general', 'character']

  def csv_row(self, record):
    ratings = record['rating']
    top = max(ratings, key=ratings.get) if ratings else ''
    return [record['file'], top, ', '.join(record['general']),
            ', '.join(record['character'])]

  def serve_records(self, tagger, scores, requests, page_extras=None):
    results = tagger.results(scores)
    thresholds = tagger.thresholds(scores)
    out = []
    for row, (name, with_scores) in enumerate(requests):
      record = {'file': name, **results[row]}
      if with_scores and page_extras is not None:
        record['scores'], record['thresholds'] = page_extras(
            scores[row], thresholds[row])
      out.append(record)
    return out


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

