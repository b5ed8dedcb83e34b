"""A bundle's prediction function as a serialised `jax.export` artefact.

`model.stablehlo` holds StableHLO for uint8 images [b, size, size, 3] ->
scores [b, len(selected_tags.csv)] in bundle order, with a symbolic batch
dimension `b` and the variables inside as constants. Every prediction path
exports, beam searches and crop averaging included, since it is the same
jitted function the bundle runs. Loading it needs jax only: no flax model,
no config.

Serialising needs the `flatbuffers` package (the `serving` extra).
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

FILENAME = 'model.stablehlo'


def export(bundle) -> jax.export.Exported:
  """The bundle's `predict` for square images of the bundle's size."""
  if bundle.predict_keys:
    raise ValueError(
        f'The head declares batch features {list(bundle.predict_keys)} for '
        'prediction, which a StableHLO artefact of images alone cannot take.')
  size = bundle.preprocess.size
  batch, = jax.export.symbolic_shape('b')
  fn = jax.jit(functools.partial(bundle.predict_fn, bundle.variables))
  return jax.export.export(fn)(
      jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))


def export_bundle(bundle, directory: str) -> str:
  """Writes `directory/model.stablehlo`; returns its path."""
  path = os.path.join(directory, FILENAME)
  with open(path, 'wb') as f:
    f.write(export(bundle).serialize())
  return path


def load_stablehlo(path: str) -> Callable[[np.ndarray], jax.Array]:
  """The exported function from `model.stablehlo` (or a bundle folder that
  holds one): uint8 images [B, size, size, 3] -> scores [B, tags]."""
  if os.path.isdir(path):
    path = os.path.join(path, FILENAME)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing: write it with `python -m jaxtag.serving.convert '
        '--workdir RUN --out BUNDLE --format stablehlo`.')
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return exported.call
