"""Show, Attend and Tell (Xu et al. 2015), soft attention, as a jaxtag head.

The backbone's feature grid [B, H, W, D] is the encoder. Per image:
- annotations a_i = W_a f_i + b (i over the H x W cells): the captioner's own
  projection of the grid to `context_dim`, its annotation vectors (Lan et
  al.'s M_cap, pooled into the semantic feature v_cap by `semantic`);
- the LSTM state starts from the mean annotation: h_0 = tanh(W_h0 ā),
  c_0 = tanh(W_c0 ā);
- step t reads the previous word y_{t-1} (embedding E y, `embed_dim`):
  attention e_ti = w·tanh(U a_i + V h_{t-1}), α_t = softmax over real cells
  (`feature_mask`); context z_t = β_t Σ α_ti a_i with the gating scalar
  β_t = σ(f_β(h_{t-1})); (h_t, c_t) = LSTM([E y_{t-1}, z_t]);
- the deep output layer: logits = L_o(E y_{t-1} + L_h drop(h_t) + L_z z_t).
Training is teacher forced on `caption_tokens` and returns
`sequence_logits` [B, T + 1, V], `attention` [B, T + 1, H·W] and `cells`
[B, H·W] (1 on real cells) for the
`caption_ce` objective (cross-entropy per valid token plus the doubly
stochastic attention penalty λ Σ_i (1 - Σ_t α_ti)²).

Xu et al.'s annotations are VGG conv5_4's 14 x 14 x 512 at 224 px; their
paper gives no other size. The defaults here (512-d embedding, 512-d
attention, 1024-unit LSTM, dropout 0.5) are those of common
re-implementations. A 14 x 14 grid at 224 px is a stride-16 backbone:
for example a ResNet with its last stage dropped
(`backbone_kwargs.stage_sizes=(3, 4, 6)` for ResNet-50).

Prediction (`predict`, never sees captions) decodes greedily
(`beam_width=1`) or with a beam search (jaxtag/models/beam_search.py)
and returns `tokens` [B, max_steps] ending in END, and `scores` (the same
ids as float32, what the trainer's eval rows carry).
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.data import captions as captions_lib
from jaxtag.models import beam_search
from jaxtag.models import semantic as semantic_lib


class ShowAttendTell(nn.Module):
  num_classes: int            # the caption vocabulary, specials included
  pool: str = 'gap'           # unused: attention replaces pooling
  dtype: Any = jnp.float32
  context_dim: int = 512
  embed_dim: int = 512
  attention_dim: int = 512
  lstm_dim: int = 1024
  dropout: float = 0.5
  beam_width: int = 3
  max_steps: int = 21         # the encoder's max_tokens + 1 (END)
  teacher_features: ClassVar[tuple[str, ...]] = ('caption_tokens',)

  def setup(self):
    dense = lambda n, name, bias=True: nn.Dense(  # noqa: E731
        n, use_bias=bias, dtype=self.dtype, param_dtype=jnp.float32,
        name=name)
    self.annotate = dense(self.context_dim, 'annotate')
    self.init_h = dense(self.lstm_dim, 'init_h')
    self.init_c = dense(self.lstm_dim, 'init_c')
    self.embed = nn.Embed(self.num_classes, self.embed_dim,
                          param_dtype=jnp.float32, name='embed')
    self.att_context = dense(self.attention_dim, 'att_context')
    self.att_hidden = dense(self.attention_dim, 'att_hidden', bias=False)
    self.att_score = dense(1, 'att_score')
    self.gate = dense(1, 'gate')
    self.cell = nn.OptimizedLSTMCell(self.lstm_dim, dtype=self.dtype,
                                     param_dtype=jnp.float32, name='lstm')
    self.out_hidden = dense(self.embed_dim, 'out_hidden')
    self.out_context = dense(self.embed_dim, 'out_context', bias=False)
    self.out_logits = dense(self.num_classes, 'out_logits')
    self.drop = nn.Dropout(self.dropout)

  def annotations(self, features, feature_mask=None):
    """(a [B, L, context_dim], mask [B, L]) from the grid [B, H, W, D]."""
    b, h, w, d = features.shape
    a = self.annotate(features.reshape(b, h * w, d))
    mask = (jnp.ones((b, h * w), jnp.float32) if feature_mask is None else
            feature_mask.reshape(b, h * w).astype(jnp.float32))
    return a, mask

  def semantic(self, features, feature_mask=None, pooling: str = 'avg'):
    """v_cap [B, context_dim]: the annotations pooled over the real cells
    (what jaxtag/models/semantic.py computes inside a tagger)."""
    a, mask = self.annotations(features, feature_mask)
    return semantic_lib.pool_annotations(a.astype(jnp.float32), mask, pooling)

  def _start(self, a, mask):
    mean = semantic_lib.pool_annotations(a, mask, 'avg')
    return jnp.tanh(self.init_c(mean)), jnp.tanh(self.init_h(mean))

  def _step(self, carry, word, a, a_proj, mask, train: bool):
    """One decoder step: (carry, logits [.., V], alpha [.., L])."""
    c, h = carry
    e = self.att_score(jnp.tanh(a_proj + self.att_hidden(h)[..., None, :]))
    e = jnp.where(mask > 0, e[..., 0].astype(jnp.float32), -1e30)
    alpha = jax.nn.softmax(e, axis=-1)
    z = jnp.einsum('...l,...ld->...d', alpha.astype(a.dtype), a)
    z = z * jax.nn.sigmoid(self.gate(h))
    y = self.embed(word)
    (c, h), _ = self.cell((c, h), jnp.concatenate([y, z], -1))
    out = y + self.out_hidden(self.drop(h, deterministic=not train)) + \
        self.out_context(z)
    logits = self.out_logits(self.drop(out, deterministic=not train))
    return (c, h), logits.astype(jnp.float32), alpha

  def __call__(self, features, *, train: bool, feature_mask=None,
               caption_tokens=None):
    if caption_tokens is None:
      raise ValueError('show_attend_tell trains on caption_tokens: set '
                       "config.dataset.label_encoding='caption'.")
    a, mask = self.annotations(features, feature_mask)
    a_proj = self.att_context(a)
    carry = self._start(a, mask)
    all_logits, all_alpha = [], []
    for t in range(caption_tokens.shape[1] - 1):
      carry, logits, alpha = self._step(carry, caption_tokens[:, t], a,
                                        a_proj, mask, train)
      all_logits.append(logits)
      all_alpha.append(alpha)
    return {'sequence_logits': jnp.stack(all_logits, 1),
            'attention': jnp.stack(all_alpha, 1), 'cells': mask}

  def predict(self, features, *, feature_mask=None):
    a, mask = self.annotations(features, feature_mask)
    a_proj = self.att_context(a)
    k = self.beam_width
    tile = lambda x: jnp.repeat(x[:, None], k, axis=1)  # noqa: E731
    a, a_proj, mask = tile(a), tile(a_proj), tile(mask)

    def step_fn(carry, tokens):
      carry, logits, _ = self._step(carry, tokens, a, a_proj, mask, False)
      return logits, carry

    start = jax.tree.map(tile, self._start(a[:, 0], mask[:, 0]))
    result = beam_search.search(
        step_fn, start, vocab_size=self.num_classes, beam_width=k,
        max_steps=self.max_steps, start=captions_lib.START,
        end=captions_lib.END, banned=(captions_lib.PAD, captions_lib.START))
    tokens = result.sequences[:, 0]
    return {'tokens': tokens, 'scores': tokens.astype(jnp.float32)}
