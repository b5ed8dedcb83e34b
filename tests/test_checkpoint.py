"""Checkpoints that cannot be read: named, moved aside, and resumed past.

A small state and a real grain iterator are saved at steps 1 and 2; files of
step 2 are then damaged as a crash or a full disk leaves them.
"""
import json
import logging
import os

import checkpoint_damage
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtag import checkpoint as checkpoint_lib


def _sharding():
  return NamedSharding(jax.make_mesh((8,), ('data',)), P())


# Arrays over 1 KiB after compression, which OCDBT keeps in data files
# rather than inline in its tree nodes.
SHAPE = (16, 32)
NOISE = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def _state(value: float, shape=SHAPE):
  return {'step': jnp.int32(value),
          'params': {'w': jnp.asarray(NOISE[:shape[0], :shape[1]] + value)
                          if shape == SHAPE else jnp.zeros(shape),
                     'b': jnp.arange(3, dtype=jnp.float32) + value}}


def _abstract(shape=SHAPE):
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=_sharding()),
      _state(0.0, shape))


def _iterator(position: int = 0):
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(position):
    next(iterator)
  return iterator


def _save(workdir, steps=(1, 2), keep=3):
  """Step s holds the value s and an iterator that has yielded 10 * s."""
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=keep)
  for step in steps:
    checkpointer.save(step, jax.device_put(_state(float(step)), _sharding()),
                      _iterator(10 * step))
  checkpointer.close()
  return os.path.join(workdir, 'checkpoints')


def _restore(workdir, **kwargs):
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=3)
  iterator = _iterator()
  try:
    restored = checkpointer.restore_latest(_abstract(), iterator, **kwargs)
    steps = checkpointer._manager.all_steps()
  finally:
    checkpointer.close()
  return restored, next(iterator), steps


@pytest.mark.parametrize('kind', checkpoint_damage.KINDS)
def test_unreadable_latest_step_is_moved_aside_and_the_one_before_restored(
    tmp_path, caplog, kind):
  root = _save(str(tmp_path))
  named, kept = checkpoint_damage.damage(kind, os.path.join(root, '2'))
  damaged = open(kept, 'rb').read() if kept else None
  with caplog.at_level(logging.WARNING):
    (state, step), position, steps = _restore(str(tmp_path))
  assert step == 1 and steps == [1]
  np.testing.assert_array_equal(state['params']['w'], NOISE + 1)
  np.testing.assert_array_equal(state['params']['b'], [1.0, 2.0, 3.0])
  assert position == 10  # the iterator of step 1, not of step 2
  warnings = '\n'.join(r.getMessage() for r in caplog.records
                       if r.levelno >= logging.WARNING)
  assert f'Checkpoint step 2 cannot be read: {named}' in warnings
  assert 'Resuming from step 1' in warnings
  assert f'Moved the unreadable step 2 to {root}/2.unreadable' in warnings
  assert sorted(os.listdir(root)) == ['1', '2.unreadable']
  if kept:  # the damaged files are kept as they were, for inspection
    moved = kept.replace(f'{root}/2/', f'{root}/2.unreadable/')
    assert open(moved, 'rb').read() == damaged


def test_a_second_unreadable_copy_of_a_step_gets_a_suffix(tmp_path):
  root = _save(str(tmp_path))
  os.makedirs(os.path.join(root, '2.unreadable'))
  checkpoint_damage.damage('iterator_json', os.path.join(root, '2'))
  (_, step), _, _ = _restore(str(tmp_path))
  assert step == 1
  assert sorted(os.listdir(root)) == ['1', '2.unreadable', '2.unreadable-2']


def test_orbax_ignores_the_moved_step_when_it_saves_and_deletes(tmp_path):
  root = _save(str(tmp_path), keep=2)
  checkpoint_damage.damage('array_file', os.path.join(root, '2'))
  _restore(str(tmp_path))
  # keep=2: saving steps 2, 3 and 4 deletes 1 and the new 2, never the
  # moved one.
  _save(str(tmp_path), steps=(2, 3, 4), keep=2)
  assert sorted(os.listdir(root)) == ['2.unreadable', '3', '4']
  (state, step), position, steps = _restore(str(tmp_path))
  assert (step, position, steps) == (4, 40, [3, 4])
  np.testing.assert_array_equal(state['params']['w'], NOISE + 4)


def test_several_unreadable_steps_are_all_moved(tmp_path):
  root = _save(str(tmp_path), steps=(1, 2, 3))
  checkpoint_damage.damage('metadata_truncated', os.path.join(root, '3'))
  checkpoint_damage.damage('iterator_json', os.path.join(root, '2'))
  (_, step), position, _ = _restore(str(tmp_path))
  assert (step, position) == (1, 10)
  assert sorted(os.listdir(root)) == ['1', '2.unreadable', '3.unreadable']


def test_no_readable_step_names_the_folder_and_moves_nothing(tmp_path):
  root = _save(str(tmp_path))
  checkpoint_damage.damage('array_file', os.path.join(root, '2'))
  checkpoint_damage.damage('metadata_truncated', os.path.join(root, '1'))
  with pytest.raises(checkpoint_lib.NoReadableCheckpointError) as err:
    _restore(str(tmp_path))
  message = str(err.value)
  assert f'No checkpoint in {root} can be read' in message
  assert f'step 2: {root}/2/state: ' in message
  assert f'step 1: {root}/1/state/_METADATA: not valid JSON' in message
  assert f'move {tmp_path} away or train with another --workdir' in message
  assert sorted(os.listdir(root)) == ['1', '2']


def test_an_eval_only_reader_moves_nothing(tmp_path):
  root = _save(str(tmp_path))
  checkpoint_damage.damage('iterator_json', os.path.join(root, '2'))
  (state, step), _, _ = _restore(str(tmp_path), set_aside=False)
  assert step == 1 and int(state['step']) == 1
  assert sorted(os.listdir(root)) == ['1', '2']


def test_another_model_is_a_shape_error_not_damage(tmp_path):
  root = _save(str(tmp_path))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(checkpoint_lib.ShapeMismatchError,
                     match=r'checkpoints/2 does not fit this model \(params/w: '
                           r'checkpoint \(16, 32\) vs model \(4, 3\)'):
    checkpointer.restore_latest(_abstract((4, 3)), _iterator())
  # Behind a damaged newest step, the older step's mismatch still shows,
  # and neither step is moved.
  checkpoint_damage.damage('iterator_json', os.path.join(root, '2'))
  with pytest.raises(checkpoint_lib.ShapeMismatchError,
                     match='checkpoints/1 does not fit'):
    checkpointer.restore_latest(_abstract((4, 3)), _iterator())
  checkpointer.close()
  assert sorted(os.listdir(root)) == ['1', '2']


def test_positions_of_another_process_count_are_a_clear_error(tmp_path):
  root = _save(str(tmp_path))
  for step in ('1', '2'):
    data = os.path.join(root, step, 'data')
    os.rename(os.path.join(data, 'process_0-of-1.json'),
              os.path.join(data, 'process_0-of-2.json'))
  with pytest.raises(ValueError, match=r'another number of processes '
                     r'\(process_0-of-2.json\); this run has 1'):
    _restore(str(tmp_path))
  assert sorted(os.listdir(root)) == ['1', '2']


def test_unreachable_storage_is_not_taken_for_damage(tmp_path, monkeypatch):
  root = _save(str(tmp_path))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3)
  # What TensorStore raises when a bucket does not answer.
  error = ValueError('UNAVAILABLE: Error reading "params.w/0.0" in OCDBT '
                     'database at gs://b/run/checkpoints/2/state/')

  def unavailable(directory, args):
    raise error

  monkeypatch.setattr(checkpointer._state_handler, 'restore', unavailable)
  with pytest.raises(ValueError) as err:
    checkpointer.restore_latest(_abstract(), _iterator())
  assert err.value is error
  checkpointer.close()
  assert sorted(os.listdir(root)) == ['1', '2']


def test_damage_is_told_from_other_errors():
  def chained(outer, inner):
    try:
      raise outer from inner
    except Exception as e:  # pylint: disable=broad-except
      return e

  short = ValueError('OUT_OF_RANGE: Error reading "a/0.0" in OCDBT database '
                     'at local file "/c/8/state/": Requested byte range '
                     '[0, 9) is not valid [tensorstore_spec=\'{"driver"}\']')
  # Orbax wraps TensorStore's error in one that names only the slice.
  wrapped = chained(Exception('Encountered error while reading array index'),
                    short)
  assert checkpoint_lib.damage(wrapped) == (
      'OUT_OF_RANGE: Error reading "a/0.0" in OCDBT database at local file '
      '"/c/8/state/": Requested byte range [0, 9) is not valid')
  assert checkpoint_lib.damage(json.JSONDecodeError('x', 'ab', 1)).startswith(
      'JSONDecodeError')
  for other in (ValueError('PERMISSION_DENIED: gs://b/c'), KeyError('state'),
                MemoryError(), ValueError('DEADLINE_EXCEEDED: read')):
    assert checkpoint_lib.damage(other) is None


def _slices_compiled_by_save(tmp_path, state, caplog) -> int:
  """The jit(slice) programs compiled while `state`, replicated on 8
  devices, is saved: Orbax's replica-parallel writing of an array takes
  one per shape and device."""
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=1)
  state = jax.device_put(state, _sharding())
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    caplog.clear()
    checkpointer.save(1, state, _iterator())
    checkpointer.close()
  return sum('compilation of jit(slice)' in r.getMessage()
             for r in caplog.records)


def test_only_parts_over_the_threshold_are_written_by_several_replicas(
    tmp_path, caplog):
  # Shapes no other test saves, so that no slice is compiled already.
  small = {'w': jnp.ones((24, 40)), 'b': jnp.arange(7, dtype=jnp.float32)}
  assert 24 * 40 * 4 < checkpoint_lib.REPLICA_PARALLEL_MIN_BYTES
  assert _slices_compiled_by_save(tmp_path / 'small', small, caplog) == 0

  # Each of the 8 replicas would write a part of 8 rows more than 1 MiB.
  rows = 8 * (checkpoint_lib.REPLICA_PARALLEL_MIN_BYTES // (4 * 64) + 8)
  large = {**small, 'big': jnp.ones((rows, 64))}
  assert _slices_compiled_by_save(tmp_path / 'large', large, caplog) > 0
  stored = checkpoint_lib.read_numpy(tmp_path / 'large' / 'checkpoints' / '1'
                                     / 'state')
  np.testing.assert_array_equal(stored['big'], np.ones((rows, 64)))
  np.testing.assert_array_equal(stored['b'], np.arange(7))
