"""ML-GCN (Chen et al. 2019; Deng et al., undated, for anime tags): GCN classifiers.

A GCN over the label graph maps label embeddings Z [C, d] to one classifier
per tag, W [C, D]; an image's scores are x . W^T, x its pooled feature
(global max pooling by default, as the papers do).

- The graph is `label_graph.correlation_matrix` of the train statistics,
  normalised once (`normalize_adjacency`), and kept in the 'constants'
  collection: saved with the state and passed to the compiled step as an
  argument. `direction='reference_code'` propagates over its transpose,
  as ML-GCN's code does (label_graph). Sparse: its non-zeros as `adjacency_values` [nnz] and
  `adjacency_indices` [nnz, 2], rebuilt as a BCOO in the step (memory
  O(nnz)); dense: `adjacency` [C, C].
- `adjacency='auto'` takes the sparse product when C >= 1,000 and the
  density is under 1%, where a BCOO product beats a dense one on CPU
  (docs/benchmarks.md, "ML-GCN head"); both give the same numbers.
- Each GCN layer is A (H W), ML-GCN's GraphConvolution without bias;
  LeakyReLU(0.2) between layers. `gcn_dims` are the hidden widths
  (default one, 1024); the last layer's width is the feature width D.
- Embeddings: 'learned' (a parameter), 'cooccurrence' (PPMI + SVD of the
  train co-occurrences), 'file' (`embedding_path`: .npy, ML-GCN pickle or
  GloVe text) or 'glove50' (extra `glove`); all but 'learned' are
  constants.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from jaxtag import label_graph
from jaxtag.models import pooling

ADJACENCY = ('auto', 'sparse', 'dense')
# From the CPU measurements in docs/benchmarks.md ("ML-GCN head").
AUTO_MIN_CLASSES = 1000
AUTO_MAX_DENSITY = 0.01


def use_sparse(mode: str, num_classes: int, graph_density: float) -> bool:
  if mode not in ADJACENCY:
    raise ValueError(f'Unknown config.model.head_kwargs.adjacency {mode!r}; '
                     f'valid: {", ".join(ADJACENCY)}.')
  if mode == 'auto':
    return (num_classes >= AUTO_MIN_CLASSES
            and graph_density < AUTO_MAX_DENSITY)
  return mode == 'sparse'


# The graph and embeddings are computed once per tag statistics, not at
# every trace. Keyed by the statistics' identity (they hold arrays).
_CACHE: dict[tuple, tuple[Any, Any]] = {}


def _cached(fn, tags, *args):
  key = (fn.__name__, id(tags), *args)
  if key not in _CACHE or _CACHE[key][0] is not tags:
    if len(_CACHE) > 8:
      _CACHE.clear()
    _CACHE[key] = (tags, fn(tags, *args))
  return _CACHE[key][1]


def _graph(tags, tau, p, scheme, direction):
  a = label_graph.correlation_matrix(sp.csr_matrix(tags.cooccurrence),
                                     tags.counts, tau=tau, p=p, scheme=scheme)
  # Sorted (row, col) COO: the BCOO below is built with indices_sorted.
  return sp.coo_matrix(sp.csr_matrix(
      label_graph.normalize_adjacency(a, direction)))


def _embeddings(tags, source, dim, path):
  if source == 'cooccurrence':
    return label_graph.cooccurrence_embeddings(
        tags.cooccurrence, tags.counts, tags.num_images, dim)
  if source == 'file':
    if not path:
      raise ValueError("head_kwargs.embedding='file' needs head_kwargs."
                       'embedding_path (.npy, ML-GCN pickle or GloVe text).')
    return label_graph.embeddings_from_file(path, tags.names)[0]
  return label_graph.glove50_embeddings(tags.names)[0]


class MLGCNHead(nn.Module):
  # The label graph the run's plots draw: constants/head/adjacency, dense
  # or as adjacency_values + adjacency_indices (heads/__init__.py).
  label_graphs: ClassVar[tuple[str, ...]] = ('adjacency',)
  num_classes: int
  pool: str = 'gmp'
  dtype: Any = jnp.float32
  tag_metadata: Any = None
  tau: float = 0.4             # ML-GCN on COCO; the anime paper: 0.002
  p: float = 0.2
  scheme: str = 'paper'        # 'paper' | 'mlgcn_code' (label_graph)
  direction: str = 'paper'     # 'paper' | 'reference_code' (transpose)
  adjacency: str = 'auto'      # 'auto' | 'sparse' | 'dense'
  gcn_dims: Sequence[int] = (1024,)
  negative_slope: float = 0.2
  embedding: str = 'cooccurrence'
  embedding_dim: int = 300     # 'learned' and 'cooccurrence'
  embedding_path: str | None = None

  def _tags(self):
    if self.tag_metadata is None:
      raise ValueError("The 'mlgcn' head needs the dataset's tag statistics "
                       '(label_stats.npz): build the model with tag_metadata.')
    if len(self.tag_metadata.names) != self.num_classes:
      raise ValueError(f'tag_metadata has {len(self.tag_metadata.names)} tags, '
                       f'the head {self.num_classes}.')
    return self.tag_metadata

  def _adjacency(self):
    """The normalised graph as a callable h -> A h."""
    tags = self._tags()
    graph = _cached(_graph, tags, self.tau, self.p, self.scheme,
                    self.direction)
    c = self.num_classes
    if use_sparse(self.adjacency, c, label_graph.density(graph)):
      values = self.variable('constants', 'adjacency_values',
                             lambda: jnp.asarray(graph.data, jnp.float32))
      indices = self.variable(
          'constants', 'adjacency_indices',
          lambda: jnp.asarray(np.stack([graph.row, graph.col], 1), jnp.int32))
      matrix = jsparse.BCOO((values.value, indices.value), shape=(c, c),
                            indices_sorted=True, unique_indices=True)
      return lambda h: matrix @ h
    dense = self.variable('constants', 'adjacency',
                          lambda: jnp.asarray(graph.toarray(), jnp.float32))
    return lambda h: dense.value @ h

  def _label_embeddings(self):
    if self.embedding not in label_graph.EMBEDDINGS:
      raise ValueError(
          f'Unknown config.model.head_kwargs.embedding {self.embedding!r}; '
          f'valid: {", ".join(label_graph.EMBEDDINGS)}.')
    if self.embedding == 'learned':
      return self.param('embeddings', nn.initializers.normal(1.0),
                        (self.num_classes, self.embedding_dim), jnp.float32)
    tags = self._tags()
    return self.variable(
        'constants', 'embeddings',
        lambda: jnp.asarray(_cached(_embeddings, tags, self.embedding,
                                    self.embedding_dim,
                                    self.embedding_path))).value

  def classifiers(self, feature_dim: int):
    """W [C, feature_dim] float32 from the GCN over the label graph."""
    propagate = self._adjacency()
    h = self._label_embeddings()
    dims = (*self.gcn_dims, feature_dim)
    for i, width in enumerate(dims):
      if i:
        h = nn.leaky_relu(h, self.negative_slope)
      # ML-GCN's GraphConvolution init: U(-1/sqrt(out), 1/sqrt(out)).
      bound = 1.0 / np.sqrt(width)
      w = self.param(f'gcn_{i}', _uniform(bound), (h.shape[-1], width),
                     jnp.float32)
      h = propagate(h @ w)
    return h

  @nn.compact
  def __call__(self, features, *, train: bool, feature_mask=None):
    del train
    x = pooling.pool(features, self.pool, feature_mask)
    w = self.classifiers(x.shape[-1])
    logits = jnp.einsum('bd,cd->bc', x.astype(self.dtype), w.astype(self.dtype))
    return logits.astype(jnp.float32)


def _uniform(bound):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init
