r"""Turns a training run into an inference bundle (jaxtag/serving/bundle.py).

  python -m jaxtag.serving.convert --workdir RUN --out BUNDLE [--step N] \
      [--format bundle|stablehlo|onnx]

Reads the run's config.json and, through the eval-only predictor
(jaxtag/predictor.py: no train split, no optimiser), the inference
variables of its Orbax checkpoint (the latest, or `--step`: params,
batch_stats, constants; the optimiser state is never read), and writes
them with the tag list, preprocessing and thresholds. What the labels and
thresholds are is the run's task's to say (jaxtag/tasks/); for a tagger,
thresholds in `thresholds.json` are:
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
from absl import app
from absl import flags
from absl import logging
from etils import epath

from jaxtag import config as config_lib
from jaxtag import predictor as predictor_lib
from jaxtag import thresholds as thresholds_lib
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import stablehlo

FORMATS = ('bundle', 'stablehlo', 'onnx')
_GRID_BINS = 100


# Kept here for their callers; they are the threshold policy's.
precision_recall_per_tag = thresholds_lib.precision_recall_per_tag
tuned_thresholds = thresholds_lib.tuned


def read_run_config(workdir: str,
                    data_dir: str | None = None) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} is missing: {workdir} is not a jaxtag '
                            'training workdir (train it with jaxtag.main).')
  # A run of an earlier version keeps its results: its keys are moved.
  config = ml_collections.ConfigDict(config_lib.upgrade(
      json.loads(path.read_text())))
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
  predictor = predictor_lib.Predictor(config, workdir)
  directory = predictor.checkpointer.directory
  steps = saved_steps(epath.Path(directory))
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {directory}: train the run '
                            'first.')
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise ValueError(f'--step {step} is not in {directory}; saved steps: '
                     f'{", ".join(map(str, steps))}.')
  variables, _ = predictor.restore(step)
  predictor.close()

  # The task names the outputs and tunes the thresholds (a tagger's on the
  # validation split's scores).
  task = predictor.task
  names, categories, counts = task.bundle_labels()
  thresholds = task.bundle_thresholds(
      config.eval, workdir,
      lambda: predictor.predict(variables, config.dataset.eval_split,
                                'convert'))
  variables = jax.device_get({'params': variables.params,
                              'batch_stats': variables.batch_stats,
                              'constants': variables.constants})
  # Heads built from the dataset's tag statistics (a label graph) need them
  # again to be rebuilt.
  label_stats = None
  tags = predictor.tags
  if 'tag_metadata' in {f.name for f in
                        dataclasses.fields(predictor.model.head)}:
    label_stats = {'counts': tags.counts, 'cooccurrence': tags.cooccurrence,
                   'num_images': int(tags.num_images)}
  bundle_lib.write_bundle(
      out, config=config, variables=variables, names=names,
      categories=categories, counts=counts, tag_ids=task.bundle_tag_ids(),
      thresholds=thresholds,
      preprocess=bundle_lib.Preprocess.from_config(config),
      info={'step': step, 'workdir': str(workdir)}, label_stats=label_stats)
  task.write_bundle_files(out)
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
                            image_size=image_size)
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
  flags.DEFINE_integer('image_size', None, 'ONNX input size (default: the '
                       'training size; 448 for kohya).')
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
