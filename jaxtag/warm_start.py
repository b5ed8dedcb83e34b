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

`config.init.head` says what becomes of the head when the new run's
vocabulary differs from the starting weights' (fine-tuning an imported WD
v3 tagger on one's own tags):
- 'reset' (default): the head starts fresh (unless `include` takes it
  whole, which needs equal vocabularies);
- 'match_by_name': each head parameter whose last axis is the class axis
  (the linear head's kernel columns and bias) keeps the trained values of
  the tags both vocabularies share, matched by tag name, and starts the
  other tags fresh; head parameters without a class axis (a pooled-feature
  norm) are taken whole. The starting weights must name their tags: the
  `.npz` of `python -m jaxtag.serving.import_weights --timm` holds them
  under the key 'tags' (the tag names in model order).
"""
from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxtag import checkpoint as checkpoint_lib

COLLECTIONS = ('params', 'batch_stats')
HEAD_MODES = ('reset', 'match_by_name')
# The .npz key of the starting weights' tag names (model order).
TAGS_KEY = 'tags'


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
    if TAGS_KEY in flat:
      out[TAGS_KEY] = [str(n) for n in flat.pop(TAGS_KEY)]
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
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        restore_args=as_numpy))
  return {c: checkpoint_lib.flatten(state.get(c, {})) for c in COLLECTIONS}


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


def apply(state, init_config, tag_names=None):
  """`state` with the selected subtrees replaced by the starting weights;
  with `init_config.head == 'match_by_name'`, the head's rows of the tags
  in `tag_names` (the new run's, model order) that the source has too."""
  mode = init_config.get('head', 'reset')
  if mode not in HEAD_MODES:
    raise InitError(f'Unknown config.init.head {mode!r}; valid: '
                    f'{", ".join(HEAD_MODES)}.')
  loaded = read(init_config.path)
  state = write(state, loaded, init_config.include, init_config.path)
  if mode == 'match_by_name':
    if tag_names is None:
      raise InitError('config.init.head=match_by_name needs the run\'s tag '
                      'names.')
    state = match_head(state, loaded, list(tag_names), init_config.path)
  return state


def match_head(state, loaded, tag_names: list[str], source_name: str):
  """`state` with its head's class rows taken from `loaded` where the tag
  names match (see the module docstring); the others as they are."""
  source_names = loaded.get(TAGS_KEY)
  if source_names is None:
    raise InitError(f'config.init.path {source_name} does not name its tags '
                    f'(no {TAGS_KEY!r} entry), so config.init.head='
                    'match_by_name cannot match them; use an .npz written by '
                    'python -m jaxtag.serving.import_weights --timm, or '
                    'config.init.head=reset.')
  position = {name: i for i, name in enumerate(source_names)}
  ours = np.array([i for i, n in enumerate(tag_names) if n in position],
                  np.int64)
  theirs = np.array([position[tag_names[i]] for i in ours], np.int64)
  n_ours, n_theirs = len(tag_names), len(source_names)
  taken = {}
  for key, leaf in checkpoint_lib.flatten(state.params).items():
    source = loaded['params'].get(key)
    if not key.startswith('head/') or source is None:
      continue
    if leaf.shape[-1:] == (n_ours,) and source.shape[-1:] == (n_theirs,):
      if leaf.shape[:-1] != source.shape[:-1]:
        raise InitError(f'Head parameter {key}: config.init.path has shape '
                        f'{source.shape}, the model {leaf.shape}; only the '
                        'class axis (the last) may differ.')
      value = np.array(jax.device_get(leaf))
      value[..., ours] = source[..., theirs]
      taken[key] = value
    elif tuple(leaf.shape) == tuple(source.shape):
      taken[key] = source
    else:
      raise InitError(f'Head parameter {key}: config.init.path has shape '
                      f'{source.shape}, the model {leaf.shape}.')
  if not taken:
    raise InitError(f'config.init.path {source_name} holds no parameter of '
                    'the model\'s head, so config.init.head=match_by_name '
                    'has nothing to match.')
  logging.info('Head: %d of %d tags matched by name in %s.', len(ours),
               n_ours, source_name)
  include = '^(' + '|'.join(re.escape(k) for k in taken) + ')$'
  return write(state, {'params': taken, 'batch_stats': {}}, include,
               source_name)


def apply_renamed(state, path: str, renames) -> Any:
  """`state` with parameters of another model's checkpoint at `path` put
  under other names: each (source prefix, target prefix) of `renames` moves
  the source's parameters and batch-norm statistics, and every target
  parameter under a target prefix must be found (a frozen sub-model)."""
  loaded = read(path)
  moved = {c: {dst + k[len(src):]: v for k, v in loaded[c].items()
               for src, dst in renames if k.startswith(src)}
           for c in COLLECTIONS}
  include = '^(' + '|'.join(re.escape(dst) for _, dst in renames) + ')'
  return write(state, moved, include, path)


def write(state, loaded, include: str, source_name: str):
  """`state` with the parameters `include` selects taken from `loaded`."""
  replaced = {}
  for collection in COLLECTIONS:
    tree = getattr(state, collection)
    target = checkpoint_lib.flatten(tree)
    taken = select(target, loaded[collection], include, collection)
    replaced[collection] = len(taken)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    new_leaves = []
    for path, leaf in leaves:
      key = checkpoint_lib.path_name(path)
      if key in taken:
        value = taken[key].astype(leaf.dtype)
        # Every process holds the same file: each fills its own shards.
        new_leaves.append(jax.make_array_from_callback(
            value.shape, leaf.sharding, lambda index, v=value: v[index]))
      else:
        new_leaves.append(leaf)
    state = state.replace(**{collection: jax.tree_util.tree_unflatten(
        treedef, new_leaves)})
  logging.info('Started from %s: %d parameter(s), %d batch-norm '
               'statistic(s) matching %r.', source_name,
               replaced['params'], replaced['batch_stats'], include)
  return state
