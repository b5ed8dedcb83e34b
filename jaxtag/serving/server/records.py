"""Scores -> the API's records: those of `python -m jaxtag.tag --format
json`, and with ?all=1 every tag's score for the page."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Scores below this are left out of the page's lists (and of ?all=1).
PAGE_MIN_SCORE = 0.01


class TagService:
  """A Tagger's scores as the API's records."""

  def __init__(self, tagger):
    self.tagger = tagger

  def records(self, scores: np.ndarray,
              requests: Sequence[tuple[str, bool]]) -> list[dict[str, Any]]:
    """One record per row of `scores` and (filename, with_scores), as the
    bundle's task makes them (jaxtag/tasks/: a captioner's have no
    scores)."""
    return self.tagger.task.serve_records(self.tagger, scores, requests,
                                          self.page_extras)

  def tag(self, image, filename: str, with_scores: bool) -> dict[str, Any]:
    """The record of one image, tagged now (no batching)."""
    scores = self.tagger.scores([image])
    return self.records(scores, [(filename, with_scores)])[0]

  def page_extras(self, scores: np.ndarray, thresholds: np.ndarray):
    """Every tag's score (>= PAGE_MIN_SCORE) and one threshold per category
    (its tags' median: a per-tag policy becomes one slider value)."""
    names = self.tagger.names
    all_scores, by_category = {}, {}
    for group, index in self.tagger.groups.items():
      index = np.asarray(index, np.int64)
      keep = index[scores[index] >= PAGE_MIN_SCORE]
      keep = keep[np.argsort(-scores[keep], kind='stable')]
      all_scores[group] = {names[i]: float(scores[i]) for i in keep}
      if len(index):
        by_category[group] = round(float(np.median(thresholds[index])), 4)
    return all_scores, by_category
