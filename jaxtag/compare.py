r"""Trains several configs with equal budgets and tabulates their test results.

  python -m jaxtag.compare configs/default.py configs/mlgcn_anime.py:synthetic \
      configs/addgcn_danbooru.py:synthetic --workdir runs/compare [--num_epochs 5]

Each config trains in its own sub-workdir (`DIR/<file>-<variant>`), one
after the other; a run that already wrote `results.json` is not trained
again, and an interrupted one resumes from its checkpoint. The budgets
(dataset, image size, batch, epochs or steps) must be equal, or the command
stops and lists the differences. Then `DIR/compare.md` and
`DIR/compare.json` hold mAP, CP, CR, CF1, OP, OR, OF1, their top-3 variants,
and the test AP of the tags that are small or faint in the image, and
`DIR/compare.png` shows the runs side by side (with the `plots` extra).

`collect(workdir, names, tags)` returns the same results as a dict, for
plots and notebooks.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath

from jaxtag import config as config_lib
from jaxtag import plots

METRICS = ('mAP', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')
TOP3 = tuple(f'{m}_top3' for m in METRICS[1:])
# synthetic_anime draws these with a few pixels (render.py): fang, mole and
# a 1-pixel smile; blush is pale pink on skin; an open mouth is a dot.
SMALL_AND_FAINT_TAGS = ('fang', 'mole', 'blush', 'smile', 'open_mouth')
# What must match for budgets to be equal.
BUDGET_KEYS = ('dataset.name', 'data.image_size', 'batch_size', 'num_epochs',
               'num_train_steps')



def _define_flags():
  """Defined only when run as a command: jaxtag.main has --workdir too."""
  flags.DEFINE_string('workdir', None, 'Folder of the comparison.')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir of every config '
                      '(default: TFDS default).')
  flags.DEFINE_float(
      'num_epochs', None, 'When set, every config trains this many epochs '
      '(config.num_epochs; config.num_train_steps unset): one budget for all.')
  flags.DEFINE_list('tags', list(SMALL_AND_FAINT_TAGS),
                    'Tags whose per-tag test AP is reported.')


def run_name(spec: str) -> str:
  """'configs/mlgcn_anime.py:synthetic' -> 'mlgcn_anime-synthetic'."""
  path, _, arg = spec.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return f'{stem}-{arg}' if arg else stem


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def check_equal_budgets(configs: dict) -> None:
  """Raises when the configs differ in data, image size, batch or length."""
  differ = []
  for key in BUDGET_KEYS:
    values = {name: _get(c, key) for name, c in configs.items()}
    if len({repr(v) for v in values.values()}) > 1:
      differ.append(f'config.{key}: ' + ', '.join(
          f'{n}={v!r}' for n, v in values.items()))
  if differ:
    raise ValueError('The configs do not have equal budgets; make these '
                     'equal (in the files or with a variant): '
                     + '; '.join(differ) + '.')


def load_configs(specs: Sequence[str], data_dir: str | None,
                 num_epochs: float | None = None) -> dict:
  names = [run_name(s) for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f'Each config must appear once; got {", ".join(specs)}.')
  configs = {}
  for name, spec in zip(names, specs):
    config = config_lib.load_config_file(spec)
    if data_dir:
      config.dataset.data_dir = data_dir
    if num_epochs is not None:
      config.num_train_steps = None
      config.num_epochs = float(num_epochs)
    configs[name] = config
  return configs


def train_all(configs: dict, workdir: str) -> dict[str, float]:
  """Trains each config in turn unless done; returns wall seconds spent."""
  from jaxtag import train
  wall = {}
  for name, config in configs.items():
    sub = os.path.join(workdir, name)
    if (epath.Path(sub) / 'results.json').exists():
      logging.info('%s is trained already (%s/results.json).', name, sub)
      continue
    start = time.perf_counter()
    result = train.train_and_evaluate(config, sub)
    wall[name] = time.perf_counter() - start
    if 'preempted_at' in result:
      raise SystemExit(f'Stopped during {name}; run the same command to '
                       'resume.')
  return wall


def _per_tag_ap(path: epath.Path, tags: Sequence[str]) -> dict[str, float]:
  rows = csv.DictReader(io.StringIO(path.read_text()))
  ap = {r['tag']: r['AP'] for r in rows}
  return {t: float(ap[t]) if ap[t] else float('nan') for t in tags if t in ap}


def collect(workdir: str, names: Sequence[str],
            tags: Sequence[str] = SMALL_AND_FAINT_TAGS) -> dict:
  """The test results of each run under `workdir`, as a plain dict:

  {'runs': [{'name', 'dataset', 'step', 'train_seconds', 'metrics':
  {mAP, CP, ..., OF1_top3}, 'per_tag_ap': {tag: AP}}], 'tags': [...]}.
  Metrics are fractions in [0, 1].
  """
  runs = []
  for name in names:
    folder = epath.Path(workdir) / name
    results = folder / 'results.json'
    if not results.exists():
      raise FileNotFoundError(f'{results} is missing: train {name} first '
                              '(python -m jaxtag.compare ... --workdir '
                              f'{workdir}).')
    record = json.loads(results.read_text())
    metrics = record['metrics']
    runs.append({
        'name': name, 'dataset': record.get('dataset'),
        'step': record.get('step'),
        'train_seconds': record.get('train_seconds_this_session'),
        'metrics': {k: metrics[k] for k in METRICS + TOP3 if k in metrics},
        'per_tag_ap': _per_tag_ap(folder / 'results_per_tag.csv', tags)})
  return {'runs': runs, 'tags': list(tags)}


def _pct(x) -> str:
  return '—' if x is None or x != x else f'{100 * x:.1f}'


def to_markdown(results: dict) -> str:
  runs = results['runs']
  cols = [c for c in METRICS + TOP3 if any(c in r['metrics'] for r in runs)]
  lines = ['| Run | ' + ' | '.join(cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for r in runs:
    lines.append(f'| {r["name"]} | ' + ' | '.join(
        _pct(r['metrics'].get(c)) for c in cols) + ' |')
  tags = [t for t in results['tags'] if any(t in r['per_tag_ap']
                                            for r in runs)]
  if tags:
    lines += ['', 'Test AP of small and faint tags:', '',
              '| Run | ' + ' | '.join(tags) + ' |',
              '|---|' + '---|' * len(tags)]
    for r in runs:
      lines.append(f'| {r["name"]} | ' + ' | '.join(
          _pct(r['per_tag_ap'].get(t)) for t in tags) + ' |')
  lines += ['', 'Percent, on the test split; thresholds fitted on the '
            'validation split. Train time per run (s): ' + ', '.join(
                f'{r["name"]} {r["train_seconds"]:.0f}' for r in runs
                if r['train_seconds'] is not None) + '.']
  return '\n'.join(lines) + '\n'


def compare(specs: Sequence[str], workdir: str, *, data_dir=None,
            num_epochs: float | None = None,
            tags: Sequence[str] = SMALL_AND_FAINT_TAGS) -> dict:
  """Trains what is missing, then writes compare.md and compare.json."""
  configs = load_configs(specs, data_dir, num_epochs)
  check_equal_budgets(configs)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  wall = train_all(configs, workdir)
  results = collect(workdir, list(configs), tags)
  results['wall_seconds_this_session'] = wall
  results['configs'] = list(specs)
  results['num_epochs'] = {n: c.num_epochs for n, c in configs.items()}
  folder = epath.Path(workdir)
  (folder / 'compare.json').write_text(json.dumps(results, indent=2))
  (folder / 'compare.md').write_text(to_markdown(results))
  if plots.available():  # the runs side by side: compare.png
    plots.save_png(plots.compare_figure(
        {r['name']: r['metrics'] for r in results['runs']},
        title='Compared runs, test split'), folder / 'compare.png')
  return results


def main(argv):
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) < 2 or FLAGS.workdir is None:
    raise app.UsageError('usage: python -m jaxtag.compare CONFIG[:variant] '
                         '... --workdir DIR [--data_dir D] [--tags a,b]')
  results = compare(argv[1:], FLAGS.workdir, data_dir=FLAGS.data_dir,
                    num_epochs=FLAGS.num_epochs, tags=FLAGS.tags)
  print(to_markdown(results))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
