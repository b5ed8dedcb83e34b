"""The ML-GCN head's share of the train step, and BCOO vs dense products.

- head: for each number of tags C, the compiled train step of the config's
  backbone with the 'mlgcn' head (graph from synthetic statistics at a
  tagger's density: about 10 neighbours per tag) and with the 'linear'
  head: FLOPs from XLA's cost analysis and CPU seconds per step. The
  head's own FLOPs are those of its forward and backward pass alone on the
  backbone's feature map (see `head_share` for the batch sizes).
- products: seconds of A @ H plus its gradient with respect to H, with A a
  BCOO or a dense [C, C] matrix, over sizes and densities; what
  `MLGCNHead(adjacency='auto')` decides by.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

from jaxtag import models
from jaxtag.bench import train as train_bench
from jaxtag.data import tag_metadata

_flops = train_bench._flops_per_step  # pylint: disable=protected-access


def synthetic_tags(num_classes: int, neighbours: int = 10,
                   seed: int = 0) -> tag_metadata.TagMetadata:
  """Tag statistics whose ML-GCN graph (tau <= 0.5) has about `neighbours`
  links per tag, held sparse: every tag seen 100 times, each link 50."""
  rng = np.random.default_rng(seed)
  half = max(1, neighbours // 2)
  rows = np.repeat(np.arange(num_classes), half)
  cols = rng.integers(0, num_classes, rows.size)
  m = sp.csr_matrix((np.full(rows.size, 50), (rows, cols)),
                    shape=(num_classes, num_classes))
  m = m.maximum(m.T)
  m.setdiag(100)
  return tag_metadata.TagMetadata(
      names=[f'tag_{i}' for i in range(num_classes)],
      categories=np.zeros(num_classes, int),
      counts=np.full(num_classes, 100), cooccurrence=m.tocsr(),
      num_images=10_000)


def _with_head(config, head: str, batch: int, head_kwargs: dict):
  config = config.copy_and_resolve_references()
  config.model.head = head
  config.model.head_kwargs = head_kwargs if head == 'mlgcn' else {}
  config.model.pool = 'gmp'
  config.batch_size = batch
  return config


def _step(config, tags, num_classes):
  return train_bench.compiled_step(config, num_classes, tag_metadata=tags)


def _head_flops(config, tags, num_classes, feature_shape) -> float:
  """FLOPs of the head's forward + backward alone on a feature map."""
  model = models.build_model(config.model, num_classes, tag_metadata=tags)
  head = model.head
  features = jax.ShapeDtypeStruct(feature_shape, models.DTYPES[
      config.model.dtype])
  variables = jax.eval_shape(
      lambda f: head.init(jax.random.key(0), f, train=True), features)

  def loss(params, consts, f):
    return jnp.sum(head.apply({'params': params, 'constants': consts}, f,
                              train=True))

  grad = jax.jit(jax.grad(loss, argnums=(0, 2)))
  return _flops(grad.lower(variables['params'],
                           variables.get('constants', {}),
                           features).compile())


def _feature_shape(config, num_classes, batch):
  model = models.build_model(config.model, num_classes)
  size = config.data.image_size
  image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda x: model.backbone.init_with_output(
      jax.random.key(0), x, train=False)[0], image)
  return out.shape


def _time(trainable, state, batch, steps: int) -> float:
  state, m = trainable.train_step(state, batch, trainable.step_rng)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = trainable.train_step(state, batch, trainable.step_rng)
  jax.block_until_ready((state, m))
  return (time.perf_counter() - start) / steps


def head_share(config, *, num_classes: Sequence[int], flop_batch: int,
               time_batch: int, steps: int, head_kwargs: dict,
               ) -> list[dict[str, Any]]:
  """Per C: FLOPs and CPU seconds of the train step at `time_batch` with the
  'mlgcn' and the 'linear' head, the heads' own FLOPs, and their shares.

  Compiling a ResNet-50 train step takes minutes on a shared CPU, so the
  step is compiled once per head, at `time_batch`. The share at
  `flop_batch` is composed from measured parts: the step at `time_batch`,
  plus (flop_batch - time_batch) times the backbone's FLOPs per image (the
  linear step's FLOPs less its head's, per image), plus the head's growth
  from `time_batch` to `flop_batch` (the head alone, compiled at both).
  """
  rows = []
  for c in num_classes:
    tags = synthetic_tags(c, neighbours=8 if c < 1000 else 10)
    row: dict[str, Any] = {'num_classes': c, 'flop_batch': flop_batch,
                           'time_batch': time_batch}
    for head in ('mlgcn', 'linear'):
      cfg = _with_head(config, head, time_batch, head_kwargs)
      trainable, state, batch, compiled = _step(cfg, tags, c)
      row[f'{head}_step_flops_at_time_batch'] = _flops(compiled)
      for b in sorted({time_batch, flop_batch}):
        row[f'{head}_head_flops_at_{b}'] = _head_flops(
            cfg, tags, c, _feature_shape(cfg, c, b))
      if steps:
        row[f'{head}_step_seconds'] = _time(trainable, state, batch, steps)
    t, f = time_batch, flop_batch
    per_image = (row['linear_step_flops_at_time_batch']
                 - row[f'linear_head_flops_at_{t}']) / t
    for head in ('mlgcn', 'linear'):
      whole = (row[f'{head}_step_flops_at_time_batch'] + (f - t) * per_image
               + row[f'{head}_head_flops_at_{f}']
               - row[f'{head}_head_flops_at_{t}'])
      row[f'{head}_step_flops_at_{f}'] = whole
      row[f'{head}_flop_share_at_{f}'] = row[f'{head}_head_flops_at_{f}'] / whole
      row[f'{head}_flop_share_at_{t}'] = (
          row[f'{head}_head_flops_at_{t}']
          / row[f'{head}_step_flops_at_time_batch'])
    row['backbone_flops_per_image'] = per_image
    if steps:
      row['mlgcn_extra_time_share'] = 1 - (row['linear_step_seconds']
                                           / row['mlgcn_step_seconds'])
    rows.append(row)
  return rows


def _random_graph(c: int, density: float, seed: int = 0):
  rng = np.random.default_rng(seed)
  nnz = max(c, int(density * c * c))
  flat = np.unique(rng.integers(0, c * c, nnz))
  return sp.coo_matrix((rng.random(flat.size).astype(np.float32),
                        (flat // c, flat % c)), shape=(c, c))


def _seconds(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def product_times(sizes: Sequence[int], densities: Sequence[float], *,
                  width: int) -> list[dict[str, Any]]:
  """Best-of-3 seconds of A @ H and its gradient wrt H, BCOO vs dense."""

  def value_and_grad(a, h):
    return jax.value_and_grad(lambda h: jnp.sum(jnp.tanh(a @ h)))(h)

  run = jax.jit(value_and_grad)
  rows = []
  for c in sizes:
    h = jax.random.normal(jax.random.key(0), (c, width), jnp.float32)
    for density in densities:
      graph = _random_graph(c, density)
      bcoo = jsparse.BCOO(
          (jnp.asarray(graph.data),
           jnp.asarray(np.stack([graph.row, graph.col], 1), jnp.int32)),
          shape=(c, c))
      dense = jnp.asarray(graph.toarray())
      sparse_s, dense_s = _seconds(run, bcoo, h), _seconds(run, dense, h)
      rows.append({'num_classes': c, 'density': graph.nnz / c / c,
                   'width': width, 'bcoo_seconds': sparse_s,
                   'dense_seconds': dense_s,
                   'bcoo_speedup': dense_s / sparse_s})
  return rows
