"""The mesh's shardings: the batch over every device, the state split along
the model axis, and a step on a split state equal to one on a whole state."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxtag import sharding
from jaxtag import train

M = sharding.MODEL_AXIS


def test_leaf_spec_by_hand():
  assert sharding.MIN_SHARDED_SIZE == 16384
  assert sharding.leaf_spec((128, 256), 8) == P(None, M)    # the larger
  assert sharding.leaf_spec((256, 256), 8) == P(M, None)    # the first
  assert sharding.leaf_spec((1000, 24), 4) == P(M, None)
  assert sharding.leaf_spec((1002, 24), 4) == P(None, M)    # 4 | 24 only
  assert sharding.leaf_spec((3, 3, 64, 512), 8) == P(None, None, None, M)
  assert sharding.leaf_spec((1001, 255), 4) == P()          # none divides
  assert sharding.leaf_spec((127, 128), 4) == P()           # 16,256 < 16,384
  assert sharding.leaf_spec((128, 128), 4) == P(M, None)    # 16,384
  assert sharding.leaf_spec((4096, 4096), 1) == P()         # model 1
  assert sharding.leaf_spec((), 8) == P()


def test_mesh_shardings_of_a_state_and_a_batch():
  mesh = sharding.create_mesh(4)
  assert dict(mesh.shape) == {'data': 2, 'model': 4}
  state = {'w': jax.ShapeDtypeStruct((512, 64), np.float32),
           'b': jax.ShapeDtypeStruct((64,), np.float32)}
  shardings = sharding.state_shardings(state, mesh)
  assert shardings['w'].spec == P(M, None) and shardings['b'].spec == P()
  # 8 rows per device: the batch is split over both axes.
  rows = sharding.to_global({'x': np.arange(64.0).reshape(64, 1)}, mesh)['x']
  assert {s.data.shape for s in rows.addressable_shards} == {(8, 1)}
  assert sorted(float(s.data[0, 0]) for s in rows.addressable_shards) == [
      8.0 * k for k in range(8)]
  assert sharding.check_batch_size(64, mesh, 'config.batch_size') == 64
  with pytest.raises(ValueError, match=r'config.batch_size=12 must be '
                     r'divisible by the 8 devices of the mesh'):
    sharding.check_batch_size(12, mesh, 'config.batch_size')


@pytest.mark.slow  # compiles two whole train steps
def test_a_split_state_trains_as_a_whole_one(tiny_config, monkeypatch):
  # Every leaf that 4 divides is split, so that the tiny network has many.
  monkeypatch.setattr(sharding, 'MIN_SHARDED_SIZE', 1)
  rng = np.random.default_rng(0)
  host = {'image': rng.standard_normal((16, 32, 32, 3)).astype(np.float32),
          'labels': (rng.random((16, 12)) < 0.3).astype(np.float32)}
  params = {}
  for model in (1, 4):
    mesh = sharding.create_mesh(model)
    trainable = train.Trainable(tiny_config, mesh, num_classes=12,
                                num_train_steps=100)
    batch = sharding.to_global(host, mesh)
    state = trainable.fresh_state()
    for _ in range(2):
      state, _ = trainable.train_step(state, batch, trainable.step_rng)
    params[model] = state.params

  split = 0
  for path, x in jax.tree_util.tree_flatten_with_path(params[4])[0]:
    spec = sharding.leaf_spec(x.shape, 4)
    assert x.sharding.spec == spec, jax.tree_util.keystr(path)
    if M in spec:
      axis = list(spec).index(M)
      assert x.addressable_shards[0].data.shape[axis] == x.shape[axis] // 4
      split += 1
  assert split > 10
  whole = dict(jax.tree_util.tree_flatten_with_path(
      jax.device_get(params[1]))[0])
  for path, x in jax.tree_util.tree_flatten_with_path(params[4])[0]:
    np.testing.assert_allclose(np.asarray(x), whole[path], rtol=1e-4,
                               atol=1e-5, err_msg=jax.tree_util.keystr(path))
