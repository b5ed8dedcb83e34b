"""Label encoders for tag ids: how an example's tags reach the loss.

The registry of encoders is jaxtag/data/encoders.py; these are its tag
encoders (the caption encoder is jaxtag/data/captions.py):
- `multi_hot`: `labels` [C] float32, 1 for each present tag.
- `class_id`: `labels` int32, the example's single class; an example with
  no label or several is skipped and counted, like an undecodable image.
- `sequence`: for label decoders trained with teacher forcing.
  `label_sequence` [L + 2] int32 is START, the labels in the chosen order,
  END, then END padding; `label_sequence_mask` [L + 2] float32 is 1 from
  START to END. START is id C and END id C + 1, so a decoder's vocabulary
  is C + 2. `labels` [C] multi-hot comes along for the metric suite, which
  never sees the sequence. Options (config.dataset.label_encoding_kwargs):
  `order`: `frequent` (most frequent train tag first, the CNN-RNN default),
  `rare`, or `random`, drawn from the same (seed, position) as the
  example's augmentation so a resumed run sees the same order;
  `max_labels` (L, default 16): an example with more labels keeps the
  first L.

Each encoder states its per-example `spec` (name -> (shape, dtype)) so that
the model can be initialised before any data is read.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

ORDERS = ('frequent', 'rare', 'random')


class SkipExample(ValueError):
  """The example cannot be encoded; the pipeline skips and counts it."""


def _checked_ids(ids, num_classes: int) -> np.ndarray:
  ids = np.asarray(ids, np.int64).reshape(-1)
  if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
    raise ValueError(f'Tag id {int(ids.max())} is outside the vocabulary of '
                     f'{num_classes} tags; selected_tags.csv and the data '
                     'disagree: rebuild the dataset.')
  return ids


def multi_hot(ids, num_classes: int) -> np.ndarray:
  labels = np.zeros((num_classes,), np.float32)
  labels[_checked_ids(ids, num_classes)] = 1.0
  return labels


@dataclasses.dataclass
class MultiHot:
  """The base encoder: one tag vector per example.

  `num_tags` (the dataset's tags) and `counts` (their train counts, or
  None) are set by the run; every other field is an option.
  """
  name: ClassVar[str] = 'multi_hot'
  num_tags: int
  counts: Any = dataclasses.field(default=None, repr=False)

  def prepare(self, workdir: str, source) -> None:
    """Reads (or, from the train `source`, builds) what the encoder keeps
    in the run's workdir. `source` is None when only evaluating."""
    del workdir, source

  @property
  def num_classes(self) -> int:
    """The width of the model's output."""
    return self.num_tags

  def train_labels(self) -> dict[int, Any] | None:
    """{record: label value} replacing the train records' own, or None."""
    return None

  @property
  def spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {'labels': ((self.num_classes,), np.float32)}

  def encode(self, ids, seed: int, position: int) -> dict[str, np.ndarray]:
    del seed, position
    return {'labels': multi_hot(ids, self.num_classes)}

  def padding(self) -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in
            self.spec.items()}


@dataclasses.dataclass
class ClassId(MultiHot):
  name: ClassVar[str] = 'class_id'

  @property
  def spec(self):
    return {'labels': ((), np.int32)}

  def encode(self, ids, seed: int, position: int):
    del seed, position
    ids = np.unique(_checked_ids(ids, self.num_classes))
    if ids.size != 1:
      raise SkipExample(f'class_id needs exactly one label, found {ids.size}')
    return {'labels': np.int32(ids[0])}


@dataclasses.dataclass
class LabelSequence(MultiHot):
  name: ClassVar[str] = 'sequence'
  order: str = 'frequent'
  max_labels: int = 16

  def __post_init__(self):
    num_classes, counts = self.num_tags, self.counts
    if self.order not in ORDERS:
      raise ValueError('Unknown config.dataset.label_encoding_kwargs.order '
                       f'{self.order!r}; valid: {", ".join(ORDERS)}.')
    if self.max_labels < 1:
      raise ValueError('config.dataset.label_encoding_kwargs.max_labels must '
                       'be at least 1.')
    if self.order != 'random' and counts is None:
      raise ValueError(f'order={self.order!r} needs the train tag counts '
                       '(label_stats.npz of the dataset).')
    self.max_labels = int(self.max_labels)
    self.start, self.end = num_classes, num_classes + 1
    if counts is not None:
      counts = np.asarray(counts, np.int64)
      # rank[c]: position of tag c in the frequency order; ties by tag id.
      by_freq = np.lexsort((np.arange(num_classes), -counts))
      if self.order == 'rare':
        by_freq = np.lexsort((np.arange(num_classes), counts))
      self._rank = np.empty(num_classes, np.int64)
      self._rank[by_freq] = np.arange(num_classes)

  @property
  def spec(self):
    length = self.max_labels + 2
    return {'labels': ((self.num_classes,), np.float32),
            'label_sequence': ((length,), np.int32),
            'label_sequence_mask': ((length,), np.float32)}

  def ordered(self, ids, seed: int, position: int) -> np.ndarray:
    ids = np.unique(_checked_ids(ids, self.num_classes))
    if self.order == 'random':
      # Its own stream of the example's seed: independent of augmentation
      # draws, and identical after a resume.
      rng = np.random.default_rng([seed, position, 1])
      return rng.permutation(ids)
    return ids[np.argsort(self._rank[ids], kind='stable')]

  def encode(self, ids, seed: int, position: int):
    ordered = self.ordered(ids, seed, position)[:self.max_labels]
    length = self.max_labels + 2
    sequence = np.full((length,), self.end, np.int32)
    sequence[0] = self.start
    sequence[1:1 + len(ordered)] = ordered
    mask = np.zeros((length,), np.float32)
    mask[:len(ordered) + 2] = 1.0
    return {'labels': multi_hot(ids, self.num_classes),
            'label_sequence': sequence, 'label_sequence_mask': mask}
