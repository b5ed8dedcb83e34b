"""Decision thresholds: which scores become predicted tags.

`config.eval.thresholds` picks a policy:
- `global`: one value, `config.eval.threshold`.
- `category`: one value per Danbooru category (`config.eval.category_thresholds`,
  by the categories of selected_tags.csv).
- `tag`: one value per tag, the one of the grid 0.01 .. 0.99 that maximises
  that tag's F1 on the split it is fitted on; a tag without positives there
  keeps `config.eval.threshold`.
- `linear`: a per-image threshold t = w . s + b, a linear function of the
  image's score vector s (Vallet & Sakamoto, after their Ref. [17]). Each
  fitting image's target is the midpoint between consecutive ranked scores
  that maximises its multi-label accuracy |Y & P| / |Y | P|; w and b are a
  ridge least-squares fit to those targets. `fit_linear_threshold` and
  `apply_linear_threshold` are the policy on arrays alone.

A fitted policy is a JSON-able record; the trainer fits it on the eval
split, applies it to the test split and saves it as `thresholds.json` in
the workdir, so serving applies the same thresholds. A bundle's
thresholds.json (`tuned`) adds per-tag values tuned on the validation
split for the serving front ends.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from etils import epath

from jaxtag import metrics as metrics_lib
from jaxtag.data import tag_metadata as tag_metadata_lib

POLICIES = ('global', 'category', 'tag', 'linear')
FILENAME = 'thresholds.json'
_GRID_BINS = 100
# Ridge penalty of the linear threshold, per fitting image: keeps the fit
# defined when tags never occur or scores are collinear.
_RIDGE_PER_IMAGE = 1e-3


def check(policy: str) -> None:
  if policy not in POLICIES:
    raise ValueError(f'Unknown config.eval.thresholds {policy!r}; valid: '
                     f'{", ".join(POLICIES)}.')


def category_values(eval_config, categories) -> np.ndarray:
  """[C] thresholds from `config.eval.category_thresholds` by category id."""
  out = np.empty(len(categories), np.float64)
  for c, category in enumerate(categories):
    name = tag_metadata_lib.CATEGORIES.get(int(category))
    if name is None:
      raise ValueError(
          f'Tag {c} has category {int(category)}, which has no entry in '
          'config.eval.category_thresholds (known categories: '
          f'{tag_metadata_lib.CATEGORIES}); fix selected_tags.csv.')
    out[c] = float(eval_config.category_thresholds[name])
  return out


def best_f1_per_tag(scores, labels, default: float,
                    bins: int = _GRID_BINS) -> np.ndarray:
  """[C]: per tag, the grid threshold j / bins (0 < j < bins) of best F1."""
  scores = np.asarray(scores, np.float32)
  targets = np.asarray(labels) > 0.5
  pos, every = metrics_lib.bin_counts(scores, targets,
                                      np.ones_like(targets), bins)
  tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1][:, 1:]   # thresholds j >= 1
  pp = np.cumsum(every[:, ::-1], axis=1)[:, ::-1][:, 1:]
  ng = pos.sum(axis=1, keepdims=True)
  f1 = 2 * tp / np.maximum(pp + ng, 1)
  best = (np.argmax(f1, axis=1) + 1) / bins  # the lowest of tied thresholds
  return np.where(ng[:, 0] > 0, best, default)


def linear_targets(scores, labels) -> np.ndarray:
  """[N]: per image, the threshold of best accuracy |Y & P| / |Y | P|.

  P is always a top-k set of the image's ranked scores; the threshold is
  the midpoint between the k-th and (k+1)-th score (above the first: 1, or
  the first + 1 when it is 1 or more; below the last: 0, or the last - 1). The first k of highest accuracy wins ties.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels) > 0.5
  n, c = scores.shape
  order = np.argsort(-scores, axis=1, kind='stable')
  ranked = np.take_along_axis(scores, order, axis=1)
  hits = np.take_along_axis(labels, order, axis=1)
  inter = np.concatenate([np.zeros((n, 1)), np.cumsum(hits, axis=1)], axis=1)
  k = np.arange(c + 1)[None, :]
  union = k + labels.sum(axis=1, keepdims=True) - inter
  accuracy = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
  best = np.argmax(accuracy, axis=1)
  # Past the ends: 1 and 0 for scores inside [0, 1); scores beyond them
  # (raw confidences) get a margin of 1, so that predicting no label, or
  # every label, stays what the target says.
  top, bottom = ranked[:, :1], ranked[:, -1:]
  upper = np.concatenate([np.where(top < 1.0, 1.0, top + 1.0), ranked], axis=1)
  lower = np.concatenate([ranked, np.where(bottom > 0.0, 0.0, bottom - 1.0)],
                         axis=1)
  rows = np.arange(n)
  return (upper[rows, best] + lower[rows, best]) / 2


def ridge_fit(x, y, penalty: float) -> tuple[np.ndarray, float]:
  """(w, b) minimising |x w + b - y|^2 + penalty |w|^2 (b unpenalised).

  Solves in the smaller of the image and tag dimensions, so that 10k tags
  with 1k fitting images is a 1k x 1k system.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  x_mean, y_mean = x.mean(axis=0), y.mean()
  xc, yc = x - x_mean, y - y_mean
  n, c = xc.shape
  if n < c:
    w = xc.T @ np.linalg.solve(xc @ xc.T + penalty * np.eye(n), yc)
  else:
    w = np.linalg.solve(xc.T @ xc + penalty * np.eye(c), xc.T @ yc)
  return w, float(y_mean - x_mean @ w)


def fit_linear_threshold(scores, labels) -> tuple[np.ndarray, float]:
  """(weights [C], bias) of the `linear` policy: the per-image threshold
  t = weights . s + bias, fitted on (scores [N, C], labels [N, C])."""
  targets = linear_targets(scores, labels)
  return ridge_fit(scores, targets, _RIDGE_PER_IMAGE * len(targets))


def apply_linear_threshold(scores, weights, bias: float) -> np.ndarray:
  """[N, C] bool: the labels predicted with the linear threshold, s >= t."""
  scores = np.asarray(scores, np.float64)
  per_image = scores @ np.asarray(weights, np.float64) + bias
  return scores >= per_image[:, None]


def fit(eval_config, scores, labels, tag_metadata) -> dict[str, Any]:
  """The record of `config.eval.thresholds`, fitted on (scores, labels)."""
  policy = eval_config.thresholds
  check(policy)
  names = list(tag_metadata.names)
  record: dict[str, Any] = {'policy': policy, 'tags': names}
  if policy == 'global':
    record['per_tag'] = [float(eval_config.threshold)] * len(names)
  elif policy == 'category':
    record['by_category'] = dict(eval_config.category_thresholds)
    record['per_tag'] = category_values(
        eval_config, tag_metadata.categories).tolist()
  elif policy == 'tag':
    record['per_tag'] = best_f1_per_tag(
        scores, labels, float(eval_config.threshold)).tolist()
  else:
    w, b = fit_linear_threshold(scores, labels)
    record.update(weights=w.tolist(), bias=b)
  return record


def apply(record: dict[str, Any], scores) -> np.ndarray:
  """Thresholds broadcastable against scores [N, C]: [C] or [N, 1]."""
  scores = np.asarray(scores, np.float32)
  if record['policy'] == 'linear':
    weights = np.asarray(record['weights'], np.float64)
    if weights.shape != scores.shape[1:]:
      raise ValueError(f'The linear threshold has {weights.size} weights for '
                       f'{scores.shape[1]} tags: it was fitted on another '
                       'tag list.')
    return (scores.astype(np.float64) @ weights + record['bias'])[:, None]
  per_tag = np.asarray(record['per_tag'], np.float32)
  if per_tag.shape != scores.shape[1:]:
    raise ValueError(f'{per_tag.size} thresholds for {scores.shape[1]} tags: '
                     'they were fitted on another tag list.')
  return per_tag


def precision_recall_per_tag(scores, labels, default,
                             bins: int = _GRID_BINS) -> np.ndarray:
  """[C]: per tag, the grid threshold j / bins (0 < j < bins) where the
  predicted positives are closest in number to the true ones (precision =
  tp / predicted, recall = tp / true: equal when those counts are). The
  lowest of tied thresholds wins; a tag without positives gets `default`."""
  scores = np.asarray(scores, np.float32)
  targets = np.asarray(labels) > 0.5
  pos, every = metrics_lib.bin_counts(scores, targets, np.ones_like(targets),
                                      bins)
  predicted = np.cumsum(every[:, ::-1], axis=1)[:, ::-1][:, 1:]
  true = pos.sum(axis=1, keepdims=True)
  best = (np.argmin(np.abs(predicted - true), axis=1) + 1) / bins
  return np.where(true[:, 0] > 0, best, np.asarray(default, np.float64))


def tuned(eval_config, scores, labels, tag_metadata,
          run_record: dict) -> dict:
  """A bundle's thresholds.json content, `per_tag` still in model order:
  `run` (the run's record), `by_category` (general and character) and
  `per_tag`: `category`, and, given validation (scores, labels), `f1` and
  `precision_recall`; a tag without positives keeps its category value."""
  by_category = {name: float(eval_config.category_thresholds[name])
                 for name in ('general', 'character')}
  category = category_values(eval_config, tag_metadata.categories)
  per_tag = {'category': category.tolist()}
  if scores is not None:
    per_tag['f1'] = np.where(
        np.asarray(labels).sum(0) > 0,
        best_f1_per_tag(scores, labels, 0.5), category).tolist()
    per_tag['precision_recall'] = precision_recall_per_tag(
        scores, labels, category).tolist()
  return {'run': run_record, 'by_category': by_category, 'per_tag': per_tag}


def save(workdir, record: dict[str, Any]) -> None:
  (epath.Path(workdir) / FILENAME).write_text(json.dumps(record, indent=1))


def load(workdir) -> dict[str, Any]:
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: it is written at the end of '
                            'training; finish (or re-evaluate) the run first.')
  return json.loads(path.read_text())
