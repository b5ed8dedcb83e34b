"""The method contract: outputs, label encodings, declared features,
prediction paths, task metrics, thresholds, eval geometry, starting weights
and constants, each exercised by a small fake method (tests/fake_methods.py).
"""
import csv
import io
import json
import os

import fake_methods
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.sparse
from PIL import Image
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from jaxtag import config as config_lib
from jaxtag import evaluate
from jaxtag import objectives
from jaxtag import sharding
from jaxtag import tasks
from jaxtag import thresholds
from jaxtag import train
from jaxtag import trees
from jaxtag import warm_start
from jaxtag.data import geometry
from jaxtag.data import labels
from jaxtag.data import pipeline
from jaxtag.models import heads
from jaxtag.models import pooling


@pytest.fixture
def fake_heads(monkeypatch):
  for name, cls in (('two_output', fake_methods.TwoOutputHead),
                    ('id_feature', fake_methods.IdFeatureHead),
                    ('constant', fake_methods.ConstantHead),
                    ('toy_decoder', fake_methods.ToyDecoder)):
    monkeypatch.setitem(heads.HEADS, name, cls)


def _bce(logits, labels):
  return np.mean(np.sum(np.logaddexp(0, logits) - logits * labels, axis=1))


def _batch(mesh, n=16, size=32, classes=12, seed=0, **extra):
  rng = np.random.default_rng(seed)
  batch = {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
           'labels': (rng.random((n, classes)) < 0.3).astype(np.float32),
           **extra}
  return sharding.to_global(batch, mesh)


def _eval_batch(mesh, **kw):
  batch = jax.device_get(_batch(mesh, **kw))
  n = len(batch['image'])
  batch.update(mask=np.ones(n, np.float32), index=np.arange(n, dtype=np.int32))
  return sharding.to_global(batch, mesh)


# ------------------------------------------------------------- outputs ---


def test_two_output_head_trains_on_the_mean_and_logs_each_branch(
    tiny_config, fake_heads):
  tiny_config.model.head = 'two_output'
  mesh = sharding.create_mesh()
  t = train.Trainable(tiny_config, mesh, num_classes=12, num_train_steps=10)
  state = t.fresh_state()
  batch = _batch(mesh)
  variables = {'params': state.params, 'batch_stats': state.batch_stats,
               'constants': state.constants}
  image = (np.asarray(batch['image'], np.float32) / 255 - 0.5) / 0.5
  # Jitted: one compiled program instead of one per operation.
  outputs, _ = jax.jit(lambda v, x: t.model.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, image)
  outputs = jax.device_get(outputs)
  labels = np.asarray(batch['labels'])
  _, metrics = t.train_step(state, batch, t.step_rng)
  np.testing.assert_allclose(metrics['loss'], _bce(outputs['logits'], labels),
                             rtol=1e-4)
  np.testing.assert_allclose(metrics['loss_static'],
                             _bce(outputs['static'], labels), rtol=1e-4)
  np.testing.assert_allclose(metrics['loss_dynamic'],
                             _bce(outputs['dynamic'], labels), rtol=1e-4)
  np.testing.assert_allclose(
      outputs['logits'], (outputs['static'] + outputs['dynamic']) / 2,
      rtol=1e-5, atol=1e-6)
  # Scores: the sigmoid of the mean, through the eval step (the first
  # state was donated to the train step: take a fresh, identical one).
  state = t.fresh_state()
  variables = {'params': state.params, 'batch_stats': state.batch_stats,
               'constants': state.constants}
  eval_outputs = jax.jit(lambda v, x: t.model.apply(v, x, train=False))(
      variables, image)
  out = jax.device_get(t.eval_step(state, _eval_batch(mesh)))
  np.testing.assert_allclose(
      out['scores'], 1 / (1 + np.exp(-np.asarray(eval_outputs['logits']))),
      rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------- encodings ---


def test_sequence_encoding_orders_and_pads():
  counts = np.array([5, 50, 20, 20, 1])
  enc = labels.LabelSequence(5, order='frequent', max_labels=3, counts=counts)
  out = enc.encode([0, 2, 1, 3], seed=0, position=0)
  # Frequency order 1 (50), 2 (20), 3 (20, tie broken by id), 0 (5); 3 kept.
  np.testing.assert_array_equal(out['label_sequence'], [5, 1, 2, 3, 6])
  np.testing.assert_array_equal(out['label_sequence_mask'], [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(out['labels'], [1, 1, 1, 1, 0])
  rare = labels.LabelSequence(5, order='rare', max_labels=3, counts=counts)
  short = rare.encode([1, 4], seed=0, position=0)
  np.testing.assert_array_equal(short['label_sequence'], [5, 4, 1, 6, 6])
  np.testing.assert_array_equal(short['label_sequence_mask'], [1, 1, 1, 1, 0])
  rand = labels.LabelSequence(5, order='random', max_labels=4)
  orders = {tuple(rand.encode([0, 1, 2, 3], seed=7, position=g)
                  ['label_sequence'][1:5]) for g in range(20)}
  assert len(orders) > 3  # varies with the position...
  again = rand.encode([0, 1, 2, 3], seed=7, position=11)['label_sequence']
  np.testing.assert_array_equal(  # ...and is reproducible for one position
      again, rand.encode([3, 2, 1, 0], seed=7, position=11)['label_sequence'])


def test_class_id_encoding_skips_examples_without_exactly_one_label():
  enc = labels.ClassId(6)
  assert enc.encode([4], 0, 0)['labels'] == 4
  for ids in ([], [1, 2]):
    with pytest.raises(labels.SkipExample, match='exactly one'):
      enc.encode(ids, 0, 0)


def test_objective_must_match_the_label_encoding():
  loss = ml_collections.ConfigDict({'name': 'softmax_ce', 'kwargs': {}})
  with pytest.raises(ValueError, match="label_encoding='class_id'"):
    objectives.get_objective(loss, 'multi_hot')
  loss.kwargs = {'smoothing': 0.1}
  with pytest.raises(ValueError, match='valid: label_smoothing'):
    objectives.get_objective(loss, 'class_id')
  loss.name = 'focal'
  with pytest.raises(ValueError, match='multilabel_softmax, sequence_ce, '
                     'sigmoid_bce, softmax_ce'):
    objectives.get_objective(loss, 'multi_hot')


# ------------------------------------------------ teacher forcing/predict ---


@pytest.mark.slow
def test_sequence_head_is_teacher_forced_and_predicts_without_labels(
    tiny_config, fake_heads):
  tiny_config.model.head = 'toy_decoder'
  tiny_config.loss.name = 'sequence_ce'
  tiny_config.dataset.label_encoding = 'sequence'
  tiny_config.dataset.label_encoding_kwargs = {'order': 'random',
                                               'max_labels': 4}
  tiny_config.optim.lr = 1e-2
  mesh = sharding.create_mesh()
  t = train.Trainable(tiny_config, mesh, num_classes=12, num_train_steps=100)
  assert t.train_keys == ('label_sequence',) and t.predict_keys == ()
  enc = t.encoder
  rng = np.random.default_rng(1)

  def batch_with(ids_per_row, eval_rows=False):
    rows = [enc.encode(ids, 0, i) for i, ids in enumerate(ids_per_row)]
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    out['image'] = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    if eval_rows:
      out.update(mask=np.ones(16, np.float32),
                 index=np.arange(16, dtype=np.int32))
    return out

  ids_a = [rng.choice(12, 3, replace=False) for _ in range(16)]
  ids_b = [rng.choice(12, 2, replace=False) for _ in range(16)]
  a, b = batch_with(ids_a, True), batch_with(ids_b, True)
  b['image'] = a['image']
  state = t.fresh_state()
  out_a = jax.device_get(t.eval_step(state, sharding.to_global(a, mesh)))
  out_b = jax.device_get(t.eval_step(state, sharding.to_global(b, mesh)))
  # Prediction never saw the labels: same images, same scores...
  np.testing.assert_array_equal(out_a['scores'], out_b['scores'])
  # ...while the teacher-forced loss did.
  assert abs(float(out_a['loss_sum']) - float(out_b['loss_sum'])) > 1e-3
  # Training on the sequences lowers their loss.
  batch = sharding.to_global(
      {k: v for k, v in a.items() if k not in ('mask', 'index')}, mesh)
  losses = []
  for _ in range(20):
    state, m = t.train_step(state, batch, t.step_rng)
    losses.append(float(m['loss']))
  assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------- single-label ---


def test_single_label_scores_against_sklearn():
  rng = np.random.default_rng(0)
  scores = rng.random((200, 7)).astype(np.float32)
  truth = rng.integers(0, 7, 200)
  scores[np.arange(100), truth[:100]] += 0.6  # half are easy
  pred = {'scores': scores, 'labels': truth, 'index': np.arange(200),
          'loss': 0.0}
  tags = _tags(7)
  result, _, _ = evaluate.score(pred, task=tasks.SingleLabel(tags),
                                eval_config=None)
  assert result['top1'] == pytest.approx(sk_metrics.accuracy_score(
      truth, scores.argmax(1)))
  assert result['top5'] == pytest.approx(sk_metrics.top_k_accuracy_score(
      truth, scores, k=5))
  recall = sk_metrics.recall_score(truth, scores.argmax(1), average=None)
  assert result['mean_class_accuracy'] == pytest.approx(recall.mean())
  confusion = sk_metrics.confusion_matrix(truth, scores.argmax(1))
  np.fill_diagonal(confusion, 0)
  worst = np.unravel_index(np.argmax(confusion), confusion.shape)
  assert result['most_confused'][0] == [tags.names[worst[0]],
                                        tags.names[worst[1]],
                                        int(confusion.max())]


def _tags(c, categories=None):
  from jaxtag.data import tag_metadata
  return tag_metadata.TagMetadata(
      names=[f't{i}' for i in range(c)],
      categories=np.asarray(categories if categories is not None
                            else [0] * c),
      counts=np.arange(c) + 1,
      cooccurrence=scipy.sparse.csr_array(np.diag(np.arange(c) + 1)),
      num_images=c)


@pytest.mark.slow
def test_single_label_run_on_class_ids(tiny_config, tmp_path):
  config = tiny_config
  config.dataset.label_feature = 'characters'
  config.dataset.label_encoding = 'class_id'
  config.loss.name = 'softmax_ce'
  workdir = str(tmp_path / 'single')
  result = train.train_and_evaluate(config, workdir)
  # Independently: the test images with exactly one character.
  from jaxtag.data import build
  builder = build.get_builder(config.dataset.name, config.dataset.data_dir)
  source = builder.as_data_source('test')
  singles = [len(set(source[i]['characters'])) == 1
             for i in range(len(source))]
  assert result['num_examples'] == sum(singles) > 0
  assert set(result) >= {'top1', 'top5', 'mean_class_accuracy',
                         'most_confused'}
  rows = list(csv.DictReader(open(os.path.join(
      workdir, 'results_per_class.csv'))))
  assert sum(int(r['test_count']) for r in rows) == sum(singles)
  hits = sum(round(float(r['accuracy']) * int(r['test_count'])) for r in rows)
  assert hits == round(result['top1'] * sum(singles))


def test_task_outputs_for_the_tag_command():
  """What a task makes of one result for jaxtag.tag: the .txt text, the
  CSV row and the options it ignores."""
  from jaxtag.data import captions
  tagger = tasks.MultiLabel()
  record = {'file': 'a.png', 'rating': {'general': 0.9, 'explicit': 0.1},
            'general': {'x': 0.8, 'y': 0.6}, 'character': {'c': 0.9}}
  assert tagger.csv_header() == ['file', 'rating', 'general', 'character']
  assert tagger.csv_row(record) == ['a.png', 'general', 'x, y', 'c']
  assert tagger.text_file(record, 'old', lambda r, e: f'{e}|{",".join(r)}'
                          ) == 'old|file,rating,general,character'
  assert tagger.ignored_tag_options(['threshold']) == []
  with pytest.raises(ValueError, match='not a captioner'):
    tagger.decode([[1, 2]])
  captioner = tasks.Captioning(captions.Vocabulary(['a', 'girl']))
  assert captioner.decode([[1, 4, 5, 2, 4], [5, 2, 0, 0, 0]]) == ['a girl',
                                                                 'girl']
  assert captioner.text_file({'caption': 'a girl'}, 'x, y\n',
                             None) == 'x, y\na girl'
  assert captioner.text_file({'caption': 'a girl'}, '  ', None) == 'a girl'
  assert captioner.text_file({'caption': 'a girl'}, 'x\r\n',
                             None) == 'x\na girl'
  assert captioner.csv_header() == ['file', 'caption']
  assert captioner.csv_row({'file': 'a.png', 'caption': 'a girl'}) == [
      'a.png', 'a girl']
  assert captioner.ignored_tag_options(['threshold', 'exclude']) == [
      'threshold', 'exclude']
  # A task reads as its name.
  assert captioner == 'captioning' and tagger == 'multi_label'
  assert tagger != 'captioning' and str(tasks.SingleLabel()) == 'single_label'


# ---------------------------------------------------------- thresholds ---


def test_linear_threshold_targets_by_brute_force():
  rng = np.random.default_rng(3)
  scores = rng.random((30, 6))
  truth = rng.random((30, 6)) < 0.4
  targets = thresholds.linear_targets(scores, truth)
  for i in range(30):
    # Brute force over many thresholds: the target reaches the best
    # accuracy any threshold reaches.
    def accuracy(t):
      p = scores[i] >= t
      union = (p | truth[i]).sum()
      return 1.0 if union == 0 else (p & truth[i]).sum() / union
    best = max(accuracy(t) for t in np.linspace(-0.01, 1.01, 2001))
    assert accuracy(targets[i]) == pytest.approx(best)


def test_ridge_fit_matches_sklearn_in_both_regimes():
  rng = np.random.default_rng(4)
  for n, c in ((50, 8), (6, 20)):
    x, y = rng.random((n, c)), rng.random(n)
    w, b = thresholds.ridge_fit(x, y, penalty=0.3)
    ref = linear_model.Ridge(alpha=0.3).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_, rtol=1e-6, atol=1e-9)
    assert b == pytest.approx(ref.intercept_)


def test_threshold_policies_fit_and_apply():
  eval_config = config_lib.defaults().eval
  rng = np.random.default_rng(5)
  scores = rng.random((400, 4)).astype(np.float32)
  truth = scores + rng.normal(0, 0.2, (400, 4)) > np.array([0.9, 0.5, 0.3,
                                                            2.0])
  tags = _tags(4, categories=[0, 4, 9, 0])
  eval_config.thresholds = 'category'
  record = thresholds.fit(eval_config, scores, truth, tags)
  np.testing.assert_allclose(thresholds.apply(record, scores),
                             [0.35, 0.85, 0.5, 0.35])
  eval_config.thresholds = 'tag'
  record = thresholds.fit(eval_config, scores, truth, tags)
  per_tag = thresholds.apply(record, scores)
  for c in range(3):  # the best F1 of the 0.01 grid, computed by sklearn
    grid = np.arange(1, 100) / 100
    f1 = [sk_metrics.f1_score(truth[:, c], scores[:, c] >= t) for t in grid]
    assert sk_metrics.f1_score(truth[:, c], scores[:, c] >= per_tag[c]) == (
        pytest.approx(max(f1)))
  assert per_tag[3] == eval_config.threshold  # no positives: the default
  eval_config.thresholds = 'linear'
  record = thresholds.fit(eval_config, scores, truth, tags)
  per_image = thresholds.apply(record, scores)
  assert per_image.shape == (400, 1)
  np.testing.assert_allclose(
      per_image[:, 0], scores @ np.array(record['weights']) + record['bias'],
      rtol=1e-5)
  # The metric suite applies per-image thresholds row by row.
  result, _, _ = evaluate.score(
      {'scores': scores, 'labels': truth.astype(np.float32),
       'index': np.arange(400), 'loss': 0.0}, task=tasks.MultiLabel(tags),
      eval_config=eval_config, thresholds=record)
  predicted = scores >= per_image
  assert result['OP'] == pytest.approx((predicted & truth).sum()
                                       / predicted.sum())


# ------------------------------------------------------ native geometry ---


def _png(h, w, seed):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
      buf, format='PNG')
  return buf.getvalue()


def test_native_geometry_buckets_pad_and_mask():
  shapes = geometry.bucket_shapes(32, (1.0, 2.0))
  assert shapes == [(32, 32), (32, 64), (64, 32)]
  # 6 square and 11 wider images (a 40 x 44 one is landscape too).
  sizes = [(40, 40)] * 6 + [(40, 44)] * 4 + [(20, 37)] * 7
  source = [{'image': _png(h, w, i), 'tags': [i % 3]}
            for i, (h, w) in enumerate(sizes)]
  data_config = config_lib.defaults().data
  data_config.image_size = 32
  batches = list(pipeline.create_eval_iterator(
      source, data_config=data_config, num_classes=3, label_feature='tags',
      global_batch_size=4, process_index=0, process_count=1,
      geometry='native', bucket_aspects=(1.0, 2.0)))
  shapes_seen = [b['image'].shape[1:3] for b in batches]
  assert shapes_seen == [(32, 32)] * 2 + [(32, 64)] * 3
  index = np.concatenate([b['index'][b['mask'] > 0] for b in batches])
  assert sorted(index) == list(range(17))
  wide = batches[3]  # records 10..13, all 20 x 37
  assert wide['index'][0] == 10
  # A 20 x 37 image: shortest side to 32, so 32 x 59 inside 32 x 64.
  assert wide['image_mask'][0].sum() == 32 * 59
  assert wide['image_mask'][0][:, :59].all()
  assert (wide['image'][0][:, 59:] == 0).all()


def test_masked_pooling_ignores_padding():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
  mask = np.zeros((2, 4, 6), np.float32)
  mask[0, :, :4] = 1
  mask[1, :2, :] = 1
  gap = pooling.pool(jnp.asarray(x), 'gap', jnp.asarray(mask))
  gmp = pooling.pool(jnp.asarray(x), 'gmp', jnp.asarray(mask))
  np.testing.assert_allclose(gap[0], x[0, :, :4].mean((0, 1)), rtol=1e-5)
  np.testing.assert_allclose(gap[1], x[1, :2].mean((0, 1)), rtol=1e-5)
  np.testing.assert_allclose(gmp[0], x[0, :, :4].max((0, 1)))
  np.testing.assert_allclose(gmp[1], x[1, :2].max((0, 1)))
  pixels = np.zeros((1, 64, 96), np.float32)
  pixels[0, :40, :60] = 1  # 32 x 32 cells: rows 0-1, columns 0-1 touched
  cells = pooling.downsample_mask(jnp.asarray(pixels), 2, 3)
  np.testing.assert_array_equal(cells[0], [[1, 1, 0], [1, 1, 0]])


def test_native_eval_compiles_one_program_per_bucket(tiny_config):
  mesh = sharding.create_mesh()
  t = train.Trainable(tiny_config, mesh, num_classes=3, num_train_steps=1)
  state = t.fresh_state()
  sizes = [(40, 40)] * 5 + [(20, 37)] * 11
  source = [{'image': _png(h, w, i), 'tags': [i % 3]}
            for i, (h, w) in enumerate(sizes)]
  batches = pipeline.create_eval_iterator(
      source, data_config=tiny_config.data, num_classes=3,
      label_feature='tags', global_batch_size=8, process_index=0,
      process_count=1, geometry='native', bucket_aspects=(1.0, 2.0))
  pred = evaluate.predict(t.eval_step, state, batches, mesh)
  assert sorted(pred['index']) == list(range(16))
  assert t.eval_step._cache_size() == 2  # pylint: disable=protected-access


# ------------------------------------------------- declared features ---


def test_feature_dependent_head_gets_its_feature_and_nothing_else(
    tiny_config, fake_heads):
  tiny_config.model.head = 'id_feature'
  mesh = sharding.create_mesh()
  with pytest.raises(ValueError, match="needs batch feature 'id'.*none"):
    train.Trainable(tiny_config, mesh, num_classes=12, num_train_steps=1)
  t = train.Trainable(tiny_config, mesh, num_classes=12, num_train_steps=1,
                      feature_specs={'id': ((), np.int64)})
  state = t.fresh_state()
  # The embedding exists from init on, though only this feature uses it.
  assert state.params['head']['by_id']['embedding'].shape == (5, 12)
  ids = np.arange(16, dtype=np.int64)
  a = jax.device_get(t.eval_step(state, _eval_batch(mesh, id=ids)))
  b = jax.device_get(t.eval_step(state, _eval_batch(mesh, id=ids + 1)))
  assert np.abs(a['scores'] - b['scores']).max() > 1e-4
  # The linear head never receives an undeclared key.
  tiny_config.model.head = 'linear'
  plain = train.Trainable(tiny_config, mesh, num_classes=12,
                          num_train_steps=1)
  s = plain.fresh_state()
  out = plain.eval_step(s, _eval_batch(mesh, id=ids))
  assert np.isfinite(np.asarray(out['scores'])).all()


# ---------------------------------------------------------- constants ---


def test_constants_are_state_not_parameters_nor_literals(tiny_config,
                                                          fake_heads):
  tiny_config.model.head = 'constant'
  mesh = sharding.create_mesh()
  t = train.Trainable(tiny_config, mesh, num_classes=12, num_train_steps=4)
  state = t.fresh_state()
  mixing = np.asarray(state.constants['head']['mixing'])
  np.testing.assert_allclose(
      mixing, np.random.default_rng(0).random((12, 12)), rtol=1e-6)
  assert 'mixing' not in str(jax.tree_util.tree_structure(state.params))
  batch = _batch(mesh)
  hlo = t.train_step.lower(state, batch, t.step_rng).as_text()
  assert 'tensor<12x12xf32>' in hlo  # an argument of the program...
  assert 'dense<' not in ''.join(l for l in hlo.splitlines()
                                 if '12x12xf32' in l and 'constant' in l)
  state, _ = t.train_step(state, batch, t.step_rng)
  np.testing.assert_array_equal(state.constants['head']['mixing'], mixing)


# ------------------------------------------------------- starting weights ---


def _flat(tree):
  return {k: np.asarray(v) for k, v in trees.flatten(tree).items()}


@pytest.mark.slow
def test_init_takes_the_backbone_of_another_run(tiny_config, tmp_path,
                                                read_params):
  source = str(tmp_path / 'source')
  tiny_config.num_train_steps = 4
  train.train_and_evaluate(tiny_config, source)
  trained, _ = read_params(source)

  target = str(tmp_path / 'target')
  tiny_config.init.path = source
  tiny_config.num_train_steps = 1
  tiny_config.optim.lr = 0.0  # the stored state is then exactly the start
  tiny_config.optim.weight_decay = 0.0
  train.train_and_evaluate(tiny_config, target)
  started, _ = read_params(target)
  fresh = jax.device_get(train.Trainable(
      tiny_config, sharding.create_mesh(), num_classes=len(
          trained['head']['Dense_0']['bias']),
      num_train_steps=1).fresh_state().params)
  got, want, init = _flat(started), _flat(trained), _flat(fresh)
  backbone = [k for k in got if k.startswith('backbone/')]
  assert backbone and all(np.array_equal(got[k], want[k]) for k in backbone)
  for k in got:
    if k.startswith('head/'):  # re-initialised, not taken
      np.testing.assert_array_equal(got[k], init[k])
      assert not np.array_equal(got[k], want[k])

  # Resume wins over init: the workdir's checkpoint is used, the (now
  # missing) init path is never read.
  tiny_config.init.path = str(tmp_path / 'gone')
  tiny_config.num_train_steps = 2
  train.train_and_evaluate(tiny_config, target)
  assert read_params(target)[1] == 2

  # A parameter of another shape is named.
  tiny_config.init.path = source
  tiny_config.model.backbone_kwargs = {'width': 0.25, 'small_stem': True}
  with pytest.raises(warm_start.InitError, match=r'Parameter params/backbone/'
                     r'\S+: config.init.path has shape'):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'other'))


def test_init_from_npz_selects_by_regex(tiny_config, tmp_path):
  mesh = sharding.create_mesh()
  t = train.Trainable(tiny_config, mesh, num_classes=12, num_train_steps=1)
  state = t.fresh_state()
  flat = _flat(state.params)
  stem = {k: np.full_like(v, 0.25) for k, v in flat.items()
          if k.startswith('backbone/stem')}
  path = tmp_path / 'weights.npz'
  np.savez(path, **stem)
  init = ml_collections.ConfigDict({'path': str(path),
                                    'include': '^backbone/stem'})
  new = _flat(warm_start.apply(state, init).params)
  for k in flat:
    if k in stem:
      assert (new[k] == 0.25).all()
    else:
      np.testing.assert_array_equal(new[k], flat[k])
  init.include = '^backbone/'
  with pytest.raises(warm_start.InitError, match='lacks .* selected'):
    warm_start.apply(state, init)


# ------------------------------------------- a new task, through registries ---


@pytest.fixture
def counting(monkeypatch):
  """The fake task 'counting', its encoder 'tag_count' and objective
  'count_mse', registered as a new method would register them."""
  from jaxtag.data import encoders
  monkeypatch.setitem(encoders.ENCODERS, 'tag_count', fake_methods.TagCount)
  monkeypatch.setitem(objectives.OBJECTIVES, 'count_mse',
                      fake_methods.CountMSE)
  monkeypatch.setitem(tasks.TASKS, 'counting', fake_methods.Counting)


def test_encoder_kwargs_are_checked_against_its_fields(counting):
  from jaxtag.data import encoders
  dataset = config_lib.defaults().dataset
  dataset.label_encoding = 'tag_count'
  dataset.label_encoding_kwargs = {'cap': 3}
  encoder = encoders.make_encoder(dataset, num_tags=7)
  assert (encoder.cap, encoder.num_tags, encoder.label_feature) == (3, 7,
                                                                    'tags')
  # What the run sets (num_tags, counts, label_feature) and what `prepare`
  # sets (prior) are no options.
  for key in ('capp', 'prior', 'num_tags', 'label_feature'):
    dataset.label_encoding_kwargs = {key: 1}
    with pytest.raises(ValueError, match=rf"\['{key}'\] in config.dataset."
                       r"label_encoding_kwargs for 'tag_count'; valid: cap\."):
      encoders.make_encoder(dataset, num_tags=7)
  dataset.label_encoding = 'sequence'
  dataset.label_encoding_kwargs = {'order': 'random', 'max_labels': 2}
  encoder = encoders.make_encoder(dataset, num_tags=4)
  assert encoder.spec['label_sequence'][0] == (4,)
  dataset.label_encoding = 'counts'
  with pytest.raises(ValueError, match='Unknown config.dataset.label_encoding'
                     " 'counts'; valid: multi_hot, .*tag_count"):
    encoders.make_encoder(dataset, num_tags=4)


@pytest.mark.slow
def test_a_new_task_runs_through_the_registries(tiny_config, tmp_path,
                                                counting):
  """Training, --mode=eval and the results files of a task that the
  trainer has never heard of, with its own encoder and objective."""
  config = tiny_config
  config.dataset.label_encoding = 'tag_count'
  config.dataset.label_encoding_kwargs = {'cap': 8}
  config.loss.name = 'count_mse'
  config.num_train_steps = 4
  config.eval_every_steps = config.checkpoint_every_steps = 4
  workdir = str(tmp_path / 'counting')
  result = train.train_and_evaluate(config, workdir)
  # The encoder's prior, independently: the train split's mean capped count.
  from jaxtag.data import build
  builder = build.get_builder(config.dataset.name, config.dataset.data_dir)
  source = builder.as_data_source('train')
  prior = np.mean([min(len(source[i]['tags']), 8)
                   for i in range(len(source))])
  with open(os.path.join(workdir, fake_methods.PRIOR_FILE)) as f:
    assert json.load(f)['prior'] == pytest.approx(prior, rel=1e-12)
  # The task's metric, from its own CSV; its true counts from the records.
  rows = list(csv.DictReader(open(os.path.join(workdir,
                                               'results_counts.csv'))))
  test = builder.as_data_source('test')
  assert len(rows) == len(test) == result['num_examples']
  for row in rows:
    true = min(len(test[int(row['index'])]['tags']), 8) - prior
    assert float(row['true']) == pytest.approx(true, abs=1e-5)
  mae = np.mean([abs(float(r['predicted']) - float(r['true'])) for r in rows])
  assert result['mae'] == pytest.approx(mae, rel=1e-6)
  saved = json.load(open(os.path.join(workdir, 'results.json')))
  assert saved['metrics']['mae'] == result['mae']
  assert not os.path.exists(os.path.join(workdir, 'thresholds.json'))
  # Evaluation alone reads the prior back from the workdir.
  again = train.evaluate_checkpoint(config, workdir, 'test')
  assert again['mae'] == pytest.approx(result['mae'], rel=1e-6)
  assert os.path.exists(os.path.join(workdir, 'eval_test_counts.csv'))


def test_the_trainer_names_no_method_encoder_or_task():
  """train.py assembles parts by name from the config: no head, backbone,
  objective, label encoder, task or feature provider is named in it."""
  from jaxtag import models
  from jaxtag.data import encoders
  from jaxtag.models import features
  source = open(train.__file__, encoding='utf-8').read().lower()
  names = (set(heads.HEADS) | set(models.BACKBONES)
           | set(objectives.OBJECTIVES) | set(encoders.ENCODERS)
           | set(tasks.TASKS) | set(features.PROVIDERS))
  assert {'show_attend_tell', 'vallet', 'captioning', 'caption',
          'captioner'} <= names   # the registries are what they were
  words = names | {'caption', 'semantic', 'vallet', 'mlgcn', 'addgcn', 'gcn',
                   'sequence', 'multi_label', 'single_label', 'bleu', 'vocab',
                   'crop', 'lstm', 'decoder', 'teacher', 'beam', 'rating'}
  named = sorted(w for w in words if w.lower() in source)
  assert not named, f'jaxtag/train.py names {named}'


def test_the_library_imports_no_project():
  """Experiments (jaxtag/projects/) build on the library, never the other
  way round: no module outside projects/ imports one, at any depth."""
  import ast
  root = os.path.dirname(train.__file__)
  found = []
  for folder, _, files in os.walk(root):
    if os.path.relpath(folder, root).split(os.sep)[0] == 'projects':
      continue
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      tree = ast.parse(open(path, encoding='utf-8').read())
      for node in ast.walk(tree):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ''] if isinstance(node, ast.ImportFrom)
                   else [])
        found += [f'{os.path.relpath(path, root)}: {m}' for m in modules
                  if m.startswith('jaxtag.projects')]
  assert os.path.isdir(os.path.join(root, 'projects', 'characters'))
  assert not found, found


def test_caption_adaptation_finds_its_config_from_any_folder(tmp_path,
                                                             monkeypatch):
  from jaxtag.projects import caption_adaptation
  monkeypatch.chdir(tmp_path)   # no configs/ here
  config = caption_adaptation._config(  # pylint: disable=protected-access
      caption_adaptation.CAPTIONER_CONFIG, 'tiny', 'synthetic_anime/tiny',
      None)
  assert config.dataset.label_encoding == 'caption'
  with pytest.raises(FileNotFoundError, match='--captioner_config'):
    caption_adaptation._config(  # pylint: disable=protected-access
        str(tmp_path / 'none.py'), 'tiny', 'synthetic_anime/tiny', None)


def test_saved_configs_of_earlier_versions_are_upgraded():
  """A run's config.json from before encoder options and feature providers
  reads with its keys where they live now."""
  saved = json.loads(config_lib.defaults().to_json_best_effort())
  saved['num_train_steps'] = 10
  del saved['dataset']['label_encoding_kwargs'], saved['model']['features']
  saved['dataset'].update(label_encoding='sequence', sequence_order='rare',
                          max_labels=7, caption_max_tokens=20,
                          caption_references=5, caption_min_count=5,
                          caption_targets='')
  saved['model']['semantic'] = {'captioner': 'runs/c', 'pooling': 'max',
                                'cache': ''}
  new = ml_collections.ConfigDict(config_lib.upgrade(saved))
  config_lib.validate(new)
  assert dict(new.dataset.label_encoding_kwargs) == {'order': 'rare',
                                                     'max_labels': 7}
  assert new.model.features.semantic.to_dict() == {
      'provider': 'captioner', 'captioner': 'runs/c', 'pooling': 'max',
      'cache': ''}
  saved['dataset']['label_encoding'] = 'caption'
  saved['model']['semantic']['captioner'] = ''
  new = config_lib.upgrade(saved)
  assert new['dataset']['label_encoding_kwargs'] == {
      'max_tokens': 20, 'references': 5, 'min_count': 5, 'targets': ''}
  assert 'features' not in new['model']
