"""Time the metric suite at tagger scale (default 50k images x 10k tags).

Data: ~1% positives with scores that separate them partly, like a trained
tagger's. Figures are wall seconds of each public function.
"""
from __future__ import annotations

import time

import numpy as np

from jaxtag import metrics


def _data(num_images: int, num_classes: int, seed: int):
  rng = np.random.default_rng(seed)
  targets = rng.random((num_images, num_classes), dtype=np.float32) < 0.01
  scores = rng.random((num_images, num_classes), dtype=np.float32) * 0.6
  scores += targets * rng.random((num_images, num_classes),
                                 dtype=np.float32) * 0.4
  return scores, targets


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def run(num_images: int = 50_000, num_classes: int = 10_000,
        seed: int = 0) -> dict:
  scores, targets = _data(num_images, num_classes, seed)
  ap_s, ap = _timed(lambda: metrics.average_precision(scores, targets))
  all_s, result = _timed(lambda: metrics.multilabel_metrics(scores, targets))
  f1_s, (thr, f1) = _timed(lambda: metrics.f1_at_equal_pr(scores, targets))
  f1m_s, _ = _timed(lambda: metrics.f1_at_equal_pr(scores, targets,
                                                   average='macro'))
  return {'num_images': num_images, 'num_classes': num_classes,
          'average_precision_seconds': ap_s,
          'multilabel_metrics_seconds': all_s,
          'f1_at_equal_pr_micro_seconds': f1_s,
          'f1_at_equal_pr_macro_seconds': f1m_s,
          'mAP': float(np.nanmean(ap)), 'OF1': result['OF1'],
          'f1_at_equal_pr_threshold': thr, 'f1_at_equal_pr_micro': f1}
