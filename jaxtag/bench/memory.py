r"""The compiled train step's memory per device, from XLA's memory analysis.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
  python -m jaxtag.bench --what=memory --config configs/wd_v3.py:eva02_large \
      --config.batch_size=32 --config.mesh.model=1 --num_classes=10861

The train step of --config (its model, dtype, optimiser, MixUp and cutout)
at config.batch_size and config.mesh.model is lowered from abstract values
(the state and the batch are shapes with their shardings: nothing is
allocated) and compiled; it is never run, so a model far larger than the
host's memory can be measured on fake CPU devices. The figures are XLA's
`compiled.memory_analysis()` for one device (an SPMD program is the same
on every device): its arguments (state and batch shard), outputs, the
bytes outputs share with donated arguments, and the temporaries (the
activations kept for the backward pass, gradients, optimiser updates).
Peak = arguments + outputs - aliased + temporaries, what the device holds
at once under XLA's buffer assignment. The CPU backend's buffer assignment
and fusion differ from an accelerator's, so read these as the sizes the
program asks for, not a GPU's or TPU's exact peak.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxtag import sharding
from jaxtag import train as train_lib

FIELDS = ('argument_size_in_bytes', 'output_size_in_bytes',
          'alias_size_in_bytes', 'temp_size_in_bytes',
          'generated_code_size_in_bytes')


def abstract_batch(config, num_classes: int, mesh) -> dict[str, Any]:
  """The step's batch as shapes, sharded over the data axis."""
  size, batch = config.data.image_size, config.batch_size
  spec = sharding.batch_sharding(mesh)
  return {'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8,
                                        sharding=spec),
          'labels': jax.ShapeDtypeStruct((batch, num_classes), jnp.float32,
                                         sharding=spec)}


def run(config, *, num_classes: int) -> dict[str, Any]:
  mesh = sharding.create_mesh(config.mesh.model)
  sharding.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  trainable = train_lib.Trainable(config, mesh, num_classes=num_classes,
                                  num_train_steps=1000)
  compiled = trainable.train_step.lower(
      trainable.abstract_state, abstract_batch(config, num_classes, mesh),
      trainable.step_rng).compile()
  analysis = compiled.memory_analysis()
  row = {f: int(getattr(analysis, f)) for f in FIELDS}
  row['peak_bytes'] = (row['argument_size_in_bytes']
                       + row['output_size_in_bytes']
                       - row['alias_size_in_bytes']
                       + row['temp_size_in_bytes'])
  params = sum(x.size for x in jax.tree.leaves(
      trainable.abstract_state.params))
  return {'backbone': config.model.backbone, 'dtype': config.model.dtype,
          'optimizer': config.optim.name,
          'image_size': config.data.image_size,
          'batch_size': config.batch_size, 'num_classes': num_classes,
          'devices': jax.device_count(), 'mesh': dict(mesh.shape),
          'params': int(params), 'per_device': row,
          'device_kind': jax.devices()[0].device_kind}


def print_result(result: dict[str, Any]) -> None:
  gib = 1 << 30
  row = result['per_device']
  print(f'{result["backbone"]} {result["image_size"]} px, batch '
        f'{result["batch_size"]}, {result["dtype"]}, {result["optimizer"]}, '
        f'mesh {result["mesh"]} on {result["devices"]} '
        f'{result["device_kind"]} devices; per device (GiB):')
  for name in (*FIELDS, 'peak_bytes'):
    print(f'  {name:30s} {row[name] / gib:8.2f}')
