"""The trainer resumes past a damaged checkpoint or a kill and ends where a
run that never stopped ends, with each metric of each step logged once."""
import json
import logging
import os
import shutil
import subprocess
import sys

import checkpoint_damage
import jax
import numpy as np
import pytest
import subprocess_env

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import config as config_lib
from jaxtag import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_config(data_dir):
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.data_dir = data_dir
  return config


@pytest.fixture(scope='module')
def straight(tiny_data_dir, tmp_path_factory):
  """The tiny run trained without a stop: checkpoints at 4 and 8."""
  workdir = str(tmp_path_factory.mktemp('straight') / 'run')
  train.train_and_evaluate(_tiny_config(tiny_data_dir), workdir)
  return workdir


def _assert_same_params(a, b):
  """As test_train's resume test: the same steps on the same devices."""
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_b) == len(jax.tree.leaves(a))
  for path, x in jax.tree_util.tree_flatten_with_path(a)[0]:
    np.testing.assert_allclose(x, flat_b[path], rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def _logged(workdir) -> dict[str, list[int]]:
  """{prefix: steps} of metrics.jsonl, in file order, with repeats."""
  out = {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      prefixes = {k.split('/')[0] for k in record if k != 'step'}
      assert len(prefixes) == 1, record
      out.setdefault(prefixes.pop(), []).append(record['step'])
  return out


def _train_losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['train/loss'] for r in map(json.loads, f)
            if 'train/loss' in r}


EVERY_STEP_ONCE = {'train': [2, 4, 6, 8], 'validation': [4, 8], 'test': [8]}


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['iterator_json', 'metadata_truncated',
                                  'array_file'])
def test_damaged_latest_checkpoint_is_set_aside_and_the_run_ends_the_same(
    straight, tiny_data_dir, tmp_path, read_params, caplog, kind):
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight, workdir)
  root = os.path.join(workdir, 'checkpoints')
  named, kept = checkpoint_damage.damage(kind, os.path.join(root, '8'))
  damaged = open(kept, 'rb').read()

  # absl's own logger too: a test that ran a command in this process may
  # have set its level from --verbosity.
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO,
                                                       logger='absl'):
    train.train_and_evaluate(_tiny_config(tiny_data_dir), workdir)
  log = '\n'.join(r.getMessage() for r in caplog.records)
  assert f'Checkpoint step 8 cannot be read: {named}: ' in log
  assert f'Resumed {workdir} at step 4.' in log
  assert sorted(os.listdir(root)) == ['4', '8', '8.unreadable']
  moved = kept.replace(f'{root}/8/', f'{root}/8.unreadable/')
  assert open(moved, 'rb').read() == damaged

  a, step_a = read_params(straight)
  b, step_b = read_params(workdir)
  assert step_a == step_b == 8
  _assert_same_params(a, b)
  assert _logged(workdir) == EVERY_STEP_ONCE
  np.testing.assert_allclose(list(_train_losses(workdir).values()),
                             list(_train_losses(straight).values()),
                             rtol=1e-5)


@pytest.mark.slow
def test_killed_run_logs_each_step_once_after_its_resume(
    straight, tiny_data_dir, tmp_path, read_params, monkeypatch):
  workdir = str(tmp_path / 'killed')
  # The process dies as step 8's checkpoint starts: steps 6 and 8 are
  # logged, and the newest checkpoint is step 4's (once its background
  # write, which a real run would have finished long before, is done).
  save = checkpoint_lib.Checkpointer.save

  def die_at_8(self, step, state, data_iterator):
    if step == 8:
      self.wait()
      raise SystemExit('killed')
    save(self, step, state, data_iterator)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', die_at_8)
  with pytest.raises(SystemExit):
    train.train_and_evaluate(_tiny_config(tiny_data_dir), workdir)
  monkeypatch.undo()
  assert _logged(workdir) == {'train': [2, 4, 6, 8], 'validation': [4]}
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4']

  train.train_and_evaluate(_tiny_config(tiny_data_dir), workdir)
  assert _logged(workdir) == EVERY_STEP_ONCE
  _assert_same_params(read_params(straight)[0], read_params(workdir)[0])

  # Run again once finished: the final evaluation replaces its records.
  train.train_and_evaluate(_tiny_config(tiny_data_dir), workdir)
  assert _logged(workdir) == EVERY_STEP_ONCE


@pytest.mark.slow
def test_no_readable_checkpoint_stops_the_run_with_the_folder_named(
    straight, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(straight, workdir)
  root = os.path.join(workdir, 'checkpoints')
  checkpoint_damage.damage('metadata_truncated', os.path.join(root, '8'))
  checkpoint_damage.damage('iterator_json', os.path.join(root, '4'))
  with pytest.raises(checkpoint_lib.NoReadableCheckpointError) as err:
    train.train_and_evaluate(_tiny_config(tiny_data_dir), workdir)
  message = str(err.value)
  assert message.startswith(f'No checkpoint in {root} can be read (step 8: '
                            f'{root}/8/state/_METADATA: not valid JSON')
  assert f'step 4: {root}/4/data/process_0-of-1.json: not valid JSON' in (
      message)
  assert f'move {workdir} away or train with another --workdir' in message
  assert sorted(os.listdir(root)) == ['4', '8']


@pytest.mark.slow
def test_two_processes_agree_when_only_one_cannot_read(
    straight_two, tmp_path, tiny_data_dir, read_params):
  """Process 1's iterator position of step 8 is cut short: process 0 reads
  step 8 fine, yet both resume from step 4, and only process 0 moves it."""
  two = straight_two
  workdir = str(tmp_path / 'run')
  shutil.copytree(two, workdir)
  root = os.path.join(workdir, 'checkpoints')
  checkpoint_damage.truncate(os.path.join(root, '8', 'data',
                                          'process_1-of-2.json'))
  proc = _launch_two(workdir, tiny_data_dir)
  log = proc.stdout + proc.stderr
  assert proc.returncode == 0, log[-8000:]
  assert f'Checkpoint step 8 cannot be read: {root}/8/data/process_1-of-2' in (
      log)
  assert 'Checkpoint step 8 cannot be read by another process' in log
  assert log.count('Resumed') == 2 and 'at step 4.' in log
  assert sorted(os.listdir(root)) == ['4', '8', '8.unreadable']
  _assert_same_params(read_params(two)[0], read_params(workdir)[0])
  assert _logged(workdir) == EVERY_STEP_ONCE


def _launch_two(workdir, data_dir):
  env = subprocess_env.env(JAXTAG_LOCAL_DEVICES='2')
  return subprocess.run(
      ['bash', 'launch/local.sh', '2', '--', sys.executable, '-m',
       'jaxtag.main', '--config', 'configs/default.py:tiny', '--workdir',
       workdir, f'--config.dataset.data_dir={data_dir}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def straight_two(tiny_data_dir, tmp_path_factory):
  """The tiny run on two processes, without a stop."""
  workdir = str(tmp_path_factory.mktemp('two') / 'run')
  proc = _launch_two(workdir, tiny_data_dir)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-8000:]
  return workdir
