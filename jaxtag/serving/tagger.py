"""Tagging as a library: images in, tags with their scores out.

  tagger = Tagger('BUNDLE', general_threshold=0.4)
  tagger.tag(['a.png', pil_image, uint8_array])
  # -> [{'rating': {...4 ratings...}, 'general': {tag: score},
  #      'character': {tag: score}}, ...]

Ratings always list all four WD ratings (a rating the model lacks scores
0). General and character tags are those at or above their threshold,
highest score first (every tag with `all_scores=True`). Thresholds are the
bundle's (`policy`: 'run', the run's saved policy; 'category'; 'f1';
'precision_recall'), which `threshold` (all tags), then
`general_threshold` and `character_threshold` override, as the WD front
ends do.

A captioner's bundle (`task == 'captioning'`) gives one
`{'caption': 'a girl with ...'}` per image instead; thresholds do not
apply to it. What a result holds is the bundle's task's to say
(jaxtag/tasks/: `results`, `thresholds`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import images as images_lib

POLICIES = ('run', 'category', 'f1', 'precision_recall')
_GROUPS = {bundle_lib.GENERAL: 'general', bundle_lib.CHARACTER: 'character'}


class Tagger:
  """A loaded bundle with its thresholds, tagging batches of images."""

  def __init__(self, bundle, *, batch_size: int = 32, policy: str = 'run',
               threshold: float | None = None,
               general_threshold: float | None = None,
               character_threshold: float | None = None,
               all_scores: bool = False, predict=None):
    if policy not in POLICIES:
      raise ValueError(f'Unknown threshold policy {policy!r}; valid: '
                       f'{", ".join(POLICIES)}.')
    if batch_size < 1:
      raise ValueError(f'batch_size must be at least 1, got {batch_size}.')
    self.bundle = (bundle if isinstance(bundle, bundle_lib.Bundle)
                   else bundle_lib.load_bundle(bundle))
    self.batch_size, self.policy, self.all_scores = (batch_size, policy,
                                                     all_scores)
    self.overrides = {'all': threshold, 'general': general_threshold,
                      'character': character_threshold}
    self.geometry = images_lib.Geometry(self.bundle.preprocess)
    # uint8 pixels [B, S, S, 3] (and mask) -> bundle-order scores; a
    # jaxtag.serving.backends predictor, or the bundle's own predict.
    self.predict = predict or self.bundle.predict
    categories = self.bundle.categories
    self.groups = {'rating': np.flatnonzero(categories == bundle_lib.RATING)}
    for category, name in _GROUPS.items():
      self.groups[name] = np.flatnonzero(categories == category)
    other = ~np.isin(categories, [bundle_lib.RATING, *_GROUPS])
    if other.any():
      self.groups['other'] = np.flatnonzero(other)

  @property
  def names(self) -> list[str]:
    return self.bundle.names

  @property
  def task(self):
    """The bundle's task (jaxtag/tasks/): equal to its name,
    'multi_label', 'single_label' or 'captioning'."""
    return self.bundle.task

  def scores(self, images: Sequence[Any],
             progress: Callable[[int], None] | None = None) -> np.ndarray:
    """[N, tags] bundle-order scores of paths, PIL images or uint8 arrays
    (a captioner's token ids [N, T]).

    Batches have `batch_size` rows (the last one padded), so one program
    serves every batch; native geometry batches each shape bucket apart.
    """
    return self.scores_of([self.prepare(x) for x in images], progress)

  def prepare(self, image):
    """A path, PIL image or uint8 array -> the geometry's (bucket, pixels,
    mask): the part of `scores` that can run in other threads."""
    return self.geometry(images_lib.as_image(image))

  def scores_of(self, prepared, progress=None) -> np.ndarray:
    """`scores` of images already through `prepare`."""
    out = None
    for bucket in sorted({p[0] for p in prepared}):
      rows = [i for i, p in enumerate(prepared) if p[0] == bucket]
      for start in range(0, len(rows), self.batch_size):
        chunk = rows[start:start + self.batch_size]
        result = self._predict([prepared[i] for i in chunk])
        if out is None:
          out = np.zeros((len(prepared), *result.shape[1:]), result.dtype)
        out[chunk] = result
        if progress is not None:
          progress(len(chunk))
    if out is None:
      out = self.task.empty_scores(len(self.names))
    return out

  def _predict(self, prepared) -> np.ndarray:
    n = len(prepared)
    pixels = np.stack([p[1] for p in prepared])
    pad = self.batch_size - n
    pixels = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]),
                                              np.uint8)])
    mask = None
    if prepared[0][2] is not None:
      mask = np.stack([p[2] for p in prepared])
      mask = np.concatenate([mask, np.ones((pad, *mask.shape[1:]), np.uint8)])
    return np.asarray(self.predict(pixels, mask))[:n]

  def thresholds(self, scores) -> np.ndarray:
    """[N, tags]: each score's threshold after the overrides."""
    return self.task.thresholds(self, scores)

  def results(self, scores) -> list[dict[str, Any]]:
    """One dict per image: 'rating' (all four), 'general', 'character' (and
    'other' for further categories) of tag -> score; a captioner's
    {'caption': sentence}."""
    return self.task.results(self, scores)

  def tag(self, images: Sequence[Any],
          progress: Callable[[int], None] | None = None
          ) -> list[dict[str, Any]]:
    """Paths, PIL images or uint8 arrays -> one result dict per image."""
    return self.results(self.scores(images, progress))
