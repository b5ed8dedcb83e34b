r"""Builds a TFDS dataset of data_builders/ by its 'name/config'.

  python -m jaxtag.data.build synthetic_anime/tiny --data_dir DIR
  python -m jaxtag.data.build danbooru --manual_dir /data/danbooru2021 \
      --data_dir DIR --set resize=512 --set num_general=5000
  python -m jaxtag.data.build danbooru --manual_dir /data/danbooru2023 \
      --data_dir DIR --beam --workers 8 [--beam_options "--runner=..."]

`--beam` generates the examples on Apache Beam (pip install
"jaxtag[beam]"; builders that support it: danbooru): on the DirectRunner
with `--workers` local processes, or on the runner `--beam_options` names
(Dataflow, Spark, Flink; data_builders/beam_build.py and the builder's
README.md). The dataset is the same as a one-process build's.

`--set key=value` changes a field of the builder's config (its options,
listed in each builder's README.md), parsed by the field's type. Options
that differ from the named config give the dataset its own config name,
`<config>_<8 hex digits of the options>`, so a dataset built with other
options is never mistaken for this one; the options are also written to
the dataset's build_report.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import pkgutil
import sys
import time
import types
import typing
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl import logging
from etils import epath

import data_builders
from data_builders import beam_build
from data_builders import manual

def _register_builders() -> list[str]:
  """Imports every data_builders/* package so that TFDS knows its builder."""
  names = []
  for module in pkgutil.iter_modules(data_builders.__path__):
    if module.ispkg:
      importlib.import_module(f'data_builders.{module.name}')
      names.append(module.name)
  return sorted(names)


def _parse_bool(text: str) -> bool:
  lowered = text.strip().lower()
  if lowered in ('1', 'true', 'yes', 'on'):
    return True
  if lowered in ('0', 'false', 'no', 'off'):
    return False
  raise ValueError(f'{text!r} is not a boolean (true/false)')


def _parse_as(kind, value):
  """`value` (a string from the command line or a typed config value) as
  the annotated type `kind`."""
  origin = typing.get_origin(kind)
  args = typing.get_args(kind)
  if origin in (typing.Union, types.UnionType):
    if value is None or (isinstance(value, str) and
                         value.strip().lower() in ('', 'none')):
      if type(None) in args:
        return None
    for arg in args:
      if arg is not type(None):
        return _parse_as(arg, value)
  if origin is tuple:
    items = (value.split(',') if isinstance(value, str) else list(value))
    items = [i for i in items if not (isinstance(i, str) and not i.strip())]
    item_kind = args[0] if args else str
    return tuple(_parse_as(item_kind, i) for i in items)
  if kind is bool:
    return value if isinstance(value, bool) else _parse_bool(str(value))
  if kind is int:
    if isinstance(value, bool):
      raise ValueError(f'{value!r} is not an integer')
    if isinstance(value, str):
      return int(value.strip())
    if int(value) != value:
      raise ValueError(f'{value!r} is not an integer')
    return int(value)
  if kind is float:
    return float(value)
  if kind is str:
    return str(value)
  raise TypeError(f'Options of type {kind} cannot be set.')


def _field_type(cls, field: dataclasses.Field):
  """A field's type; annotations are strings under `from __future__ import
  annotations`, evaluated in the module of the class that declares them."""
  if not isinstance(field.type, str):
    return field.type
  for klass in cls.__mro__:
    if field.name in getattr(klass, '__annotations__', {}):
      return eval(field.type, vars(sys.modules[klass.__module__]))  # pylint: disable=eval-used
  raise TypeError(f'Cannot resolve the type of option {field.name!r}.')


def apply_options(config, options: Mapping[str, Any] | None):
  """A copy of `config` with `options` set, named after them; or `config`
  itself when they change nothing."""
  if not options:
    return config
  fields = manual.option_fields(config)
  hints = {key: _field_type(type(config), field)
           for key, field in fields.items()}
  changed = {}
  for key, raw in options.items():
    if key not in fields:
      raise ValueError(
          f'Unknown option {key!r} of {type(config).__name__} (--set / '
          'config.dataset.build_options); valid: '
          f'{", ".join(sorted(fields)) or "none"}.')
    try:
      value = _parse_as(hints[key], raw)
    except (TypeError, ValueError) as e:
      raise ValueError(f'Option {key}={raw!r}: {e}') from None
    if value != getattr(config, key):
      changed[key] = value
  if not changed:
    return config
  config = dataclasses.replace(config, **changed)
  digest = hashlib.sha256(json.dumps(
      {k: changed[k] for k in sorted(changed)}, sort_keys=True,
      default=str).encode()).hexdigest()[:8]
  config.name = f'{config.name}_{digest}'
  config.description = (config.description or '') + ' Options: ' + ', '.join(
      f'{k}={changed[k]!r}' for k in sorted(changed)) + '.'
  return config


def get_builder(name: str, data_dir: str | None = None,
                options: Mapping[str, Any] | None = None):
  """The builder for 'name/config' (config optional) with `options` set on
  the config, reading from data_dir."""
  known = _register_builders()
  builder_name, _, config = name.partition('/')
  if builder_name not in known:
    raise ValueError(f'Unknown dataset {name!r} (config.dataset.name); '
                     f'known builders: {", ".join(known)}.')
  cls = tfds.builder_cls(builder_name)
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  if config and config not in configs:
    raise ValueError(f'Unknown config {config!r} of {builder_name} '
                     f'(config.dataset.name); valid: {", ".join(configs)}.')
  if options:
    if not configs:
      raise ValueError(f'{builder_name} has no options to set; valid: none.')
    base = configs[config or cls.DEFAULT_CONFIG_NAME or next(iter(configs))]
    chosen = apply_options(base, options)
    if chosen is not base:
      return cls(config=chosen, data_dir=data_dir, file_format='array_record')
  return cls(config=config or None, data_dir=data_dir,
             file_format='array_record')


def build_arguments(builder) -> str:
  """'name/config [--set key=value ...]': what jaxtag.data.build needs to
  make the dataset of `builder` (its options undone from the config name
  apply_options gave it)."""
  config = builder.builder_config
  if config is None:
    return builder.name
  configs = {c.name: c for c in type(builder).BUILDER_CONFIGS}
  if config.name in configs:
    return f'{builder.name}/{config.name}'
  base = configs.get(config.name.rsplit('_', 1)[0])
  if base is None:
    return f'{builder.name}/{config.name}'
  sets = []
  for key, value in manual.options_of(config).items():
    if value != getattr(base, key):
      if isinstance(value, tuple):
        value = ','.join(str(v) for v in value)
      sets.append(f'--set {key}={value}')
  return ' '.join([f'{builder.name}/{base.name}', *sets])


def ensure_built(builder, manual_dir: str | None = None,
                 beam_options=None) -> None:
  """Builds the dataset when its files are not there yet, on Apache Beam
  with `beam_options` (data_builders/beam_build.pipeline_options); a dataset
  made from raw files needs `manual_dir`, and without it the error names
  the command that builds it."""
  if (epath.Path(builder.data_dir) / 'dataset_info.json').exists():
    return
  if manual_dir is None and getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS',
                                    None):
    raise FileNotFoundError(
        f'{builder.name} is not built in {builder.data_dir_root} and is made '
        'from raw files: build it with `python -m jaxtag.data.build '
        f'{build_arguments(builder)} --manual_dir RAW_FOLDER --data_dir '
        f'{builder.data_dir_root}` (or set config.dataset.manual_dir when '
        f'training); the layout is in data_builders/{builder.name}/README.md.')
  if beam_options is not None and not isinstance(builder,
                                                 beam_build.BeamBuilder):
    raise ValueError(f'{builder.name} does not build on Beam (--beam); '
                     'build it without.')
  start = time.perf_counter()
  logging.info('Building %s into %s ...', builder.info.full_name,
               builder.data_dir)
  download_config = tfds.download.DownloadConfig(
      manual_dir=str(manual_dir) if manual_dir else None,
      beam_options=beam_options)
  builder.download_and_prepare(download_config=download_config)
  logging.info('Built %s in %.1f s.', builder.info.full_name,
               time.perf_counter() - start)


def parse_set_flags(pairs) -> dict[str, str]:
  """['key=value', ...] -> {key: value} (values parsed later, by type)."""
  options = {}
  for pair in pairs or ():
    key, sep, value = pair.partition('=')
    if not sep or not key.strip():
      raise app.UsageError(f'--set {pair!r}: write it as --set key=value.')
    options[key.strip()] = value
  return options


def _define_flags():
  """Defined only when run as a command, not when the library imports it."""
  flags.DEFINE_string('data_dir', None,
                      'Where TFDS data goes (default: TFDS default).')
  flags.DEFINE_string('manual_dir', None,
                      'The folder with the raw dataset (real datasets).')
  flags.DEFINE_multi_string(
      'set', [], 'key=value: an option of the builder config (repeatable).')
  flags.DEFINE_bool(
      'beam', False, 'Generate on Apache Beam: the DirectRunner with '
      '--workers processes, or the runner that --beam_options names.')
  flags.DEFINE_integer(
      'workers', None, '--beam on the DirectRunner: local worker processes '
      '(default: one per core).')
  flags.DEFINE_string(
      'beam_options', '', '--beam: Beam pipeline options passed through, '
      'e.g. "--runner=DataflowRunner --project=P --region=R '
      '--temp_location=gs://B/tmp --setup_file=./pyproject.toml".')


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m jaxtag.data.build NAME[/CONFIG] '
                         '[--manual_dir DIR] [--data_dir DIR] '
                         '[--set key=value ...] [--beam [--workers N] '
                         '[--beam_options ...]]')
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.beam and (FLAGS.workers or FLAGS.beam_options):
    raise app.UsageError('--workers and --beam_options go with --beam.')
  builder = get_builder(argv[1], FLAGS.data_dir, parse_set_flags(FLAGS.set))
  beam_options = (beam_build.pipeline_options(FLAGS.workers,
                                              FLAGS.beam_options)
                  if FLAGS.beam else None)
  start = time.perf_counter()
  ensure_built(builder, FLAGS.manual_dir, beam_options)
  print(f'{argv[1]}: {builder.data_dir} ({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
