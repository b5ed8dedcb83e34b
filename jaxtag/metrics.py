"""Multi-label metrics in pure numpy, with the literature's conventions.

Conventions (they follow the ML-GCN reference code):
- A label is predicted when its score >= threshold.
- AP ranks images by score; tied scores form one step, so AP equals
  scikit-learn's `average_precision_score` with or without ties and does not
  depend on sort order. AP is NaN for a class without positives; mAP leaves
  those classes out and `num_classes_without_positives` counts them.
- CP / CR average Nc/Np and Nc/Ng over all classes, a zero denominator
  contributing 0; CF1 is the harmonic mean of CP and CR.
- Top-k: an image predicts its k highest-scoring labels that also reach the
  threshold; ties are broken towards the lower label index.
- Per image: precision |Y&P|/|P| (0 when P is empty), recall |Y&P|/|Y| (1
  when Y is empty: nothing was missed), accuracy |Y&P|/|Y|P| (1 when both
  are empty), averaged over images.
- mask: [N] (0 drops an image, e.g. eval padding) or [N, C] (0 drops one
  label of one image, e.g. VOC difficult). A dropped entry is neither a
  positive nor a prediction anywhere, and is never picked by top-k.
"""
from __future__ import annotations

import numpy as np

# Classes are processed in chunks so that sorting 50k x 10k stays in memory.
_CHUNK_ELEMENTS = 1 << 24


def _prepare(scores, targets, mask):
  scores = np.asarray(scores, dtype=np.float32)
  targets = np.asarray(targets) > 0.5
  if scores.shape != targets.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and targets {targets.shape} must '
                     'both be [num_images, num_classes].')
  if mask is None:
    return scores, targets, None
  mask = np.asarray(mask) > 0
  if mask.ndim == 1:
    mask = mask[:, None]
  return scores, targets & mask, np.broadcast_to(mask, scores.shape)


def _safe_div(num, den):
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _f1(p, r):
  return float(_safe_div(2 * p * r, p + r))


def _ap_columns(scores_t, targets_t):
  """Tie-aware AP of each row of [c, N] (classes first, contiguous)."""
  ranked = np.sort(scores_t, axis=1)  # ascending; the SIMD sort is fast
  n = scores_t.shape[1]
  ap = np.full(len(scores_t), np.nan)
  for c in range(len(scores_t)):
    pos = np.sort(scores_t[c][targets_t[c]])
    if pos.size == 0:
      continue
    # Precision at a positive: positives scoring >= it over all scoring >=
    # it. Counting ">=" puts a positive at the end of its tie group, which
    # is scikit-learn's convention and independent of sort order.
    above_all = n - np.searchsorted(ranked[c], pos, side='left')
    above_pos = pos.size - np.searchsorted(pos, pos, side='left')
    ap[c] = np.mean(above_pos / above_all)
  return ap


def average_precision(scores, targets, mask=None) -> np.ndarray:
  """AP per class [C]; NaN where a class has no positive."""
  scores, targets, mask = _prepare(scores, targets, mask)
  if mask is not None:  # a dropped entry ranks below everything
    scores = np.where(mask, scores, -np.inf)
  n, c = scores.shape
  if n == 0:
    return np.full(c, np.nan)
  step = max(1, _CHUNK_ELEMENTS // n)
  return np.concatenate([
      _ap_columns(np.ascontiguousarray(scores[:, i:i + step].T),
                  np.ascontiguousarray(targets[:, i:i + step].T))
      for i in range(0, c, step)])


def _class_metrics(nc, np_, ng, suffix=''):
  """OP/OR/OF1 from pooled counts, CP/CR/CF1 from per-class ratios."""
  op = float(_safe_div(nc.sum(), np_.sum()))
  o_r = float(_safe_div(nc.sum(), ng.sum()))
  cp = float(_safe_div(nc, np_).mean()) if nc.size else 0.0
  cr = float(_safe_div(nc, ng).mean()) if nc.size else 0.0
  return {f'CP{suffix}': cp, f'CR{suffix}': cr, f'CF1{suffix}': _f1(cp, cr),
          f'OP{suffix}': op, f'OR{suffix}': o_r, f'OF1{suffix}': _f1(op, o_r)}


def _chunk_top_k(ranked, k: int):
  """Per row, the k best (value, column) of a chunk, ties by lower column."""
  n, c = ranked.shape
  if k >= c:
    cols = np.broadcast_to(np.arange(c), (n, c))
    return ranked, cols
  kth = -np.partition(-ranked, k - 1, axis=1)[:, k - 1:k]
  above = ranked > kth
  tied = ranked == kth
  room = k - above.sum(axis=1, keepdims=True)
  keep = above | tied
  # Only rows with more ties at the k-th score than room need the index
  # order (a cumulative sum); most rows have a single k-th score.
  crowded = np.flatnonzero(tied.sum(axis=1) > room[:, 0])
  if crowded.size:
    t = tied[crowded]
    keep[crowded] = above[crowded] | (t & (np.cumsum(t, axis=1)
                                           <= room[crowded]))
  _, cols = np.nonzero(keep)  # row-major: columns ascend within a row
  cols = cols.reshape(n, k)
  return np.take_along_axis(ranked, cols, axis=1), cols


def _merge_top_k(best, chunk, k: int):
  """Keeps the k best of two candidate sets; earlier columns win ties."""
  if best is None:
    return chunk
  values = np.concatenate([best[0], chunk[0]], axis=1)
  cols = np.concatenate([best[1], chunk[1]], axis=1)
  order = np.argsort(-values, axis=1, kind='stable')[:, :k]
  return (np.take_along_axis(values, order, axis=1),
          np.take_along_axis(cols, order, axis=1))


def multilabel_metrics(scores, targets, *, threshold=0.5, top_k: int = 3,
                       mask=None, ap=None) -> dict:
  """The suite; `threshold` is a float or an array broadcastable to [N, C]
  (per tag [C], per image [N, 1]). `ap`: the per-class AP when the caller
  has it already (it is the costly part)."""
  scores, targets, mask = _prepare(scores, targets, mask)
  n, c = scores.shape
  threshold = np.broadcast_to(np.asarray(threshold, np.float32), (n, c))
  if ap is None:
    ap = average_precision(scores, targets, mask)
  has_pos = ~np.isnan(ap)
  result = {'mAP': float(ap[has_pos].mean()) if has_pos.any() else 0.0,
            'num_classes_without_positives': int((~has_pos).sum())}

  # One pass over class chunks keeps every temporary small: per-class
  # counts, per-image counts, and each image's running top-k candidates.
  nc, np_, ng = (np.zeros(c, np.int64) for _ in range(3))
  inter, n_pred, n_true = (np.zeros(n, np.int64) for _ in range(3))
  wrong = valid_count = 0
  best = None
  step = max(1, _CHUNK_ELEMENTS // max(n, 1))
  for i in range(0, c, step):
    s, t = scores[:, i:i + step], targets[:, i:i + step]
    v = np.ones_like(t) if mask is None else mask[:, i:i + step]
    pred = (s >= threshold[:, i:i + step]) & v
    hit = pred & t
    nc[i:i + step], np_[i:i + step] = hit.sum(0), pred.sum(0)
    ng[i:i + step] = t.sum(0)
    inter += hit.sum(1)
    n_pred += pred.sum(1)
    n_true += t.sum(1)
    wrong += int(((pred != t) & v).sum())
    valid_count += int(v.sum())
    if top_k > 0 and n:
      ranked = s if mask is None else np.where(v, s, -np.inf)
      values, cols = _chunk_top_k(ranked, top_k)
      best = _merge_top_k(best, (values, cols + i), top_k)
  result.update(_class_metrics(nc, np_, ng))

  # Top-k: the kept candidates that also reach the threshold.
  tk_nc, tk_np = np.zeros(c, np.int64), np.zeros(c, np.int64)
  if best is not None:
    values, cols = best
    rows = np.broadcast_to(np.arange(n)[:, None], cols.shape)
    chosen = values >= threshold[rows, cols]
    tk_np = np.bincount(cols[chosen], minlength=c)
    correct = chosen & targets[rows, cols]
    tk_nc = np.bincount(cols[correct], minlength=c)
  result.update(_class_metrics(tk_nc, tk_np, ng, suffix=f'_top{top_k}'))

  rows = (mask.any(axis=1) if mask is not None else np.ones(n, bool))
  inter, n_pred, n_true = inter[rows], n_pred[rows], n_true[rows]
  union = n_pred + n_true - inter
  if rows.any():
    result['example_precision'] = float(_safe_div(inter, n_pred).mean())
    result['example_recall'] = float(np.where(
        n_true > 0, _safe_div(inter, n_true), 1.0).mean())
    result['example_accuracy'] = float(np.where(
        union > 0, _safe_div(inter, union), 1.0).mean())
  else:
    result.update(example_precision=0.0, example_recall=0.0,
                  example_accuracy=0.0)
  result['hamming_loss'] = float(_safe_div(wrong, valid_count))
  return result


def bin_counts(scores, targets, valid, bins):
  """Per-class histograms of positives and of all entries over score bins."""
  n, c = scores.shape
  pos = np.zeros((c, bins), np.int64)
  every = np.zeros((c, bins), np.int64)
  step = max(1, _CHUNK_ELEMENTS // max(n, 1))
  for i in range(0, c, step):
    s = scores[:, i:i + step]
    b = np.clip(np.floor(s * bins), 0, bins - 1).astype(np.int64)
    flat = b + bins * np.arange(s.shape[1])[None, :]
    v = valid[:, i:i + step]
    cols = s.shape[1]
    every[i:i + cols] = np.bincount(flat[v], minlength=cols * bins).reshape(
        cols, bins)
    pos[i:i + cols] = np.bincount(flat[targets[:, i:i + step] & v],
                                  minlength=cols * bins).reshape(cols, bins)
  return pos, every


def f1_at_equal_pr(scores, targets, average: str = 'micro', mask=None,
                   bins: int = 1000) -> tuple[float, float]:
  """(threshold, F1) at the global threshold where precision ~ recall.

  Thresholds are the grid j / bins. 'micro' pools all labels (OP, OR);
  'macro' uses CP and CR, and its F1 is their harmonic mean, as CF1 is.
  """
  if average not in ('micro', 'macro'):
    raise ValueError(f"average must be 'micro' or 'macro', not {average!r}.")
  scores, targets, mask = _prepare(scores, targets, mask)
  valid = np.ones_like(targets) if mask is None else mask
  pos, every = bin_counts(scores, targets, valid, bins)
  # Counts at threshold j/bins: everything in bins >= j.
  tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]
  pp = np.cumsum(every[:, ::-1], axis=1)[:, ::-1]
  ng = pos.sum(axis=1, keepdims=True)
  if average == 'micro':
    precision = _safe_div(tp.sum(0), pp.sum(0))
    recall = _safe_div(tp.sum(0), ng.sum())
  else:
    precision = _safe_div(tp, pp).mean(axis=0)
    recall = _safe_div(tp, ng).mean(axis=0)
  candidates = np.flatnonzero(pp.sum(0) > 0)
  if candidates.size == 0:
    return 0.5, 0.0
  j = candidates[np.argmin(np.abs(precision - recall)[candidates])]
  return float(j / bins), _f1(precision[j], recall[j])


def _equal_pr_columns(scores_t, targets_t):
  """(thresholds, F1) of each row of [c, N] (classes first) where |precision
  - recall| is least over the row's own scores as thresholds
  (precision_recall_curve's points), the lowest such threshold on a tie;
  NaN for a row without positives. A dropped entry scores -inf."""
  ranked = np.sort(scores_t, axis=1)  # ascending; the SIMD sort is fast
  n = scores_t.shape[1]
  thresholds = np.full(len(scores_t), np.nan)
  f1 = np.full(len(scores_t), np.nan)
  for c in range(len(scores_t)):
    pos = np.sort(scores_t[c][targets_t[c]])
    if pos.size == 0:
      continue
    row = ranked[c]
    # Each distinct score is a threshold that keeps all entries >= it
    # (a tie group whole); a dropped entry (-inf) never is one.
    first = np.flatnonzero(np.append(True, row[1:] != row[:-1]))
    first = first[np.isfinite(row[first])]
    values, predicted = row[first], n - first
    hits = pos.size - np.searchsorted(pos, values, side='left')
    precision, recall = hits / predicted, hits / pos.size
    j = int(np.argmin(np.abs(precision - recall)))   # lowest on a tie
    thresholds[c] = values[j]
    f1[c] = _f1(precision[j], recall[j])
  return thresholds, f1


def f1_at_equal_pr_per_tag(scores, targets, mask=None):
  """Per tag: (thresholds [C], F1 [C]) at the tag's own threshold where its
  precision equals its recall (as nearly as its scores allow); NaN for a
  tag without positives. At P = R, F1 = P = R."""
  scores, targets, mask = _prepare(scores, targets, mask)
  if mask is not None:  # a dropped entry is never above a threshold
    scores = np.where(mask, scores, -np.inf)
  n, c = scores.shape
  step = max(1, _CHUNK_ELEMENTS // max(n, 1))
  parts = [_equal_pr_columns(np.ascontiguousarray(scores[:, i:i + step].T),
                             np.ascontiguousarray(targets[:, i:i + step].T))
           for i in range(0, c, step)]
  if not parts:
    return np.zeros(0), np.zeros(0)
  return (np.concatenate([t for t, _ in parts]),
          np.concatenate([f for _, f in parts]))


def _counts_at_grid(scores, targets, valid, bins):
  """tp, predicted positives [C, bins] at thresholds j / bins, positives [C]."""
  pos, every = bin_counts(scores, targets, valid, bins)
  tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]
  pp = np.cumsum(every[:, ::-1], axis=1)[:, ::-1]
  return tp, pp, pos.sum(axis=1)


def mcc(tp, fp, fn, tn) -> float:
  """Matthews correlation of pooled counts; 0 when a margin is empty, as
  scikit-learn's matthews_corrcoef."""
  tp, fp, fn, tn = (float(v) for v in (tp, fp, fn, tn))
  den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
  return (tp * tn - fp * fn) / np.sqrt(den) if den > 0 else 0.0


def equal_pr_metrics(scores, targets, mask=None, bins: int = 1000) -> dict:
  """The WD v3 cards' validation metrics, over the tags with positives:

  - `F1_macro_PR_tag`: each tag's F1 at its own P = R threshold
    (f1_at_equal_pr_per_tag), averaged;
  - `threshold_PR`: one global threshold j / bins where the macro
    precision (mean over tags of each tag's precision, 0 for a tag that
    predicts nothing) is nearest the macro recall, the lowest on a tie,
    among the thresholds where some tag predicts something (above the
    highest score both are 0, equal, and say nothing);
  - at that threshold: `F1_macro_PR`, the mean of the tags' F1 (scikit-
    learn's f1_score average='macro', zero_division=0), `F1_micro_PR`
    (pooled counts) and `MCC_PR`, the Matthews correlation of all
    (image, tag) pairs pooled.
  """
  scores, targets, mask = _prepare(scores, targets, mask)
  valid = np.ones_like(targets) if mask is None else mask
  _, per_tag = f1_at_equal_pr_per_tag(scores, targets, mask)
  tp, pp, num_pos = _counts_at_grid(scores, targets, valid, bins)
  keep = num_pos > 0
  out = {'F1_macro_PR_tag': float(np.nanmean(per_tag)) if keep.any()
         else 0.0}
  if not keep.any():
    return {**out, 'threshold_PR': 0.5, 'F1_macro_PR': 0.0,
            'F1_micro_PR': 0.0, 'MCC_PR': 0.0}
  tp, pp, num_pos = tp[keep], pp[keep], num_pos[keep][:, None]
  precision = _safe_div(tp, pp)
  recall = tp / num_pos
  gap = np.abs(precision.mean(0) - recall.mean(0))
  candidates = np.flatnonzero(pp.sum(0) > 0)
  if candidates.size == 0:   # no score reaches even the lowest threshold
    return {**out, 'threshold_PR': 0.5, 'F1_macro_PR': 0.0,
            'F1_micro_PR': 0.0, 'MCC_PR': 0.0}
  j = int(candidates[np.argmin(gap[candidates])])   # the first: the lowest
  f1 = _safe_div(2 * tp[:, j], pp[:, j] + num_pos[:, 0])
  total_tp, total_pp = tp[:, j].sum(), pp[:, j].sum()
  total_pos = num_pos.sum()
  total = int(valid[:, keep].sum())
  return {**out, 'threshold_PR': float(j / bins),
          'F1_macro_PR': float(f1.mean()),
          'F1_micro_PR': float(_safe_div(2 * total_tp, total_pp + total_pos)),
          'MCC_PR': float(mcc(total_tp, total_pp - total_tp,
                              total_pos - total_tp,
                              total - total_pp - total_pos + total_tp))}


def single_label_metrics(logits, labels) -> dict:
  """Top-1 / top-5 accuracy and the mean of per-class accuracies.

  Works on logits or scores alike (only the ranking matters). A class
  without examples is left out of the mean.
  """
  logits = np.asarray(logits, np.float32)
  labels = np.asarray(labels).astype(np.int64)
  if len(labels) == 0:
    return {'top1': 0.0, 'top5': 0.0, 'mean_class_accuracy': 0.0}
  true_score = logits[np.arange(len(labels)), labels][:, None]
  # Rank = number of classes strictly better; ties count in the label's favour.
  rank = (logits > true_score).sum(axis=1)
  accuracy = per_class_accuracy(logits, labels)
  present = ~np.isnan(accuracy)
  return {'top1': float((rank < 1).mean()), 'top5': float((rank < 5).mean()),
          'mean_class_accuracy': float(accuracy[present].mean())}


def top1_predictions(logits) -> np.ndarray:
  """argmax per row; ties go to the lower class index."""
  return np.argmax(np.asarray(logits, np.float32), axis=1)


def per_class_accuracy(logits, labels) -> np.ndarray:
  """[C]: top-1 accuracy over each class's examples; NaN without examples."""
  logits = np.asarray(logits, np.float32)
  labels = np.asarray(labels).astype(np.int64)
  c = logits.shape[1]
  correct = top1_predictions(logits) == labels
  count = np.bincount(labels, minlength=c)
  hits = np.bincount(labels[correct], minlength=c)
  return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


def confusion_matrix(logits, labels) -> np.ndarray:
  """[C, C] counts: row = true class, column = top-1 prediction."""
  logits = np.asarray(logits, np.float32)
  labels = np.asarray(labels).astype(np.int64)
  c = logits.shape[1]
  flat = labels * c + top1_predictions(logits)
  return np.bincount(flat, minlength=c * c).reshape(c, c)


def most_confused_pairs(logits, labels, top: int = 10):
  """[(true, predicted, count)] of the most frequent errors, largest first;
  ties by (true, predicted) ascending."""
  confusion = confusion_matrix(logits, labels)
  np.fill_diagonal(confusion, 0)
  true, pred = np.nonzero(confusion)
  counts = confusion[true, pred]
  order = np.lexsort((pred, true, -counts))[:top]
  return [(int(true[i]), int(pred[i]), int(counts[i])) for i in order]


# --- Captions ---------------------------------------------------------------
# BLEU as captioning papers report it: coco-caption's scorer (Papineni et al.
# 2002, corpus level). Per image, each n-gram's count is clipped by its
# largest count in any one reference; the counts are summed over the corpus;
# the effective reference length of an image is the reference length closest
# to its hypothesis (the shorter on a tie); the brevity penalty is taken once,
# on the corpus totals. BLEU-n is the geometric mean of the 1..n-gram
# precisions times that penalty. No smoothing: coco-caption adds 1e-15 to the
# matches and 1e-9 to the totals only to avoid 0/0, and so does this.
_BLEU_TINY, _BLEU_SMALL = 1e-15, 1e-9


def _ngrams(tokens, n: int) -> dict[tuple, int]:
  counts: dict[tuple, int] = {}
  for i in range(len(tokens) - n + 1):
    gram = tuple(tokens[i:i + n])
    counts[gram] = counts.get(gram, 0) + 1
  return counts


def bleu(hypotheses, references, max_n: int = 4) -> dict[str, float]:
  """{'BLEU-1': ..., 'BLEU-max_n': ...} in [0, 1], corpus level.

  hypotheses: one tokenised caption per image (a list of words; lower-case
  and tokenise before, as the references). references: a list of
  tokenised reference captions per image (any number, at least one).
  """
  if len(hypotheses) != len(references):
    raise ValueError(f'bleu: {len(hypotheses)} hypotheses but '
                     f'{len(references)} reference lists; give one list of '
                     'references per hypothesis.')
  matches = np.zeros(max_n)
  totals = np.zeros(max_n)
  hyp_len = ref_len = 0
  for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
    if isinstance(hyp, str) or any(isinstance(r, str) for r in refs):
      raise TypeError(f'bleu: image {i} has an untokenised caption; pass '
                      'lists of words (for example caption.lower().split()).')
    if not refs:
      raise ValueError(f'bleu: image {i} has no reference caption.')
    hyp_len += len(hyp)
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    for n in range(1, max_n + 1):
      most: dict[tuple, int] = {}
      for ref in refs:
        for gram, count in _ngrams(ref, n).items():
          most[gram] = max(most.get(gram, 0), count)
      for gram, count in _ngrams(hyp, n).items():
        matches[n - 1] += min(count, most.get(gram, 0))
      totals[n - 1] += max(len(hyp) - n + 1, 0)
  precisions = (matches + _BLEU_TINY) / (totals + _BLEU_SMALL)
  ratio = (hyp_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
  brevity = 1.0 if ratio >= 1 else float(np.exp(1 - 1 / ratio))
  return {f'BLEU-{n}': float(np.prod(precisions[:n]) ** (1 / n) * brevity)
          for n in range(1, max_n + 1)}
