r"""Trains or evaluates a jaxtag run.

  python -m jaxtag.main --config configs/default.py --workdir runs/demo
  python -m jaxtag.main --config configs/default.py --workdir runs/demo \
      --mode=eval --split=test

Override any config value with `--config.a.b=v`. The workdir is the run's
identity: running the same command again resumes from its last checkpoint.
"""
import logging as pylogging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py[:variant]).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the run.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train: train (or resume) then test; eval: evaluate '
                          'the latest checkpoint of --workdir on --split.')
_SPLIT = flags.DEFINE_string('split', None,
                             'Split for --mode=eval (default: the test split).')
flags.mark_flags_as_required(['config', 'workdir'])


def _parse_flags(argv):
  from jaxtag import config as config_lib
  try:
    config_lib.check_overrides(argv)
  except (ValueError, FileNotFoundError) as e:
    sys.stderr.write(f'FATAL Flags parsing error: {e}\n')
    sys.exit(1)
  return app.parse_flags_with_usage(argv)


class _JaxtagInfoOnly(pylogging.Filter):
  """Keeps the console to jaxtag's own lines; libraries speak at WARNING+."""

  def filter(self, record):
    return (record.levelno >= pylogging.WARNING
            or f'{os.sep}jaxtag{os.sep}' in record.pathname)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_JaxtagInfoOnly())
  from jaxtag import distributed
  distributed.maybe_initialize()
  from jaxtag import train  # after initialize: train touches jax devices
  logging.info('Config:\n%s', _CONFIG.value)
  if _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    split = _SPLIT.value or _CONFIG.value.dataset.test_split
    train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, split)


def run():
  # Without this absl logs only warnings to the console by default.
  if not any(a.startswith(('--logtostderr', '--alsologtostderr',
                           '--stderrthreshold')) for a in sys.argv):
    sys.argv.insert(1, '--alsologtostderr')
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
