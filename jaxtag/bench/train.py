"""Throughput of the train step and of the whole pipeline.

- step: images/s of the jitted train step alone, the batch already on device;
- pipeline: images/s of data loading + host-to-device + step, as in training;
- loader: images/s of the host pipeline alone, as configured and on one core
  (the figure that says how many host cores one accelerator needs);
- TFLOP/s from XLA's cost analysis of the compiled step, and MFU where the
  device's peak is known.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any

import jax
import ml_collections
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
  # uint8 pixels, as the pipeline feeds them.
  batch = {'image': rng.integers(0, 256, (local, image_size, image_size, 3),
                                 dtype=np.uint8),
           'labels': (rng.random((local, num_classes)) < 0.05).astype(
               np.float32)}
  return sharding.to_global(batch, mesh)


def compiled_step(config, num_classes: int, tag_metadata=None):
  """(Trainable, fresh state, a fake batch, the compiled train step) of
  `config` with `num_classes` tags, for head-share benchmarks."""
  mesh = sharding.create_mesh(config.mesh.model)
  trainable = train_lib.Trainable(config, mesh, num_classes=num_classes,
                                  num_train_steps=100,
                                  tag_metadata=tag_metadata)
  state = trainable.fresh_state()
  batch = _fake_batch(config.batch_size, config.data.image_size, num_classes,
                      mesh)
  compiled = trainable.train_step.lower(state, batch,
                                        trainable.step_rng).compile()
  return trainable, state, batch, compiled


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
                             num_classes, result['step_images_per_s']))
  return result


# Timed windows of the loader; the median is reported, since the host's
# cores may be shared with other work.
_LOADER_WINDOWS = 3


@contextlib.contextmanager
def _one_core():
  """Pins this thread, and the threads it starts meanwhile, to one core."""
  if not hasattr(os, 'sched_setaffinity'):
    raise RuntimeError('Pinning to one core needs os.sched_setaffinity '
                       '(Linux).')
  cores = os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cores)})
  try:
    yield
  finally:
    os.sched_setaffinity(0, cores)


def _time_loader(make_iterator, batch_size: int, steps: int):
  """(images/s, images per CPU-second of this process), loading alone.

  Medians over windows of `steps` batches. CPU time counts every thread of
  this process (not worker processes), so it divides by the cores used.
  """
  it = make_iterator()
  next(it)  # start threads and workers outside the timed windows
  rates, cpu_rates = [], []
  for _ in range(_LOADER_WINDOWS):
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
      next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rates.append(batch_size * steps / wall)
    cpu_rates.append(batch_size * steps / cpu)
  if hasattr(it, 'close'):
    it.close()
  return statistics.median(rates), statistics.median(cpu_rates)


def _pipeline(config, trainable, state, steps, mesh, num_classes,
              step_rate) -> dict[str, Any]:
  from jaxtag.data import device_feed, pipeline, sources
  source, _ = sources.open_split(config.dataset, config.dataset.train_split)

  def make_iterator(data_config):
    return lambda: pipeline.create_train_iterator(
        source, data_config=data_config, num_classes=num_classes,
        label_feature=config.dataset.label_feature,
        global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())

  local_batch = config.batch_size // jax.process_count()
  load_rate, load_cpu_rate = _time_loader(make_iterator(config.data),
                                          local_batch, steps)
  # One core: no worker processes, and the reader threads share one core,
  # which is what one reader thread does alone.
  one_core = ml_collections.ConfigDict(config.data.to_dict(), type_safe=False)
  one_core.workers = 0
  with _one_core():
    core_rate, _ = _time_loader(make_iterator(one_core), local_batch, steps)
  # As in training: global batches prefetched onto the devices.
  feed = device_feed.DeviceFeed(make_iterator(config.data)(),
                                lambda b: sharding.to_global(b, mesh),
                                size=config.data.device_prefetch)
  next(feed)  # start workers outside the timed region
  seconds, _ = _time_steps(trainable, state, lambda: next(feed), steps)
  workers, _ = pipeline.host_read_parallelism(config.data)
  logging.info('pipeline: %.1f ms/batch loading alone', 1e3 * local_batch
               / load_rate)
  # Loader rates are this process's; every process loads alike.
  return {
      'pipeline_images_per_s': config.batch_size * steps / seconds,
      'loader_only_images_per_s': load_rate,
      # Worker processes' CPU time is not this process's: no figure then.
      'loader_images_per_cpu_second': load_cpu_rate if not workers else None,
      'loader_images_per_s_per_core': core_rate,
      'loader_to_step_ratio': load_rate * jax.process_count() / step_rate,
      'cores_to_feed_step': step_rate / core_rate,
      'data_workers': workers,
  }
