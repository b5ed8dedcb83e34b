"""Optimisers, schedules, weight-decay masks and parameter groups."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtag import config as config_lib
from jaxtag import optim
from jaxtag import trees


def _config(**kw):
  c = config_lib.defaults().optim
  c.schedule = {'name': 'constant', 'warmup_steps': 0}
  c.update(kw)
  return c


def _params():
  return {'backbone': {'conv': {'kernel': jnp.ones((2, 2))},
                       'bn': {'scale': jnp.ones(2), 'bias': jnp.ones(2)}},
          'head': {'kernel': jnp.ones((2,)), 'bias': jnp.ones((2,))}}


def _step(config, grads, params=None, steps=1):
  params = params or _params()
  tx, _ = optim.build_optimizer(config, num_train_steps=100)

  @jax.jit   # one program, not one compiled dispatch per small operation
  def one(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = one(params, state)
  return params


def test_schedules_by_hand():
  c = _config(lr=0.1, schedule={'name': 'cosine', 'warmup_steps': 10,
                                'end_lr_factor': 0.0})
  _, s = optim.build_optimizer(c, num_train_steps=110)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.05)
  assert float(s(10)) == pytest.approx(0.1)
  assert float(s(60)) == pytest.approx(0.05, rel=1e-5)   # half-way cosine
  assert float(s(110)) == pytest.approx(0.0, abs=1e-9)
  c = _config(lr=1.0, schedule={'name': 'step', 'boundaries': (0.5, 80),
                                'decay_factor': 0.1})
  _, s = optim.build_optimizer(c, num_train_steps=100)
  assert [float(s(t)) for t in (49, 50, 79, 80)] == pytest.approx(
      [1.0, 0.1, 0.1, 0.01])


def test_sgd_momentum_nesterov_by_hand():
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), _params())
  for nesterov in (False, True):
    c = _config(name='sgd', lr=0.1, momentum=0.9, nesterov=nesterov)
    p = _step(c, grads, steps=2)
    # torch SGD: v1 = g, v2 = 0.9 v1 + g = 1.9 g; nesterov uses g + 0.9 v.
    first = 0.5 + (0.9 * 0.5 if nesterov else 0)
    second = (0.5 + 0.9 * 1.9 * 0.5) if nesterov else 1.9 * 0.5
    assert float(p['head']['bias'][0]) == pytest.approx(
        1 - 0.1 * (first + second), rel=1e-6)


def test_adamw_step_by_hand_and_decay_on_kernels_only():
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3),
                                     _params())
  c = _config(name='adamw', lr=0.01, weight_decay=0.1)
  p = _step(c, grads)
  # First Adam step moves by lr * g/|g| = lr; AdamW adds lr * wd * p.
  assert float(p['head']['kernel'][0]) == pytest.approx(
      1 - 0.01 * (1 + 0.1), rel=1e-5)
  assert float(p['head']['bias'][0]) == pytest.approx(1 - 0.01, rel=1e-5)
  assert float(p['backbone']['bn']['scale'][0]) == pytest.approx(1 - 0.01,
                                                                 rel=1e-5)


def test_param_group_multiplier_scales_the_step_exactly():
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3),
                                     _params())
  c = _config(name='adamw', lr=0.01, weight_decay=0.1,
              param_groups=(('^backbone/', 0.1),))
  p = _step(c, grads)
  base = _step(_config(name='adamw', lr=0.01, weight_decay=0.1), grads)
  moved = 1 - float(p['backbone']['conv']['kernel'][0, 0])
  moved_base = 1 - float(base['backbone']['conv']['kernel'][0, 0])
  assert moved == pytest.approx(0.1 * moved_base, rel=1e-4)
  assert float(p['head']['kernel'][0]) == pytest.approx(
      float(base['head']['kernel'][0]))
  with pytest.raises(ValueError, match='config.optim.param_groups'):
    optim.build_optimizer(_config(param_groups=(('(', 1.0),)),
                          num_train_steps=10)


def test_clipping_caps_the_global_norm():
  grads = jax.tree.map(lambda x: jnp.full_like(x, 100.0),
                                     _params())
  p = _step(_config(name='sgd', lr=1.0, momentum=0.0, clip_norm=1.0), grads)
  delta = jax.tree.map(lambda a, b: a - b, _params(), p)
  assert float(optax.global_norm(delta)) == pytest.approx(1.0, rel=1e-5)


def test_unknown_names_are_listed():
  with pytest.raises(ValueError, match='adam, adamw, lamb, sgd, vallet_rmsprop'):
    optim.build_optimizer(_config(name='lars'), num_train_steps=10)
  with pytest.raises(ValueError, match='constant, cosine, step'):
    optim.build_optimizer(_config(schedule={'name': 'poly'}),
                          num_train_steps=10)


def test_unknown_schedule_key_is_rejected_with_valid_keys():
  c = _config(schedule={'name': 'cosine', 'warmup_step': 10})
  with pytest.raises(ValueError, match='config.optim.schedule.*warmup_steps'):
    optim.build_optimizer(c, num_train_steps=10)


def test_warmup_cosine_from_a_tenth_to_a_hundredth_by_hand():
  # The WD v3 schedule: 0.1x -> peak over the warmup, cosine to 0.01x.
  c = _config(lr=2.0, schedule={'name': 'cosine', 'warmup_steps': 10,
                                'init_lr_factor': 0.1, 'end_lr_factor': 0.01})
  _, s = optim.build_optimizer(c, num_train_steps=110)
  assert float(s(0)) == pytest.approx(0.2)
  assert float(s(5)) == pytest.approx(0.2 + 0.5 * 1.8)
  assert float(s(10)) == pytest.approx(2.0)
  # Half-way down the cosine: the mean of the peak and the floor.
  assert float(s(60)) == pytest.approx((2.0 + 0.02) / 2, rel=1e-5)
  assert float(s(110)) == pytest.approx(0.02, rel=1e-5)


def _vit_like_params():
  return {'backbone': {
      'pos_embed': jnp.full((1, 4, 2), 0.5), 'cls_token': jnp.full((1, 1, 2),
                                                                   0.5),
      'blocks_0': {'norm1': {'scale': jnp.ones(2), 'bias': jnp.zeros(2)},
                   'ls1': {'gamma': jnp.full(2, 0.1)},
                   'attn': {'qkv': {'kernel': jnp.arange(12.).reshape(2, 6)
                                    / 10, 'bias': jnp.full(6, 0.2)}},
                   'cpb_mlp_0': {'kernel': jnp.ones((2, 2))}}},
      'head': {'kernel': jnp.full((2, 3), -0.3), 'bias': jnp.full(3, 0.1)}}


def test_decay_mask_keeps_only_feature_kernels():
  mask = optim.decay_mask(_vit_like_params())
  flat = trees.flatten(mask)
  assert sorted(k for k, v in flat.items() if v) == [
      'backbone/blocks_0/attn/qkv/kernel', 'head/kernel']


def test_lamb_one_step_against_numpy():
  params = _vit_like_params()
  grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32)
                                         + 1.0).reshape(p.shape), params)
  c = _config(name='lamb', lr=0.01, weight_decay=0.05, b1=0.9, b2=0.999)
  new = _step(c, grads, params)
  mask = optim.decay_mask(params)

  def reference(p, g, decayed):
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    # One Adam step with bias correction: m_hat = g, v_hat = g^2.
    m_hat, v_hat = g, g * g
    update = m_hat / (np.sqrt(v_hat) + 1e-6) + (0.05 * p if decayed else 0)
    p_norm, u_norm = np.linalg.norm(p), np.linalg.norm(update)
    trust = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
    return p - 0.01 * trust * update

  expected = jax.tree.map(reference, params, grads, mask)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # Decay moved the decayed kernel further than the same step without it.
  nodecay = _step(_config(name='lamb', lr=0.01, weight_decay=0.0), grads,
                  params)
  assert not np.allclose(new['head']['kernel'], nodecay['head']['kernel'])
  np.testing.assert_allclose(new['head']['bias'], nodecay['head']['bias'])
