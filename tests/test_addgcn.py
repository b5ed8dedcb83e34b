"""ADD-GCN: the head against a numpy transcription of the reference forward
pass (its [B, D, N] layout, convs as matrix products), with and without the
semantic feature, both fusions and both graph forms; the low-rank graph
against a dense evaluation of its formula; masks, shapes, errors, training
through the trainer, and the configs against the baseline's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import models
from jaxtag import sharding
from jaxtag import train
from jaxtag.models.heads import addgcn

C, F, D, B = 5, 12, 8, 3        # tags, backbone width, node width, batch
EPS = 1e-5                      # BatchNorm epsilon (torch's default)


# ------------------------------------------ the reference, in numpy ---


def _lrelu(x):
  return np.where(x > 0, x, 0.2 * x)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _conv1d(weight, bias, x):
  """torch Conv1d(k=1): weight [out, in], x [B, in, N] -> [B, out, N]."""
  out = np.einsum('oi,bin->bon', weight, x)
  return out if bias is None else out + bias[None, :, None]


def reference_forward(p, stats, features, semantic=None, fusion='replace',
                      static='exact', dynamic='exact', average=False):
  """The reference's ADD_GCN.forward after the backbone, in its layout.

  `p` holds torch-shaped weights ([out, in]); `features` is [B, F, H, W].
  The semantic input and the low-rank graphs are the Lan et al.
  (2022) and
  large-vocabulary forms of the head's docstring, as dense matrices.
  """
  b, _, h, w = features.shape
  x = features.reshape(b, -1, h * w)
  maps = np.einsum('cf,bfp->bcp', p['fc'], x)          # fc: 1x1, no bias
  out1 = maps.max(axis=-1)                              # top-1 mean
  mask = _sigmoid(maps).transpose(0, 2, 1)              # [B, HW, C]
  v = _conv1d(p['transform_w'], p['transform_b'], x) @ mask    # [B, D, C]
  if average:
    v = v / (h * w)
  # static GCN: conv across the nodes, then across the features; residual
  adj_s = p['static_adj'] if static == 'exact' else p['u'] @ p['q'].T
  s = _lrelu(np.einsum('ij,bjd->bid', adj_s, v.transpose(0, 2, 1)))
  s = _lrelu(_conv1d(p['static_w'], p['static_b'], s.transpose(0, 2, 1)))
  x1 = v + s
  # dynamic graph: the global vector (or the caption vector) beside nodes
  ctx = []
  if not (semantic is not None and fusion == 'replace'):
    g = _conv1d(p['global_w'], p['global_b'], x1.mean(-1, keepdims=True))
    g = ((g - stats['mean'][None, :, None])
         / np.sqrt(stats['var'][None, :, None] + EPS)
         * p['bn_scale'][None, :, None] + p['bn_bias'][None, :, None])
    ctx.append(_lrelu(g))
  if semantic is not None:
    cap = semantic if 'sem_w' not in p else semantic @ p['sem_w'].T + p['sem_b']
    ctx.append(cap[:, :, None])
  ctx = [np.broadcast_to(c, (b, c.shape[1], C)) for c in ctx]
  cat = np.concatenate(ctx + [x1], axis=1)
  if dynamic == 'exact':
    adj = _sigmoid(_conv1d(p['adj_w'], p['adj_b'], cat))   # [B, C_i, C_j]
  else:
    logits = _conv1d(p['adj_w'], p['adj_b'], cat)          # [B, r, C_j]
    alpha = np.exp(logits - logits.max(1, keepdims=True))
    alpha = alpha / alpha.sum(1, keepdims=True)
    dense = np.einsum('bkj,ik->bji', alpha, _sigmoid(p['prototypes']))
    adj = dense.transpose(0, 2, 1)                         # S^T: [i, j]
  y = x1 @ adj / (C if average else 1)
  y = _lrelu(y)
  y = _lrelu(_conv1d(p['dynamic_w'], p['dynamic_b'], y))
  z = v + y
  out2 = _conv1d(p['last_w'], p['last_b'], z)              # [B, C, C]
  out2 = (out2 * np.eye(C)).sum(-1)
  return out1, out2


def _torch_weights(params):
  """The flax parameters in the reference's [out, in] shapes."""
  p = jax.tree.map(np.asarray, params)
  t = {'fc': p['category_maps']['kernel'].T,
       'transform_w': p['sam_projection']['kernel'].T,
       'transform_b': p['sam_projection']['bias'],
       'static_w': p['static_weight']['kernel'].T,
       'static_b': p['static_weight']['bias'],
       'dynamic_w': p['dynamic_weight']['kernel'].T,
       'dynamic_b': p['dynamic_weight']['bias'],
       'last_w': p['classifier_kernel'].T, 'last_b': p['classifier_bias']}
  if 'static_adjacency' in p:
    t['static_adj'] = p['static_adjacency']
  else:
    t['u'], t['q'] = p['static_u'], p['static_q']
  name = 'adjacency' if 'adjacency_kernel' in p else 'mixture'
  t['adj_w'], t['adj_b'] = p[name + '_kernel'].T, p[name + '_bias']
  if 'prototypes' in p:
    t['prototypes'] = p['prototypes']
  if 'global' in p:
    t.update(global_w=p['global']['kernel'].T, global_b=p['global']['bias'],
             bn_scale=p['global_norm']['scale'],
             bn_bias=p['global_norm']['bias'])
  if 'semantic_projection' in p:
    t.update(sem_w=p['semantic_projection']['kernel'].T,
             sem_b=p['semantic_projection']['bias'])
  return t


def _randomized(variables, seed):
  """Every parameter and BatchNorm statistic drawn at random, so that no
  zero bias or unit scale hides a wiring mistake."""
  rng = np.random.default_rng(seed)
  draw = lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), jnp.float32)  # noqa: E731
  out = {'params': jax.tree.map(draw, variables['params'])}
  if 'batch_stats' in variables:
    stats = variables['batch_stats']['global_norm']
    out['batch_stats'] = {'global_norm': {
        'mean': draw(stats['mean']),
        'var': jnp.asarray(rng.uniform(0.5, 2.0, stats['var'].shape),
                           jnp.float32)}}
  return out


def _head_and_inputs(seed=0, semantic_dim=0, **kwargs):
  head = addgcn.ADDGCNHead(num_classes=C, node_dim=D,
                           semantic_dim=semantic_dim, **kwargs)
  rng = np.random.default_rng(seed)
  features = rng.normal(0, 1, (B, 3, 4, F)).astype(np.float32)
  extra = ({'semantic': rng.normal(0, 1, (B, semantic_dim)).astype(
      np.float32)} if semantic_dim else {})
  variables = head.init(jax.random.key(seed), features, train=False, **extra)
  return head, _randomized(variables, seed + 1), features, extra


def _apply(head, variables, features, **kwargs):
  """The head in eval mode, op by op (on a busy 2-core host, quicker
  than compiling every variant)."""
  return head.apply(variables, features, train=False, **kwargs)


CASES = [
    dict(),
    dict(semantic_dim=6),                                   # projected to D
    dict(semantic_dim=D),                                   # used as it is
    dict(semantic_dim=6, semantic_fusion='concat_global'),
    dict(dynamic='lowrank', static='lowrank', rank=3),
    dict(dynamic='lowrank', rank=2, semantic_dim=6),
    dict(average=True),
]


@pytest.mark.parametrize('kwargs', CASES, ids=str)
def test_matches_the_reference_forward_pass(kwargs):
  head, variables, features, extra = _head_and_inputs(**kwargs)
  out = _apply(head, variables, features, **extra)
  p = _torch_weights(variables['params'])
  stats = jax.tree.map(np.asarray,
                       variables.get('batch_stats', {}).get('global_norm'))
  s_m, s_r = reference_forward(
      p, stats, features.transpose(0, 3, 1, 2).astype(np.float64),
      semantic=extra.get('semantic'),
      fusion=kwargs.get('semantic_fusion', 'replace_global').split('_')[0],
      static=kwargs.get('static', 'exact'),
      dynamic=kwargs.get('dynamic', 'exact'),
      average=kwargs.get('average', False))
  scale = max(1.0, float(np.abs(s_r).max()))
  np.testing.assert_allclose(out['s_m'], s_m, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out['s_r'] / scale, s_r / scale, atol=1e-5)
  np.testing.assert_allclose(out['logits'], (out['s_m'] + out['s_r']) / 2,
                             rtol=1e-6)


def test_semantic_changes_only_the_adjacency():
  """v_cap enters W_A only: with the adjacency weights of the semantic
  columns zeroed, the scores do not depend on it."""
  head, variables, features, extra = _head_and_inputs(semantic_dim=D)
  a = _apply(head, variables, features, **extra)['s_r']
  b = _apply(head, variables, features,
             semantic=extra['semantic'] + 1.0)['s_r']
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  params = jax.tree.map(lambda x: x, variables['params'])
  params['adjacency_kernel'] = params['adjacency_kernel'].at[:D].set(0.0)
  cut = {**variables, 'params': params}
  a = _apply(head, cut, features, **extra)['s_r']
  b = _apply(head, cut, features, semantic=extra['semantic'] + 1.0)['s_r']
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_lowrank_propagation_is_the_dense_formula():
  rng = np.random.default_rng(4)
  alpha = rng.dirichlet(np.ones(3), size=(2, 7))            # [B, C, r]
  prototypes = _sigmoid(rng.normal(size=(7, 3)))            # [C, r]
  nodes = rng.normal(size=(2, 7, 5))
  dense = np.einsum('bjk,ik->bji', alpha, prototypes)       # S, formed
  assert ((dense > 0) & (dense < 1)).all()                  # as sigmoids are
  expected = np.einsum('bji,bid->bjd', dense, nodes)
  got = addgcn.lowrank_propagate(jnp.asarray(alpha, jnp.float32),
                                 jnp.asarray(prototypes, jnp.float32),
                                 jnp.asarray(nodes, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('average', [False, True])
def test_padded_cells_count_for_nothing(average):
  """With a feature mask, the head on a padded map equals the head on the
  real cells alone, whatever the padding holds."""
  head, variables, features, _ = _head_and_inputs(average=average)
  padded = np.concatenate(
      [features, np.full((B, 3, 2, F), 50.0, np.float32)], axis=2)
  mask = np.concatenate([np.ones((B, 3, 4)), np.zeros((B, 3, 2))], axis=2)
  a = _apply(head, variables, features)
  b = _apply(head, variables, padded,
             feature_mask=jnp.asarray(mask, jnp.float32))
  for key in ('s_m', 's_r'):
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-4)


def test_declared_feature_shapes_and_batch_stats():
  plain = models.build_model(config_lib.load_config_file(
      'configs/addgcn_danbooru.py:tiny').model, C)
  assert models.declared_features(plain) == ((), ())
  head, variables, features, extra = _head_and_inputs(semantic_dim=6)
  assert head.batch_features == ('semantic',)
  out, new = head.apply(variables, features, train=True,
                        mutable=['batch_stats'], **extra)
  assert {k: v.shape for k, v in out.items()} == {
      'logits': (B, C), 's_m': (B, C), 's_r': (B, C)}
  assert 'batch_stats' not in variables    # replace_global: no global vector
  head, variables, features, _ = _head_and_inputs()
  _, new = head.apply(variables, features, train=True,
                      mutable=['batch_stats'])
  moved = new['batch_stats']['global_norm']['mean']
  assert np.abs(np.asarray(moved) - np.asarray(
      variables['batch_stats']['global_norm']['mean'])).max() > 1e-4
  shapes = jax.tree.map(np.shape, variables['params'])
  assert shapes['static_adjacency'] == (C, C)
  assert shapes['adjacency_kernel'] == (2 * D, C)
  assert shapes['classifier_kernel'] == (D, C)
  head, variables, _, _ = _head_and_inputs(dynamic='lowrank',
                                           static='lowrank', rank=2)
  shapes = jax.tree.map(np.shape, variables['params'])
  assert shapes['mixture_kernel'] == (2 * D, 2)
  assert shapes['prototypes'] == shapes['static_u'] == (C, 2)


def test_bad_options_and_missing_semantic_are_explained():
  features = np.zeros((B, 3, 4, F), np.float32)
  with pytest.raises(ValueError, match='dynamic .*valid: exact, lowrank'):
    addgcn.ADDGCNHead(num_classes=C, dynamic='topk').init(
        jax.random.key(0), features, train=False)
  with pytest.raises(ValueError, match='semantic_fusion'):
    addgcn.ADDGCNHead(num_classes=C, semantic_fusion='add').init(
        jax.random.key(0), features, train=False)
  with pytest.raises(ValueError, match="needs the batch feature 'semantic'"):
    addgcn.ADDGCNHead(num_classes=C, semantic_dim=4).init(
        jax.random.key(0), features, train=False)
  with pytest.raises(ValueError, match='semantic_dim is 4'):
    addgcn.ADDGCNHead(num_classes=C, semantic_dim=4).init(
        jax.random.key(0), features, train=False,
        semantic=np.zeros((B, 3), np.float32))


def test_a_dataset_without_semantic_is_refused_by_name():
  config = config_lib.load_config_file('configs/addgcn_danbooru.py:tiny')
  config.model.head_kwargs.semantic_dim = 4
  with pytest.raises(ValueError, match="needs batch feature 'semantic'"):
    train.Trainable(config, sharding.create_mesh(), num_classes=C,
                    num_train_steps=1)


# ------------------------------------------------------------- configs ---


def _flat(config):
  return {k: v for k, v in config_lib._keys(config).items()  # pylint: disable=protected-access
          if not hasattr(v, 'items')}


@pytest.mark.parametrize('variant', ['synthetic', 'synthetic_lowrank'])
def test_synthetic_variants_are_the_baseline_with_the_head(variant):
  base = config_lib.load_config_file('configs/default.py')
  ours = config_lib.load_config_file(f'configs/addgcn_danbooru.py:{variant}')
  config_lib.validate(ours)
  a, b = _flat(base), _flat(ours)
  assert {k for k in a if a[k] != b[k]} == {'model.head', 'optim.clip_norm'}
  assert ours.model.head == 'addgcn' and ours.optim.clip_norm == 10.0
  assert ours.model.head_kwargs.get('dynamic', 'exact') == (
      'lowrank' if variant.endswith('lowrank') else 'exact')
  with pytest.raises(ValueError, match='valid: synthetic, synthetic_lowrank'):
    config_lib.load_config_file('configs/addgcn_danbooru.py:huge')


def test_paper_settings():
  config = config_lib.load_config_file('configs/addgcn_danbooru.py')
  assert (config.model.backbone, config.data.image_size) == ('resnet101', 448)
  assert (config.optim.name, config.optim.momentum,
          config.optim.weight_decay) == ('sgd', 0.9, 1e-4)
  assert config.optim.lr * dict(config.optim.param_groups)['^backbone/'] \
      == pytest.approx(0.05)
  assert (config.batch_size, config.num_epochs, config.optim.clip_norm) == (
      16, 50.0, 10.0)
  assert [b * 50 for b in config.optim.schedule.boundaries] == [30, 40]


# ------------------------------------------------------------ training ---


@pytest.mark.slow  # several training steps through the trainer
@pytest.mark.parametrize('variant', ['tiny', 'tiny_lowrank'])
def test_a_tiny_training_run_lowers_the_loss(variant):
  config = config_lib.load_config_file(f'configs/addgcn_danbooru.py:{variant}')
  mesh = sharding.create_mesh()
  t = train.Trainable(config, mesh, num_classes=C, num_train_steps=100)
  rng = np.random.default_rng(0)
  labels = (rng.random((16, C)) < 0.4).astype(np.float32)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  batch = sharding.to_global({'image': images, 'labels': labels}, mesh)
  state = t.fresh_state()
  losses = []
  for _ in range(15):
    state, m = t.train_step(state, batch, t.step_rng)
    losses.append(float(m['loss']))
    assert {'loss_s_m', 'loss_s_r'} <= set(m)
  assert losses[-1] < 0.5 * losses[0], losses
