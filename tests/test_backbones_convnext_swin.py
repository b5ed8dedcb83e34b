"""ConvNeXt and SwinV2 against timm: outputs, key maps, parameter counts.

The references are timm's own, stored by
tests/fixtures/timm/make_timm_fixtures.py (timm 1.0.31, not run by CI):
small random models with their logits at several input sizes, and the
state-dict keys, shapes and parameter counts of the full-size models.
"""
import functools
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxtag import models
from jaxtag.models import convnext
from jaxtag.models import swinv2
from jaxtag.models.heads.linear import LinearHead
from jaxtag.models.tagger import Tagger

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'timm')

# The fixture models in jaxtag's terms: the backbone, the linear head's
# norm (ConvNeXt's head.norm), and the converter.
SMALL = {
    'convnext': (lambda: convnext.ConvNeXt(depths=(1, 1, 1, 1),
                                           dims=(8, 16, 24, 32)),
                 True, convnext.timm_to_jaxtag),
    'swinv2': (lambda: swinv2.SwinV2(
        embed_dim=16, depths=(1, 2), num_heads=(2, 4), window_size=4,
        pretrained_window_sizes=(0, 6), act_layer='gelu_tanh'),
               False, swinv2.timm_to_jaxtag),
}


def _read(family):
  folder = os.path.join(FIXTURES, family)
  with open(os.path.join(folder, 'config.json')) as f:
    config = json.load(f)
  state = safetensors.numpy.load_file(os.path.join(folder, 'model.safetensors'))
  reference = dict(np.load(os.path.join(folder, 'reference.npz')))
  return config, state, reference


def _run(fn, *args):
  """jit(fn)(*args) compiled without XLA's costlier optimisations: the
  tests need right numbers, not fast code, and compiling dominates."""
  return jax.jit(fn).lower(*args).compile(compiler_options={
      'xla_backend_optimization_level': 0,
      'xla_llvm_disable_expensive_passes': True})(*args)


def _tagger(backbone, norm, num_classes):
  return Tagger(backbone=backbone,
                head=LinearHead(num_classes=num_classes, norm=norm))


def _sizes(family):
  with np.load(os.path.join(FIXTURES, family, 'reference.npz')) as stored:
    return sorted(k[len('image_'):] for k in stored if k.startswith('image_'))


def test_fixtures_hold_several_sizes():
  assert _sizes('convnext') == ['48x80', '64x64']
  assert _sizes('swinv2') == ['24x40', '36x36', '64x64']


@pytest.mark.parametrize('family,size', [
    (family, size) for family in sorted(SMALL) for size in _sizes(family)])
def test_reproduces_timm_logits(family, size):
  config, state, reference = _read(family)
  make_backbone, norm, convert = SMALL[family]
  backbone = make_backbone()
  # The stored model is the one described here.
  for key in ('depths', 'dims', 'embed_dim', 'num_heads', 'window_size',
              'pretrained_window_sizes', 'act_layer'):
    if key in config['model_args']:
      ours = getattr(backbone, key)
      assert tuple(np.ravel(ours)) == tuple(np.ravel(config['model_args'][key]))
  params = flax.traverse_util.unflatten_dict(convert(state), sep='/')
  # timm's model has no drop path; at eval, jaxtag's must be the identity.
  model = _tagger(backbone.clone(drop_path_rate=0.5), norm,
                  config['num_classes'])
  logits = _run(functools.partial(model.apply, train=False),
                {'params': params}, reference[f'image_{size}'])
  np.testing.assert_allclose(logits, reference[f'logits_{size}'], atol=1e-4,
                             rtol=0)


def _jaxtag_model(entry):
  """The jaxtag Tagger of a full_size.json entry (timm name and args)."""
  args = dict(entry['model_args'])
  num_classes = args.pop('num_classes')
  args.pop('img_size', None)
  name = entry['architecture']
  if name.startswith('convnext_'):
    return _tagger(models.BACKBONES[name](**args), True, num_classes)
  size = name.split('_')[1]  # swinv2_base_window8_256
  window = int(name.split('_window')[1].split('_')[0])
  args.setdefault('window_size', window)
  return _tagger(models.BACKBONES[f'swinv2_{size}'](**args), False,
                 num_classes)


def _full_size(family):
  with open(os.path.join(FIXTURES, family, 'full_size.json')) as f:
    return json.load(f)['models']


def _zeros(shape):
  # A full-size "tensor" that takes no memory: only shapes matter here.
  return np.broadcast_to(np.zeros((), np.float32), tuple(shape))


@pytest.mark.parametrize('family,label', [
    ('convnext', 'wd_v3'), ('convnext', 'convnext_tiny'),
    ('swinv2', 'wd_v3'), ('swinv2', 'swinv2_tiny_window8_256@448')])
def test_full_size_keys_map_one_to_one(family, label):
  entry = _full_size(family)[label]
  convert = {'convnext': convnext, 'swinv2': swinv2}[family].timm_to_jaxtag
  # Buffers that a checkpoint may carry are left out, not mapped.
  state = {k: _zeros(v) for k, v in {**entry['state_dict'],
                                      **entry['buffers']}.items()}
  converted = convert(state)
  model = _jaxtag_model(entry)
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      jnp.zeros((1, 448, 448, 3)), train=False))['params']
  ours = {'/'.join(k): tuple(v.shape) for k, v in
          flax.traverse_util.flatten_dict(shapes).items()}
  theirs = {k: tuple(v.shape) for k, v in converted.items()}
  assert sorted(set(theirs) - set(ours)) == []
  assert sorted(set(ours) - set(theirs)) == []
  assert {k: v for k, v in theirs.items() if ours[k] != v} == {}
  assert len(theirs) == len(entry['state_dict'])
  assert models.count_params(shapes) == entry['num_params']


def test_swinv2_buffers_are_the_ones_timm_recomputes():
  entry = _full_size('swinv2')['wd_v3']
  assert entry['buffers']  # the WD model has relative tables and masks
  assert all(swinv2.TIMM_BUFFERS.search(k) for k in entry['buffers'])
  assert not any(swinv2.TIMM_BUFFERS.search(k) for k in entry['state_dict'])


def test_all_full_size_parameter_counts():
  """Every stored configuration, tiny to base, counted without tracing
  the network twice: the count of the converted timm tensors equals
  timm's, and the key test above checks the trees for two of them."""
  for family in ('convnext', 'swinv2'):
    convert = {'convnext': convnext, 'swinv2': swinv2}[family].timm_to_jaxtag
    for label, entry in _full_size(family).items():
      converted = convert({k: _zeros(v) for k, v in
                           entry['state_dict'].items()})
      assert sum(v.size for v in converted.values()) == entry['num_params'], \
          label


def test_swinv2_window_follows_the_feature_map():
  # A side no larger than the window is one unshifted window; a larger
  # side keeps the window and shifts odd blocks by half of it.
  assert swinv2.window_and_shift((14, 14), 14, True) == ((14, 14), (0, 0))
  assert swinv2.window_and_shift((28, 28), 8, True) == ((8, 8), (4, 4))
  assert swinv2.window_and_shift((3, 5), 4, True) == ((3, 4), (0, 2))
  assert swinv2.window_and_shift((28, 28), 8, False) == ((8, 8), (0, 0))


def test_swinv2_regions_by_hand():
  # A 4x4 map, window 2, shift 1: the last row and column are wrapped
  # around from the start and must not attend across the seam.
  regions = swinv2.window_regions((4, 4), (2, 2), (1, 1))
  assert regions.shape == (4, 4)
  np.testing.assert_array_equal(regions[0], [0, 0, 0, 0])
  np.testing.assert_array_equal(regions[1], [1, 2, 1, 2])
  np.testing.assert_array_equal(regions[2], [3, 3, 6, 6])
  np.testing.assert_array_equal(regions[3], [4, 5, 7, 8])
  assert swinv2.window_regions((4, 4), (2, 2), (0, 0)) is None


def _fixture_backbone(family, **overrides):
  """The fixture's backbone with `overrides`, and its timm weights."""
  _, state, reference = _read(family)
  make_backbone, _, convert = SMALL[family]
  params = flax.traverse_util.unflatten_dict(convert(state), sep='/')
  image = reference[sorted(k for k in reference if k.startswith('image_'))[0]]
  return (make_backbone().clone(**overrides),
          {'params': params['backbone']}, image)


@pytest.mark.parametrize('family', sorted(SMALL))
def test_drop_path_is_wired_into_training(family):
  # (Its identity at eval is part of test_reproduces_timm_logits.) With a
  # rate, training draws from the 'dropout' rng; without, it needs none.
  backbone, variables, image = _fixture_backbone(family, drop_path_rate=0.0)
  jax.eval_shape(lambda: backbone.apply(variables, image, train=True))
  dropping = backbone.clone(drop_path_rate=0.5)
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(lambda: dropping.apply(variables, image, train=True))


@pytest.mark.parametrize('family', sorted(SMALL))
def test_bfloat16_compute_keeps_float32_params(family):
  backbone, variables, image = _fixture_backbone(family, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(functools.partial(backbone.init, train=False),
                          jax.random.key(0), image)
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {np.dtype(np.float32)}
  features = jax.eval_shape(
      functools.partial(backbone.apply, train=False), variables, image)
  assert features.dtype == jnp.bfloat16


def test_swinv2_bfloat16_stays_close_to_float32():
  backbone, variables, image = _fixture_backbone('swinv2',
                                                 dtype=jnp.bfloat16)
  # The fixture's random logit scales reach 100, where bfloat16's rounding
  # of the cosine similarities is amplified 100 times; timm starts at 10.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: (jnp.full_like(x, np.log(10.0))
                       if 'logit_scale' in jax.tree_util.keystr(path) else x),
      variables)

  features = _run(functools.partial(backbone.apply, train=False),
                  variables, image)
  reference = _run(functools.partial(backbone.clone(dtype=jnp.float32).apply,
                                     train=False), variables, image)
  # bfloat16 keeps about 3 significant digits.
  error = np.asarray(features, np.float32) - np.asarray(reference)
  assert np.linalg.norm(error) < 0.03 * np.linalg.norm(reference)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_swinv2_gradient_is_finite_on_a_blank_region(dtype):
  # Cutout blanks a square to 0 after normalisation. Freshly initialised,
  # the patch embedding and its LayerNorm map such a patch to exactly 0, so
  # its q and k are 0 (V2 has no k bias) and the cosine attention
  # normalises a zero vector: torch's F.normalize has a zero gradient
  # there, a plain sqrt would give 0 * inf = NaN.
  backbone = swinv2.SwinV2(embed_dim=8, depths=(1,), num_heads=(2,),
                           window_size=4, dtype=dtype)
  image = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
  image = image.at[:, :8, :8].set(0.0)
  variables = _run(functools.partial(backbone.init, train=False),
                   jax.random.key(1), image)

  def loss(params):
    features = backbone.apply({**variables, 'params': params}, image,
                              train=False)
    return jnp.sum(jnp.square(features.astype(jnp.float32)))

  grads = _run(jax.grad(loss), variables['params'])
  bad = [jax.tree_util.keystr(path) for path, g in
         jax.tree_util.tree_leaves_with_path(grads)
         if not np.all(np.isfinite(np.asarray(g)))]
  assert not bad, bad
