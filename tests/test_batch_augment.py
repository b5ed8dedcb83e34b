"""Per-sample MixUp and cutout (jaxtag/data/batch_augment.py) against
numpy worked by hand."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtag.data import batch_augment


def _batch(b=4, size=6, tags=3):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
  labels = (rng.random((b, tags)) < 0.5).astype(np.float32)
  return images, labels


def test_mix_weights_each_image_with_its_mirrored_partner():
  images, labels = _batch()
  lam = np.array([1.0, 0.25, 0.6, 0.0], np.float32)
  mixed, mixed_labels = batch_augment.mix(jnp.asarray(images),
                                          jnp.asarray(labels),
                                          jnp.asarray(lam))
  # Image 1's partner is image 2 (of 0..3 mirrored: 3, 2, 1, 0).
  np.testing.assert_allclose(mixed[1], 0.25 * images[1] + 0.75 * images[2],
                             rtol=1e-6)
  np.testing.assert_allclose(mixed_labels[1],
                             0.25 * labels[1] + 0.75 * labels[2])
  np.testing.assert_allclose(mixed[0], images[0])        # lam 1: unchanged
  np.testing.assert_allclose(mixed[3], images[0])        # lam 0: the partner
  np.testing.assert_allclose(mixed_labels[2],
                             0.6 * labels[2] + 0.4 * labels[1], rtol=1e-6)


def test_cutout_square_clipped_at_the_border_by_hand():
  keep = np.asarray(batch_augment.cutout_keep(
      5, 6, jnp.asarray([[2, 3], [0, 5], [2, 2]]), 3,
      jnp.asarray([True, True, False])))
  want = np.ones((3, 5, 6))
  want[0, 1:4, 2:5] = 0          # centre (2, 3), side 3: rows 1-3, cols 2-4
  want[1, 0:2, 4:6] = 0          # centre (0, 5): rows -1-1, cols 4-6, clipped
  np.testing.assert_array_equal(keep, want)   # the third is not applied


def test_probability_zero_and_one():
  images, labels = _batch(b=64)
  batch = {'labels': jnp.asarray(labels)}
  off = batch_augment.BatchAugment(mixup_prob=0.0, cutout_prob=0.0)
  out, new = jax.jit(off)(jnp.asarray(images), batch, jax.random.key(0))
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(new['labels'], labels)
  cut = batch_augment.BatchAugment(cutout_prob=1.0, cutout_size=0.5)
  out, _ = jax.jit(cut)(jnp.asarray(images), batch, jax.random.key(1))
  zeros = (np.asarray(out) == 0).all(-1).sum((1, 2))
  # A 3 x 3 square, clipped: between 4 and 9 pixels of every image.
  assert ((zeros >= 4) & (zeros <= 9)).all()
  mixup = batch_augment.BatchAugment(mixup_prob=1.0, mixup_alpha=0.2)
  out, new = jax.jit(mixup)(jnp.asarray(images), batch, jax.random.key(2))
  out, mixed = np.asarray(out), np.asarray(new['labels'])
  # Recover each image's lam from its labels where they differ from the
  # partner's, then check the pixels with numpy.
  partner = labels[::-1]
  for i in range(64):
    differ = np.flatnonzero(labels[i] != partner[i])
    if differ.size == 0:
      continue
    k = differ[0]
    lam = (mixed[i, k] - partner[i, k]) / (labels[i, k]
                                                   - partner[i, k])
    assert 0 <= lam <= 1
    np.testing.assert_allclose(out[i], lam * images[i]
                               + (1 - lam) * images[::-1][i], atol=1e-5)


def test_from_config_and_bad_values():
  data = ml_collections.ConfigDict({'mixup_prob': 0.0, 'cutout_prob': 0.0})
  assert batch_augment.from_config(data, 'multi_hot') is None
  data.mixup_prob = 0.5
  with pytest.raises(ValueError, match='label_encoding'):
    batch_augment.from_config(data, 'class_id')
  with pytest.raises(ValueError, match='config.data.cutout_prob'):
    batch_augment.BatchAugment(cutout_prob=1.5)
