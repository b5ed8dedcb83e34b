"""synthetic_anime/cooccur: tags that the other tags imply.

The `cooccur` and `cooccur_tiny` configs draw the same figures with the
same renderer as `default`, but the six tags that are a few pixels wide
(fang, mole, blush, smile, open_mouth, hairband: render.py) are no longer
independent: each figure has one with the probability of this table, given
the figure's other (visible, larger) tags. Two are implied by a combination
(an AND of two tags), not by either alone. Boys never get a girl-only tag.

| hard tag   | implied by (same figure)         | P(tag given it) | P(tag otherwise) |
|------------|----------------------------------|-----------------|------------------|
| fang       | cat_ears                         | 0.90            | 0.02             |
| blush      | maid                             | 0.90            | 0.03             |
| smile      | headphones                       | 0.90            | 0.05             |
| mole       | glasses AND long_hair            | 0.90            | 0.02             |
| hairband   | school_uniform AND long_hair     | 0.90            | 0.02             |
| open_mouth | halo AND dress                   | 0.90            | 0.03             |

A long tail: archetypes of generic girls are drawn with the weights of
`GIRL_ARCHETYPES` (a few common, most rare), and named characters with
Zipf weights, 1 / rank, so the last ones appear a few times per thousand
figures.

The build report (`build_report.json`, beside dataset_info.json) gives per
tag the test AP achievable from the other true labels alone: an L2
logistic regression (`fit_logistic`, numpy, C = 1 as scikit-learn's
default) from the other tags' clean labels (`tags_clean`) to the tag's
stored label (`tags`), fitted on the built train split and scored on the
test split. It is the ceiling that label structure offers a graph head.
"""
from __future__ import annotations

import numpy as np

from data_builders.synthetic_anime import vocab

# hard tag -> (tags that must all be present, P if so, P otherwise)
IMPLIED = {
    'fang': (('cat_ears',), 0.90, 0.02),
    'blush': (('maid',), 0.90, 0.03),
    'smile': (('headphones',), 0.90, 0.05),
    'mole': (('glasses', 'long_hair'), 0.90, 0.02),
    'hairband': (('school_uniform', 'long_hair'), 0.90, 0.02),
    'open_mouth': (('halo', 'dress'), 0.90, 0.03),
}
HARD_TAGS = tuple(IMPLIED)
# Long-tailed archetype weights (the default's: .30 .14 .12 .16 .08 .08 .06
# .06).
GIRL_ARCHETYPES = {name: (weight, vocab.GIRL_ARCHETYPES[name][1])
                   for name, weight in (
                       ('plain', 0.40), ('student', 0.22), ('maid', 0.14),
                       ('catgirl', 0.10), ('gamer', 0.06), ('beach', 0.04),
                       ('shrine', 0.025), ('angel', 0.015))}


def character_weights() -> np.ndarray:
  """Zipf weights over vocab.CHARACTERS, in their order: 1 / rank."""
  w = 1.0 / np.arange(1, len(vocab.CHARACTERS) + 1)
  return w / w.sum()


def imply(rng: np.random.Generator, tags: set[str], gender: str) -> set[str]:
  """The figure's tags with the hard tags redrawn by the table."""
  out = set(tags) - set(HARD_TAGS)
  for tag, (given, p_given, p_else) in IMPLIED.items():
    p = p_given if all(g in out for g in given) else p_else
    if rng.random() < p and not (gender == 'boy' and tag in vocab.GIRL_ONLY):
      out.add(tag)
  return out


# ------------------------------------------------- label-structure ceiling ---


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0,
                 iterations: int = 50, tol: float = 1e-8
                 ) -> tuple[np.ndarray, float]:
  """L2-regularised logistic regression by Newton's method (IRLS).

  Minimises 0.5 |w|^2 + c * sum_i log(1 + exp(-s_i (x_i . w + b))), s_i =
  2 y_i - 1, the bias b unpenalised: scikit-learn's
  LogisticRegression(C=c) objective. x [N, F], y [N] in {0, 1}. Returns
  (w [F], b)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n, f = x.shape
  xb = np.concatenate([x, np.ones((n, 1))], 1)
  theta = np.zeros(f + 1)
  penalty = np.ones(f + 1)
  penalty[-1] = 0.0
  for _ in range(iterations):
    z = xb @ theta
    prob = 1.0 / (1.0 + np.exp(-z))
    grad = c * xb.T @ (prob - y) + penalty * theta
    weight = c * prob * (1 - prob)
    hess = (xb * weight[:, None]).T @ xb + np.diag(penalty)
    # A tiny ridge on the bias keeps the solve defined for a constant y.
    step = np.linalg.solve(hess + 1e-10 * np.eye(f + 1), grad)
    theta -= step
    if np.max(np.abs(step)) < tol:
      break
  return theta[:-1], float(theta[-1])


def label_ceiling(train_features: np.ndarray, train_targets: np.ndarray,
                  test_features: np.ndarray, test_targets: np.ndarray
                  ) -> np.ndarray:
  """Per tag j, the test AP of a logistic regression from the other tags'
  features (column j left out) to tag j's target. [N, C] multi-hot in;
  [C] out, NaN where the train or test split has no positive of j."""
  from jaxtag import metrics
  num_tags = train_features.shape[1]
  scores = np.zeros(test_targets.shape, np.float64)
  usable = np.zeros(num_tags, bool)
  for j in range(num_tags):
    y = train_targets[:, j]
    if y.min() == y.max():
      continue
    others = np.arange(num_tags) != j
    w, b = fit_logistic(train_features[:, others], y)
    scores[:, j] = test_features[:, others] @ w + b
    usable[j] = True
  ap = metrics.average_precision(scores, test_targets)
  return np.where(usable, ap, np.nan)
