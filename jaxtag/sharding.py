"""The device mesh, the shardings derived from it, and host -> global arrays.

The mesh spans every device of every process with a `data` axis and a
`model` axis (`config.mesh.model` devices, 1 by default). The batch is
split over every device of both. Parameters and optimiser slots are
replicated along `data` and split along `model` (fully sharded data
parallelism within each group of `model` devices): each leaf of at least
MIN_SHARDED_SIZE elements is cut along its largest dimension that `model`
divides, and XLA gathers it where a step uses it and reduce-scatters its
gradient. With `model` = 1 (the default) this is plain data parallelism;
a model too large to hold whole on one device trains with `model` > 1.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
# Leaves under this many elements (biases, norms, small kernels) stay whole
# on every device: cutting them saves little memory for a collective each.
MIN_SHARDED_SIZE = 1 << 14


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
  """Rows split over every device: the data and model axes together."""
  return NamedSharding(mesh, P((DATA_AXIS, MODEL_AXIS)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leaf_spec(shape: tuple[int, ...], model: int) -> P:
  """How a state leaf of `shape` is split over `model` devices: along its
  largest dimension that `model` divides (the first of equal ones), or not
  at all when `model` is 1, the leaf is under MIN_SHARDED_SIZE elements or
  no dimension divides."""
  if model == 1 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
    return P()
  divisible = [d for d, n in enumerate(shape) if n % model == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda d: (shape[d], -d))
  return P(*(MODEL_AXIS if d == axis else None for d in range(len(shape))))


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Each parameter and optimiser slot replicated along `data` and split
  along `model` by leaf_spec."""
  model = mesh.shape[MODEL_AXIS]
  return jax.tree.map(
      lambda a: NamedSharding(mesh, leaf_spec(tuple(a.shape), model)),
      abstract_state)


def check_batch_size(global_batch: int, mesh: Mesh, key: str) -> int:
  """Returns the per-process batch; fails early when the split is uneven."""
  devices = mesh.size   # the batch is split over both axes
  processes = jax.process_count()
  if global_batch % devices or global_batch % processes:
    raise ValueError(
        f'{key}={global_batch} must be divisible by the {devices} devices '
        f'of the mesh and the {processes} processes; use a multiple of '
        f'{np.lcm(devices, processes)}.')
  return global_batch // processes


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Stacks each process's local rows into one batch-sharded global array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
