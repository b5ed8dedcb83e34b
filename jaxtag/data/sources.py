"""Random-access sources over TFDS array_record splits, built on first use."""
from __future__ import annotations

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from jaxtag.data import build


def open_split(dataset_config, split: str, *, build_if_missing: bool = True):
  """(source of raw examples with PNG bytes, builder) for one split.

  Process 0 builds a missing dataset while the others wait, so that no two
  processes write the same files.
  """
  if build_if_missing and jax.process_index() == 0:
    build.ensure_built(_builder(dataset_config),
                       dataset_config.get('manual_dir'))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('jaxtag_dataset_built')
  # Created only now: TFDS reads dataset_info.json (the splits) when a builder
  # is created, and before the barrier the other processes would find none.
  builder = _builder(dataset_config)
  splits = builder.info.splits
  if not splits:
    raise ValueError(
        f'Process {jax.process_index()} finds no built {dataset_config.name} '
        f'in {builder.data_dir}. Point config.dataset.data_dir at a directory '
        'that every process can read (process 0 builds it there), or build '
        'it first with `python -m jaxtag.data.build '
        f'{dataset_config.name} --data_dir DIR [--manual_dir DIR] '
        '[--set key=value ...]`.')
  if split not in splits:
    raise ValueError(f'Split {split!r} is not in {dataset_config.name} '
                     f'(available: {", ".join(sorted(splits))}); fix '
                     'config.dataset.*_split.')
  source = builder.as_data_source(
      split, decoders={'image': tfds.decode.SkipDecoding()})
  return source, builder


def _builder(dataset_config):
  options = dataset_config.get('build_options')
  return build.get_builder(dataset_config.name, dataset_config.data_dir,
                           options.to_dict() if options else None)


def feature_specs(builder) -> dict[str, tuple[tuple[int, ...], object]]:
  """{key: (shape, dtype)} of the dataset's fixed-shape, non-image features:
  what a head may declare as a batch feature."""
  out = {}
  for key, feature in builder.info.features.items():
    shape = tuple(getattr(feature, 'shape', ()) or ())
    dtype = getattr(feature, 'np_dtype', None)
    if key == 'image' or dtype is None or None in shape:
      continue
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
      continue  # text and other object features cannot become arrays
    out[key] = (shape, dtype)
  return out
