r"""Builds a TFDS dataset of data_builders/ by its 'name/config'.

  python -m jaxtag.data.build synthetic_anime/tiny --data_dir DIR
"""
from __future__ import annotations

import importlib
import pkgutil
import time

import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl import logging
from etils import epath

import data_builders


def _register_builders() -> list[str]:
  """Imports every data_builders/* package so that TFDS knows its builder."""
  names = []
  for module in pkgutil.iter_modules(data_builders.__path__):
    if module.ispkg:
      importlib.import_module(f'data_builders.{module.name}')
      names.append(module.name)
  return sorted(names)


def get_builder(name: str, data_dir: str | None = None):
  """The builder for 'name/config' (config optional), reading from data_dir."""
  known = _register_builders()
  builder_name, _, config = name.partition('/')
  if builder_name not in known:
    raise ValueError(f'Unknown dataset {name!r} (config.dataset.name); '
                     f'known builders: {", ".join(known)}.')
  cls = tfds.builder_cls(builder_name)
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config and config not in configs:
    raise ValueError(f'Unknown config {config!r} of {builder_name} '
                     f'(config.dataset.name); valid: {", ".join(configs)}.')
  return cls(config=config or None, data_dir=data_dir,
             file_format='array_record')


def ensure_built(builder) -> None:
  """Builds the dataset when its files are not there yet."""
  if (epath.Path(builder.data_dir) / 'dataset_info.json').exists():
    return
  start = time.perf_counter()
  logging.info('Building %s into %s ...', builder.info.full_name,
               builder.data_dir)
  builder.download_and_prepare()
  logging.info('Built %s in %.1f s.', builder.info.full_name,
               time.perf_counter() - start)


_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Where TFDS data goes (default: TFDS default).')


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m jaxtag.data.build NAME/CONFIG '
                         '[--data_dir DIR]')
  builder = get_builder(argv[1], _DATA_DIR.value)
  start = time.perf_counter()
  ensure_built(builder)
  print(f'{argv[1]}: {builder.data_dir} ({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
  app.run(main)
