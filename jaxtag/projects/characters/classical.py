r"""Classical character recognition: features x classifiers, as in Guan & Ge.

  python -m jaxtag.projects.characters.classical --dataset synthetic_anime/faces \
      --data_dir DIR --features handcrafted,cnn:RUN_DIR \
      --classifiers lr,lda,knn,cart,rf,nb,svm --out DIR [--grid small|paper]

The dataset is built into --data_dir on first use (a synthetic one; one
made from raw files is built first with `python -m jaxtag.data.build`, as
the error says).

For each feature set and classifier: a grid search with 5-fold stratified CV
on the train split only (min-max scaling inside the pipeline, so each fold's
scaler sees only its own training rows), a refit of the best setting on the
whole train split, and one score on the test split. Writes table.md (the
paper's layout: train accuracy, test accuracy, fit time per classifier and
feature set), results.json (best parameters, CV score, per-class accuracy,
most-confused pairs), per_class.csv and confused_pairs.csv.

Feature sets: 'handcrafted' (HSV histogram), 'handcrafted_bgr' (the authors'
code), 'cnn:RUN_DIR' (pooled backbone features of a jaxtag run),
'cnnscores:RUN_DIR' (its output scores). Features are cached in
OUT/features_*.npz.

Grids ('--grid paper' is the paper's search space; 'small', the default, is
sized to finish in minutes on 2 CPU cores with ~3k training faces):
  lr   lbfgs, penalty l2/none, C 0.1-10      (small: C 0.1, 1, 10)
  lda  svd solver, no parameters
  knn  k 2-30                                (small: 2, 5, 10, 20, 30)
  cart gini/entropy
  rf   gini/entropy x trees                  (small: 50, 150)
  nb   Gaussian
  svm  linear/poly/rbf/sigmoid, degree 1-20, C 1-30
       (small: linear C 1,10,30; poly degree 2,3,20 x C 1,30; rbf C 1,10,30;
        sigmoid C 1,30)
"""
from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
from absl import app
from absl import flags

from jaxtag.projects.characters import features as features_lib
from jaxtag.data import build  # defines --data_dir

CLASSIFIERS = ('lr', 'lda', 'knn', 'cart', 'rf', 'nb', 'svm')
NAMES = {'lr': 'Logistic Regression', 'lda': 'Linear Discriminant Analysis',
         'knn': 'K-Nearest Neighbours', 'cart': 'Decision Tree (CART)',
         'rf': 'Random Forest', 'nb': 'Gaussian Naive Bayes',
         'svm': 'Support Vector Machine'}
GRIDS = ('small', 'paper')
NUM_FOLDS = 5


def classifier(name: str, grid: str = 'small', seed: int = 0):
  """(estimator, parameter grid) of one classifier; keys for a Pipeline step
  named 'clf'."""
  # pylint: disable=import-outside-toplevel
  from sklearn import discriminant_analysis, ensemble, linear_model
  from sklearn import naive_bayes, neighbors, svm, tree
  if grid not in GRIDS:
    raise ValueError(f'Unknown --grid {grid!r}; valid: {", ".join(GRIDS)}.')
  paper = grid == 'paper'
  if name == 'lr':
    return (linear_model.LogisticRegression(solver='lbfgs', max_iter=2000),
            {'C': list(np.linspace(0.1, 10, 10)) if paper else [0.1, 1, 10],
             'penalty': ['l2', None]})
  if name == 'lda':
    return discriminant_analysis.LinearDiscriminantAnalysis(), {}
  if name == 'knn':
    return (neighbors.KNeighborsClassifier(),
            {'n_neighbors': list(range(2, 31)) if paper
             else [2, 5, 10, 20, 30]})
  if name == 'cart':
    return (tree.DecisionTreeClassifier(random_state=seed),
            {'criterion': ['gini', 'entropy']})
  if name == 'rf':
    return (ensemble.RandomForestClassifier(random_state=seed),
            {'criterion': ['gini', 'entropy'],
             'n_estimators': [10, 50, 100, 200, 500] if paper else [50, 150]})
  if name == 'nb':
    return naive_bayes.GaussianNB(), {}
  if name == 'svm':
    if paper:
      return svm.SVC(random_state=seed), [
          {'kernel': ['linear', 'rbf', 'sigmoid'], 'C': list(range(1, 31))},
          {'kernel': ['poly'], 'degree': list(range(1, 21)),
           'C': list(range(1, 31))}]
    return svm.SVC(random_state=seed), [
        {'kernel': ['linear'], 'C': [1, 10, 30]},
        {'kernel': ['poly'], 'degree': [2, 3, 20], 'C': [1, 30]},
        {'kernel': ['rbf'], 'C': [1, 10, 30]},
        {'kernel': ['sigmoid'], 'C': [1, 30]}]
  raise ValueError(f'Unknown classifier {name!r}; valid: '
                   f'{", ".join(CLASSIFIERS)}.')


def search(name: str, x_train: np.ndarray, y_train: np.ndarray, *,
           grid: str = 'small', n_jobs: int = 1, seed: int = 0):
  """Grid search with stratified 5-fold CV on the train rows only; the best
  setting refitted on all of them. Returns the fitted GridSearchCV."""
  # pylint: disable=import-outside-toplevel
  from sklearn.model_selection import GridSearchCV, StratifiedKFold
  from sklearn.pipeline import Pipeline
  from sklearn.preprocessing import MinMaxScaler
  estimator, params = classifier(name, grid, seed)
  pipe = Pipeline([('scale', MinMaxScaler()), ('clf', estimator)])
  prefix = lambda g: {f'clf__{k}': v for k, v in g.items()}  # noqa: E731
  grid_params = ([prefix(g) for g in params] if isinstance(params, list)
                 else prefix(params))
  folds = min(NUM_FOLDS, int(np.bincount(y_train).max()))
  cv = StratifiedKFold(n_splits=max(folds, 2), shuffle=True,
                       random_state=seed)
  return GridSearchCV(pipe, grid_params, cv=cv, n_jobs=n_jobs,
                      refit=True).fit(x_train, y_train)


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
  """Accuracy per true class; NaN for classes absent from y_true."""
  out = np.full(num_classes, np.nan)
  for c in range(num_classes):
    rows = y_true == c
    if rows.any():
      out[c] = float(np.mean(y_pred[rows] == c))
  return out


def confused_pairs(y_true, y_pred, names, top: int = 10) -> list[dict]:
  """The most frequent (true, predicted) mistakes, most first."""
  pairs: dict[tuple[int, int], int] = {}
  for t, p in zip(y_true, y_pred):
    if t != p:
      pairs[(int(t), int(p))] = pairs.get((int(t), int(p)), 0) + 1
  ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
  return [{'true': names[t], 'predicted': names[p], 'count': n}
          for (t, p), n in ranked]


def load_split(dataset: str, data_dir: str | None, split: str):
  """(images [N] of uint8 arrays, labels [N], character names).

  Builds the dataset on first use, as the trainer does; a dataset made
  from raw files (a manual_dir) is built with jaxtag.data.build first, and
  the error says so."""
  from jaxtag.data import tag_metadata  # pylint: disable=import-outside-toplevel
  build.ensure_built(build.get_builder(dataset, data_dir))
  # Created again: a builder reads the splits when it is created.
  builder = build.get_builder(dataset, data_dir)
  if split not in builder.info.splits:
    raise ValueError(f'{dataset} has no split {split!r} (it has '
                     f'{", ".join(sorted(builder.info.splits))}).')
  names = tag_metadata.load_tag_metadata(builder.data_dir).names
  source = builder.as_data_source(split)
  images, labels = [], []
  for i in range(len(source)):
    ex = source[i]
    tags = np.unique(np.asarray(ex['tags']))
    if tags.size != 1:
      raise ValueError(f'{dataset}[{split}][{i}] has {tags.size} tags; the '
                       'classical recognisers need exactly one (a faces '
                       'dataset such as synthetic_anime/faces).')
    images.append(np.asarray(ex['image']))
    labels.append(int(tags[0]))
  return images, np.asarray(labels, np.int64), names


def compute_features(spec: str, images, *, workers: int = 1):
  """[N, D] features of one feature-set spec, and images per second."""
  start = time.perf_counter()
  kind, _, path = spec.partition(':')
  if kind in ('handcrafted', 'handcrafted_bgr'):
    x = features_lib.handcrafted_batch(
        images, 'bgr' if kind.endswith('bgr') else 'hsv', workers=workers)
  elif kind in ('cnn', 'cnnscores'):
    if not path:
      raise ValueError(f'--features {spec}: give the run as {kind}:RUN_DIR.')
    x = features_lib.CnnFeatures(
        path, 'pooled' if kind == 'cnn' else 'scores')(images)
  else:
    raise ValueError(f'Unknown feature set {spec!r}; valid: handcrafted, '
                     'handcrafted_bgr, cnn:RUN_DIR, cnnscores:RUN_DIR.')
  return x, len(images) / max(time.perf_counter() - start, 1e-9)


def _label(spec: str) -> str:
  kind, _, path = spec.partition(':')
  return f'{kind}:{os.path.basename(os.path.normpath(path))}' if path else kind


def _cached_features(spec, split, images, out, workers):
  name = _label(spec).replace(':', '_').replace('/', '_')
  path = os.path.join(out, f'features_{name}_{split}.npz')
  if os.path.exists(path):
    with np.load(path) as f:
      if len(f['x']) == len(images):
        return f['x'], float(f['img_per_s'])
  x, rate = compute_features(spec, images, workers=workers)
  np.savez(path, x=x, img_per_s=rate)
  return x, rate


def run(dataset: str, data_dir: str, feature_specs, classifier_names, out: str,
        *, grid: str = 'small', n_jobs: int = 1, seed: int = 0) -> dict:
  """The whole comparison; writes the report files into `out`."""
  for c in classifier_names:
    if c not in CLASSIFIERS:
      raise ValueError(f'Unknown classifier {c!r} in --classifiers; valid: '
                       f'{", ".join(CLASSIFIERS)}.')
  os.makedirs(out, exist_ok=True)
  train_images, y_train, names = load_split(dataset, data_dir, 'train')
  test_images, y_test, _ = load_split(dataset, data_dir, 'test')
  results = {'dataset': dataset, 'grid': grid, 'num_train': len(y_train),
             'num_test': len(y_test), 'classes': names, 'features': {},
             'runs': []}
  for spec in feature_specs:
    x_train, rate = _cached_features(spec, 'train', train_images, out, n_jobs)
    x_test, _ = _cached_features(spec, 'test', test_images, out, n_jobs)
    results['features'][_label(spec)] = {
        'dim': int(x_train.shape[1]), 'img_per_s': rate,
        'workers': n_jobs}
    for c in classifier_names:
      start = time.perf_counter()
      fitted = search(c, x_train, y_train, grid=grid, n_jobs=n_jobs,
                      seed=seed)
      fit_s = time.perf_counter() - start
      pred = fitted.predict(x_test)
      acc = per_class_accuracy(y_test, pred, len(names))
      results['runs'].append({
          'features': _label(spec), 'classifier': c,
          'best_params': {k.removeprefix('clf__'): _plain(v)
                          for k, v in fitted.best_params_.items()},
          'cv_accuracy': float(fitted.best_score_),
          'train_accuracy': float(np.mean(fitted.predict(x_train)
                                          == y_train)),
          'test_accuracy': float(np.mean(pred == y_test)),
          'fit_seconds': fit_s,
          'per_class_accuracy': {n: (None if np.isnan(a) else float(a))
                                 for n, a in zip(names, acc)},
          'confused_pairs': confused_pairs(y_test, pred, names)})
  _write(out, results)
  return results


def _plain(v):
  return v.item() if isinstance(v, np.generic) else v


def _write(out: str, results: dict) -> None:
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  lines = [f'# {results["dataset"]}: {results["num_train"]} train / '
           f'{results["num_test"]} test faces, {len(results["classes"])} '
           f'characters, grid {results["grid"]}', '',
           '| Classifier | Features | Train acc. | CV acc. | Test acc. | '
           'Fit time (s) | Best parameters |',
           '|---|---|---|---|---|---|---|']
  for r in results['runs']:
    params = ', '.join(f'{k}={v}' for k, v in r['best_params'].items())
    lines.append(f'| {NAMES[r["classifier"]]} | {r["features"]} | '
                 f'{r["train_accuracy"]:.3f} | {r["cv_accuracy"]:.3f} | '
                 f'{r["test_accuracy"]:.3f} | {r["fit_seconds"]:.1f} | '
                 f'{params or "-"} |')
  lines += ['', '| Features | Dimension | Extraction img/s (workers) |',
            '|---|---|---|']
  for name, f in results['features'].items():
    lines.append(f'| {name} | {f["dim"]} | {f["img_per_s"]:.1f} '
                 f'({f["workers"]}) |')
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(out, 'per_class.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['features', 'classifier', 'character', 'test_accuracy'])
    for r in results['runs']:
      for n, a in r['per_class_accuracy'].items():
        w.writerow([r['features'], r['classifier'], n,
                    '' if a is None else f'{a:.4f}'])
  with open(os.path.join(out, 'confused_pairs.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['features', 'classifier', 'true', 'predicted', 'count'])
    for r in results['runs']:
      for p in r['confused_pairs']:
        w.writerow([r['features'], r['classifier'], p['true'],
                    p['predicted'], p['count']])


def _define_flags():
  """The command's flags (defined only when run as a command)."""
  # pylint: disable=global-statement
  global _DATASET, _DATA_DIR, _FEATURES, _CLASSIFIERS, _OUT, _GRID, _N_JOBS
  _DATASET = flags.DEFINE_string('dataset', 'synthetic_anime/faces',
                                 'A faces dataset (one character per example).')
  # jaxtag.data.build's --data_dir, or this command's own when that one
  # is no longer defined at import.
  if 'data_dir' not in flags.FLAGS:
    flags.DEFINE_string('data_dir', None, 'TFDS data_dir.')
  _DATA_DIR = flags.FLAGS['data_dir']
  _FEATURES = flags.DEFINE_list('features', ['handcrafted'],
                                'handcrafted, handcrafted_bgr, cnn:RUN_DIR, '
                                'cnnscores:RUN_DIR.')
  _CLASSIFIERS = flags.DEFINE_list('classifiers', list(CLASSIFIERS),
                                   ', '.join(CLASSIFIERS))
  _OUT = flags.DEFINE_string('out', None, 'Output folder.')
  _GRID = flags.DEFINE_enum('grid', 'small', GRIDS, 'Search-space size.')
  _N_JOBS = flags.DEFINE_integer('n_jobs', 1, 'Processes for CV and features.')


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError('--out is required.')
  run(_DATASET.value, _DATA_DIR.value, _FEATURES.value, _CLASSIFIERS.value,
      _OUT.value, grid=_GRID.value, n_jobs=_N_JOBS.value)
  print(open(os.path.join(_OUT.value, 'table.md')).read())


if __name__ == '__main__':
  _define_flags()
  app.run(main)
