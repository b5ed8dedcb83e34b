"""The trainer end to end on the tiny synthetic dataset and 8 fake devices."""
import json
import os
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import config as config_lib
from jaxtag import sharding
from jaxtag import train
from jaxtag.data import tag_metadata


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    np.testing.assert_allclose(x, flat_b[path], rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow  # several training steps
def test_train_step_lowers_loss_on_8_devices(tiny_config):
  assert jax.device_count() == 8
  mesh = sharding.create_mesh()
  trainable = train.Trainable(tiny_config, mesh, num_classes=12,
                              num_train_steps=100)
  rng = np.random.default_rng(0)
  batch = sharding.to_global({
      'image': rng.standard_normal((16, 32, 32, 3)).astype(np.float32),
      'labels': (rng.random((16, 12)) < 0.3).astype(np.float32)}, mesh)
  state = trainable.fresh_state()
  losses = []
  for _ in range(15):
    state, m = trainable.train_step(state, batch, trainable.step_rng)
    losses.append(float(m['loss']))
  assert int(state.step) == 15
  # The first loss is ~12*log(2) for a fresh head; fitting one batch must
  # bring it well below that.
  assert losses[0] == pytest.approx(12 * np.log(2), rel=0.2)
  assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
def test_tiny_end_to_end_writes_outputs(tiny_config, tmp_path,
                                        independent_test_map):
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(tiny_config, workdir)
  assert result['mAP'] == pytest.approx(
      independent_test_map(tiny_config, workdir), rel=1e-4)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '8']
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      'metrics.jsonl'))]
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  assert train_steps == [2, 4, 6, 8]
  assert any('validation/mAP' in r and r['step'] == 4 for r in records)
  assert any('test/mAP' in r and r['step'] == 8 for r in records)
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['step'] == 8
  assert results['metrics']['mAP'] == pytest.approx(result['mAP'])
  assert results['metrics']['num_examples'] == 64  # every test image once
  rows = open(os.path.join(workdir, 'results_per_tag.csv')).read().splitlines()
  assert rows[0].startswith('tag,category,train_count')
  assert len(rows) - 1 == len(tag_metadata.load_tag_metadata(
      _dataset_dir(tiny_config)).names)
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def _dataset_dir(config):
  from jaxtag.data import build
  return build.get_builder(config.dataset.name, config.dataset.data_dir).data_dir


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_config, tmp_path, monkeypatch,
                                     read_params):
  straight = str(tmp_path / 'straight')
  train.train_and_evaluate(tiny_config, straight)

  resumed = str(tmp_path / 'resumed')
  # Stop at step 3 exactly as a SIGTERM would: save, return.
  monkeypatch.setattr(checkpoint_lib.PreemptionWatcher, 'should_stop',
                      lambda self, step: step == 3)
  assert train.train_and_evaluate(tiny_config, resumed) == {'preempted_at': 3}
  assert read_params(resumed)[1] == 3
  monkeypatch.undo()
  train.train_and_evaluate(tiny_config, resumed)

  a, step_a = read_params(straight)
  b, step_b = read_params(resumed)
  assert step_a == step_b == 8
  _assert_trees_close(a, b)
  # The runs really trained: parameters moved away from the initialisation.
  init = jax.device_get(train.Trainable(
      tiny_config, sharding.create_mesh(), num_classes=len(
          tag_metadata.load_tag_metadata(
              _dataset_dir(tiny_config)).names),
      num_train_steps=8).fresh_state().params)
  moved = [np.abs(x - y).max() for x, y in zip(jax.tree.leaves(a),
                                               jax.tree.leaves(init))]
  assert max(moved) > 1e-3


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path,
                                                      read_params):
  workdir = str(tmp_path / 'nan')
  tiny_config.num_train_steps = 4
  train.train_and_evaluate(tiny_config, workdir)
  good, _ = read_params(workdir)
  tiny_config.num_train_steps = 40
  tiny_config.optim.lr = 1e32
  tiny_config.optim.schedule = {'name': 'constant', 'warmup_steps': 0}
  with pytest.raises(train.NonFiniteLossError,
                     match=r'not finite at step (\d+)') as err:
    train.train_and_evaluate(tiny_config, workdir)
  bad = int(re.search(r'at step (\d+)', str(err.value)).group(1))
  # Step 5 applies a 1e32-scaled update, so step 5 or 6 is the first bad
  # one; it is read at the next log step (every 2), before step 8 saves.
  assert bad in (5, 6)
  assert 'last good checkpoint (step 4)' in str(err.value)
  params, step = read_params(workdir)
  assert step == 4
  _assert_trees_close(params, good, rtol=0, atol=0)


@pytest.mark.slow
def test_restore_with_other_vocabulary_fails_clearly(tiny_config, tmp_path):
  workdir = str(tmp_path / 'shape')
  tiny_config.num_train_steps = 2
  train.train_and_evaluate(tiny_config, workdir)
  # The same dataset with one more tag in its vocabulary.
  old, root = _dataset_dir(tiny_config), tiny_config.dataset.data_dir
  tiny_config.dataset.data_dir = str(tmp_path / 'data')
  shutil.copytree(old, os.path.join(tiny_config.dataset.data_dir,
                                    os.path.relpath(old, root)))
  new = _dataset_dir(tiny_config)
  tags = tag_metadata.load_tag_metadata(new)
  c = len(tags.names)
  rows = tag_metadata.read_selected_tags(os.path.join(new, 'selected_tags.csv'))
  rows.append(tag_metadata.TagRow(c, 'one_more_tag', tag_metadata.GENERAL, 0))
  with open(os.path.join(new, 'selected_tags.csv'), 'wb') as f:
    f.write(tag_metadata.selected_tags_bytes(rows))
  cooccurrence = np.zeros((c + 1, c + 1), np.int64)
  cooccurrence[:c, :c] = tags.cooccurrence_dense()
  with open(os.path.join(new, 'label_stats.npz'), 'wb') as f:
    f.write(tag_metadata.label_stats_bytes(
        np.append(tags.counts, 0), cooccurrence, tags.num_images))
  with pytest.raises(checkpoint_lib.ShapeMismatchError,
                     match='does not fit this model') as err:
    train.train_and_evaluate(tiny_config, workdir)
  # The head's bias names both vocabularies.
  assert f'checkpoint ({c},) vs model ({c + 1},)' in str(err.value)


def test_unknown_config_key_lists_valid_keys(tiny_config):
  tiny_config.optim.lrr = 0.1
  with pytest.raises(ValueError) as err:
    config_lib.validate(tiny_config)
  message = str(err.value)
  assert 'config.optim.lrr' in message
  for key in ('lr', 'weight_decay', 'schedule', 'clip_norm'):
    assert key in message


def test_steps_between_events_do_not_block_the_host():
  """Five dispatched steps return long before the first has finished."""
  x = jnp.ones((384, 384), jnp.float32) / 384

  @jax.jit
  def slow_step(state, batch, rng):
    del rng  # a step that takes a while on the device and reads nothing back
    y = jax.lax.fori_loop(0, 60, lambda i, y: jnp.tanh(y @ y + batch), state)
    return y, {'loss': jnp.sum(y)}

  state = slow_step(x, x, None)[0]
  jax.block_until_ready(state)
  start = time.perf_counter()
  one = jax.block_until_ready(slow_step(state, x, None))
  one_step = time.perf_counter() - start

  start = time.perf_counter()
  state, metrics, step, stopped = train.run_until_event(
      state, iter([x] * 5), slow_step, None, 0,
      is_event=lambda s: s == 5, should_stop=lambda s: False)
  dispatched = time.perf_counter() - start
  jax.block_until_ready(metrics)
  finished = time.perf_counter() - start
  assert (step, stopped) == (5, False)
  assert finished > 3 * one_step  # the five steps really ran...
  assert dispatched < 0.5 * one_step, (dispatched, one_step)  # ...after it
  del one
