r"""Turns a training run into an inference bundle (jaxtag/serving/bundle.py).

  python -m jaxtag.serving.convert --workdir RUN --out BUNDLE [--step N] \
      [--format bundle|stablehlo|onnx]

Reads the run's config.json and its Orbax checkpoint (the latest, or
`--step`), keeps the inference variables (params, batch_stats, constants;
no optimiser state) and writes them with the tag list, preprocessing and
thresholds. Thresholds in `thresholds.json`:
- `run`: the policy the run saved (its workdir's thresholds.json, fitted
  on the validation split at the end of training), in model order;
- `by_category`: general and character values (config.eval.
  category_thresholds: 0.35 and 0.85 by default);
- `per_tag` (bundle order): `category` (those values per tag), `f1` (the
  grid threshold of best F1 on the validation split) and
  `precision_recall` (the grid threshold where the number of predicted
  positives is closest to the number of true positives, so precision
  equals recall as nearly as the grid allows). Tags without positives on
  the validation split keep their category value.

A captioner (objective task 'captioning', e.g. configs/captioner_*.py)
becomes a caption bundle: its vocabulary (`caption_vocab.json`) is copied,
its "tags" are the vocabulary's words, and it has no thresholds; ONNX
refuses it (its beam search is a loop over words).
`--format stablehlo` also writes `model.stablehlo` (jaxtag/serving/
stablehlo.py); `--format onnx` writes `model.onnx` through
jaxtag.serving.onnx_export.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from etils import epath

from jaxtag import evaluate as evaluate_lib
from jaxtag import metrics as metrics_lib
from jaxtag import thresholds as thresholds_lib
from jaxtag import train
from jaxtag.data import captions as captions_lib
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import stablehlo

FORMATS = ('bundle', 'stablehlo', 'onnx')
_GRID_BINS = 100


def precision_recall_per_tag(scores, labels, default,
                             bins: int = _GRID_BINS) -> np.ndarray:
  """[C]: per tag, the grid threshold j / bins (0 < j < bins) where the
  predicted positives are closest in number to the true ones (precision =
  tp / predicted, recall = tp / true: equal when those counts are). The
  lowest of tied thresholds wins; a tag without positives gets `default`."""
  scores = np.asarray(scores, np.float32)
  targets = np.asarray(labels) > 0.5
  pos, every = metrics_lib.bin_counts(scores, targets, np.ones_like(targets),
                                      bins)
  predicted = np.cumsum(every[:, ::-1], axis=1)[:, ::-1][:, 1:]
  true = pos.sum(axis=1, keepdims=True)
  best = (np.argmin(np.abs(predicted - true), axis=1) + 1) / bins
  return np.where(true[:, 0] > 0, best, np.asarray(default, np.float64))


def tuned_thresholds(eval_config, scores, labels, tag_metadata,
                     run_record: dict) -> dict:
  """thresholds.json's content, `per_tag` still in model order."""
  by_category = {name: float(eval_config.category_thresholds[name])
                 for name in ('general', 'character')}
  category = thresholds_lib.category_values(eval_config,
                                            tag_metadata.categories)
  per_tag = {'category': category.tolist()}
  if scores is not None:
    per_tag['f1'] = np.where(
        np.asarray(labels).sum(0) > 0,
        thresholds_lib.best_f1_per_tag(scores, labels, 0.5),
        category).tolist()
    per_tag['precision_recall'] = precision_recall_per_tag(
        scores, labels, category).tolist()
  return {'run': run_record, 'by_category': by_category, 'per_tag': per_tag}


def read_run_config(workdir: str,
                    data_dir: str | None = None) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: {workdir} is not a jaxtag '
                            'training workdir (train it with jaxtag.main).')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  if data_dir:
    config.dataset.data_dir = data_dir
  return config


def saved_steps(checkpoints: epath.Path) -> list[int]:
  if not checkpoints.exists():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())


def convert(workdir: str, out: str, *, step: int | None = None,
            fmt: str = 'bundle', data_dir: str | None = None,
            image_size: int | None = None) -> str:
  """Writes the bundle of `workdir`'s checkpoint to `out`; returns `out`."""
  if fmt not in FORMATS:
    raise ValueError(f'Unknown --format {fmt!r}; valid: {", ".join(FORMATS)}.')
  config = read_run_config(workdir, data_dir)
  run = train.Run(config, workdir)
  steps = saved_steps(epath.Path(run.checkpointer.directory))
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {run.checkpointer.directory}: '
                            'train the run first.')
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise ValueError(f'--step {step} is not in {run.checkpointer.directory}; '
                     f'saved steps: {", ".join(map(str, steps))}.')
  state = run.checkpointer.restore(step, run.abstract_state)
  run.checkpointer.close()

  # Validation scores tune the per-tag thresholds (multi-label tasks).
  scores = labels = None
  if run.objective.task == 'multi_label':
    pred = evaluate_lib.predict(run.eval_step, state,
                                run.eval_batches(config.dataset.eval_split),
                                run.mesh, workdir, 'convert')
    scores, labels = pred['scores'], pred['labels']
  captioning = run.objective.task == 'captioning'
  if captioning:
    names = list(run.vocabulary.words)
    categories = np.zeros(len(names), np.int64)
    counts = np.zeros(len(names), np.int64)
    thresholds = {'run': {'policy': 'none'}, 'by_category': {},
                  'per_tag': {}}
  elif (epath.Path(workdir) / thresholds_lib.FILENAME).exists():
    run_record = thresholds_lib.load(workdir)
  elif scores is not None:
    logging.warning('%s has no thresholds.json (training did not finish); '
                    'fitting config.eval.thresholds on the validation split.',
                    workdir)
    run_record = thresholds_lib.fit(config.eval, scores, labels, run.tags)
  else:
    run_record = {'policy': 'global', 'tags': run.tags.names,
                  'per_tag': [float(config.eval.threshold)] * run.num_classes}
  if not captioning:
    names, categories, counts = (run.tags.names, run.tags.categories,
                                 run.tags.counts)
    thresholds = tuned_thresholds(config.eval, scores, labels, run.tags,
                                  run_record)

  variables = jax.device_get({'params': state.params,
                              'batch_stats': state.batch_stats,
                              'constants': state.constants})
  # Heads built from the dataset's tag statistics (a label graph) need them
  # again to be rebuilt.
  label_stats = None
  if 'tag_metadata' in {f.name for f in dataclasses.fields(run.model.head)}:
    label_stats = {'counts': run.tags.counts,
                   'cooccurrence': run.tags.cooccurrence,
                   'num_images': int(run.tags.num_images)}
  bundle_lib.write_bundle(
      out, config=config, variables=variables, names=names,
      categories=categories, counts=counts, thresholds=thresholds,
      preprocess=bundle_lib.Preprocess.from_config(config),
      info={'step': step, 'workdir': str(workdir)}, label_stats=label_stats)
  if captioning:
    run.vocabulary.save(os.path.join(out, captions_lib.VOCAB_FILE))
  logging.info('Wrote the bundle of %s step %d to %s', workdir, step, out)
  if fmt == 'stablehlo':
    stablehlo.export_bundle(bundle_lib.load_bundle(out), out)
  elif fmt == 'onnx':
    try:  # imported here: the onnx extra is optional
      from jaxtag.serving import onnx_export  # pylint: disable=C0415
    except ImportError as e:
      raise RuntimeError(
          '--format onnx needs jaxtag.serving.onnx_export and the `onnx` '
          f'extra (pip install "jaxtag[onnx]"): {e}. The bundle itself was '
          f'written to {out}.') from e
    onnx_export.export_onnx(bundle_lib.load_bundle(out), out,
                            image_size=image_size or 448)
  return out


def _define_flags():
  """Defined only when run as a command (other commands have --out too)."""
  flags.DEFINE_string('workdir', None, 'The training run to convert.')
  flags.DEFINE_string('out', None, 'The bundle folder.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_enum('format', 'bundle', FORMATS,
                    'bundle; stablehlo or onnx also write model.stablehlo or '
                    'model.onnx into it.')
  flags.DEFINE_string('data_dir', None,
                      "TFDS data_dir, when not the run's own.")
  flags.DEFINE_integer('image_size', None, 'ONNX input size (default 448).')
  flags.mark_flags_as_required(['workdir', 'out'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}: '
                         'python -m jaxtag.serving.convert --workdir RUN '
                         '--out BUNDLE [--step N] [--format FORMAT]')
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  logging.set_verbosity(logging.WARNING)
  try:
    convert(FLAGS.workdir, FLAGS.out, step=FLAGS.step, fmt=FLAGS.format,
            data_dir=FLAGS.data_dir, image_size=FLAGS.image_size)
  except (FileNotFoundError, ValueError, RuntimeError) as e:
    sys.exit(f'Error: {e}')
  print(os.path.abspath(FLAGS.out))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
