"""CNN-RNN (Wang et al., CVPR 2016): an LSTM that emits an image's labels.

Model, per step t of the label sequence (START, labels..., END):
- w(t) = U_l[token(t)], a row of the label embedding U_l [C + 2, embed_dim]
  (C labels, START, END);
- o(t) = LSTM(w(t), o(t - 1)), over the labels only;
- x(t) = h(U_o o(t) + U_I I), the LSTM output and the pooled image feature
  I projected into the joint embedding space; h is the scaled tanh
  1.7159 tanh(2x/3) of m-RNN (Mao et al. 2015), whose multimodal layer this
  projection is;
- next-token logits x(t) · U_lᵀ + b: the output is tied to the embedding
  matrix, so a label is scored by how close its embedding lies to the
  image-and-history point. The bias b lets the decoder learn how often
  END and each label come next regardless of the image. START is masked: the
  decoder never predicts it.

Training (`__call__`) is teacher forced on `label_sequence` and returns
`sequence_logits` [B, L + 1, C + 2] for the `sequence_ce` objective.

Prediction (`predict`) never sees labels: a beam search (width
`beam_width`, at most `max_steps` tokens, no label twice; see
jaxtag/models/beam_search.py). The predicted set is the best beam's labels
(`best_beam`, multi-hot; `best_sequence` in emission order), which is the
paper's own decision; the trainer does not read them.

Scores. Ranking metrics (mAP) need a score for every label, and a beam
search gives probabilities only along the paths it keeps. `scores` holds,
for each label, the highest probability it reached as the next token of any
live beam at any step. The best beam's labels score high; a label that lost
to another at some step still keeps the probability it had there; a label
that no kept beam ever found likely scores near 0. Thresholds
(config.eval.thresholds) apply to these scores as to any other head's, so
CP/CR/CF1 and OP/OR/OF1 come from thresholded scores, not from the best
beam.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.models import beam_search
from jaxtag.models import pooling


def scaled_tanh(x):
  return 1.7159 * jnp.tanh(2.0 / 3.0 * x)


class LSTMDecoder(nn.Module):
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32
  embed_dim: int = 64      # Wang et al.'s label embedding size
  lstm_dim: int = 512      # Wang et al.'s LSTM size
  beam_width: int = 3
  # Tokens per beam at most: the sequence's max_labels + 1 (labels, END).
  max_steps: int = 17
  teacher_features: ClassVar[tuple[str, ...]] = ('label_sequence',)

  def setup(self):
    vocab = self.num_classes + 2
    # Rows of norm about 1: the tied output logits start near 0.
    self.label_embedding = nn.Embed(
        vocab, self.embed_dim,
        embedding_init=nn.initializers.normal(self.embed_dim ** -0.5))
    self.cell = nn.OptimizedLSTMCell(self.lstm_dim, dtype=self.dtype,
                            param_dtype=jnp.float32)
    self.recurrent_proj = nn.Dense(self.embed_dim, use_bias=False,
                                   dtype=self.dtype, param_dtype=jnp.float32)
    self.image_proj = nn.Dense(self.embed_dim, dtype=self.dtype,
                               param_dtype=jnp.float32)
    self.output_bias = self.param('output_bias', nn.initializers.zeros,
                                  (vocab,), jnp.float32)

  def _image(self, features, feature_mask):
    """U_I I [B, embed_dim]: the pooled image in the joint space."""
    return self.image_proj(pooling.pool(features, self.pool, feature_mask))

  def _carry(self, shape):
    zeros = jnp.zeros((*shape, self.lstm_dim), jnp.float32)
    return zeros, zeros

  def _step(self, carry, tokens, image):
    """One token [N] in, next-token logits [N, C + 2] float32 out."""
    carry, out = self.cell(carry, self.label_embedding(tokens))
    joint = scaled_tanh(self.recurrent_proj(out) + image)
    logits = (self.label_embedding.attend(joint).astype(jnp.float32)
              + self.output_bias)
    is_start = jnp.arange(logits.shape[-1]) == self.num_classes
    return carry, jnp.where(is_start, -1e9, logits)

  def __call__(self, features, *, train, feature_mask=None,
               label_sequence=None):
    del train  # no dropout or batch statistics in the decoder
    if label_sequence is None:
      raise ValueError("lstm_decoder trains on 'label_sequence': set "
                       "config.dataset.label_encoding = 'sequence'.")
    image = self._image(features, feature_mask)
    carry = self._carry(label_sequence.shape[:1])
    logits = []
    for t in range(label_sequence.shape[1] - 1):  # predict tokens 1..L+1
      carry, step_logits = self._step(carry, label_sequence[:, t], image)
      logits.append(step_logits)
    return {'sequence_logits': jnp.stack(logits, axis=1)}

  def predict(self, features, *, feature_mask=None):
    image = self._image(features, feature_mask)
    batch, k = features.shape[0], self.beam_width
    beam_image = jnp.repeat(image, k, axis=0)  # [B * K, E], row b*K + j

    def step(carry, tokens):
      flat = jax.tree.map(lambda x: x.reshape(batch * k, -1), carry)
      flat, logits = self._step(flat, tokens.reshape(-1), beam_image)
      carry = jax.tree.map(lambda x: x.reshape(batch, k, -1), flat)
      return logits.reshape(batch, k, -1), carry

    result = beam_search.beam_search(
        step, self._carry((batch, k)), num_labels=self.num_classes,
        beam_width=k, max_steps=self.max_steps)
    return {'scores': result.label_probs,
            'best_beam': beam_search.multi_hot(result.sequences[:, 0],
                                               self.num_classes),
            'best_sequence': result.sequences[:, 0]}
