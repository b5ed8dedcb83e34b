"""Objectives: how a method's outputs are trained, scored and judged.

`config.loss.name` picks one; `config.loss.kwargs` sets its fields (checked
by name). An objective states
- `task`: the name of the task that judges and serves its scores
  (jaxtag/tasks/: 'multi_label', the multi-label metric suite on scores
  [N, C]; 'single_label', top-1/top-5, per-class accuracy, confused
  pairs; 'captioning', BLEU-1..4 of decoded captions);
- `label_encoding`: the `config.dataset.label_encoding` it trains on
  (jaxtag/data/encoders.py);
- `loss(outputs, batch, example_mask) -> (loss, logged)`: the training loss
  on the model's outputs and the batch, and named values logged beside it;
- `scores(outputs) -> [B, C]`: per-tag scores from the prediction path.

Outputs are an array of logits, or a dict. In a dict, 'logits' is what the
loss and the scores use, and any other array of the same shape (ADD-GCN's
static and dynamic branches, say) gets its own loss logged as
`loss_<name>`. A prediction path that computes its scores itself (beam
search, pruned fully convolutional sums) returns them under 'scores', and
every objective takes those as they are.

The primitive losses are in jaxtag/losses.py.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag import losses


def logits_of(outputs) -> jax.Array:
  if isinstance(outputs, dict):
    if 'logits' not in outputs:
      raise KeyError(f'The model returned {sorted(outputs)}; this objective '
                     "reads 'logits'.")
    return outputs['logits']
  return outputs


def branch_logits(outputs) -> dict[str, jax.Array]:
  """Other outputs shaped like 'logits': each branch, logged on its own."""
  if not isinstance(outputs, dict) or 'logits' not in outputs:
    return {}
  shape = outputs['logits'].shape
  return {k: v for k, v in outputs.items()
          if k != 'logits' and getattr(v, 'shape', None) == shape}


def given_scores(outputs) -> jax.Array | None:
  if isinstance(outputs, dict) and 'scores' in outputs:
    return outputs['scores'].astype(jnp.float32)
  return None


def required_scores(outputs, who: str) -> jax.Array:
  """outputs['scores'] of a prediction path that must compute them."""
  given = given_scores(outputs)
  if given is None:
    raise KeyError(f"{who} scores images with outputs['scores'] from the "
                   "head's predict().")
  return given


class _OnLogits:
  """The loss of 'logits' (each branch logged too), scored by `activation`."""
  activation: ClassVar[Any] = staticmethod(jax.nn.sigmoid)

  def primitive(self, logits, batch, example_mask):
    raise NotImplementedError

  def loss(self, outputs, batch, example_mask=None):
    logged = {f'loss_{k}': self.primitive(v, batch, example_mask)
              for k, v in branch_logits(outputs).items()}
    return self.primitive(logits_of(outputs), batch, example_mask), logged

  def scores(self, outputs):
    given = given_scores(outputs)
    if given is not None:
      return given
    return self.activation(logits_of(outputs).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class SigmoidBCE(_OnLogits):
  """Sigmoid binary cross-entropy per tag (baseline, ML-GCN, ADD-GCN).

  reduction: 'sum_over_tags' (default) or 'mean_over_tags', the
  references' scale (losses.sigmoid_bce)."""
  task: ClassVar[str] = 'multi_label'
  label_encoding: ClassVar[str] = 'multi_hot'
  reduction: str = 'sum_over_tags'
  # Per-tag weights [C] of the training loss (config.loss.tag_weights).
  label_weights: tuple[float, ...] | None = None

  def primitive(self, logits, batch, example_mask):
    weights = (None if self.label_weights is None
               else jnp.asarray(self.label_weights, jnp.float32))
    return losses.sigmoid_bce(logits=logits, labels=batch['labels'],
                              label_weights=weights,
                              example_mask=example_mask,
                              reduction=self.reduction)


@dataclasses.dataclass(frozen=True)
class MultilabelSoftmax(_OnLogits):
  """Vallet & Sakamoto's multi-label softmax, -log of the softmax mass on
  the label set (losses.multilabel_softmax), averaged over the images that
  have a label: an image without one has no defined loss and counts for
  nothing. Scores are the softmax, unless the head's prediction path gives
  its own (their test network gives summed confidences)."""
  task: ClassVar[str] = 'multi_label'
  label_encoding: ClassVar[str] = 'multi_hot'
  activation: ClassVar[Any] = staticmethod(
      functools.partial(jax.nn.softmax, axis=-1))

  def primitive(self, logits, batch, example_mask):
    labels = batch['labels']
    counted = losses.has_positive(labels).astype(jnp.float32)
    if example_mask is not None:
      counted = counted * example_mask.astype(jnp.float32)
    return losses.masked_mean(
        losses.multilabel_softmax(logits=logits, labels=labels), counted)


@dataclasses.dataclass(frozen=True)
class SoftmaxCE(_OnLogits):
  """Single-label softmax cross-entropy on class ids (character faces)."""
  task: ClassVar[str] = 'single_label'
  label_encoding: ClassVar[str] = 'class_id'
  activation: ClassVar[Any] = staticmethod(
      functools.partial(jax.nn.softmax, axis=-1))
  label_smoothing: float = 0.0

  def primitive(self, logits, batch, example_mask):
    return losses.softmax_ce(logits=logits, labels=batch['labels'],
                             label_smoothing=self.label_smoothing,
                             example_mask=example_mask)


@dataclasses.dataclass(frozen=True)
class SequenceCE:
  """Per-step softmax cross-entropy of a label decoder, teacher forced.

  Training outputs hold 'sequence_logits' [B, L + 1, C + 2], the prediction
  for each next token of `label_sequence` (labels, then END). Prediction
  must return 'scores' (from beam search): the decoder's training pass
  sees the labels and cannot score an image on its own.
  """
  task: ClassVar[str] = 'multi_label'
  label_encoding: ClassVar[str] = 'sequence'

  def loss(self, outputs, batch, example_mask=None):
    if not isinstance(outputs, dict) or 'sequence_logits' not in outputs:
      raise KeyError("The sequence objective reads outputs['sequence_logits'] "
                     '[B, L + 1, C + 2] from the training pass.')
    loss = losses.sequence_ce(
        logits=outputs['sequence_logits'],
        targets=batch['label_sequence'][:, 1:],
        target_mask=batch['label_sequence_mask'][:, 1:],
        example_mask=example_mask)
    return loss, {}

  def scores(self, outputs):
    return required_scores(outputs, 'The sequence objective')


@dataclasses.dataclass(frozen=True)
class CaptionCE:
  """Show, Attend and Tell's loss: cross-entropy per valid caption token,
  teacher forced, plus the doubly stochastic attention penalty
  `attention_weight` · Σ_i (1 − Σ_t α_ti)², averaged over images, which
  asks every grid cell to be attended about once over the caption.

  Training outputs: 'sequence_logits' [B, T + 1, V] (the next token after
  each of START, w_1.., w_T) and 'attention' [B, T + 1, L]. Prediction
  returns 'scores': decoded token ids [B, T'] (float32), judged by BLEU.
  """
  task: ClassVar[str] = 'captioning'
  label_encoding: ClassVar[str] = 'caption'
  attention_weight: float = 1.0

  def loss(self, outputs, batch, example_mask=None):
    for key in ('sequence_logits', 'attention', 'cells'):
      if not isinstance(outputs, dict) or key not in outputs:
        raise KeyError(f"caption_ce reads outputs[{key!r}] from the "
                       'training pass of a caption decoder.')
    targets = batch['caption_tokens'][:, 1:]
    steps = batch['caption_mask'][:, 1:].astype(jnp.float32)
    tokens = losses.sequence_ce(logits=outputs['sequence_logits'],
                                targets=targets, target_mask=steps,
                                example_mask=example_mask)
    # Σ_t over the steps that emit a word or END; Σ_i over the real cells.
    attended = jnp.einsum('btl,bt->bl',
                          outputs['attention'].astype(jnp.float32), steps)
    per_image = jnp.sum(outputs['cells'] * (1.0 - attended) ** 2, axis=-1)
    penalty = losses.masked_mean(per_image, example_mask)
    return tokens + self.attention_weight * penalty, {
        'loss_tokens': tokens, 'attention_penalty': penalty}

  def scores(self, outputs):
    return required_scores(outputs, 'caption_ce (decoded tokens)')


OBJECTIVES = {
    'sigmoid_bce': SigmoidBCE,
    'multilabel_softmax': MultilabelSoftmax,
    'softmax_ce': SoftmaxCE,
    'sequence_ce': SequenceCE,
    'caption_ce': CaptionCE,
}


def read_tag_weights(path: str, names) -> np.ndarray:
  """[C] loss weights in the order of `names`, from a csv of `tag,weight`
  rows (a header row `tag,weight` is allowed); tags the file leaves out
  weigh 1. Tags that are not in the vocabulary, malformed rows and
  negative weights are errors that name the file."""
  index = {name: i for i, name in enumerate(names)}
  weights = np.ones(len(index), np.float32)
  unknown = []
  try:
    with open(path, encoding='utf-8', newline='') as f:
      rows = list(csv.reader(f))
  except OSError as e:
    raise ValueError(f'config.loss.tag_weights: cannot read {path}: '
                     f'{e.strerror}.') from None
  for line, row in enumerate(rows, 1):
    if not row or (line == 1 and [c.strip() for c in row] == ['tag',
                                                             'weight']):
      continue
    if len(row) != 2:
      raise ValueError(f'{path}, line {line}: expected `tag,weight`, got '
                       f'{len(row)} field(s).')
    tag, value = row[0].strip(), row[1].strip()
    try:
      weight = float(value)
    except ValueError:
      raise ValueError(f'{path}, line {line}: weight {value!r} of {tag!r} '
                       'is not a number.') from None
    if not np.isfinite(weight) or weight < 0:
      raise ValueError(f'{path}, line {line}: the weight of {tag!r} must be '
                       f'finite and >= 0, not {value}.')
    if tag not in index:
      unknown.append(tag)
      continue
    weights[index[tag]] = weight
  if unknown:
    shown = ', '.join(repr(t) for t in unknown[:10])
    more = f' and {len(unknown) - 10} more' if len(unknown) > 10 else ''
    raise ValueError(f'{path} (config.loss.tag_weights) names {len(unknown)} '
                     f'tag(s) that are not in the dataset\'s vocabulary: '
                     f'{shown}{more}. Remove them or fix their spelling.')
  return weights


def with_tag_weights(objective, loss_config, tag_names):
  """`objective` with config.loss.tag_weights' per-tag weights, if set."""
  path = loss_config.get('tag_weights')
  if not path:
    return objective
  if 'label_weights' not in {f.name for f in dataclasses.fields(objective)}:
    raise ValueError(f'config.loss.tag_weights weighs tags of a per-tag '
                     f'loss; config.loss.name={loss_config.name!r} has none.')
  if tag_names is None:
    raise ValueError('config.loss.tag_weights needs the dataset\'s tag names '
                     'to read the file.')
  weights = read_tag_weights(path, list(tag_names))
  return dataclasses.replace(objective,
                             label_weights=tuple(float(w) for w in weights))


def get_objective(loss_config, label_encoding: str | None = None) -> Any:
  """The objective `config.loss.name` with `config.loss.kwargs` set.

  label_encoding: `config.dataset.label_encoding`, checked against the one
  the objective trains on.
  """
  name = loss_config.name
  if name not in OBJECTIVES:
    raise ValueError(f'Unknown loss {name!r} (config.loss.name); valid: '
                     f'{", ".join(sorted(OBJECTIVES))}.')
  cls = OBJECTIVES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  kwargs = dict(loss_config.kwargs)
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f'Unknown key(s) {unknown} in config.loss.kwargs for '
                     f'{name!r}; valid: {", ".join(sorted(fields)) or "none"}.')
  if label_encoding is not None and label_encoding != cls.label_encoding:
    raise ValueError(
        f'config.loss.name={name!r} trains on '
        f'config.dataset.label_encoding={cls.label_encoding!r}, but the '
        f'config sets {label_encoding!r}; set them to match.')
  return cls(**kwargs)
