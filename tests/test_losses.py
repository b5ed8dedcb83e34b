"""Losses against float64 numpy references."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag import losses


def _bce_ref(logits, labels):
  x = logits.astype(np.float64)
  return np.logaddexp(0, x) - x * labels   # log(1 + e^x) - x*y


def test_sigmoid_bce_sums_labels_and_averages_images():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((5, 7)) * 4
  labels = (rng.random((5, 7)) < 0.4).astype(np.float32)
  got = losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels)
  assert float(got) == pytest.approx(_bce_ref(logits, labels).sum(1).mean(),
                                     rel=1e-5)


def test_sigmoid_bce_is_finite_for_huge_logits():
  logits = np.array([[100.0, -100.0, 100.0, -100.0]])
  labels = np.array([[0.0, 1.0, 1.0, 0.0]])
  got = float(losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels))
  assert got == pytest.approx(200.0, rel=1e-5)


def test_weights_and_masks():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((6, 4))
  labels = (rng.random((6, 4)) < 0.5).astype(np.float32)
  ref = _bce_ref(logits, labels)
  w = np.array([1.0, 2.0, 0.5, 0.0])
  got = losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels,
                           label_weights=w)
  assert float(got) == pytest.approx((ref * w).sum(1).mean(), rel=1e-5)
  m = (rng.random((6, 4)) < 0.7).astype(np.float32)
  got = losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels,
                           label_mask=m)
  assert float(got) == pytest.approx((ref * m).sum(1).mean(), rel=1e-5)
  rows = np.array([1, 0, 1, 1, 0, 1], np.float32)
  got = losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels,
                           example_mask=rows)
  assert float(got) == pytest.approx(ref[rows > 0].sum(1).mean(), rel=1e-5)
  zero = losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels,
                            example_mask=np.zeros(6))
  assert float(zero) == 0.0


def test_bf16_logits_are_computed_in_float32():
  logits = np.linspace(-5, 5, 12).reshape(3, 4)
  labels = np.eye(3, 4)
  got = losses.sigmoid_bce(logits=jnp.asarray(logits, jnp.bfloat16),
                           labels=labels)
  ref = _bce_ref(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64),
                 labels).sum(1).mean()
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(ref, rel=1e-5)


def test_softmax_ce_vs_numpy():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((8, 5)) * 3
  labels = rng.integers(0, 5, 8)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  got = losses.softmax_ce(logits=jnp.asarray(logits), labels=labels)
  assert float(got) == pytest.approx(-logp[np.arange(8), labels].mean(),
                                     rel=1e-5)


def test_softmax_ce_label_smoothing_vs_numpy():
  rng = np.random.default_rng(5)
  logits = rng.standard_normal((6, 4)) * 2
  labels = rng.integers(0, 4, 6)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  target = np.full((6, 4), 0.1 / 4)
  target[np.arange(6), labels] += 0.9
  got = losses.softmax_ce(logits=jnp.asarray(logits), labels=labels,
                          label_smoothing=0.1)
  assert float(got) == pytest.approx(-(target * logp).sum(1).mean(), rel=1e-5)


def test_multilabel_softmax_vs_numpy():
  rng = np.random.default_rng(6)
  logits = rng.standard_normal((6, 5)) * 3
  labels = (rng.random((6, 5)) < 0.4).astype(np.float32)
  labels[0] = [0, 0, 1, 0, 0]
  labels[1] = [1, 0, 0, 1, 1]
  labels[2] = 0
  e = np.exp(logits)
  # -log of the softmax mass on the label set; 0 for a row without labels.
  with np.errstate(divide='ignore'):
    ref = np.where(labels.any(1),
                   -np.log((e * labels).sum(1) / e.sum(1)), 0.0)
  got = losses.multilabel_softmax(logits=jnp.asarray(logits), labels=labels)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  # One positive: the ordinary softmax cross-entropy.
  ce = losses.softmax_ce(logits=jnp.asarray(logits[:1]), labels=np.array([2]))
  assert float(got[0]) == pytest.approx(float(ce), rel=1e-6)


def test_sequence_ce_averages_valid_steps_only():
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((2, 3, 5))
  targets = np.array([[1, 4, 4], [2, 3, 4]])
  mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  picked = [logp[0, 0, 1], logp[0, 1, 4], logp[1, 0, 2], logp[1, 1, 3],
            logp[1, 2, 4]]
  got = losses.sequence_ce(logits=jnp.asarray(logits), targets=targets,
                           target_mask=mask)
  assert float(got) == pytest.approx(-np.mean(picked), rel=1e-6)
  # A padded example counts for nothing.
  only_first = losses.sequence_ce(logits=jnp.asarray(logits), targets=targets,
                                  target_mask=mask,
                                  example_mask=np.array([1.0, 0.0]))
  assert float(only_first) == pytest.approx(-np.mean(picked[:2]), rel=1e-6)


def test_sigmoid_bce_mean_over_tags_divides_by_the_tag_count():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((5, 7)) * 3
  labels = (rng.random((5, 7)) < 0.4).astype(np.float32)
  rows = np.array([1, 1, 0, 1, 1], np.float32)
  got = losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels,
                           example_mask=rows, reduction='mean_over_tags')
  ref = _bce_ref(logits, labels)[rows > 0].mean()   # over images and tags
  assert float(got) == pytest.approx(ref, rel=1e-5)
  with pytest.raises(ValueError, match='mean_over_tags'):
    losses.sigmoid_bce(logits=jnp.asarray(logits), labels=labels,
                       reduction='mean')


def test_sigmoid_bce_objective_takes_the_reduction_kwarg():
  from jaxtag import objectives
  import ml_collections
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((4, 6))
  labels = (rng.random((4, 6)) < 0.5).astype(np.float32)
  loss_config = ml_collections.ConfigDict(
      {'name': 'sigmoid_bce', 'kwargs': {'reduction': 'mean_over_tags'}})
  objective = objectives.get_objective(loss_config, 'multi_hot')
  got, _ = objective.loss(jnp.asarray(logits), {'labels': labels})
  assert float(got) == pytest.approx(_bce_ref(logits, labels).mean(),
                                     rel=1e-5)


def _loss_config(**kw):
  import ml_collections
  return ml_collections.ConfigDict({'name': 'sigmoid_bce', 'kwargs': {},
                                    'tag_weights': None, **kw})


def test_tag_weights_file_weighs_each_tag(tmp_path):
  from jaxtag import objectives
  path = tmp_path / 'weights.csv'
  path.write_text('tag,weight\nb,2.5\nd,0\n')
  names = ['a', 'b', 'c', 'd']
  np.testing.assert_array_equal(objectives.read_tag_weights(str(path), names),
                                [1.0, 2.5, 1.0, 0.0])
  objective = objectives.with_tag_weights(
      objectives.get_objective(_loss_config(), 'multi_hot'),
      _loss_config(tag_weights=str(path)), names)
  rng = np.random.default_rng(4)
  logits = rng.standard_normal((3, 4))
  labels = (rng.random((3, 4)) < 0.5).astype(np.float32)
  got, _ = objective.loss(jnp.asarray(logits), {'labels': labels})
  want = (_bce_ref(logits, labels) * [1.0, 2.5, 1.0, 0.0]).sum(1).mean()
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_tag_weights_errors_name_the_file_and_the_tags(tmp_path):
  from jaxtag import objectives
  path = tmp_path / 'my_weights.csv'
  path.write_text('a,1\nzebra,2\nyak,3\n')
  with pytest.raises(ValueError, match=r"my_weights\.csv.*2 tag.*'zebra', "
                                       r"'yak'"):
    objectives.read_tag_weights(str(path), ['a', 'b'])
  path.write_text('a,heavy\n')
  with pytest.raises(ValueError, match=r"my_weights\.csv, line 1.*'heavy'"):
    objectives.read_tag_weights(str(path), ['a'])
  path.write_text('a,-1\n')
  with pytest.raises(ValueError, match=r'my_weights\.csv, line 1'):
    objectives.read_tag_weights(str(path), ['a'])
  with pytest.raises(ValueError, match='missing.csv'):
    objectives.read_tag_weights(str(tmp_path / 'missing.csv'), ['a'])
