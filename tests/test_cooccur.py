"""synthetic_anime/cooccur: the implication table holds in the sampled
scenes, default's scenes are untouched, the numpy logistic regression
matches scikit-learn's, and the build report's label ceiling."""
import json
import os

import numpy as np
import pytest
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from data_builders.synthetic_anime import annotate
from data_builders.synthetic_anime import cooccur
from data_builders.synthetic_anime import vocab
from jaxtag.data import build


def _figures(structure, n=1500):
  return [f for i in range(n)
          for f in annotate.sample_scene(0, 'train', i, 0.0,
                                         structure).figures]


def test_hard_tags_follow_the_table():
  figures = _figures('cooccur')
  for tag, (given, p_given, p_else) in cooccur.IMPLIED.items():
    girls = [f for f in figures if f.gender == 'girl']
    has = np.array([all(g in f.tags - {tag} for g in given) for f in girls])
    shown = np.array([tag in f.tags for f in girls])
    assert has.sum() >= 10, tag   # halo AND dress is in the long tail
    for mask, p in ((has, p_given), (~has, p_else)):
      # Four binomial standard errors.
      tolerance = 4 * np.sqrt(p * (1 - p) / mask.sum()) + 0.01
      assert shown[mask].mean() == pytest.approx(p, abs=tolerance), tag
  assert not any('hairband' in f.tags for f in figures if f.gender == 'boy')


def test_characters_have_a_long_tail_and_default_does_not():
  def counts(structure):
    c = np.zeros(len(vocab.CHARACTERS))
    names = list(vocab.CHARACTERS)
    for f in _figures(structure):
      if f.character:
        c[names.index(f.character)] += 1
    return c
  tail, flat = counts('cooccur'), counts('default')
  assert tail[0] > 8 * tail[-1]
  assert flat.max() < 2 * flat.min()


def test_default_scenes_ignore_the_new_option():
  for i in range(50):
    a = annotate.sample_scene(0, 'test', i, 0.05)
    b = annotate.sample_scene(0, 'test', i, 0.05, 'default')
    assert (a.tags, a.caption) == (b.tags, b.caption)
  with pytest.raises(ValueError, match='cooccur'):
    annotate.sample_scene(0, 'test', 0, 0.05, 'dependent')


def test_logistic_regression_matches_scikit_learn():
  rng = np.random.default_rng(0)
  x = (rng.random((400, 6)) < 0.3).astype(float)
  logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] * x[:, 2] + 0.5 * x[:, 3] - 1.0
  y = (rng.random(400) < 1 / (1 + np.exp(-logit))).astype(float)
  w, b = cooccur.fit_logistic(x, y, c=1.0)
  ref = linear_model.LogisticRegression(C=1.0, tol=1e-10,
                                        max_iter=10_000).fit(x, y)
  np.testing.assert_allclose(w, ref.coef_[0], atol=1e-4)
  assert b == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_label_ceiling_is_the_ap_of_the_other_labels():
  rng = np.random.default_rng(1)
  x = (rng.random((600, 4)) < 0.4).astype(np.int64)
  x[:, 3] = x[:, 0] & x[:, 1]                # implied by an AND
  x[rng.random(600) < 0.05, 3] ^= 1          # with some noise
  train, test = x[:400], x[400:]
  got = cooccur.label_ceiling(train, train, test, test)
  for j in range(4):
    others = [k for k in range(4) if k != j]
    model = linear_model.LogisticRegression(C=1.0, tol=1e-10,
                                            max_iter=10_000)
    model.fit(train[:, others], train[:, j])
    want = sk_metrics.average_precision_score(
        test[:, j], model.decision_function(test[:, others]))
    assert got[j] == pytest.approx(want, abs=1e-3), j
  assert got[3] > got[2] + 0.2   # structure against independence


@pytest.mark.slow  # builds cooccur_tiny
def test_cooccur_tiny_build_report(tmp_path):
  data_dir = str(tmp_path)
  builder = build.get_builder('synthetic_anime/cooccur_tiny', data_dir)
  build.ensure_built(builder)
  report = json.loads(open(os.path.join(builder.data_dir,
                                        'build_report.json')).read())
  ceiling = report['label_ceiling_ap']
  assert set(ceiling) == set(vocab.TAGS)
  assert report['hard_tags'] == list(cooccur.HARD_TAGS)
  # fang follows cat_ears: the other labels predict it well.
  assert ceiling['fang'] > 0.6
