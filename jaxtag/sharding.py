"""The device mesh, the shardings derived from it, and host -> global arrays.

The mesh spans every device of every process with a `data` axis (the batch
is split along it) and a `model` axis (size 1 today; kept so that later
heads with very large vocabularies can shard their classifiers).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
MODEL_AXIS = 'model'


def create_mesh(model_axis_size: int = 1) -> Mesh:
  devices = jax.devices()
  if model_axis_size < 1 or len(devices) % model_axis_size:
    raise ValueError(
        f'config.mesh.model={model_axis_size} does not divide the '
        f'{len(devices)} devices; choose a divisor of {len(devices)}.')
  shape = (len(devices) // model_axis_size, model_axis_size)
  # create_device_mesh orders devices so the data axis follows the
  # interconnect; on CPU and single hosts it is the plain device order.
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Data parallelism: every parameter and optimiser slot is replicated."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(global_batch: int, mesh: Mesh, key: str) -> int:
  """Returns the per-process batch; fails early when the split is uneven."""
  data_devices = mesh.shape[DATA_AXIS]
  processes = jax.process_count()
  if global_batch % data_devices or global_batch % processes:
    raise ValueError(
        f'{key}={global_batch} must be divisible by the {data_devices} devices '
        f'of the data axis and the {processes} processes; use a multiple of '
        f'{np.lcm(data_devices, processes)}.')
  return global_batch // processes


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Stacks each process's local rows into one batch-sharded global array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
