"""Small fake parts that exercise every part of the method contract: heads,
and a task with its own label encoder and objective (counting tags)."""
import csv
import dataclasses
import io
import json
import os
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxtag import losses
from jaxtag import tasks
from jaxtag.data import labels
from jaxtag.models import pooling


class TwoOutputHead(nn.Module):
  """Two logit branches and their mean, as ADD-GCN returns them."""
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train, feature_mask=None):
    x = pooling.pool(features, self.pool, feature_mask)
    a = nn.Dense(self.num_classes, name='static')(x)
    b = nn.Dense(self.num_classes, name='dynamic')(x)
    return {'logits': (a + b) / 2, 'static': a, 'dynamic': b}


class IdFeatureHead(nn.Module):
  """Uses a declared record feature: an embedding of `id % 5` per image."""
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32
  batch_features: ClassVar[tuple[str, ...]] = ('id',)

  @nn.compact
  def __call__(self, features, *, train, feature_mask=None, id):  # pylint: disable=redefined-builtin
    x = pooling.pool(features, self.pool, feature_mask)
    bias = nn.Embed(5, self.num_classes, name='by_id')(id % 5)
    return nn.Dense(self.num_classes)(x) + bias


class ConstantHead(nn.Module):
  """A linear head plus a fixed [C, C] mixing matrix kept as a constant."""
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, *, train, feature_mask=None):
    mixing = self.variable(
        'constants', 'mixing', lambda: jnp.asarray(np.random.default_rng(0)
                                                   .random((self.num_classes,
                                                            self.num_classes)),
                                                   jnp.float32))
    x = pooling.pool(features, self.pool, feature_mask)
    return nn.Dense(self.num_classes)(x) @ mixing.value


class ToyDecoder(nn.Module):
  """A one-layer recurrent label decoder: teacher forced in training,
  greedy in prediction (where it never sees the labels)."""
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32
  max_steps: int = 4
  teacher_features: ClassVar[tuple[str, ...]] = ('label_sequence',)

  def setup(self):
    vocab = self.num_classes + 2
    self.embed = nn.Embed(vocab, 16)
    self.image_proj = nn.Dense(16)
    self.cell = nn.GRUCell(16)
    self.out = nn.Dense(vocab)

  def _start(self, features, feature_mask):
    return jnp.tanh(self.image_proj(pooling.pool(features, self.pool,
                                                 feature_mask)))

  def __call__(self, features, *, train, feature_mask=None,
               label_sequence=None):
    carry = self._start(features, feature_mask)
    logits = []
    for t in range(label_sequence.shape[1] - 1):  # predict tokens 1..L+1
      carry, y = self.cell(carry, self.embed(label_sequence[:, t]))
      logits.append(self.out(y))
    return {'sequence_logits': jnp.stack(logits, axis=1)}

  def predict(self, features, *, feature_mask=None):
    carry = self._start(features, feature_mask)
    token = jnp.full((features.shape[0],), self.num_classes, jnp.int32)
    scores = jnp.zeros((features.shape[0], self.num_classes), jnp.float32)
    for _ in range(self.max_steps):
      carry, y = self.cell(carry, self.embed(token))
      probs = jax.nn.softmax(self.out(y).astype(jnp.float32), axis=-1)
      scores = jnp.maximum(scores, probs[:, :self.num_classes])
      token = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    return {'scores': scores}


class SemanticHead(nn.Module):
  """A linear head plus a projection of the declared 'semantic' feature
  (a captioner's v_cap, as ADD-GCN with captions takes it)."""
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32
  batch_features: ClassVar[tuple[str, ...]] = ('semantic',)

  @nn.compact
  def __call__(self, features, *, train, feature_mask=None, semantic=None):
    x = pooling.pool(features, self.pool, feature_mask)
    return nn.Dense(self.num_classes)(x) + nn.Dense(self.num_classes,
                                                    name='semantic_proj')(
                                                        semantic)


# ------------------------------------------ a new task, encoder, objective ---


PRIOR_FILE = 'count_prior.json'


@dataclasses.dataclass
class TagCount(labels.MultiHot):
  """A label encoder: an image's tag count (at most `cap`, an option) less
  the train split's mean count, which `prepare` keeps in the workdir."""
  name: ClassVar[str] = 'tag_count'
  label_feature: str = 'tags'
  cap: int = 10
  prior: float | None = dataclasses.field(default=None,
                                          metadata={'option': False})

  def prepare(self, workdir, source):
    path = os.path.join(workdir, PRIOR_FILE)
    if source is not None and not os.path.exists(path):
      counts = [min(len(source[i][self.label_feature]), self.cap)
                for i in range(len(source))]
      with open(path, 'w', encoding='utf-8') as f:
        json.dump({'prior': float(np.mean(counts))}, f)
    with open(path, encoding='utf-8') as f:
      self.prior = json.load(f)['prior']

  @property
  def num_classes(self):
    return 1

  @property
  def spec(self):
    return {'labels': ((), np.float32)}

  def encode(self, ids, seed, position):
    del seed, position
    return {'labels': np.float32(min(len(ids), self.cap) - self.prior)}


@dataclasses.dataclass(frozen=True)
class CountMSE:
  """The squared error of the predicted count (logit 0)."""
  task: ClassVar[str] = 'counting'
  label_encoding: ClassVar[str] = 'tag_count'

  def loss(self, outputs, batch, example_mask=None):
    error = (outputs[:, 0].astype(jnp.float32) - batch['labels']) ** 2
    return losses.masked_mean(error, example_mask), {}

  def scores(self, outputs):
    return outputs.astype(jnp.float32)


class Counting(tasks.Task):
  """Judged by the mean absolute error of the count; `<name>_counts.csv`
  lists each image's predicted and true count (less the prior)."""
  name: ClassVar[str] = 'counting'
  summary_keys: ClassVar[tuple[str, ...]] = ('mae', 'loss')

  def score(self, pred, *, eval_config, thresholds=None):
    del eval_config, thresholds
    error = np.abs(pred['scores'][:, 0] - pred['labels'])
    return {'mae': float(np.mean(error))}, pred, None

  def write_files(self, folder, name, pred):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(['index', 'predicted', 'true'])
    for index, score, label in zip(pred['index'], pred['scores'][:, 0],
                                   pred['labels']):
      writer.writerow([int(index), repr(float(score)), repr(float(label))])
    (epath.Path(folder) / f'{name}_counts.csv').write_text(out.getvalue())
