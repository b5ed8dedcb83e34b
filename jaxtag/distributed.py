"""Joins a multi-process job when the environment asks for one.

- `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`: explicit
  (launch/local.sh sets these).
- SLURM with several tasks, a TPU pod, or `JAXTAG_DISTRIBUTED=auto`: jax's own
  cluster auto-detection.
Nothing is set: a single process, which is the laptop case.
"""
from __future__ import annotations

import os

import jax
from absl import logging


def _wants_auto(env) -> bool:
  if env.get('JAXTAG_DISTRIBUTED', '').lower() == 'auto':
    return True
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1:
    return True
  # Multi-host TPU VMs list every worker here.
  return ',' in env.get('TPU_WORKER_HOSTNAMES', '')


def maybe_initialize(env=None) -> None:
  env = os.environ if env is None else env
  address = env.get('JAX_COORDINATOR_ADDRESS')
  if address:
    kwargs = dict(coordinator_address=address,
                  num_processes=int(env['JAX_NUM_PROCESSES']),
                  process_id=int(env['JAX_PROCESS_ID']))
  elif _wants_auto(env):
    kwargs = {}
  else:
    return
  if env.get('JAX_PLATFORMS', '').startswith('cpu'):
    # CPU devices of several processes talk through gloo.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  logging.info('Process %d of %d, %d local and %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
