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

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS, sys_argv=None):
  """The command's flags, defined when it runs (importing jaxtag.main defines
  none); a test passes its own FlagValues and argv."""
  config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file (configs/*.py[:variant]).',
      flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  flags.DEFINE_string('workdir', None, 'Directory of the run.',
                      flag_values=flag_values)
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                    'train: train (or resume) then test; eval: evaluate the '
                    'latest checkpoint of --workdir on --split.',
                    flag_values=flag_values)
  flags.DEFINE_string('split', None,
                      'Split for --mode=eval (default: the test split).',
                      flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)


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
  config, workdir = FLAGS.config, FLAGS.workdir
  logging.info('Config:\n%s', config)
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, workdir)
  else:
    split = FLAGS.split or config.dataset.test_split
    train.evaluate_checkpoint(config, workdir, split)


def run():
  # Without this absl logs only warnings to the console by default.
  if not any(a.startswith(('--logtostderr', '--alsologtostderr',
                           '--stderrthreshold')) for a in sys.argv):
    sys.argv.insert(1, '--alsologtostderr')
  define_flags()
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
