r"""Lan et al.'s first experiment: a captioner adapted from photos to anime.

  python -m jaxtag.projects.caption_adaptation --workdir runs/adaptation [--variant synthetic] \
      [--cartoonize_options edge_offset=255,levels=12]

Trains the captioner of configs/captioner_flickr8k.py:<variant> three ways
and judges each on anime-style test illustrations with reference captions
(BLEU-1..4, the synthetic anime test split):
1. `photo`: on photos (synthetic_anime/photo: the anime scenes
   photographed; Flickr8k for real use);
2. `adapted_human`: on cartoonised photos (config.data.cartoonize='opencv')
   with the dataset's own captions (Lan et al. 2022, Sec. 3.1's reading);
3. `adapted_teacher`: on cartoonised photos with the photo captioner's own
   captions of the real photos (Sec. 2.1's reading), written by its eval on
   the train split.
`--cartoonize_options` sets fields of jaxtag/data/cartoonize.py's
CartoonizeOptions for both adapted runs. Unset, the embedded variants
(`synthetic`, `tiny`) use `FLAT_STYLE`: synthetic_anime draws flat fills
without ink outlines, and OpenCV's outlines at 96 px paint over hair and
clothes, the colour words of the captions (the measured effect is in
docs/methods/captions.md). `--cartoonize_options=method=opencv` gives the
outlined default. Every run has the same budget. Each step is skipped when
its output exists, so the same command resumes. Writes `adaptation.md` and
`adaptation.json` in --workdir: BLEU on the anime test split (and, for
reference, on the photo test split) and each step's wall time.

`--captioner_config` is the captioner's config file, by default
configs/captioner_flickr8k.py of the checkout this module belongs to (not
of the working directory).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
from etils import epath

from jaxtag import config as config_lib
from jaxtag import train
from jaxtag.data import cartoonize



def _define_flags():
  """Defined only when run as a command: jaxtag.main has --workdir too."""
  flags.DEFINE_string('workdir', None, 'Folder of the three runs.')
  flags.DEFINE_string('variant', 'synthetic',
                      'Variant of configs/captioner_flickr8k.py.')
  flags.DEFINE_list('cartoonize_options', None,
                    'KEY=VALUE,... fields of CartoonizeOptions for the '
                    'adapted runs (config.data.cartoonize_options); unset: '
                    'FLAT_STYLE for the embedded variants.')
  flags.DEFINE_string('data_dir', None,
                      'TFDS data_dir (default: TFDS default).')
  flags.DEFINE_string('captioner_config', CAPTIONER_CONFIG,
                      'The captioner config file; --variant picks its '
                      'variant.')
  flags.mark_flags_as_required(['workdir'])


# The checkout's config, found from this file: jaxtag/projects/ -> root.
CAPTIONER_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))), 'configs', 'captioner_flickr8k.py')


PHOTO = {'synthetic': 'synthetic_anime/photo',
         'tiny': 'synthetic_anime/photo_tiny'}
ANIME = {'synthetic': 'synthetic_anime/default', 'tiny': 'synthetic_anime/tiny'}
RUNS = ('photo', 'adapted_human', 'adapted_teacher')
# The cartoonisation that matches synthetic_anime's style: smoothing and a
# gentle quantisation, no ink outlines (edge_offset 255: no pixel is that
# much darker than its neighbourhood).
FLAT_STYLE = {'smooth_passes': 3, 'diameter': 5, 'sigma_color': 40.0,
              'sigma_space': 5.0, 'levels': 12, 'edge_offset': 255.0}


def _config(config_file: str, variant: str, dataset: str, data_dir):
  if not os.path.exists(config_file):
    raise FileNotFoundError(
        f'{config_file} (--captioner_config) is missing: pass the '
        'captioner config file, e.g. configs/captioner_flickr8k.py of a '
        'jaxtag checkout.')
  config = config_lib.load_config_file(f'{config_file}:{variant}')
  config.dataset.name = dataset
  config.dataset.data_dir = data_dir
  return config


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def parse_options(items) -> dict:
  """['levels=12', 'edge_offset=255'] -> {'levels': 12, 'edge_offset': 255.0},
  each value converted to its CartoonizeOptions field's type."""
  fields = {f.name: f for f in dataclasses.fields(cartoonize.CartoonizeOptions)}
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or key not in fields:
      raise ValueError(f'--cartoonize_options: {item!r} is not KEY=VALUE '
                       f'with KEY one of {", ".join(fields)}.')
    kind = type(fields[key].default)
    try:   # a tuple (value_range) is written low:high
      out[key] = (tuple(float(v) for v in value.split(':')) if kind is tuple
                  else kind(value))
    except ValueError as e:
      raise ValueError(f'--cartoonize_options: {key}={value!r} is not a '
                       f'value of type {kind.__name__} ({e}).') from e
  return out


def run(workdir: str, variant: str, data_dir=None,
        cartoonize_options: dict | None = None,
        captioner_config: str = CAPTIONER_CONFIG) -> dict:
  if variant not in PHOTO:
    raise ValueError(f'Unknown --variant {variant!r}; valid: '
                     f'{", ".join(PHOTO)}.')
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  report_path = root / 'adaptation.json'
  report = json.loads(report_path.read_text()) if report_path.exists() else {}
  photo_dir = str(root / 'photo')
  teacher_file = root / 'photo' / 'eval_train_captions.csv'
  for name in RUNS:
    entry = report.setdefault(name, {})
    config = _config(captioner_config, variant, PHOTO[variant], data_dir)
    if name != 'photo':
      config.data.cartoonize = 'opencv'
      config.data.cartoonize_options = dict(cartoonize_options or {})
    if name == 'adapted_teacher':
      if not teacher_file.exists():
        _, seconds = _timed(lambda: train.evaluate_checkpoint(
            _config(captioner_config, variant, PHOTO[variant], data_dir), photo_dir, 'train'))
        report['photo']['teacher_captions_seconds'] = seconds
      config.dataset.label_encoding_kwargs.targets = str(teacher_file)
    run_dir = str(root / name)
    if 'train_seconds' not in entry:
      result, seconds = _timed(lambda: train.train_and_evaluate(config,
                                                                run_dir))
      entry.update(train_seconds=seconds, photo_test=_bleu(result))
    if 'anime_test' not in entry:
      anime = _config(captioner_config, variant, ANIME[variant], data_dir)
      result, seconds = _timed(lambda: train.evaluate_checkpoint(
          anime, run_dir, 'test'))
      entry.update(anime_test=_bleu(result), anime_eval_seconds=seconds)
    report_path.write_text(json.dumps(report, indent=2))
  (root / 'adaptation.md').write_text(table(report))
  return report


def _bleu(result: dict) -> dict:
  return {k: float(v) for k, v in result.items() if k.startswith('BLEU')}


def table(report: dict) -> str:
  lines = ['| Captioner | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | photo test '
           'BLEU-4 | training, s |', '|---|---|---|---|---|---|---|']
  for name in RUNS:
    if name not in report or 'anime_test' not in report[name]:
      continue
    e = report[name]
    anime = e['anime_test']
    lines.append(
        f'| {name} | ' + ' | '.join(f'{100 * anime[f"BLEU-{n}"]:.1f}'
                                    for n in range(1, 5))
        + f' | {100 * e["photo_test"]["BLEU-4"]:.1f} | '
        f'{e["train_seconds"]:.0f} |')
  return '\n'.join(lines) + '\n\nBLEU on the anime test split (x100).\n'


def main(argv):
  del argv
  options = flags.FLAGS.cartoonize_options
  report = run(flags.FLAGS.workdir, flags.FLAGS.variant,
               flags.FLAGS.data_dir,
               FLAT_STYLE if options is None else parse_options(options),
               flags.FLAGS.captioner_config)
  print(table(report))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
