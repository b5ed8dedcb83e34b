"""Throughput of the train step and of the whole pipeline.

- step: images/s of the jitted train step alone, the batch already on device;
- pipeline: images/s of data loading + host-to-device + step, as in training;
- TFLOP/s from XLA's cost analysis of the compiled step, and MFU where the
  device's peak is known.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxtag import sharding
from jaxtag import train as train_lib

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12,
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12,
    'TPU v5p': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
}


def device_peak_flops(device) -> float | None:
  kind = getattr(device, 'device_kind', '')
  for name, peak in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def _flops_per_step(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


def _fake_batch(batch_size: int, image_size: int, num_classes: int, mesh):
  rng = np.random.default_rng(0)
  local = batch_size // jax.process_count()
  batch = {'image': rng.standard_normal(
               (local, image_size, image_size, 3), dtype=np.float32),
           'labels': (rng.random((local, num_classes)) < 0.05).astype(
               np.float32)}
  return sharding.to_global(batch, mesh)


def _time_steps(trainable, state, batch_fn, steps: int):
  """Runs `steps` steps; returns seconds, synchronised at both ends."""
  state, m = trainable.train_step(state, batch_fn(), trainable.step_rng)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(steps):
    state, m = trainable.train_step(state, batch_fn(), trainable.step_rng)
  jax.block_until_ready((state, m))
  return time.perf_counter() - start, state


def run(config, *, num_classes: int, steps: int, warmup: int,
        with_pipeline: bool) -> dict[str, Any]:
  mesh = sharding.create_mesh(config.mesh.model)
  sharding.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  trainable = train_lib.Trainable(config, mesh, num_classes=num_classes,
                                  num_train_steps=steps + warmup + 1)
  state = trainable.fresh_state()
  batch = _fake_batch(config.batch_size, config.data.image_size, num_classes,
                      mesh)
  compiled = trainable.train_step.lower(state, batch,
                                        trainable.step_rng).compile()
  flops = _flops_per_step(compiled)
  for _ in range(warmup):
    state, _ = trainable.train_step(state, batch, trainable.step_rng)
  seconds, state = _time_steps(trainable, state, lambda: batch, steps)
  step_s = seconds / steps
  devices = jax.devices()
  peak = device_peak_flops(devices[0])
  result = {
      'backbone': config.model.backbone, 'dtype': config.model.dtype,
      'image_size': config.data.image_size, 'batch_size': config.batch_size,
      'num_classes': num_classes, 'devices': len(devices),
      'device_kind': devices[0].device_kind, 'steps': steps,
      'step_seconds': step_s,
      'step_images_per_s': config.batch_size / step_s,
      'step_images_per_s_per_device': config.batch_size / step_s / len(devices),
      'flops_per_step': flops,
      'tflops_per_s': flops / step_s / 1e12 if flops else None,
      'train_gflop_per_image': flops / config.batch_size / 1e9 if flops else None,
      'peak_tflops_per_device_bf16': peak / 1e12 if peak else None,
      'mfu': flops / step_s / (peak * len(devices)) if flops and peak else None,
  }
  if with_pipeline:
    result.update(_pipeline(config, trainable, state, steps, mesh,
                             num_classes))
  return result


def _pipeline(config, trainable, state, steps, mesh,
              num_classes) -> dict[str, Any]:
  from jaxtag.data import pipeline, sources
  source, _ = sources.open_split(config.dataset, config.dataset.train_split)
  it = pipeline.create_train_iterator(
      source, data_config=config.data, num_classes=num_classes,
      label_feature=config.dataset.label_feature,
      global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  next(it)  # start workers outside the timed region
  start = time.perf_counter()
  for _ in range(steps):
    next(it)
  load_s = (time.perf_counter() - start) / steps
  seconds, _ = _time_steps(
      trainable, state, lambda: sharding.to_global(next(it), mesh), steps)
  workers, _ = pipeline.host_read_parallelism(config.data)
  cores = max(workers, 1)
  logging.info('pipeline: %.1f ms/batch loading alone', 1e3 * load_s)
  return {
      'pipeline_images_per_s': config.batch_size * steps / seconds,
      'loader_only_images_per_s': config.batch_size / load_s,
      'loader_images_per_s_per_core': config.batch_size / load_s / cores,
      'data_workers': workers,
  }
