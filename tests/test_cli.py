"""The command line: flags, SIGTERM, and 2 processes equal to 1 process."""
import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import subprocess_env
from absl import flags

from jaxtag import config as config_lib
from jaxtag import main
from jaxtag import train
from jaxtag.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_args(workdir, data_dir, *extra):
  return [sys.executable, '-m', 'jaxtag.main',
          '--config', 'configs/default.py:tiny', '--workdir', workdir,
          f'--config.dataset.data_dir={data_dir}', *extra]


@pytest.mark.slow
def test_unknown_override_is_rejected_with_valid_keys(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxtag.main', '--config', 'configs/default.py',
       '--workdir', str(tmp_path), '--config.model.backbon=resnet50'],
      cwd=ROOT, env=subprocess_env.env(1), capture_output=True, text=True,
      timeout=120)
  assert proc.returncode != 0
  assert 'config.model.backbon' in proc.stderr
  assert ('backbone, backbone_kwargs, dtype, features, head, head_kwargs, '
          'pool') in (
      proc.stderr)


@pytest.mark.parametrize('value,want', [('auto', 'auto'), ('4', 4)])
def test_data_workers_flag_takes_auto_or_a_count(monkeypatch, value, want):
  monkeypatch.chdir(ROOT)
  argv = ['main', '--config', 'configs/default.py:tiny', '--workdir', 'w',
          f'--config.data.workers={value}',
          f'--config.data.read_threads={value}']
  config_lib.check_overrides(argv)
  flag_values = flags.FlagValues()
  main.define_flags(flag_values, sys_argv=argv)
  flag_values(argv)
  config = flag_values['config']
  assert config.value.data.workers == want
  assert config.value.data.read_threads == want
  workers, threads = pipeline.read_parallelism(
      config.value.data.workers, config.value.data.read_threads, cores=8,
      accelerator=True)
  assert (workers, threads) == ((6, 2) if want == 'auto' else (4, 4))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_restores(tiny_config, tmp_path):
  workdir = str(tmp_path / 'term')
  proc = subprocess.Popen(
      _main_args(workdir, tiny_config.dataset.data_dir,
                 '--config.num_train_steps=100000',
                 '--config.checkpoint_every_steps=1000000',
                 '--config.eval_every_steps=1000000',
                 '--config.log_every_steps=1'),
      cwd=ROOT, env=subprocess_env.env(2), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 240
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, 'training did not start'
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out
  assert 'Saved step' in out
  steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
           if d.isdigit()]
  assert len(steps) == 1 and 0 < steps[0] < 100000
  tiny_config.num_train_steps = 100000
  result = train.evaluate_checkpoint(tiny_config, workdir, 'validation')
  assert result['num_examples'] == 64
  assert os.path.exists(os.path.join(workdir, 'eval_validation.json'))


@pytest.mark.slow
def test_two_processes_equal_one_process(tiny_config, tmp_path, read_params):
  data_dir = tiny_config.dataset.data_dir
  # Two SGD steps. The last-bit noise of another all-reduce order
  # (in-process vs gloo) grows fast in this tiny network: its batch norm on
  # 1 x 1 maps of 16 images makes the gradient chaotic, so that 1e-7
  # differences reach percents within five steps, with SGD or Adam (which
  # also turns noise in a near-zero gradient into a full step). Two SGD
  # steps keep the noise near 1e-6, far below what a missing or repeated
  # row or a wrong gradient sum would do.
  args = ('--config.optim.name=sgd', '--config.optim.lr=0.005',
          '--config.num_train_steps=2')
  single = str(tmp_path / 'single')
  subprocess.run(_main_args(single, data_dir, *args), cwd=ROOT,
                 env=subprocess_env.env(4),
                 check=True, capture_output=True, timeout=600)
  multi = str(tmp_path / 'multi')
  env = subprocess_env.env(JAXTAG_LOCAL_DEVICES='2')
  proc = subprocess.run(
      ['bash', 'launch/local.sh', '2', '--', *_main_args(multi, data_dir,
                                                          *args)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  a, step_a = read_params(single)
  b, step_b = read_params(multi)
  assert step_a == step_b == 2
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  for path, x in jax.tree_util.tree_flatten_with_path(a)[0]:
    np.testing.assert_allclose(x, flat_b[path], rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
  # Evaluation met on process 0 alone: every test image once, the same
  # metrics as one process, and no leftover per-process rows.
  results = [json.load(open(os.path.join(w, 'results.json')))['metrics']
             for w in (single, multi)]
  assert results[0]['num_examples'] == results[1]['num_examples'] == 64
  assert results[1]['mAP'] == pytest.approx(results[0]['mAP'], abs=1e-3)
  assert not os.path.exists(os.path.join(multi, 'eval_rows', 'test'))


@pytest.mark.slow
def test_two_processes_build_a_fresh_dataset_once_and_train(tmp_path):
  data_dir, workdir = str(tmp_path / 'fresh'), str(tmp_path / 'run')
  env = subprocess_env.env(JAXTAG_LOCAL_DEVICES='2')
  proc = subprocess.run(
      ['bash', 'launch/local.sh', '2', '--', *_main_args(workdir, data_dir)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, log[-8000:]
  builds = [line for line in log.splitlines()
            if 'Building synthetic_anime/tiny' in line]
  assert len(builds) == 1 and builds[0].startswith('[p0]'), builds
  built = os.listdir(os.path.join(data_dir, 'synthetic_anime', 'tiny', '1.0.0'))
  assert sorted(f for f in built if '.array_record' in f) == [
      f'synthetic_anime-{split}.array_record-00000-of-00001'
      for split in ('test', 'train', 'validation')]
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['step'] == 8


def test_importing_a_module_defines_no_flags():
  """Commands define their flags when they run: importing any module of
  jaxtag or data_builders defines none, so that two commands' flags of the
  same name never clash and `import jaxtag.train` adds no --data_dir."""
  import data_builders
  import jaxtag

  def fail(name):
    raise ImportError(f'{name} does not import')

  for package in (jaxtag, data_builders):
    for module in pkgutil.walk_packages(package.__path__,
                                        f'{package.__name__}.', onerror=fail):
      importlib.import_module(module.name)
  ours = {module: sorted(f.name for f in defined) for module, defined
          in flags.FLAGS.flags_by_module_dict().items()
          if module.split('.')[0] in ('jaxtag', 'data_builders')}
  assert not ours
