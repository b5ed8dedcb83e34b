"""Backbones, heads and the Tagger: shapes, parameter counts, dtypes."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtag import models
from jaxtag.models import pooling


def _config(backbone='resnet18', **kwargs):
  c = ml_collections.ConfigDict(dict(
      backbone=backbone, backbone_kwargs={}, head='linear', head_kwargs={},
      pool='gap', dtype='float32'))
  c.update(kwargs)
  return c


def _shapes(model, size=224, batch=1):
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((batch, size, size, 3)), train=False))


@pytest.mark.parametrize('backbone,count', [
    ('resnet18', 11_689_512), ('resnet50', 25_557_032),
    ('resnet101', 44_549_160), ('densenet121', 7_978_856)])
def test_parameter_counts_match_the_standard_networks(backbone, count):
  variables = _shapes(models.build_model(_config(backbone), 1000))
  assert models.count_params(variables['params']) == count
  # Running statistics are state, not parameters.
  assert 'batch_stats' in variables


@pytest.mark.parametrize('backbone,shape', [
    ('resnet50', (2, 7, 7, 2048)), ('resnet18', (2, 7, 7, 512)),
    ('densenet121', (2, 7, 7, 1024))])
def test_feature_map_shapes(backbone, shape):
  bb = models.BACKBONES[backbone]()
  out = jax.eval_shape(lambda: bb.init_with_output(
      jax.random.key(0), jnp.zeros((2, 224, 224, 3)), train=False)[0])
  assert out.shape == shape


def test_width_and_small_stem():
  bb = models.BACKBONES['resnet18'](width=0.25, small_stem=True)
  out = jax.eval_shape(lambda: bb.init_with_output(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)[0])
  assert out.shape == (1, 4, 4, 128)  # 512 * 0.25; strides 1,2,2,2


def test_v1_5_puts_the_stride_on_the_3x3_conv():
  bb = models.BACKBONES['resnet50']()
  variables = _shapes(bb, size=64)
  block = variables['params']['BottleneckBlock_3']  # first block of stage 2
  assert block['Conv_0']['kernel'].shape == (1, 1, 256, 128)
  assert block['Conv_1']['kernel'].shape == (3, 3, 128, 128)
  # Capture the block's convolutions to see where the resolution halves.
  conv_out = jax.eval_shape(lambda: bb.init_with_output(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False,
      capture_intermediates=lambda m, _: m.name in ('Conv_0', 'Conv_1'))[1])
  inter = conv_out['intermediates']['BottleneckBlock_3']
  # 64 px: 16x16 after the stem and max-pool, kept by stage 1.
  assert inter['Conv_0']['__call__'][0].shape[1:3] == (16, 16)  # 1x1 keeps
  assert inter['Conv_1']['__call__'][0].shape[1:3] == (8, 8)    # 3x3 halves


def test_bfloat16_computes_in_bf16_with_float32_params():
  model = models.build_model(_config(
      backbone_kwargs={'width': 0.125, 'small_stem': True},
      dtype='bfloat16'), 5)
  x = jnp.ones((2, 16, 16, 3))
  # Dtypes are settled when the program is traced: no need to compile it.
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, train=False))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  features = jax.eval_shape(lambda v: model.apply(
      v, x, train=False, method=lambda m, x, train: m.backbone(x, train=train)),
                            variables)
  assert features.dtype == jnp.bfloat16
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.dtype == jnp.float32


def test_pooling_against_numpy():
  x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
  np.testing.assert_allclose(pooling.pool(x, 'gap'), x.mean(axis=(1, 2)),
                             rtol=1e-6)
  np.testing.assert_allclose(pooling.pool(x, 'gmp'), x.max(axis=(1, 2)))
  with pytest.raises(ValueError, match='gap, gmp'):
    pooling.pool(x, 'avg')


def test_unknown_names_and_kwargs_list_the_valid_ones():
  with pytest.raises(ValueError, match='densenet121.*resnet50'):
    models.build_model(_config('resnet51'), 3)
  with pytest.raises(ValueError, match="head 'gcn'.*valid: addgcn, linear"):
    models.build_model(_config(head='gcn'), 3)
  with pytest.raises(ValueError, match='config.model.backbone_kwargs.depth'
                     '.*small_stem.*width'):
    models.build_model(_config(backbone_kwargs={'depth': 3}), 3)


def test_train_mode_updates_batch_stats_and_eval_uses_them():
  model = models.build_model(_config(
      backbone_kwargs={'width': 0.125, 'small_stem': True}), 4)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3)) * 3 + 1
  # Jitted: one compiled program each instead of one per operation.
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x,
                                           train=False))(x)
  train_out, updated = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, x)
  before = jax.tree.leaves(variables['batch_stats'])
  after = jax.tree.leaves(updated['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  eval_out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                  x)
  assert not np.allclose(train_out, eval_out)


def test_linear_head_is_pool_then_affine():
  model = models.build_model(_config(
      backbone_kwargs={'width': 0.125, 'small_stem': True}, pool='gmp'), 7)
  x = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x,
                                           train=False))(x)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32
  features = np.asarray(jax.jit(lambda v, x: model.apply(
      v, x, train=False,
      method=lambda m, x, train: m.backbone(x, train=train)))(variables, x))
  dense = variables['params']['head']['Dense_0']
  expected = features.max(axis=(1, 2)) @ np.asarray(dense['kernel']) + (
      np.asarray(dense['bias']))
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
