r"""Trains several configs with equal budgets and tabulates their test results.

  python -m jaxtag.projects.compare configs/default.py configs/mlgcn_anime.py:synthetic \
      configs/addgcn_danbooru.py:synthetic --workdir runs/compare [--num_epochs 5]

Each config trains in its own sub-workdir (`DIR/<file>-<variant>`), one
after the other; a run that already wrote `results.json` is not trained
again, and an interrupted one resumes from its checkpoint. The budgets
(dataset, image size, batch, epochs or steps) must be equal, or the command
stops and lists the differences. Then `DIR/compare.md` and
`DIR/compare.json` hold mAP, CP, CR, CF1, OP, OR, OF1 (and the macro-F1 at
P = R, micro-F1 and MCC of jaxtag/metrics.py), their top-3 variants,
and the test AP of the tags that are small or faint in the image, and
`DIR/compare.png` shows the runs side by side (with the `plots` extra).

`--seeds N` trains each config N times, with config.seed = 0 .. N-1, in
`DIR/<file>-<variant>-seed<k>`; compare.md, compare.json ('summary') and
compare.png then give each config's mean ± standard deviation (ddof 1)
over its seeds, beside the per-seed runs in compare.json ('runs').

`--set KEY=VALUE` (repeatable) sets config.KEY in every config that has
that key, for example a shorter warm-up with a shorter budget
(`--set optim.schedule.warmup_steps=20`) or a setting only some configs
have (`--set model.features.semantic.cache=DIR` reaches the configs with
caption features and leaves the others as they are). VALUE is read as a
Python literal where it is one (20, 0.5, 'gap', (1, 2)), else as a string;
a KEY that no config has is an error listing the keys they have there,
and so is a VALUE of another type than the key holds.

`collect(workdir, names, tags)` returns the same results as a dict, for
plots and notebooks.
"""
from __future__ import annotations

import ast
import copy
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
# The WD v3 cards' metrics (jaxtag/metrics.py equal_pr_metrics), in the
# tables when the runs report them.
EQUAL_PR = ('F1_macro_PR', 'F1_macro_PR_tag', 'F1_micro_PR', 'MCC_PR')
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
  flags.DEFINE_integer(
      'seeds', None, 'When set, each config trains with config.seed = 0 .. '
      'N-1 in workdirs suffixed -seed<k>, and the table reports mean ± std.')
  flags.DEFINE_list('tags', list(SMALL_AND_FAINT_TAGS),
                    'Tags whose per-tag test AP is reported.')
  flags.DEFINE_multi_string(
      'set', [], 'KEY=VALUE: sets config.KEY in every config that has the '
      'key (VALUE a Python literal, else a string); repeatable.')


def run_name(spec: str) -> str:
  """'configs/mlgcn_anime.py:synthetic' -> 'mlgcn_anime-synthetic'."""
  path, _, arg = spec.partition(':')
  stem = os.path.splitext(os.path.basename(path))[0]
  return f'{stem}-{arg}' if arg else stem


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def _has(config, dotted: str) -> bool:
  try:
    _get(config, dotted)
  except (KeyError, AttributeError, TypeError):
    return False
  return True


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _nearest_keys(configs, dotted: str) -> str:
  """The keys the configs do have under the longest existing prefix of
  `dotted`, for the error of a misspelt key."""
  parts = dotted.split('.')
  for cut in range(len(parts) - 1, -1, -1):
    parent = '.'.join(parts[:cut])
    nodes = [_get(c, parent) if parent else c for c in configs
             if not parent or _has(c, parent)]
    keys = sorted({k for n in nodes if hasattr(n, 'keys') for k in n.keys()})
    if keys:
      return (f'Keys of config{"." + parent if parent else ""} there: '
              f'{", ".join(keys)}. Fix the KEY.')
  return 'Fix the KEY.'


def apply_settings(configs: dict, settings: Sequence[str]) -> dict:
  """Sets each 'KEY=VALUE' of `settings` in the configs that have KEY;
  returns {KEY: names of the configs set}. Raises on a malformed setting
  or a KEY that none of the configs has."""
  applied = {}
  for setting in settings:
    key, sep, text = setting.partition('=')
    key = key.strip().removeprefix('config.')
    if not sep or not key:
      raise ValueError(f'--set {setting!r}: expected KEY=VALUE, for example '
                       'optim.schedule.warmup_steps=20.')
    names = [n for n, c in configs.items() if _has(c, key)]
    if not names:
      raise ValueError(f'--set {setting!r}: none of the configs '
                       f'({", ".join(configs)}) has config.{key}. '
                       + _nearest_keys(configs.values(), key))
    value = _literal(text)
    parent, _, leaf = key.rpartition('.')
    for name in names:
      node = _get(configs[name], parent) if parent else configs[name]
      try:
        node[leaf] = value
      except TypeError as e:
        raise ValueError(
            f'--set {setting!r}: {value!r} does not fit config.{key} of '
            f'{name}, which holds {node[leaf]!r} (type '
            f'{type(node[leaf]).__name__}); give a value of that type.') from e
    applied[key] = names
  return applied


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
                 num_epochs: float | None = None,
                 settings: Sequence[str] = ()) -> dict:
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
  for key, names in apply_settings(configs, settings).items():
    logging.info('--set %s: %s', key, ', '.join(names))
  return configs


def with_seeds(configs: dict, seeds: int) -> dict:
  """{name: config} -> {name-seed<k>: config with seed k}, k < seeds."""
  if seeds < 1:
    raise ValueError(f'--seeds must be at least 1 (got {seeds}).')
  out = {}
  for name, config in configs.items():
    for k in range(seeds):
      seeded = copy.deepcopy(config)
      seeded.seed = k
      out[f'{name}-seed{k}'] = seeded
  return out


def _mean_std(values) -> dict:
  values = [v for v in values if v is not None and v == v]
  if not values:
    return {'mean': float('nan'), 'std': float('nan'), 'n': 0}
  n = len(values)
  mean = sum(values) / n
  var = (sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return {'mean': mean, 'std': var ** 0.5, 'n': n}


def summarize(results: dict, names: Sequence[str], seeds: int) -> list[dict]:
  """Per config, the mean ± std (ddof 1) of each metric and per-tag AP
  over the runs `name-seed<k>`, k < seeds, in `results['runs']`."""
  by_name = {r['name']: r for r in results['runs']}
  summary = []
  for name in names:
    runs = [by_name[f'{name}-seed{k}'] for k in range(seeds)]
    metrics = dict.fromkeys(m for r in runs for m in r['metrics'])
    tags = dict.fromkeys(t for r in runs for t in r['per_tag_ap'])
    summary.append({
        'name': name, 'seeds': seeds,
        'metrics': {m: _mean_std([r['metrics'].get(m) for r in runs])
                    for m in metrics},
        'per_tag_ap': {t: _mean_std([r['per_tag_ap'].get(t) for r in runs])
                       for t in tags},
        'train_seconds': sum(r['train_seconds'] or 0 for r in runs)})
  return summary


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
                              '(python -m jaxtag.projects.compare ... --workdir '
                              f'{workdir}).')
    record = json.loads(results.read_text())
    metrics = record['metrics']
    runs.append({
        'name': name, 'dataset': record.get('dataset'),
        'step': record.get('step'),
        'train_seconds': record.get('train_seconds_this_session'),
        'metrics': {k: metrics[k] for k in METRICS + TOP3 + EQUAL_PR
                    if k in metrics},
        'per_tag_ap': _per_tag_ap(folder / 'results_per_tag.csv', tags)})
  return {'runs': runs, 'tags': list(tags)}


def _pct(x) -> str:
  return '—' if x is None or x != x else f'{100 * x:.1f}'


def _pct_pm(stat) -> str:
  if stat is None or not stat['n']:
    return '—'
  return f'{100 * stat["mean"]:.1f} ± {100 * stat["std"]:.1f}'


def _tables(rows: list[dict], tags: list[str], fmt) -> list[str]:
  """The metric table and the small tags' AP table of `rows` (runs, or
  per-config summaries), each cell written by `fmt`."""
  cols = [c for c in METRICS + EQUAL_PR + TOP3
          if any(c in r['metrics'] for r in rows)]
  lines = ['| Run | ' + ' | '.join(cols) + ' |',
           '|---|' + '---|' * len(cols)]
  for r in rows:
    lines.append(f'| {r["name"]} | ' + ' | '.join(
        fmt(r['metrics'].get(c)) for c in cols) + ' |')
  tags = [t for t in tags if any(t in r['per_tag_ap'] for r in rows)]
  if tags:
    lines += ['', 'Test AP of small and faint tags:', '',
              '| Run | ' + ' | '.join(tags) + ' |',
              '|---|' + '---|' * len(tags)]
    for r in rows:
      lines.append(f'| {r["name"]} | ' + ' | '.join(
          fmt(r['per_tag_ap'].get(t)) for t in tags) + ' |')
  return lines


def to_markdown(results: dict) -> str:
  if results.get('summary'):
    return _summary_markdown(results)
  runs = results['runs']
  lines = _tables(runs, results['tags'], _pct)
  lines += ['', 'Percent, on the test split; thresholds fitted on the '
            'validation split. Train time per run (s): ' + ', '.join(
                f'{r["name"]} {r["train_seconds"]:.0f}' for r in runs
                if r['train_seconds'] is not None) + '.']
  return '\n'.join(lines) + '\n'


def _summary_markdown(results: dict) -> str:
  summary = results['summary']
  seeds = summary[0]['seeds']
  lines = [f'Mean ± std over {seeds} seeds (config.seed = 0 .. {seeds - 1}).',
           '', *_tables(summary, results['tags'], _pct_pm)]
  lines += ['', 'Percent, on the test split; thresholds fitted on the '
            'validation split. Train time per config, all seeds (s): '
            + ', '.join(f'{r["name"]} {r["train_seconds"]:.0f}'
                        for r in summary) + '.']
  return '\n'.join(lines) + '\n'


def compare(specs: Sequence[str], workdir: str, *, data_dir=None,
            num_epochs: float | None = None,
            tags: Sequence[str] = SMALL_AND_FAINT_TAGS,
            seeds: int | None = None, settings: Sequence[str] = ()) -> dict:
  """Trains what is missing, then writes compare.md and compare.json."""
  configs = load_configs(specs, data_dir, num_epochs, settings)
  check_equal_budgets(configs)
  names = list(configs)
  if seeds is not None:
    configs = with_seeds(configs, seeds)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  wall = train_all(configs, workdir)
  results = collect(workdir, list(configs), tags)
  if seeds is not None:
    results['summary'] = summarize(results, names, seeds)
  results['wall_seconds_this_session'] = wall
  results['configs'] = list(specs)
  results['settings'] = list(settings)
  results['num_epochs'] = {n: c.num_epochs for n, c in configs.items()}
  folder = epath.Path(workdir)
  (folder / 'compare.json').write_text(json.dumps(results, indent=2))
  (folder / 'compare.md').write_text(to_markdown(results))
  if plots.available() and seeds is not None:  # means, std as error bars
    summary = results['summary']
    plots.save_png(plots.compare_figure(
        {r['name']: {m: v['mean'] for m, v in r['metrics'].items()}
         for r in summary},
        errors={r['name']: {m: v['std'] for m, v in r['metrics'].items()}
                for r in summary},
        title=f'Compared configs, test split, mean ± std of {seeds} seeds'),
                   folder / 'compare.png')
  elif plots.available():  # the runs side by side: compare.png
    plots.save_png(plots.compare_figure(
        {r['name']: r['metrics'] for r in results['runs']},
        title='Compared runs, test split'), folder / 'compare.png')
  return results


def main(argv):
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) < 2 or FLAGS.workdir is None:
    raise app.UsageError('usage: python -m jaxtag.projects.compare CONFIG[:variant] '
                         '... --workdir DIR [--data_dir D] [--tags a,b] '
                         '[--seeds N] [--set KEY=VALUE ...]')
  results = compare(argv[1:], FLAGS.workdir, data_dir=FLAGS.data_dir,
                    num_epochs=FLAGS.num_epochs, tags=FLAGS.tags,
                    seeds=FLAGS.seeds, settings=FLAGS.set)
  print(to_markdown(results))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
