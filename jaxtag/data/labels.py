"""Label encodings: how an example's tag ids reach the loss.

Chosen by `config.dataset.label_encoding`:
- `multi_hot`: `labels` [C] float32, 1 for each present tag.
- `class_id`: `labels` int32, the example's single class; an example with
  no label or several is skipped and counted, like an undecodable image.
- `caption`: words of a caption for a caption decoder; see
  jaxtag/data/captions.py.
- `sequence`: for label decoders trained with teacher forcing.
  `label_sequence` [L + 2] int32 is START, the labels in the chosen order,
  END, then END padding; `label_sequence_mask` [L + 2] float32 is 1 from
  START to END. START is id C and END id C + 1, so a decoder's vocabulary
  is C + 2. `labels` [C] multi-hot comes along for the metric suite, which
  never sees the sequence. Orders: `frequent` (most frequent train tag
  first, the CNN-RNN default), `rare`, or `random`, drawn from the same
  (seed, position) as the example's augmentation so a resumed run sees the
  same order. An example with more than L labels keeps the first L.

Each encoder states its per-example `spec` (name -> (shape, dtype)) so that
the model can be initialised before any data is read.
"""
from __future__ import annotations

from typing import Any

import numpy as np

ENCODINGS = ('multi_hot', 'class_id', 'sequence', 'caption')
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


class MultiHot:
  name = 'multi_hot'

  def __init__(self, num_classes: int):
    self.num_classes = num_classes

  @property
  def spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {'labels': ((self.num_classes,), np.float32)}

  def encode(self, ids, seed: int, position: int) -> dict[str, np.ndarray]:
    del seed, position
    return {'labels': multi_hot(ids, self.num_classes)}

  def padding(self) -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in
            self.spec.items()}


class ClassId(MultiHot):
  name = 'class_id'

  @property
  def spec(self):
    return {'labels': ((), np.int32)}

  def encode(self, ids, seed: int, position: int):
    del seed, position
    ids = np.unique(_checked_ids(ids, self.num_classes))
    if ids.size != 1:
      raise SkipExample(f'class_id needs exactly one label, found {ids.size}')
    return {'labels': np.int32(ids[0])}


class LabelSequence(MultiHot):
  name = 'sequence'

  def __init__(self, num_classes: int, *, order: str, max_labels: int,
               counts=None):
    super().__init__(num_classes)
    if order not in ORDERS:
      raise ValueError(f'Unknown config.dataset.sequence_order {order!r}; '
                       f'valid: {", ".join(ORDERS)}.')
    if max_labels < 1:
      raise ValueError('config.dataset.max_labels must be at least 1.')
    if order != 'random' and counts is None:
      raise ValueError(f'sequence_order={order!r} needs the train tag counts '
                       '(label_stats.npz of the dataset).')
    self.order, self.max_labels = order, int(max_labels)
    self.start, self.end = num_classes, num_classes + 1
    if counts is not None:
      counts = np.asarray(counts, np.int64)
      # rank[c]: position of tag c in the frequency order; ties by tag id.
      by_freq = np.lexsort((np.arange(num_classes), -counts))
      if order == 'rare':
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


def make_encoder(dataset_config, num_classes: int, counts=None,
                 vocabulary=None) -> MultiHot:
  """The encoder that `config.dataset.label_encoding` names.

  vocabulary: the run's caption vocabulary (jaxtag.data.captions), for
  'caption'."""
  name = dataset_config.label_encoding
  if name == 'multi_hot':
    return MultiHot(num_classes)
  if name == 'class_id':
    return ClassId(num_classes)
  if name == 'sequence':
    return LabelSequence(num_classes, order=dataset_config.sequence_order,
                         max_labels=dataset_config.max_labels, counts=counts)
  if name == 'caption':
    from jaxtag.data import captions  # pylint: disable=g-import-not-at-top
    if vocabulary is None:
      raise ValueError("label_encoding='caption' needs the run's caption "
                       'vocabulary (built from the train split by the run).')
    return captions.CaptionEncoder(
        vocabulary, max_tokens=dataset_config.caption_max_tokens,
        references=dataset_config.caption_references)
  raise ValueError(f'Unknown config.dataset.label_encoding {name!r}; valid: '
                   f'{", ".join(ENCODINGS)}.')
