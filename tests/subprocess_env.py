"""The environment of the commands the slow tests start."""
import os


def env(devices: int | None = None, **extra: str) -> dict:
  """This process's environment for a command on CPU, compiled as
  conftest.py compiles (without LLVM's optimisations) and outside any
  multi-process launch. `devices` fake CPU devices; None leaves the count to
  launch/local.sh, which appends JAXTAG_LOCAL_DEVICES to XLA_FLAGS."""
  out = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  out['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  if devices is not None:
    out['XLA_FLAGS'] += f' --xla_force_host_platform_device_count={devices}'
  for key in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
              'JAX_PROCESS_ID'):
    out.pop(key, None)
  out.update(extra)
  return out
