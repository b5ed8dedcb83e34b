"""Metrics against scikit-learn, python-loop references and hand-worked cases."""
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxtag import metrics


def _random(n=60, c=7, seed=0, p=0.3):
  rng = np.random.default_rng(seed)
  targets = (rng.random((n, c)) < p).astype(np.float32)
  scores = np.clip(rng.random((n, c)) * 0.7 + targets * 0.3, 0, 1)
  return scores.astype(np.float32), targets


def test_ap_matches_sklearn_untied_and_tied():
  scores, targets = _random()
  for s in (scores, np.round(scores, 1)):  # the second has many ties
    ref = [skm.average_precision_score(targets[:, c], s[:, c])
           for c in range(s.shape[1])]
    np.testing.assert_allclose(metrics.average_precision(s, targets), ref,
                               atol=1e-12)


def test_ap_by_hand_with_a_tie():
  # Ranked: 0.9(+), 0.8(-), 0.8(+), 0.1(+). The tie at 0.8 is one step:
  # precision there = 2/3 for the positive in it. AP = (1 + 2/3 + 3/4) / 3.
  s = np.array([[0.9], [0.8], [0.8], [0.1]])
  t = np.array([[1], [0], [1], [1]])
  assert metrics.average_precision(s, t)[0] == pytest.approx(
      (1 + 2 / 3 + 3 / 4) / 3)


def test_class_without_positives_is_nan_and_left_out_of_map():
  scores, targets = _random()
  targets[:, 2] = 0
  ap = metrics.average_precision(scores, targets)
  assert np.isnan(ap[2]) and not np.isnan(np.delete(ap, 2)).any()
  m = metrics.multilabel_metrics(scores, targets)
  assert m['mAP'] == pytest.approx(np.nanmean(ap))
  assert m['num_classes_without_positives'] == 1


def test_threshold_metrics_by_hand():
  # 3 images x 2 classes; predicted = score >= 0.5.
  s = np.array([[0.9, 0.6], [0.2, 0.7], [0.6, 0.1]])
  t = np.array([[1, 0], [1, 1], [0, 0]])
  # class 0: predicted {0,2}, true {0,1}: Nc=1 Np=2 Ng=2
  # class 1: predicted {0,1}, true {1}:   Nc=1 Np=2 Ng=1
  m = metrics.multilabel_metrics(s, t, threshold=0.5, top_k=1)
  assert m['OP'] == pytest.approx(2 / 4)
  assert m['OR'] == pytest.approx(2 / 3)
  assert m['OF1'] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
  assert m['CP'] == pytest.approx((1 / 2 + 1 / 2) / 2)
  assert m['CR'] == pytest.approx((1 / 2 + 1) / 2)
  # CF1 is the harmonic mean of CP and CR, not the mean per-class F1
  # (which would be (0.5 + 2/3) / 2 = 0.583).
  assert m['CF1'] == pytest.approx(2 * 0.5 * 0.75 / 1.25)
  assert m['CF1'] != pytest.approx((0.5 + 2 / 3) / 2)
  # top-1: image 0 keeps class 0, image 1 class 1, image 2 class 0.
  assert m['OP_top1'] == pytest.approx(2 / 3)
  assert m['OR_top1'] == pytest.approx(2 / 3)
  # Per image: P = [1/2, 1/1, 0/1], R = [1/1, 1/2, 1 (Y empty)],
  # accuracy = [1/2, 1/2, 0/1].
  assert m['example_precision'] == pytest.approx((0.5 + 1 + 0) / 3)
  assert m['example_recall'] == pytest.approx((1 + 0.5 + 1) / 3)
  assert m['example_accuracy'] == pytest.approx((0.5 + 0.5 + 0) / 3)
  # Wrong entries: (0,1) predicted, (1,0) missed, (2,0) predicted.
  assert m['hamming_loss'] == pytest.approx(3 / 6)


def test_empty_cases_never_nan():
  cases = [
      (np.zeros((4, 3)), np.zeros((4, 3))),      # no positives, no predictions
      (np.ones((4, 3)), np.zeros((4, 3))),       # predictions only
      (np.zeros((4, 3)), np.ones((4, 3))),       # positives only
      (np.zeros((0, 3)), np.zeros((0, 3))),      # no images
  ]
  for s, t in cases:
    m = metrics.multilabel_metrics(s, t)
    for key, value in m.items():
      assert not np.isnan(value), key
      if key != 'num_classes_without_positives':
        assert 0.0 <= value <= 1.0, key
  # No positives and no predictions: every image is perfectly right.
  m = metrics.multilabel_metrics(np.zeros((4, 3)), np.zeros((4, 3)))
  assert m['example_accuracy'] == 1.0 and m['example_precision'] == 0.0


def test_image_without_prediction_has_precision_zero():
  s = np.array([[0.1, 0.2], [0.9, 0.1]])
  t = np.array([[1, 0], [1, 0]])
  m = metrics.multilabel_metrics(s, t)
  assert m['example_precision'] == pytest.approx((0 + 1) / 2)
  assert m['example_recall'] == pytest.approx((0 + 1) / 2)


def test_row_mask_equals_dropping_rows():
  scores, targets = _random(n=50)
  mask = np.ones(50)
  mask[[3, 10, 11, 40]] = 0
  keep = mask > 0
  masked = metrics.multilabel_metrics(scores, targets, mask=mask)
  dropped = metrics.multilabel_metrics(scores[keep], targets[keep])
  for key in dropped:
    assert masked[key] == pytest.approx(dropped[key]), key


def test_label_mask_by_hand():
  # Class 0 of image 1 is "difficult": neither a positive nor a prediction.
  s = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6]])
  t = np.array([[1, 0], [1, 1], [0, 0]])
  mask = np.array([[1, 1], [0, 1], [1, 1]])
  m = metrics.multilabel_metrics(s, t, mask=mask, top_k=2)
  # class 0: predicted {0}, true {0} -> Nc 1 Np 1 Ng 1
  # class 1: predicted {1,2}, true {1} -> Nc 1 Np 2 Ng 1
  assert m['OP'] == pytest.approx(2 / 3) and m['OR'] == pytest.approx(1.0)
  assert m['CP'] == pytest.approx((1 + 0.5) / 2)
  ap = metrics.average_precision(s, t, mask=mask)
  assert ap[0] == pytest.approx(1.0)  # the masked 0.8 does not outrank
  assert ap[1] == pytest.approx(1.0)
  assert m['hamming_loss'] == pytest.approx(1 / 5)


def test_top_k_matches_loop_reference():
  rng = np.random.default_rng(3)
  s = np.round(rng.random((40, 9)), 1)  # ties included
  t = rng.random((40, 9)) < 0.3
  m = metrics.multilabel_metrics(s, t, threshold=0.3, top_k=3)
  nc = np.zeros(9)
  np_ = np.zeros(9)
  for i in range(40):
    order = sorted(range(9), key=lambda c: (-s[i, c], c))[:3]
    for c in order:
      if s[i, c] >= 0.3:
        np_[c] += 1
        nc[c] += t[i, c]
  ng = t.sum(0)
  assert m['OP_top3'] == pytest.approx(nc.sum() / np_.sum())
  assert m['OR_top3'] == pytest.approx(nc.sum() / ng.sum())
  cp = np.mean([nc[c] / np_[c] if np_[c] else 0 for c in range(9)])
  assert m['CP_top3'] == pytest.approx(cp)


def test_example_metrics_and_hamming_vs_references():
  scores, targets = _random(n=80, c=6, seed=5)
  m = metrics.multilabel_metrics(scores, targets, threshold=0.5)
  pred = scores >= 0.5
  prec, rec, acc = [], [], []
  for p, y in zip(pred, targets > 0):
    inter, union = (p & y).sum(), (p | y).sum()
    prec.append(inter / p.sum() if p.sum() else 0.0)
    rec.append(inter / y.sum() if y.sum() else 1.0)
    acc.append(inter / union if union else 1.0)
  assert m['example_precision'] == pytest.approx(np.mean(prec))
  assert m['example_recall'] == pytest.approx(np.mean(rec))
  assert m['example_accuracy'] == pytest.approx(np.mean(acc))
  assert m['hamming_loss'] == pytest.approx(
      skm.hamming_loss(targets.astype(int), pred.astype(int)))


def _equal_pr_by_brute_force(scores, targets, average, bins=1000):
  """(threshold, F1) by numpy: precision and recall at every grid threshold
  j / bins at once, the first threshold where they are closest."""
  pred = scores[None] >= (np.arange(bins) / bins)[:, None, None]  # [T, N, C]
  truth = targets[None] > 0
  tp, pp = (pred & truth).sum(1), pred.sum(1)                     # [T, C]
  ng = truth.sum(1)
  if average == 'micro':
    p, r = tp.sum(1) / np.maximum(pp.sum(1), 1), tp.sum(1) / ng.sum()
  else:
    p = np.where(pp > 0, tp / np.maximum(pp, 1), 0).mean(1)
    r = np.where(ng > 0, tp / np.maximum(ng, 1), 0).mean(1)
  gap = np.where(pp.sum(1) > 0, np.abs(p - r), np.inf)
  j = int(np.argmin(gap))
  return j / bins, 2 * p[j] * r[j] / (p[j] + r[j])


def test_f1_at_equal_pr():
  # 8 positives at 0.60, 0.65, ..., 0.95; negatives up to 0.5 and at 0.62
  # and 0.64. At the grid thresholds 0.621 to 0.640, 7 positives and one
  # negative pass: precision = recall = 7/8, and the first is taken. Nowhere
  # else are they equal (above 0.64 precision is 1 and recall at most 7/8;
  # at 0.62 or below, 7/9 or 8/10 against 7/8 or 1).
  pos = np.linspace(0.6, 0.95, 8)
  neg = np.concatenate([np.linspace(0.0, 0.5, 30), [0.62, 0.64]])
  s = np.concatenate([pos, neg])[:, None]
  t = np.concatenate([np.ones(8), np.zeros(32)])[:, None]
  threshold, f1 = metrics.f1_at_equal_pr(s, t)
  assert threshold == pytest.approx(0.621)
  assert f1 == pytest.approx(7 / 8)
  scores, targets = _random(n=200, c=5)
  for average in ('micro', 'macro'):
    got = metrics.f1_at_equal_pr(scores, targets, average=average)
    want = _equal_pr_by_brute_force(scores, targets, average)
    assert got == pytest.approx(want, rel=1e-12), average
  with pytest.raises(ValueError, match='micro'):
    metrics.f1_at_equal_pr(scores, targets, average='weighted')


def test_single_label_metrics_vs_sklearn():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((100, 12))
  labels = rng.integers(0, 12, 100)
  m = metrics.single_label_metrics(logits, labels)
  assert m['top1'] == pytest.approx(
      skm.top_k_accuracy_score(labels, logits, k=1, labels=range(12)))
  assert m['top5'] == pytest.approx(
      skm.top_k_accuracy_score(labels, logits, k=5, labels=range(12)))
  assert metrics.single_label_metrics(logits[:, :3], labels % 3)['top5'] == 1.0


def test_chunked_pass_equals_single_pass(monkeypatch):
  rng = np.random.default_rng(9)
  s = np.round(rng.random((30, 23)), 1)          # ties across chunk borders
  t = rng.random((30, 23)) < 0.3
  mask = rng.random((30, 23)) < 0.9
  whole = metrics.multilabel_metrics(s, t, threshold=0.4, top_k=3, mask=mask)
  whole_ap = metrics.average_precision(s, t, mask)
  monkeypatch.setattr(metrics, '_CHUNK_ELEMENTS', 30 * 2)  # 2 classes a chunk
  chunked = metrics.multilabel_metrics(s, t, threshold=0.4, top_k=3,
                                       mask=mask)
  np.testing.assert_allclose(metrics.average_precision(s, t, mask), whole_ap)
  assert chunked == pytest.approx(whole)


def _correlated(n=300, c=7, seed=3):
  rng = np.random.default_rng(seed)
  targets = rng.random((n, c)) < rng.uniform(0.05, 0.4, c)
  scores = np.clip(0.25 * targets + rng.random((n, c)) * 0.75, 0, 0.999)
  targets[:, -1] = False          # a tag without positives is left out
  return scores.astype(np.float32), targets


def test_per_tag_equal_pr_f1_against_precision_recall_curve():
  scores, targets = _correlated()
  scores[:40, 0] = 0.5            # a tie group
  thresholds, f1 = metrics.f1_at_equal_pr_per_tag(scores, targets)
  for k in range(scores.shape[1] - 1):
    p, r, thr = skm.precision_recall_curve(targets[:, k], scores[:, k])
    p, r = p[:-1], r[:-1]         # the last point (P = 1, R = 0) has none
    gap = np.abs(p - r)
    i = int(np.flatnonzero(gap == gap.min())[0])   # lowest threshold
    assert thresholds[k] == pytest.approx(thr[i])
    assert f1[k] == pytest.approx(2 * p[i] * r[i] / (p[i] + r[i]))
    assert f1[k] == pytest.approx(skm.f1_score(
        targets[:, k], scores[:, k] >= thresholds[k]))
  assert np.isnan(f1[-1]) and np.isnan(thresholds[-1])


def test_equal_pr_metrics_against_sklearn():
  scores, targets = _correlated()
  m = metrics.equal_pr_metrics(scores, targets, bins=50)
  keep = targets.any(0)
  y = targets[:, keep].astype(int)

  def at(t):
    pred = (scores[:, keep] >= t).astype(int)
    return (skm.precision_score(y, pred, average='macro', zero_division=0),
            skm.recall_score(y, pred, average='macro', zero_division=0))

  # Among the thresholds that predict something, the lowest of the
  # smallest gaps.
  grid = [j for j in range(50) if (scores[:, keep] >= j / 50).any()]
  gaps = [abs(np.subtract(*at(j / 50))) for j in grid]
  j = grid[int(np.flatnonzero(np.isclose(gaps, min(gaps)))[0])]
  assert m['threshold_PR'] == pytest.approx(j / 50)
  pred = (scores[:, keep] >= m['threshold_PR']).astype(int)
  assert m['F1_macro_PR'] == pytest.approx(
      skm.f1_score(y, pred, average='macro', zero_division=0))
  assert m['F1_micro_PR'] == pytest.approx(
      skm.f1_score(y, pred, average='micro'))
  assert m['MCC_PR'] == pytest.approx(
      skm.matthews_corrcoef(y.ravel(), pred.ravel()))
  _, per_tag = metrics.f1_at_equal_pr_per_tag(scores, targets)
  assert m['F1_macro_PR_tag'] == pytest.approx(np.nanmean(per_tag))


def test_equal_pr_threshold_is_never_where_nothing_is_predicted():
  # A weak model: every score below 0.3. Above it precision and recall are
  # both 0, equal, and the F1 there is 0; the threshold must be one that
  # predicts. By hand with bins 10: at 0.2, tag 0 predicts images 0 and 1
  # (one right: P 1/2, R 1/1) and tag 1 image 2 (right: P 1, R 1/2):
  # macro P 0.75 = macro R 0.75; F1 of the tags 2/3 and 2/3.
  scores = np.array([[0.25, 0.0], [0.21, 0.0], [0.0, 0.29], [0.1, 0.1]])
  targets = np.array([[1, 0], [0, 0], [0, 1], [0, 1]])
  m = metrics.equal_pr_metrics(scores, targets, bins=10)
  assert m['threshold_PR'] == pytest.approx(0.2)
  assert m['F1_macro_PR'] == pytest.approx(2 / 3)
  assert m['F1_micro_PR'] == pytest.approx(2 * 2 / (3 + 3))


def test_equal_pr_metrics_drop_masked_images():
  scores, targets = _correlated()
  mask = np.ones(len(scores))
  mask[200:] = 0
  masked = metrics.equal_pr_metrics(scores, targets, mask=mask)
  assert masked == pytest.approx(
      metrics.equal_pr_metrics(scores[:200], targets[:200]))


def test_mcc_by_hand():
  # tp 3, fp 1, fn 2, tn 4: (12 - 2) / sqrt(4 * 5 * 5 * 6).
  assert metrics.mcc(3, 1, 2, 4) == pytest.approx(10 / np.sqrt(600))
  assert metrics.mcc(0, 0, 2, 4) == 0.0


def test_multi_label_task_reports_the_equal_pr_metrics():
  import scipy.sparse
  from jaxtag import config as config_lib
  from jaxtag.data import tag_metadata
  from jaxtag.tasks import multi_label
  scores, targets = _correlated()
  c = scores.shape[1]
  tags = tag_metadata.TagMetadata(
      names=[f't{k}' for k in range(c)], categories=np.zeros(c, int),
      counts=np.ones(c, int), cooccurrence=scipy.sparse.csr_array((c, c)),
      num_images=1)
  result, _, _ = multi_label.MultiLabel(tags).score(
      {'scores': scores, 'labels': targets.astype(np.float32)},
      eval_config=config_lib.defaults().eval)
  expected = metrics.equal_pr_metrics(scores, targets)
  assert {k: result[k] for k in expected} == pytest.approx(expected)
