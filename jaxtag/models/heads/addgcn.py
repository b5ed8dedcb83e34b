r"""ADD-GCN (Ye et al. 2020) and its multi-modal form (Lan et al. 2022).

The head reads the backbone's feature map M [B, H, W, F] and follows the
ADD-GCN reference code closely (nodes are rows here: V is [B, C, D]):

SAM (semantic attention):
  maps   = M W_m                           1x1 conv F -> C, no bias
  s_m    = max over the H*W cells of maps  (the reference's top-1 mean)
  V_c    = sum_cells sigmoid(maps_c) (M W_p + b_p)     W_p: F -> D

Static GCN (residual):
  H = V + LReLU(LReLU(A_s V) W_s + b_s)    A_s [C, C] learned, no bias

Dynamic GCN:
  g      = LReLU(BN(mean_c(H) W_g + b_g))  one global vector per image
  V'_j   = [ctx, H_j]                      ctx = g (plain ADD-GCN)
  S[j,i] = sigmoid(W_A V'_j + b_A)_i       the per-image C x C adjacency
  Y_j    = LReLU(LReLU(sum_i S[j,i] H_i) W_d + b_d)
  Z      = V + Y                           residual onto the SAM nodes

Scores: s_r[c] = w_c . Z_c + b_c, each category's classifier on its own
node only (the reference computes all C x C products and keeps the
diagonal). Outputs {'logits': (s_m + s_r) / 2, 's_m', 's_r'}; the loss and
the scores use the logits, the branch losses are logged.

Multi-modal input (Lan et al. 2022): with `semantic_dim` > 0 the head
declares the
batch feature 'semantic' [B, semantic_dim] (a caption embedding v_cap),
projected to D when semantic_dim != D. It enters the adjacency only, never
the propagation: `semantic_fusion='replace_global'` uses ctx = v_cap (the
paper's V' = [V, V_cap]), 'concat_global' uses ctx = [g, v_cap].

Since ctx is the same for every node, W_A V'_j = W_ctx ctx + W_x H_j is
computed as one [B, C] context term broadcast over the nodes plus a per-node
term: the same numbers as the reference's tiled concatenation, without its
C-fold repetition of the context product.

`average=True` divides the SAM sum by the number of real cells and the
propagation by C: a constant rescaling that the reference leaves to the
weights, needed when the backbone is trained from scratch (the sums make
the first logits O(H W C)).

Large vocabularies. The exact dynamic graph costs O(C^2 D) per image (the
adjacency logits and the propagation), and the static one O(C^2 D) too.
`dynamic='lowrank'` replaces the sigmoid adjacency with a mixture of r
learned adjacency rows:
  S = alpha P^T,  alpha_j = softmax(W_a V'_j + b_a) in the r-simplex,
                  P = sigmoid(E), E [C, r] learned,
  Y_j = sum_k alpha_jk (P^T H)_k,
so S is never formed and the cost is O(C r D). It is a fair stand-in: each
entry S[j,i] = sum_k alpha_jk P_ik is a convex combination of sigmoids, so
it lies in (0, 1) like the exact entries, each row still depends on the
node's own features and the image's context (through alpha), and the
propagation is the same weighted sum over all C source nodes; what is lost
is that the rows of one image span at most r directions. `static='lowrank'`
factors the learned static adjacency as A_s = U Q^T (U, Q [C, r]): O(C r D).
What remains linear in C is SAM and the per-node D x D weights W_s, W_d.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

GRAPHS = ('exact', 'lowrank')
FUSIONS = ('replace_global', 'concat_global')


def _check(name: str, value: str, valid) -> None:
  if value not in valid:
    raise ValueError(f'Unknown config.model.head_kwargs.{name} {value!r}; '
                     f'valid: {", ".join(valid)}.')


def category_max(maps, mask=None):
  """[B, H, W, C] -> [B, C]: each category's largest value over the real
  cells (the reference's top-1 spatial score s_m)."""
  if mask is not None:
    maps = jnp.where(mask[..., None] > 0, maps, -jnp.inf)
  return jnp.max(maps, axis=(1, 2))


def lowrank_propagate(alpha, prototypes, nodes):
  """sum_i S[j, i] nodes_i with S = alpha prototypes^T, without forming S.

  alpha [B, C, r], prototypes [C, r], nodes [B, C, D] -> [B, C, D].
  """
  pooled = jnp.einsum('ik,bid->bkd', prototypes, nodes)
  return jnp.einsum('bjk,bkd->bjd', alpha, pooled)


class ADDGCNHead(nn.Module):
  num_classes: int
  pool: str = 'gap'             # unused: SAM pools with its attention maps
  dtype: Any = jnp.float32
  node_dim: int = 1024          # D: the SAM projection F -> D
  negative_slope: float = 0.2
  semantic_dim: int = 0         # 0: no 'semantic' feature (plain ADD-GCN)
  semantic_fusion: str = 'replace_global'
  dynamic: str = 'exact'        # 'exact' | 'lowrank'
  static: str = 'exact'         # 'exact' | 'lowrank'
  rank: int = 64                # r of the low-rank graphs
  # False: SAM sums over the cells and the dynamic graph over the C nodes,
  # as the reference does. True: both average instead (divided by the
  # number of real cells, and by C), which keeps the logits of a network
  # trained from scratch O(1) at the start instead of O(H W C).
  average: bool = False

  @property
  def batch_features(self) -> tuple[str, ...]:
    return ('semantic',) if self.semantic_dim else ()

  def _dense(self, features: int, name: str, use_bias: bool = True):
    return nn.Dense(features, use_bias=use_bias, dtype=self.dtype,
                    param_dtype=jnp.float32, name=name)

  def _lrelu(self, x):
    return nn.leaky_relu(x, self.negative_slope)

  def _sam(self, features, mask):
    maps = self._dense(self.num_classes, 'category_maps', False)(features)
    weights = jax.nn.sigmoid(maps)
    if mask is not None:
      weights = weights * mask[..., None].astype(weights.dtype)
    projected = self._dense(self.node_dim, 'sam_projection')(features)
    nodes = jnp.einsum('bhwc,bhwd->bcd', weights, projected)
    if self.average:
      cells = (features.shape[1] * features.shape[2] if mask is None else
               jnp.sum(mask, axis=(1, 2)).astype(nodes.dtype)[:, None, None])
      nodes = nodes / jnp.maximum(cells, 1)
    return category_max(maps.astype(jnp.float32), mask), nodes

  def _static_gcn(self, nodes):
    c, r = self.num_classes, self.rank
    init = nn.initializers.lecun_normal()
    if self.static == 'exact':
      adj = self.param('static_adjacency', init, (c, c), jnp.float32)
      mixed = jnp.einsum('ij,bjd->bid', adj.astype(self.dtype), nodes)
    else:  # A_s = U Q^T, entries of the same scale as lecun_normal on [C, C]
      std = (c * r) ** -0.25
      u = self.param('static_u', nn.initializers.normal(std), (c, r))
      q = self.param('static_q', nn.initializers.normal(std), (c, r))
      mixed = jnp.einsum('ik,bkd->bid', u.astype(self.dtype),
                         jnp.einsum('jk,bjd->bkd', q.astype(self.dtype),
                                    nodes))
    out = self._dense(self.node_dim, 'static_weight')(self._lrelu(mixed))
    return nodes + self._lrelu(out)

  def _context(self, nodes, semantic, train: bool):
    """[B, k*D]: what every node's adjacency row sees besides itself."""
    parts = []
    if not (self.semantic_dim and self.semantic_fusion == 'replace_global'):
      g = self._dense(self.node_dim, 'global')(jnp.mean(nodes, axis=1))
      g = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype,
                       param_dtype=jnp.float32, name='global_norm')(g)
      parts.append(self._lrelu(g))
    if self.semantic_dim:
      if semantic is None:
        raise ValueError('The addgcn head has semantic_dim='
                         f'{self.semantic_dim} and needs the batch feature '
                         "'semantic'; set config.model.head_kwargs."
                         'semantic_dim = 0 for plain ADD-GCN.')
      v_cap = semantic.astype(self.dtype)
      if v_cap.shape[-1] != self.semantic_dim:
        raise ValueError(f"The batch feature 'semantic' has width "
                         f'{v_cap.shape[-1]}, but config.model.head_kwargs.'
                         f'semantic_dim is {self.semantic_dim}.')
      if self.semantic_dim != self.node_dim:
        v_cap = self._dense(self.node_dim, 'semantic_projection')(v_cap)
      parts.append(v_cap)
    return jnp.concatenate(parts, axis=-1)

  def _row_logits(self, context, nodes, width: int, name: str):
    """W [ctx, H_j] + b for every node j, with the context product done
    once per image: [B, C, width]."""
    k = context.shape[-1]
    kernel = self.param(name + '_kernel', nn.initializers.lecun_normal(),
                        (k + nodes.shape[-1], width), jnp.float32)
    bias = self.param(name + '_bias', nn.initializers.zeros, (width,),
                      jnp.float32)
    kernel = kernel.astype(self.dtype)
    shared = context @ kernel[:k] + bias.astype(self.dtype)
    return nodes @ kernel[k:] + shared[:, None, :]

  def _dynamic_gcn(self, nodes, context):
    if self.dynamic == 'exact':
      adj = jax.nn.sigmoid(self._row_logits(context, nodes, self.num_classes,
                                            'adjacency'))
      mixed = jnp.einsum('bji,bid->bjd', adj, nodes)
    else:
      alpha = jax.nn.softmax(
          self._row_logits(context, nodes, self.rank, 'mixture'), axis=-1)
      prototypes = self.param('prototypes', nn.initializers.normal(1.0),
                              (self.num_classes, self.rank), jnp.float32)
      mixed = lowrank_propagate(
          alpha, jax.nn.sigmoid(prototypes).astype(self.dtype), nodes)
    if self.average:
      mixed = mixed / self.num_classes
    out = self._dense(self.node_dim, 'dynamic_weight')(self._lrelu(mixed))
    return self._lrelu(out)

  @nn.compact
  def __call__(self, features, *, train: bool, feature_mask=None,
               semantic=None):
    _check('dynamic', self.dynamic, GRAPHS)
    _check('static', self.static, GRAPHS)
    _check('semantic_fusion', self.semantic_fusion, FUSIONS)
    features = features.astype(self.dtype)
    s_m, v = self._sam(features, feature_mask)
    h = self._static_gcn(v)
    z = v + self._dynamic_gcn(h, self._context(h, semantic, train))
    kernel = self.param('classifier_kernel', nn.initializers.lecun_normal(),
                        (self.node_dim, self.num_classes), jnp.float32)
    bias = self.param('classifier_bias', nn.initializers.zeros,
                      (self.num_classes,), jnp.float32)
    s_r = (jnp.einsum('bcd,dc->bc', z.astype(jnp.float32), kernel) + bias)
    return {'logits': (s_m + s_r) / 2, 's_m': s_m, 's_r': s_r}
