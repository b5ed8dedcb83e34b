"""config.init.head: a new vocabulary keeps the backbone and the head rows
of the tags it shares with the starting weights (matched by name)."""
import flax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import warm_start


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def _fresh():
  """A tiny model's fresh state: a backbone weight, a head norm without a
  class axis and a linear head over 4 tags (x, a, y, c)."""
  rng = np.random.default_rng(0)
  params = {'backbone': {'w': jnp.asarray(rng.normal(size=(2, 3)))},
            'head': {'norm': {'scale': jnp.ones(3)},
                     'Dense_0': {'kernel': jnp.asarray(rng.normal(size=(3, 4))),
                                 'bias': jnp.asarray(rng.normal(size=4))}}}
  return _State(params=params, batch_stats={})


def _source(tmp_path, with_tags=True):
  """Starting weights over 3 tags (a, b, c)."""
  rng = np.random.default_rng(1)
  arrays = {'backbone/w': rng.normal(size=(2, 3)),
            'head/norm/scale': rng.normal(size=3),
            'head/Dense_0/kernel': rng.normal(size=(3, 3)),
            'head/Dense_0/bias': rng.normal(size=3)}
  if with_tags:
    arrays['tags'] = np.array(['a', 'b', 'c'])
  path = tmp_path / 'init.npz'
  np.savez(path, **arrays)
  return str(path), arrays


def _init(path, head):
  return ml_collections.ConfigDict({'path': path, 'include': '^backbone/',
                                    'head': head})


TAGS = ['x', 'a', 'y', 'c']


def test_match_by_name_keeps_shared_rows_and_starts_others_fresh(tmp_path):
  path, source = _source(tmp_path)
  fresh = _fresh()
  state = warm_start.apply(fresh, _init(path, 'match_by_name'), TAGS)
  np.testing.assert_allclose(state.params['backbone']['w'],
                             source['backbone/w'])
  np.testing.assert_allclose(state.params['head']['norm']['scale'],
                             source['head/norm/scale'])
  kernel = np.asarray(state.params['head']['Dense_0']['kernel'])
  bias = np.asarray(state.params['head']['Dense_0']['bias'])
  old_kernel = np.asarray(fresh.params['head']['Dense_0']['kernel'])
  old_bias = np.asarray(fresh.params['head']['Dense_0']['bias'])
  # a: source column 0 -> ours 1; c: source 2 -> ours 3; x, y fresh.
  np.testing.assert_allclose(kernel[:, 1], source['head/Dense_0/kernel'][:, 0])
  np.testing.assert_allclose(kernel[:, 3], source['head/Dense_0/kernel'][:, 2])
  np.testing.assert_allclose(kernel[:, [0, 2]], old_kernel[:, [0, 2]])
  np.testing.assert_allclose(bias, [old_bias[0], source['head/Dense_0/bias'][0],
                                    old_bias[2], source['head/Dense_0/bias'][2]])


def test_reset_keeps_the_backbone_only(tmp_path):
  path, source = _source(tmp_path)
  fresh = _fresh()
  state = warm_start.apply(fresh, _init(path, 'reset'), TAGS)
  np.testing.assert_allclose(state.params['backbone']['w'],
                             source['backbone/w'])
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(state.params['head']['Dense_0'][name],
                                  fresh.params['head']['Dense_0'][name])


def test_match_by_name_needs_named_tags_and_a_known_mode(tmp_path):
  path, _ = _source(tmp_path, with_tags=False)
  with pytest.raises(warm_start.InitError, match="no 'tags' entry"):
    warm_start.apply(_fresh(), _init(path, 'match_by_name'), TAGS)
  with pytest.raises(warm_start.InitError, match='Unknown config.init.head'):
    warm_start.apply(_fresh(), _init(path, 'by_name'), TAGS)


def test_default_is_reset():
  assert config_lib.defaults().init.head == 'reset'
