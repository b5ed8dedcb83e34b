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


def test_unknown_loss_lists_known():
  with pytest.raises(ValueError, match='sigmoid_bce, softmax_ce'):
    losses.get_loss('focal')


def test_config_kwargs_are_bound_and_checked():
  logits = jnp.asarray([[2.0, -1.0]])
  labels = np.array([[1.0, 0.0]])
  weighted = losses.get_loss('sigmoid_bce', label_weights=[0.0, 1.0])
  assert float(weighted(logits=logits, labels=labels)) == pytest.approx(
      np.logaddexp(0, -1.0), rel=1e-5)
  with pytest.raises(ValueError, match=r"config.loss.kwargs.*label_mask"):
    losses.get_loss('sigmoid_bce', label_wieghts=[1.0, 1.0])
