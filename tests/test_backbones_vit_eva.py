"""ViT and EVA-02 against timm: outputs, parameter layouts and counts.

The fixtures (tests/fixtures/timm/{vit,eva02}/) are timm models with random
weights and their outputs on fixed inputs, and the state-dict key lists of
full-size configurations, written by tests/fixtures/timm/make_timm_fixtures.py
(timm 1.0.31); torch is not needed here.
"""
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from jaxtag import models
from jaxtag.models import eva02
from jaxtag.models import timm_layout
from jaxtag.models import transformer as tfm
from jaxtag.models import vit

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'timm')
_SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)

# (family, case) -> (jaxtag backbone, backbone_kwargs), written from the
# fixture's timm model_args.
CASES = {
    ('vit', 'token'): ('vit_base_patch16', _SMALL),
    ('vit', 'avg_no_cls'): ('vit_base_patch16', dict(
        _SMALL, class_token=False, global_pool='avg', fc_norm=False,
        act_layer='gelu_tanh')),
    ('vit', 'reg_avg'): ('vit_base_patch16', dict(
        _SMALL, reg_tokens=2, no_embed_class=True, init_values=0.1,
        global_pool='avg')),
    ('eva02', 'small'): ('eva02_small_patch14', dict(
        _SMALL, ref_feat_shape=(2, 2))),
    ('eva02', 'large'): ('eva02_large_patch14', dict(
        _SMALL, num_heads=4, ref_feat_shape=(2, 2))),
    ('eva02', 'reg_token'): ('eva02_base_patch14', dict(
        _SMALL, ref_feat_shape=(2, 2), reg_tokens=1, init_values=0.1,
        global_pool='token')),
}

# full_size.json configuration -> (jaxtag backbone, backbone_kwargs).
FULL_SIZE = {
    ('vit', 'vit_small_patch16_224'): ('vit_small_patch16', {}),
    ('vit', 'vit_base_patch16_224@448'): (
        'vit_base_patch16', dict(img_size=448)),
    ('vit', 'vit_base_patch16_224@448_avg_no_cls'): (
        'vit_base_patch16', dict(img_size=448, class_token=False,
                                 global_pool='avg', fc_norm=False)),
    ('vit', 'vit_large_patch16_224@448'): (
        'vit_large_patch16', dict(img_size=448)),
    ('vit', 'vit_large_patch14_224'): ('vit_large_patch14', {}),
    ('eva02', 'eva02_small_patch14_224'): ('eva02_small_patch14', {}),
    ('eva02', 'eva02_base_patch14_448'): (
        'eva02_base_patch14', dict(img_size=448)),
    ('eva02', 'eva02_large_patch14_448'): (
        'eva02_large_patch14', dict(img_size=448)),
}
_CONVERTERS = {'vit': vit.timm_to_jaxtag, 'eva02': eva02.timm_to_jaxtag}


def _model(backbone, kwargs, num_classes, dtype='float32', head_pool='gap'):
  config = ml_collections.ConfigDict(dict(
      backbone=backbone, backbone_kwargs=kwargs, head='linear',
      head_kwargs={}, pool=head_pool, dtype=dtype))
  return models.build_model(config, num_classes)


@functools.partial(jax.jit, static_argnames=('model', 'train'))
def _apply(variables, image, rng=None, *, model, train=False):
  """model.apply, compiled once per (equal) model, shape and mode."""
  return model.apply(variables, image, train=train,
                     rngs=None if rng is None else {'dropout': rng})


def _load(family, case):
  state = safetensors.numpy.load_file(
      os.path.join(FIXTURES, family, f'{case}.safetensors'))
  params = traverse_util.unflatten_dict(_CONVERTERS[family](state), sep='/')
  arrays = dict(np.load(os.path.join(FIXTURES, family, f'{case}.npz')))
  with open(os.path.join(FIXTURES, family, f'{case}.json')) as f:
    meta = json.load(f)
  return params, arrays, meta


@pytest.mark.parametrize('family,case', sorted(CASES))
def test_reproduces_timm_logits(family, case):
  params, arrays, meta = _load(family, case)
  backbone, kwargs = CASES[(family, case)]
  model = _model(backbone, kwargs, meta['model_args']['num_classes'])
  for key in arrays:
    if not key.startswith('image'):
      continue
    logits = _apply({'params': params}, arrays[key], model=model)
    expected = arrays[key.replace('image', 'logits')]
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('family,case,num_prefix', [
    ('vit', 'token', 1), ('eva02', 'reg_token', 2)])
def test_feature_map_is_timms_normalised_patch_tokens(family, case,
                                                      num_prefix):
  params, arrays, _ = _load(family, case)
  backbone, kwargs = CASES[(family, case)]
  net = models.BACKBONES[backbone](**dict(kwargs, global_pool='none'))
  fmap = _apply({'params': params['backbone']}, arrays['image'], model=net)
  grid = 32 // kwargs['patch_size']
  assert fmap.shape == (2, grid, grid, kwargs['embed_dim'])
  tokens = arrays['features'][:, num_prefix:]
  np.testing.assert_allclose(fmap.reshape(tokens.shape), tokens, atol=1e-4,
                             rtol=0)


def test_feature_map_and_linear_head_average_like_timm():
  """JAX-CV's layout (norm, then mean) is also the map + the head's gap."""
  params, arrays, meta = _load('vit', 'avg_no_cls')
  _, kwargs = CASES[('vit', 'avg_no_cls')]
  model = _model('vit_base_patch16', dict(kwargs, global_pool='none'),
                 meta['model_args']['num_classes'])
  logits = _apply({'params': params}, arrays['image'], model=model)
  np.testing.assert_allclose(logits, arrays['logits'], atol=1e-4, rtol=0)


@pytest.mark.parametrize('family,config', sorted(FULL_SIZE))
def test_full_size_timm_keys_map_one_to_one(family, config):
  with open(os.path.join(FIXTURES, family, 'full_size.json')) as f:
    spec = json.load(f)['configs'][config]
  backbone, kwargs = FULL_SIZE[(family, config)]
  num_classes = spec['model_args'].get('num_classes', 1000)
  model = _model(backbone, kwargs, num_classes)
  size = spec['model_args'].get('img_size', 224)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  converted = timm_layout.timm_shapes_to_jaxtag(
      {k: tuple(v) for k, v in spec['keys'].items()})
  assert timm_layout.mismatches(
      converted, timm_layout.param_shapes(variables)) == []
  assert models.count_params(variables['params']) == spec['num_params']


def test_mismatches_name_every_difference():
  problems = timm_layout.mismatches({'a': (1,), 'b': (2, 3)},
                                    {'b': (3, 2), 'c': ()})
  assert problems == ["a: not in jaxtag's model",
                      'c: missing from the timm state dict',
                      'b: timm (2, 3), jaxtag (3, 2)']


def test_timm_names_and_layouts():
  state = {'blocks.11.attn.qkv.weight': np.arange(6.).reshape(3, 2),
           'patch_embed.proj.weight': np.zeros((5, 3, 2, 4)),
           'blocks.0.norm1.weight': np.ones(4),
           'blocks.0.attn.q_bias': np.ones(4), 'cls_token': np.ones((1, 1, 4)),
           'head.weight': np.zeros((7, 4)), 'head.bias': np.zeros(7),
           'blocks.0.attn.k_bias': np.zeros(4)}
  out = timm_layout.timm_to_jaxtag(state, skip=re.compile(r'\.k_bias$'))
  assert sorted(out) == sorted([
      'backbone/blocks_11/attn/qkv/kernel', 'backbone/patch_embed/proj/kernel',
      'backbone/blocks_0/norm1/scale', 'backbone/blocks_0/attn/q_bias',
      'backbone/cls_token', 'head/Dense_0/kernel', 'head/Dense_0/bias'])
  # ConvNeXt's and SwinV2's classifier: head.fc, and ConvNeXt's head.norm.
  assert sorted(timm_layout.timm_to_jaxtag(
      {'head.fc.weight': np.zeros((7, 4)), 'head.norm.weight': np.ones(4),
       'stages.1.blocks.0.conv_dw.weight': np.zeros((4, 1, 7, 7))})) == [
           'backbone/stages_1/blocks_0/conv_dw/kernel', 'head/Dense_0/kernel',
           'head/norm/scale']
  np.testing.assert_array_equal(out['backbone/blocks_11/attn/qkv/kernel'],
                                [[0, 2, 4], [1, 3, 5]])
  assert out['backbone/patch_embed/proj/kernel'].shape == (2, 4, 3, 5)
  assert out['head/Dense_0/kernel'].shape == (4, 7)


def test_eva02_drops_the_buffers_timm_recomputes():
  state = {'rope.pos_embed': np.zeros((4, 32)), 'blocks.0.attn.k_bias':
           np.zeros(8), 'blocks.0.attn.q_bias': np.ones(8)}
  assert list(eva02.timm_to_jaxtag(state)) == [
      'backbone/blocks_0/attn/q_bias']


def test_position_embedding_resampling_matches_timm():
  arrays = np.load(os.path.join(FIXTURES, 'vit', 'resample.npz'))
  cases = [k[len('in_'):] for k in arrays if k.startswith('in_')]
  assert len(cases) == 4
  for i in cases:
    *old, h, w, prefix = arrays[f'grids_{i}']
    out = jax.jit(tfm.resample_pos_embed, static_argnums=(1, 2, 3))(
        arrays[f'in_{i}'], tuple(map(int, old)), (int(h), int(w)),
        int(prefix))
    np.testing.assert_allclose(out, arrays[f'out_{i}'], atol=1e-5, rtol=0)


def test_register_tokens_take_part():
  """Changing a register token changes the output (it is attended to),
  and the position embedding skips them with no_embed_class."""
  params, arrays, _ = _load('vit', 'reg_avg')
  assert params['backbone']['pos_embed'].shape == (1, 16, 32)
  assert params['backbone']['reg_token'].shape == (1, 2, 32)
  _, kwargs = CASES[('vit', 'reg_avg')]
  model = _model('vit_base_patch16', kwargs, 5)
  moved = jax.tree.map(np.copy, params)
  moved['backbone']['reg_token'][0, 1, 3] += 1.0
  base, other = (_apply({'params': p}, arrays['image'], model=model)
                 for p in (params, moved))
  assert np.abs(np.asarray(base) - np.asarray(other)).max() > 1e-3


def test_rope_depends_on_relative_position_only():
  """Rotated query-key products are unchanged by a common shift of both
  positions (no ref_grid rescaling), the property that makes it relative."""
  rng = np.random.default_rng(0)
  q, k = rng.standard_normal((2, 1, 1, 1, 16)).astype(np.float32)

  @jax.jit
  def computed():
    sin, cos = tfm.rope_sin_cos((6, 6), 16, None)
    products = []  # positions as flat indices of the 6 x 6 grid
    for i, j in ((1, 15), (20, 34), (1, 16)):
      rq = tfm.apply_rope(q, sin[i:i + 1], cos[i:i + 1])
      rk = tfm.apply_rope(k, sin[j:j + 1], cos[j:j + 1])
      products.append(jnp.sum(rq * rk))
    rescaled = tfm.rope_sin_cos((4, 4), 16, (2, 2))[0]
    return products, rescaled, tfm.rope_sin_cos((2, 2), 16, None)[0]

  products, rescaled, small = computed()
  # (0,1)-(2,3) and (3,2)-(5,4): both a shift of (2, 2).
  assert products[0] == pytest.approx(products[1], abs=1e-5)
  assert products[0] != pytest.approx(products[2], abs=1e-3)
  # With ref_grid, a 4 x 4 grid at reference 2 x 2 places index i at i / 2.
  np.testing.assert_allclose(np.asarray(rescaled)[[0, 2, 8, 10]], small,
                             atol=1e-6)


@pytest.mark.parametrize('family,case', [('vit', 'token'), ('eva02', 'large')])
def test_drop_path_is_identity_at_eval_and_random_in_training(family, case):
  params, arrays, meta = _load(family, case)
  backbone, kwargs = CASES[(family, case)]
  num_classes = meta['model_args']['num_classes']
  dropping = _model(backbone, dict(kwargs, drop_path_rate=0.5), num_classes)

  def run(train, seed=0):
    return np.asarray(_apply({'params': params}, arrays['image'],
                             jax.random.key(seed), model=dropping,
                             train=train))

  np.testing.assert_allclose(run(False), arrays['logits'], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(run(True, 1), run(True, 1))
  assert np.abs(run(True, 1) - run(True, 2)).max() > 1e-3
  assert np.abs(run(True, 1) - arrays['logits']).max() > 1e-3


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
  # The one DropPath of every timm-layout backbone (timm_layout.py).
  x = jnp.ones((4000, 3, 2))
  layer = timm_layout.DropPath(0.25)
  np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
  y = np.asarray(layer.apply({}, x, train=True,
                             rngs={'dropout': jax.random.key(0)}))
  y = y.reshape(len(y), -1)
  assert (y == y[:, :1]).all()  # whole samples
  np.testing.assert_allclose(np.unique(y), [0, 1 / 0.75], rtol=1e-6)
  assert (y[:, 0] == 0).mean() == pytest.approx(0.25, abs=0.03)
  assert y.mean() == pytest.approx(1.0, abs=0.04)


def test_drop_path_rates_rise_over_all_blocks_of_all_stages():
  assert timm_layout.drop_path_rates(0.3, [4]) == [pytest.approx(
      [0, 0.1, 0.2, 0.3])]
  stages = timm_layout.drop_path_rates(0.5, [2, 1, 3])
  assert [len(s) for s in stages] == [2, 1, 3]
  np.testing.assert_allclose(sum(stages, []), [0, 0.1, 0.2, 0.3, 0.4, 0.5])


@pytest.mark.parametrize('family,case', [('vit', 'token'), ('eva02', 'large')])
def test_bfloat16_computes_in_bf16_with_float32_params(family, case):
  params, arrays, meta = _load(family, case)
  backbone, kwargs = CASES[(family, case)]
  num_classes = meta['model_args']['num_classes']
  f32 = _model(backbone, kwargs, num_classes)
  bf16 = _model(backbone, kwargs, num_classes, dtype='bfloat16')
  image = arrays['image']
  abstract = jax.eval_shape(lambda: bf16.init(jax.random.key(0), image,
                                               train=False))
  assert {x.dtype for x in jax.tree.leaves(abstract)} == {np.dtype('float32')}
  features = jax.eval_shape(lambda: bf16.backbone.apply(
      {'params': params['backbone']}, image, train=False))
  assert features.dtype == jnp.bfloat16
  logits = _apply({'params': params}, image, model=bf16)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, arrays['logits'], atol=0.1)


def test_bad_options_and_sizes_are_named():
  image = jnp.zeros((1, 36, 32, 3))
  with pytest.raises(ValueError, match='36x32 is not a multiple of the '
                     'patch size 8'):
    _model('vit_base_patch16', _SMALL, 3).init(jax.random.key(0), image,
                                               train=False)
  with pytest.raises(ValueError, match="global_pool='token' needs "
                     'class_token=True'):
    models.BACKBONES['vit_small_patch16'](class_token=False).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  with pytest.raises(ValueError, match='Unknown global_pool'):
    models.BACKBONES['eva02_small_patch14'](global_pool='max').init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 3)), train=False)
  with pytest.raises(ValueError, match='Unknown act_layer'):
    models.BACKBONES['vit_small_patch16'](act_layer='relu').init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
