"""The ADD-GCN head's share of the train step: exact vs low-rank graphs.

For each number of tags C, the config's backbone (ResNet-101 at 448 px for
the issue's figures) with the 'addgcn' head in each graph form, and with
the 'linear' head as the backbone-only reference:
- FLOPs from XLA's cost analysis (compile only, nothing runs; holds on any
  device), per image: of the linear train step (the backbone's forward and
  backward), of the backbone's forward pass (the unit the issue states
  costs in), and of each head's forward, and forward and backward, alone
  on the backbone's feature map; the head's share of the step is
  head / (linear step + head);
- seconds, when `steps` > 0: the linear train step and each head's
  forward and backward at a small batch (`time_batch`), and the same share
  in time.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxtag import models
from jaxtag.bench import train as train_bench

_flops = train_bench._flops_per_step  # pylint: disable=protected-access

# name -> head and head_kwargs (the node width comes from the config)
FORMS = {
    'linear': ('linear', {}),
    'exact': ('addgcn', {}),
    'lowrank_dynamic': ('addgcn', {'dynamic': 'lowrank'}),
    'lowrank': ('addgcn', {'dynamic': 'lowrank', 'static': 'lowrank'}),
}


def _config(config, form: str, batch: int, head_kwargs: dict):
  config = config.copy_and_resolve_references()
  head, kwargs = FORMS[form]
  config.model.head = head
  config.model.head_kwargs = {**head_kwargs, **kwargs} if head == 'addgcn' \
      else {}
  config.batch_size = batch
  return config


def _compiled_step(config, num_classes: int):
  return train_bench.compiled_step(config, num_classes)


def backbone_forward(config, num_classes: int, batch: int):
  """(FLOPs of the backbone's forward pass, its feature-map shape)."""
  backbone = models.build_model(config.model, num_classes).backbone
  size = config.data.image_size
  image = jax.ShapeDtypeStruct((batch, size, size, 3),
                               models.DTYPES[config.model.dtype])
  variables = jax.eval_shape(
      lambda x: backbone.init(jax.random.key(0), x, train=False), image)
  forward = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
  shape = jax.eval_shape(forward, variables, image).shape
  return _flops(forward.lower(variables, image).compile()), shape


def _head_programs(config, num_classes: int, feature_shape):
  """The head's forward and its forward + backward (to its parameters and
  to the feature map) on a feature map, compiled; and their inputs."""
  head = models.build_model(config.model, num_classes).head
  features = jax.ShapeDtypeStruct(feature_shape,
                                  models.DTYPES[config.model.dtype])
  variables = jax.eval_shape(
      lambda f: head.init(jax.random.key(0), f, train=False), features)

  def loss(variables, f):
    out, _ = head.apply(variables, f, train=True, mutable=['batch_stats'])
    return jnp.sum(out['logits'] if isinstance(out, dict) else out)

  forward = jax.jit(loss).lower(variables, features).compile()
  train = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
      variables, features).compile()
  return forward, train, (variables, features)


def _seconds(compiled, args, steps: int) -> float:
  args = jax.tree.map(
      lambda a: jax.random.normal(jax.random.key(0), a.shape, a.dtype), args)
  jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  for _ in range(steps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def head_share(config, *, num_classes: Sequence[int], flop_batch: int,
               time_batch: int, steps: int, head_kwargs: dict,
               forms: Sequence[str] = ('exact', 'lowrank_dynamic', 'lowrank'),
               ) -> list[dict[str, Any]]:
  """Rows per C. The step of a form is counted as the linear step (the
  backbone's forward and backward; its 2048 x C linear head is negligible)
  plus the head's forward and backward on the feature map, so that one
  backbone compile serves every C and form."""
  cfg = _config(config, 'linear', flop_batch, head_kwargs)
  fwd, shape = backbone_forward(cfg, 1000, flop_batch)
  _, _, _, compiled = _compiled_step(cfg, 1000)
  backbone_step = _flops(compiled)
  base = {'flop_batch': flop_batch, 'feature_shape': list(shape[1:]),
          'backbone_forward_gflop_per_image': fwd / flop_batch / 1e9,
          'linear_step_gflop_per_image': backbone_step / flop_batch / 1e9}
  if steps:
    cfg = _config(config, 'linear', time_batch, head_kwargs)
    trainable, state, batch, _ = _compiled_step(cfg, 1000)
    seconds, _ = train_bench._time_steps(  # pylint: disable=protected-access
        trainable, state, lambda: batch, steps)
    base.update(time_batch=time_batch, linear_step_seconds=seconds / steps)
  rows = []
  for c in num_classes:
    row: dict[str, Any] = {'num_classes': c, **base}
    for form in forms:
      cfg = _config(config, form, flop_batch, head_kwargs)
      forward, train, _ = _head_programs(cfg, c, shape)
      own = _flops(train)
      row[f'{form}_head_gflop_per_image'] = own / flop_batch / 1e9
      row[f'{form}_head_flop_share'] = own / (backbone_step + own)
      row[f'{form}_head_forward_vs_backbone_forward'] = _flops(forward) / fwd
      if steps:
        _, train, args = _head_programs(
            cfg, c, (time_batch, *shape[1:]))
        head_s = _seconds(train, args, steps)
        row[f'{form}_head_seconds'] = head_s
        row[f'{form}_head_time_share'] = head_s / (
            base['linear_step_seconds'] + head_s)
    rows.append(row)
  return rows
