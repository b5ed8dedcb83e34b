"""When jaxtag joins a multi-process job, from the environment alone."""
import jax

from jaxtag import distributed


def test_single_process_without_any_cluster_variables(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kw: calls.append(kw))
  distributed.maybe_initialize({})
  distributed.maybe_initialize({'SLURM_NTASKS': '1'})
  assert not calls


def test_explicit_variables_and_cluster_detection(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, 'update', lambda *a: calls.append(a))
  distributed.maybe_initialize({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234',
                                'JAX_NUM_PROCESSES': '4',
                                'JAX_PROCESS_ID': '2'})
  assert calls[-1] == {'coordinator_address': '10.0.0.1:1234',
                       'num_processes': 4, 'process_id': 2}
  distributed.maybe_initialize({'SLURM_NTASKS': '16'})
  distributed.maybe_initialize({'TPU_WORKER_HOSTNAMES': 'a,b'})
  distributed.maybe_initialize({'JAXTAG_DISTRIBUTED': 'auto',
                                'JAX_PLATFORMS': 'cpu'})
  # Auto-detection passes no arguments; CPU platforms switch to gloo first.
  assert calls[-4:] == [{}, {}, ('jax_cpu_collectives_implementation',
                                 'gloo'), {}]
