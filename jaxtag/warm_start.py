"""Starting weights: `config.init` starts a fresh run from trained weights.

`config.init.path` is another run's workdir (its latest checkpoint), one
checkpoint folder (`.../checkpoints/<step>`), or a parameter file (`.npz`
with '/'-joined parameter paths as keys, such as converted ImageNet
weights: 'backbone/stem/conv/kernel'). `config.init.include` is a regex
searched in each parameter path; matching parameters (and the batch-norm
statistics of the same paths) are taken, everything else keeps its fresh
initialisation. `config.init.backbone` names backbone weights alone (such
as the .npz of `python -m jaxtag.serving.import_weights`): every backbone
parameter is taken from it. Resuming a workdir that has a checkpoint
ignores `init`.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import trees

COLLECTIONS = ('params', 'batch_stats')


class InitError(ValueError):
  """The starting weights do not fit the model."""


def _checkpoint_state_dir(path: epath.Path) -> epath.Path | None:
  if (path / 'state').is_dir():
    return path / 'state'
  root = path / 'checkpoints'
  if root.is_dir():
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    if steps:
      return root / str(max(steps)) / 'state'
  return None


def read(path: str) -> dict[str, dict[str, np.ndarray]]:
  """{'params': {path: array}, 'batch_stats': {...}} from `config.init.path`."""
  where = epath.Path(path)
  if not where.exists():
    raise FileNotFoundError(f'config.init.path {path} does not exist; give a '
                            'workdir, a checkpoint folder or a .npz file.')
  if where.is_file():
    if where.suffix != '.npz':
      raise InitError(f'config.init.path {path}: parameter files must be '
                      '.npz with parameter paths as keys.')
    with where.open('rb') as f, np.load(f) as data:
      flat = {k: np.asarray(data[k]) for k in data.files}
    out = {c: {} for c in COLLECTIONS}
    for key, value in flat.items():
      collection, _, rest = key.partition(':')
      if rest and collection in out:  # 'batch_stats:backbone/...'
        out[collection][rest] = value
      else:
        out['params'][key] = value
    return out
  state_dir = _checkpoint_state_dir(where)
  if state_dir is None:
    raise FileNotFoundError(f'config.init.path {path} holds no checkpoint '
                            '(no state/ nor checkpoints/<step>/state).')
  state = checkpoint_lib.read_numpy(state_dir)
  return {c: trees.flatten(state.get(c, {})) for c in COLLECTIONS}


def select(target: dict[str, Any], source: dict[str, np.ndarray],
           include: str, collection: str) -> dict[str, np.ndarray]:
  """The entries of `source` that `include` selects, checked against
  `target`'s shapes; every selected target parameter must be present."""
  pattern = re.compile(include)
  wanted = [k for k in target if pattern.search(k)]
  missing = [k for k in wanted if k not in source]
  if collection == 'params' and not wanted:
    raise InitError(f'config.init.include={include!r} selects no parameter; '
                    f'parameter paths look like {sorted(target)[:3]}.')
  if collection == 'params' and missing:
    raise InitError(f'config.init.path lacks {len(missing)} selected '
                    f'parameter(s), e.g. {missing[:3]}; narrow '
                    'config.init.include.')
  taken = {}
  for key in wanted:
    if key not in source:
      continue
    want, got = tuple(target[key].shape), tuple(source[key].shape)
    if want != got:
      raise InitError(f'Parameter {collection}/{key}: config.init.path has '
                      f'shape {got}, the model {want}. Exclude it with '
                      'config.init.include or match the architecture.')
    taken[key] = source[key]
  return taken


def apply(state, init_config):
  """`state` with the selected subtrees replaced by the starting weights."""
  return write(state, read(init_config.path), init_config.include,
               init_config.path)


def apply_renamed(state, path: str, renames) -> Any:
  """`state` with parameters of another model's checkpoint at `path` put
  under other names: each (source prefix, target prefix) of `renames` moves
  the source's parameters and batch-norm statistics, and every target
  parameter under a target prefix must be found (a frozen sub-model)."""
  loaded = read(path)
  moved = {c: renamed(loaded[c], renames) for c in COLLECTIONS}
  include = '^(' + '|'.join(re.escape(dst) for _, dst in renames) + ')'
  return write(state, moved, include, path)


def renamed(flat: dict[str, Any], renames) -> dict[str, Any]:
  """The entries of `flat` under a source prefix of `renames` ((source
  prefix, target prefix), ...), put under the target prefix."""
  return {dst + k[len(src):]: v for k, v in flat.items()
          for src, dst in renames if k.startswith(src)}


def write(state, loaded, include: str, source_name: str):
  """`state` with the parameters `include` selects taken from `loaded`."""
  replaced = {}
  for collection in COLLECTIONS:
    tree = getattr(state, collection)
    taken = select(trees.flatten(tree), loaded[collection], include,
                   collection)
    replaced[collection] = len(taken)

    def take(key, leaf, taken=taken):
      if key not in taken:
        return leaf
      value = taken[key].astype(leaf.dtype)
      # Every process holds the same file: each fills its own shards.
      return jax.make_array_from_callback(
          value.shape, leaf.sharding, lambda index: value[index])

    state = state.replace(**{collection: trees.map_with_names(take, tree)})
  logging.info('Started from %s: %d parameter(s), %d batch-norm '
               'statistic(s) matching %r.', source_name,
               replaced['params'], replaced['batch_stats'], include)
  return state
