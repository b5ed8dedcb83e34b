"""ML-GCN head: a numpy forward pass, sparse == dense (outputs and
gradients), the graph as a constant, 10,000 tags in O(nnz), its config
and the trainer; the compare command on two tiny configs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from jaxtag.projects import compare
from jaxtag import config as config_lib
from jaxtag import label_graph
from jaxtag import models
from jaxtag import plots
from jaxtag import sharding
from jaxtag import train
from jaxtag.data import tag_metadata
from jaxtag.models.heads import mlgcn


def _tags(c=10, n=120, seed=0, sparse=False):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, c)) < 0.3).astype(np.int64)
  cooc = labels.T @ labels
  return tag_metadata.TagMetadata(
      names=[f'tag_{i}' for i in range(c)], categories=np.zeros(c, int),
      counts=cooc.diagonal().copy(),
      cooccurrence=sp.csr_matrix(cooc) if sparse else cooc, num_images=n)


def _head(tags, **kw):
  kw = {'tau': 0.3, 'gcn_dims': (6,), 'embedding_dim': 5, **kw}
  return mlgcn.MLGCNHead(num_classes=len(tags.names), tag_metadata=tags, **kw)


def _features(b=3, d=8, seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(
      (b, 2, 3, d)), jnp.float32)


def _leaky(x, slope=0.2):
  return np.where(x > 0, x, slope * x)


def test_forward_matches_numpy():
  tags = _tags()
  head = _head(tags, adjacency='dense', scheme='paper', p=0.25)
  f = _features()
  variables = head.init(jax.random.key(0), f, train=False)
  got = head.apply(variables, f, train=False)
  a = label_graph.normalize_adjacency(label_graph.correlation_matrix(
      tags.cooccurrence, tags.counts, tau=0.3, p=0.25))
  z = np.asarray(variables['constants']['embeddings'], np.float64)
  w0 = np.asarray(variables['params']['gcn_0'], np.float64)
  w1 = np.asarray(variables['params']['gcn_1'], np.float64)
  classifiers = a @ (_leaky(a @ (z @ w0)) @ w1)            # [C, D]
  x = np.asarray(f, np.float64).max(axis=(1, 2))           # global max pool
  np.testing.assert_allclose(got, x @ classifiers.T, rtol=2e-5, atol=2e-5)
  assert got.shape == (3, 10) and got.dtype == jnp.float32
  assert w0.shape == (5, 6) and w1.shape == (6, 8)


@pytest.mark.parametrize('adjacency', ['dense', 'sparse'])
def test_reference_code_direction_propagates_over_the_transpose(adjacency):
  tags = _tags(seed=3)
  head = _head(tags, adjacency=adjacency, direction='reference_code')
  f = _features()
  variables = head.init(jax.random.key(0), f, train=False)
  got = head.apply(variables, f, train=False)
  a = label_graph.normalize_adjacency(label_graph.correlation_matrix(
      tags.cooccurrence, tags.counts, tau=0.3, p=0.2)).T
  assert not np.allclose(a, a.T)   # the direction matters on this graph
  z = np.asarray(variables['constants']['embeddings'], np.float64)
  w0 = np.asarray(variables['params']['gcn_0'], np.float64)
  w1 = np.asarray(variables['params']['gcn_1'], np.float64)
  classifiers = a @ (_leaky(a @ (z @ w0)) @ w1)
  x = np.asarray(f, np.float64).max(axis=(1, 2))
  np.testing.assert_allclose(got, x @ classifiers.T, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize('embedding', ['learned', 'cooccurrence'])
def test_sparse_and_dense_give_equal_outputs_and_gradients(embedding):
  tags = _tags(sparse=True)
  f = _features()
  results = []
  for mode in ('sparse', 'dense'):
    head = _head(tags, adjacency=mode, embedding=embedding)
    variables = head.init(jax.random.key(0), f, train=False)

    def loss(params, feats, head=head, variables=variables):
      out = head.apply({**variables, 'params': params}, feats, train=False)
      return jnp.sum(jnp.sin(out))

    results.append((head.apply(variables, f, train=False),
                    jax.grad(loss, argnums=(0, 1))(variables['params'], f)))
  (out_s, grads_s), (out_d, grads_d) = results
  np.testing.assert_allclose(out_s, out_d, rtol=1e-5, atol=1e-6)
  for gs, gd in zip(jax.tree.leaves(grads_s), jax.tree.leaves(grads_d)):
    np.testing.assert_allclose(gs, gd, rtol=1e-4, atol=1e-6)


def test_graph_is_a_constant_not_a_parameter():
  tags = _tags()
  f = _features()
  sparse = _head(tags, adjacency='sparse').init(jax.random.key(0), f,
                                                train=False)
  graph = label_graph.normalize_adjacency(label_graph.correlation_matrix(
      sp.csr_matrix(tags.cooccurrence), tags.counts, tau=0.3, p=0.2))
  consts = sparse['constants']
  assert set(consts) == {'adjacency_values', 'adjacency_indices',
                         'embeddings'}
  assert consts['adjacency_values'].shape == (graph.nnz,)
  rebuilt = sp.coo_matrix((np.asarray(consts['adjacency_values']),
                           np.asarray(consts['adjacency_indices']).T),
                          shape=graph.shape).toarray()
  np.testing.assert_allclose(rebuilt, graph.toarray(), rtol=1e-6)
  assert set(sparse['params']) == {'gcn_0', 'gcn_1'}
  dense = _head(tags, adjacency='dense', embedding='learned').init(
      jax.random.key(0), f, train=False)
  assert set(dense['constants']) == {'adjacency'}
  # The plots draw the graph the head declares, from either form.
  from jaxtag import plots
  declared = mlgcn.MLGCNHead.label_graphs
  for variables in (sparse, dense):
    (drawn,) = plots.label_graphs(variables['constants'], graph.shape[0],
                                  declared).values()
    np.testing.assert_allclose(drawn, graph.toarray(), rtol=1e-6)
  assert set(dense['params']) == {'embeddings', 'gcn_0', 'gcn_1'}


def test_auto_picks_sparse_for_large_sparse_graphs():
  assert mlgcn.use_sparse('auto', 10_000, 0.001)
  assert not mlgcn.use_sparse('auto', 80, 0.001)
  assert not mlgcn.use_sparse('auto', 5_000, 0.05)
  assert mlgcn.use_sparse('sparse', 80, 0.5)
  with pytest.raises(ValueError, match='valid: auto, sparse, dense'):
    mlgcn.use_sparse('csr', 80, 0.1)


def test_ten_thousand_tags_in_nnz_memory():
  c, per_row = 10_000, 10   # about 0.1% density
  rng = np.random.default_rng(0)
  rows = np.repeat(np.arange(c), per_row)
  cols = rng.integers(0, c, c * per_row)
  counts = np.full(c, 50)
  cooc = sp.csr_matrix((np.full(c * per_row, 25), (rows, cols)), shape=(c, c))
  tags = tag_metadata.TagMetadata(
      names=[f't{i}' for i in range(c)], categories=np.zeros(c, int),
      counts=counts, cooccurrence=cooc, num_images=1000)
  head = mlgcn.MLGCNHead(num_classes=c, tag_metadata=tags, tau=0.4,
                         gcn_dims=(4,), embedding='learned', embedding_dim=4)
  f = _features(b=2, d=4)
  variables = jax.eval_shape(lambda: head.init(jax.random.key(0), f,
                                               train=False))
  consts = variables['constants']
  assert set(consts) == {'adjacency_values', 'adjacency_indices'}  # 'auto'
  nnz = consts['adjacency_values'].shape[0]
  assert nnz <= c * (per_row + 1)
  sizes = sum(x.size for x in jax.tree.leaves(variables))
  assert sizes < 20 * c * per_row     # O(nnz), far below C^2 = 1e8
  out = jax.jit(head.init_with_output, static_argnames='train')(
      jax.random.key(0), f, train=False)[0]
  assert out.shape == (2, c) and np.isfinite(np.asarray(out)).all()


def test_errors_name_the_key():
  f = _features()
  with pytest.raises(ValueError, match="needs the dataset's tag statistics"):
    mlgcn.MLGCNHead(num_classes=4).init(jax.random.key(0), f, train=False)
  with pytest.raises(ValueError, match='valid: learned, cooccurrence, file'):
    _head(_tags(), embedding='bert').init(jax.random.key(0), f, train=False)
  with pytest.raises(ValueError, match='embedding_path'):
    _head(_tags(), embedding='file').init(jax.random.key(0), f, train=False)


def test_file_embeddings_reach_the_head(tmp_path):
  tags = _tags(c=4)
  z = np.arange(12, dtype=np.float32).reshape(4, 3)
  np.save(tmp_path / 'z.npy', z)
  variables = _head(tags, embedding='file',
                    embedding_path=str(tmp_path / 'z.npy')).init(
                        jax.random.key(0), _features(), train=False)
  np.testing.assert_array_equal(variables['constants']['embeddings'], z)


@pytest.mark.parametrize('variant', ['tiny', 'synthetic', None])
def test_config_builds_the_head(variant):
  config = config_lib.load_config_file(
      'configs/mlgcn_anime.py' + (f':{variant}' if variant else ''))
  config_lib.validate(config)
  model = models.build_model(config.model, 10, tag_metadata=_tags())
  assert isinstance(model.head, mlgcn.MLGCNHead)
  assert model.head.pool == 'gmp' and model.head.p == 0.2
  if variant != 'synthetic':
    assert config.model.backbone == 'densenet121'
  if variant is None:
    assert model.head.tau == 0.002 and config.data.image_size == 512
    assert config.optim.name == 'adam' and config.num_epochs == 30
  with pytest.raises(ValueError, match='valid: synthetic, synthetic_densenet, '):
    config_lib.load_config_file('configs/mlgcn_anime.py:huge')


@pytest.mark.parametrize('gcn_name,base_name', [
    ('configs/mlgcn_anime.py:synthetic', 'configs/default.py'),
    ('configs/mlgcn_anime.py:synthetic_densenet',
     'configs/mlgcn_anime.py:synthetic_densenet_baseline')])
def test_baseline_variant_differs_only_in_the_head(gcn_name, base_name):
  gcn = config_lib.load_config_file(gcn_name)
  base = config_lib.load_config_file(base_name)
  compare.check_equal_budgets({'a': gcn, 'b': base})
  gcn.model.head, gcn.model.pool = 'linear', 'gap'
  gcn.model.head_kwargs = {}
  assert gcn.to_dict() == base.to_dict()


@pytest.mark.slow  # several training steps
def test_tiny_training_lowers_the_loss(tiny_config):
  config = config_lib.load_config_file('configs/mlgcn_anime.py:tiny')
  config.optim.lr = 1e-2
  config.optim.schedule = {'name': 'constant'}
  tags = _tags(c=12, sparse=True)
  t = train.Trainable(config, sharding.create_mesh(), num_classes=12,
                      num_train_steps=30, tag_metadata=tags)
  state = t.fresh_state()
  assert 'adjacency' in state.constants['head']
  rng = np.random.default_rng(0)
  batch = sharding.to_global({
      'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
      'labels': (rng.random((16, 12)) < 0.3).astype(np.float32)}, t.mesh)
  losses = []
  for _ in range(12):
    state, m = t.train_step(state, batch, t.step_rng)
    losses.append(float(m['loss']))
  assert losses[-1] < 0.8 * losses[0], losses


# ------------------------------------------------------------- compare ---


def test_unequal_budgets_are_listed():
  a = config_lib.load_config_file('configs/mlgcn_anime.py:tiny')
  b = config_lib.load_config_file('configs/mlgcn_anime.py:tiny_baseline')
  b.batch_size = 32
  with pytest.raises(ValueError, match='config.batch_size: a=16, b=32'):
    compare.check_equal_budgets({'a': a, 'b': b})
  assert compare.run_name('configs/mlgcn_anime.py:tiny') == 'mlgcn_anime-tiny'
  assert compare.run_name('configs/default.py') == 'default'


@pytest.mark.slow  # trains two tiny configs
def test_compare_two_tiny_configs(tiny_data_dir, tmp_path):
  specs = ['configs/mlgcn_anime.py:tiny_baseline',
           'configs/mlgcn_anime.py:tiny']
  workdir = str(tmp_path / 'cmp')
  results = compare.compare(specs, workdir, data_dir=tiny_data_dir,
                            tags=['blush', 'mole', 'not_a_tag'])
  names = ['mlgcn_anime-tiny_baseline', 'mlgcn_anime-tiny']
  assert [r['name'] for r in results['runs']] == names
  assert set(results['wall_seconds_this_session']) == set(names)
  for run in results['runs']:
    record = json.loads((tmp_path / 'cmp' / run['name'] / 'results.json'
                         ).read_text())
    # Every metric of the table, the WD v3 cards' ones included, as the
    # run's own results hold it.
    assert set(run['metrics']) == set(compare.METRICS + compare.TOP3
                                      + compare.EQUAL_PR)
    assert run['metrics'] == {k: record['metrics'][k] for k in run['metrics']}
    # The per-tag AP is the CSV's, independently parsed here.
    rows = (tmp_path / 'cmp' / run['name'] / 'results_per_tag.csv'
            ).read_text().splitlines()
    ap = {r.split(',')[0]: r.split(',')[4] for r in rows[1:]}
    assert set(run['per_tag_ap']) == {'blush', 'mole'}
    for tag, value in run['per_tag_ap'].items():
      assert value == pytest.approx(float(ap[tag]))
  saved = json.loads((tmp_path / 'cmp' / 'compare.json').read_text())
  assert saved['runs'] == json.loads(json.dumps(results['runs']))
  table = (tmp_path / 'cmp' / 'compare.md').read_text()
  assert 'mlgcn_anime-tiny' in table and '| mAP |' in table
  # compare.png is the figure of the saved results, pixel for pixel.
  from PIL import Image
  plots.save_png(plots.compare_figure(
      {r['name']: r['metrics'] for r in saved['runs']},
      title='Compared runs, test split'), tmp_path / 'want.png')
  with Image.open(tmp_path / 'cmp' / 'compare.png') as got, Image.open(
      tmp_path / 'want.png') as want:
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # A second call trains nothing and reports the same numbers.
  again = compare.compare(specs, workdir, data_dir=tiny_data_dir,
                          tags=['blush', 'mole'])
  assert again['wall_seconds_this_session'] == {}
  assert again['runs'][1]['metrics'] == results['runs'][1]['metrics']


def test_benchmark_statistics_have_the_asked_density():
  from jaxtag.bench import mlgcn as mlgcn_bench
  tags = mlgcn_bench.synthetic_tags(2000, neighbours=10)
  assert sp.issparse(tags.cooccurrence)
  a = label_graph.correlation_matrix(tags.cooccurrence, tags.counts, tau=0.4,
                                     p=0.2)
  links = np.diff(a.indptr) - 1               # off the diagonal
  assert 8 <= links.mean() <= 10.5 and links.min() >= 1
  rows = mlgcn_bench.product_times((32,), (0.05,), width=4)
  assert rows[0]['num_classes'] == 32 and rows[0]['bcoo_seconds'] > 0
