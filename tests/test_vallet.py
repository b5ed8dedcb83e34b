"""Vallet & Sakamoto: loss, optimiser, test network, pruning, threshold,
crops, and tiny training runs, each against an independent reference."""
import io
import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from sklearn import metrics as skm

from jaxtag import config as config_lib
from jaxtag import losses
from jaxtag import objectives
from jaxtag import optim
from jaxtag import sharding
from jaxtag import thresholds
from jaxtag import train
from jaxtag.data import ops
from jaxtag.models import build_model
from jaxtag.models import crops
from jaxtag.models.heads import vallet as vallet_head


def _config(variant='tiny'):
  return config_lib.load_config_file(f'configs/vallet_pixiv.py:{variant}')


# ---------------------------------------------------------------- loss ---


def _multilabel_softmax_ref(logits, labels):
  """float64, straight from the paper's formula."""
  e = np.exp(logits.astype(np.float64))
  with np.errstate(divide='ignore'):   # log 0 for a row without labels
    return -np.log((e * labels).sum(1) / e.sum(1))


def test_multilabel_softmax_vs_numpy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((7, 6)) * 3
  labels = (rng.random((7, 6)) < 0.4).astype(np.float32)
  labels[np.arange(7), rng.integers(0, 6, 7)] = 1
  labels[0] = [0, 1, 0, 0, 0, 0]
  labels[1, :] = 0
  labels[1, [2, 5]] = 1
  got = np.asarray(losses.multilabel_softmax(logits=jnp.asarray(logits),
                                             labels=labels))
  np.testing.assert_allclose(got, _multilabel_softmax_ref(logits, labels),
                             rtol=1e-5)
  # One positive: ordinary softmax cross-entropy.
  logp = logits[0] - np.log(np.exp(logits[0]).sum())
  assert got[0] == pytest.approx(-logp[1], rel=1e-5)


def test_multilabel_softmax_rows_without_labels_count_for_nothing():
  logits = np.array([[1.0, 2.0, 0.5], [50.0, -50.0, 0.0], [0.0, 1.0, 3.0]])
  labels = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], np.float32)
  per_example = losses.multilabel_softmax(logits=jnp.asarray(logits),
                                          labels=labels)
  assert float(per_example[1]) == 0.0
  ref = _multilabel_softmax_ref(logits, labels)
  objective = objectives.OBJECTIVES['multilabel_softmax']()
  loss, _ = objective.loss(jnp.asarray(logits), {'labels': labels})
  assert float(loss) == pytest.approx((ref[0] + ref[2]) / 2, rel=1e-5)
  # The example mask drops rows too; gradients stay finite everywhere.
  loss, _ = objective.loss(jnp.asarray(logits), {'labels': labels},
                           example_mask=np.array([0.0, 1.0, 1.0]))
  assert float(loss) == pytest.approx(ref[2], rel=1e-5)
  grad = jax.grad(lambda x: objective.loss(x, {'labels': labels})[0])(
      jnp.asarray(logits))
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_array_equal(grad[1], 0.0)


# ----------------------------------------------------------- optimiser ---


def _vallet_rmsprop_ref(w, grads, alpha0, alpha_max, decay=0.9):
  w, msq = np.array(w, np.float64), np.ones_like(w, np.float64)
  for g in grads:
    msq = decay * msq + (1 - decay) * g ** 2
    w = w - np.minimum(alpha_max, alpha0 / np.sqrt(msq)) * g
  return w


def test_vallet_rmsprop_vs_numpy():
  rng = np.random.default_rng(1)
  w0 = rng.standard_normal(6)
  # Very large, very small and ordinary gradients, with sign changes.
  scales = np.array([1e4, 1e-6, 1.0, 30.0, 1e-3, 0.3])
  grads = [scales * rng.standard_normal(6) for _ in range(6)]
  for alpha0, alpha_max in ((0.01, 0.01), (0.001, 0.01)):
    tx = optim.vallet_rmsprop(alpha0, alpha_max)
    params = jnp.asarray(w0, jnp.float32)
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
      params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(
        params, _vallet_rmsprop_ref(w0, grads, alpha0, alpha_max),
        rtol=1e-5, atol=1e-7)


def test_vallet_rmsprop_from_config():
  c = config_lib.defaults().optim
  c.update(name='vallet_rmsprop', lr=0.001, max_lr=0.01)
  c.schedule = {'name': 'constant', 'warmup_steps': 0}
  tx, _ = optim.build_optimizer(c, num_train_steps=10)
  w0 = np.array([1.0, -2.0])
  grads = [np.array([5.0, 1e-3]), np.array([-2.0, 1e-3])]
  params = jnp.asarray(w0)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params, _vallet_rmsprop_ref(w0, grads, 0.001,
                                                         0.01), rtol=1e-6)


# -------------------------------------------------------- test network ---


def _head(**kw):
  return vallet_head.ValletHead(num_classes=5, width=1 / 128, **kw)


def test_fcn_on_one_cell_is_the_training_network():
  head = _head()
  features = jax.random.normal(jax.random.key(0), (4, 1, 1, 24))
  variables = head.init(jax.random.key(1), features, train=False)
  trained = head.apply(variables, features, train=False)
  maps = head.apply(variables, features, method='confidence_maps')
  np.testing.assert_array_equal(maps[:, 0, 0], trained)
  # The whole prediction on one cell: the pooled map is the cell itself,
  # and only its best label keeps its confidence.
  scores = head.apply(variables, features, method='predict')['scores']
  expected = np.where(np.arange(5) == np.argmax(trained, axis=1)[:, None],
                      trained, 0.0)
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  # Initialisation: biases 1 in the hidden layers, 0 in the output layer.
  params = variables['params']
  assert (params['fc1']['bias'] == 1).all() and (params['fc2']['bias'] == 1)\
      .all() and (params['out']['bias'] == 0).all()


def _pool_ref(maps, k, mask):
  """Mean over the real cells of each k x k window, by loops."""
  b, h, w, c = maps.shape
  out = np.zeros_like(maps)
  r = k // 2
  for i in range(h):
    for j in range(w):
      win = (slice(None), slice(max(i - r, 0), i + r + 1),
             slice(max(j - r, 0), j + r + 1))
      m = mask[win][..., None]
      out[:, i, j] = (maps[win] * m).sum((1, 2)) / np.maximum(
          m.sum((1, 2)), 1e-12)
  return out


def test_prediction_by_loops_with_a_mask():
  rng = np.random.default_rng(2)
  maps = rng.standard_normal((2, 4, 6, 5))
  mask = np.ones((2, 4, 6))
  mask[1, :, 4:] = 0   # the second image is 4 x 4 inside a 4 x 6 bucket
  multi = np.mean([_pool_ref(maps, k, mask) for k in (3, 5, 7)], axis=0)
  got = vallet_head.multiscale_average(jnp.asarray(maps), (3, 5, 7),
                                       jnp.asarray(mask))
  np.testing.assert_allclose(got, multi, rtol=1e-5, atol=1e-6)
  scores = np.zeros((2, 5))
  for b in range(2):
    for i in range(4):
      for j in range(6):
        if mask[b, i, j]:
          best = np.argmax(multi[b, i, j])
          scores[b, best] += multi[b, i, j, best]
  pruned = vallet_head.keep_best_label(got)
  np.testing.assert_allclose(vallet_head.sum_kept(pruned, jnp.asarray(mask)),
                             scores, rtol=1e-5, atol=1e-6)


def test_pruning_keeps_one_label_per_position():
  rng = np.random.default_rng(3)
  maps = (rng.standard_normal((3, 5, 4, 7)) - 2.0).astype(np.float32)
  maps[0, 0, 0] = 1.0                              # a tie: the first wins
  pruned = np.asarray(vallet_head.keep_best_label(jnp.asarray(maps)))
  kept = pruned != 0
  np.testing.assert_array_equal(kept.sum(-1), 1)
  np.testing.assert_array_equal(np.argmax(kept, -1), np.argmax(maps, -1))
  np.testing.assert_array_equal(pruned.max(-1) + pruned.min(-1),
                                maps.max(-1))


# ----------------------------------------------------------- threshold ---


def test_linear_threshold_on_a_constructed_case():
  # Each image has k true labels, scored above the others. The gap between
  # them sits at a level that is linear in the score vector: t = s . w + b
  # for w = (0.5, 0.5, 0, 0), b = 1 (scores of labels 0 and 1 raise the
  # bar). Raw confidences, not probabilities: up to 10.
  rng = np.random.default_rng(4)
  n, c = 300, 4
  w_true, b_true = np.array([0.5, 0.5, 0.0, 0.0]), 1.0
  scores = rng.uniform(0, 4, (n, c))
  level = scores @ w_true + b_true
  labels = scores >= level[:, None]
  fitted_w, fitted_b = thresholds.fit_linear_threshold(scores, labels)
  predicted = thresholds.apply_linear_threshold(scores, fitted_w, fitted_b)
  # The fit reproduces most label sets exactly, where one global threshold
  # cannot (the targets are midpoints between ranked scores, not the level
  # itself, so the fit is close rather than exact).
  exact = (predicted == labels).all(axis=1).mean()
  assert exact > 0.9
  best_global = max((((scores >= t) == labels).all(axis=1)).mean()
                    for t in np.linspace(0, 6, 601))
  assert best_global < 0.6
  assert fitted_w[:2] == pytest.approx([0.5, 0.5], abs=0.1)
  # No label at all: the per-image threshold must clear the top score,
  # even when it is above 1.
  empty = np.zeros((1, c), bool)
  target = thresholds.linear_targets(np.array([[5.0, 3.0, 2.0, 1.0]]), empty)
  assert target[0] > 5.0


# ---------------------------------------------------------------- crops ---


def test_random_crops_stay_inside_the_real_pixels():
  b, h, w = 3, 8, 12
  image = np.arange(b * h * w, dtype=np.float32).reshape(b, h, w, 1)
  mask = np.zeros((b, h, w), np.uint8)
  mask[0] = 1
  mask[1, :8, :9] = 1
  mask[2, :8, :6] = 1   # exactly one crop position along the width
  views = np.asarray(crops.random_crops(jnp.asarray(image), jnp.asarray(mask),
                                        num=10, size=6,
                                        key=jax.random.key(0)))
  assert views.shape == (30, 6, 6, 1)
  lefts = {i: set() for i in range(b)}
  for v in range(10):
    for i in range(b):
      crop = views[v * b + i, :, :, 0]
      top, left = np.argwhere(image[i, :, :, 0] == crop[0, 0])[0]
      np.testing.assert_array_equal(crop, image[i, top:top + 6,
                                                left:left + 6, 0])
      assert mask[i, top:top + 6, left:left + 6].all()
      lefts[i].add(left)
  assert len(lefts[0]) > 2 and lefts[2] == {0}


def test_crops_prediction_averages_the_training_network():
  config = _config('tiny')
  config.model.head_kwargs = {'width': 0.125, 'prediction': 'crops',
                              'crops': 3, 'crop_fraction': 0.5}
  model = build_model(config.model, num_classes=5)
  image = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  # Jitted: one compiled program each instead of one per operation.
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x,
                                           train=False))(image)
  got = jax.jit(lambda v, x: model.apply(v, x, method='predict'))(
      variables, image)['scores']
  views = crops.random_crops(image, num=3, size=16, key=jax.random.key(0))
  per_view = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables,
                                                                  views)
  np.testing.assert_allclose(got, per_view.reshape(3, 2, 5).mean(0),
                             rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------- mean pixel ---


def test_mean_pixel_weighs_every_pixel():
  rng = np.random.default_rng(6)
  images = [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in ((4, 6, 3), (10, 3, 3))]
  source = []
  for pixels in images:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format='PNG')
    source.append({'image': buf.getvalue()})
  every = np.concatenate([p.reshape(-1, 3) for p in images]) / 255.0
  np.testing.assert_allclose(ops.mean_pixel(source), every.mean(0),
                             rtol=1e-9)
  np.testing.assert_allclose(ops.mean_pixel(source, max_images=1),
                             images[0].reshape(-1, 3).mean(0) / 255.0,
                             rtol=1e-9)


# ---------------------------------------------------- backbone, training ---


def test_backbone_is_table_1():
  config = _config('tiny')
  config.model.backbone_kwargs = {'width': 0.125}
  model = build_model(config.model, num_classes=5)
  image = jnp.zeros((1, 64, 96, 3))
  variables = model.init(jax.random.key(0), image, train=False)
  convs = flax.traverse_util.flatten_dict(variables['params']['backbone'])
  kernels = {k[0]: v.shape for k, v in convs.items() if k[1] == 'kernel'}
  assert len(kernels) == 16
  assert kernels['conv1'] == (7, 7, 3, 8)
  assert [kernels[f'conv{i}'][-1] for i in range(2, 17)] == (
      [16] * 5 + [32] * 5 + [64] * 5)
  biases = {k[0]: v for k, v in convs.items() if k[1] == 'bias'}
  assert (biases['conv1'] == 0).all()
  assert all((biases[f'conv{i}'] == 1).all() for i in range(2, 17))
  features = model.apply(variables, image, train=False,
                         method=lambda m, x, train: m.backbone(x, train=train))
  assert features.shape == (1, 2, 3, 64)   # total stride 32


@pytest.mark.slow  # several training steps
def test_tiny_training_lowers_the_loss():
  config = _config('tiny')
  mesh = sharding.create_mesh()
  t = train.Trainable(config, mesh, num_classes=12, num_train_steps=30)
  rng = np.random.default_rng(5)
  labels = np.zeros((16, 12), np.float32)
  labels[np.arange(16), rng.integers(0, 12, 16)] = 1
  labels[:4, 0] = 1
  batch = sharding.to_global(
      {'image': rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
       'labels': labels}, mesh)
  state = t.fresh_state()
  history = []
  for _ in range(30):
    state, m = t.train_step(state, batch, t.step_rng)
    history.append(float(m['loss']))
  assert history[-1] < 0.7 * history[0], history


@pytest.mark.slow
@pytest.mark.parametrize('prediction', ['fcn', 'crops'])
def test_tiny_run_end_to_end(tiny_data_dir, tmp_path, prediction,
                             checkpoint_test_scores):
  config = _config('tiny')
  config.dataset.data_dir = tiny_data_dir
  config.model.head_kwargs.prediction = prediction
  workdir = str(tmp_path / prediction)
  result = train.train_and_evaluate(config, workdir)
  record = json.load(open(os.path.join(workdir, 'thresholds.json')))
  assert record['policy'] == 'linear'
  # The example-based metrics of the checkpoint's test scores under the
  # saved linear threshold, by numpy and scikit-learn.
  scores, ids = checkpoint_test_scores(config, workdir)
  truth = np.stack([np.isin(np.arange(scores.shape[1]), i) for i in ids])
  pred = scores >= (scores @ np.asarray(record['weights'])
                    + record['bias'])[:, None]
  want = {
      'example_precision': skm.precision_score(
          truth, pred, average='samples', zero_division=0),
      'example_recall': skm.recall_score(truth, pred, average='samples',
                                         zero_division=1),
      'example_accuracy': skm.jaccard_score(truth, pred, average='samples',
                                            zero_division=1)}
  assert {k: result[k] for k in want} == pytest.approx(want, rel=1e-6)


def test_voc2007_variant_builds_its_splits_and_masks_difficult_labels(
    tmp_path):
  """configs/vallet_pixiv.py:voc2007 on a VOC-layout folder: the build
  options give VOC's val split (where the threshold is fitted), and the
  mask feature is one the builder writes."""
  import builder_fixtures_b as fb
  from jaxtag import config as config_lib
  from jaxtag.data import sources
  fb.voc2007(str(tmp_path / 'voc'))
  config = config_lib.load_config_file('configs/vallet_pixiv.py:voc2007')
  config_lib.validate(config)
  config.dataset.manual_dir = str(tmp_path / 'voc')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  for split in (config.dataset.train_split, config.dataset.eval_split,
                config.dataset.test_split):
    source, builder = sources.open_split(config.dataset, split)
    assert len(source) > 0
  assert config.dataset.label_mask_feature in builder.info.features
  assert config.data.interpolation == 'area'
