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

Every starting weight is a `Source`: config.init gives up to two
(`sources`), and the model's feature providers add theirs (a frozen
captioner's encoder, renamed into the tagger's constants: jaxtag/models/
features.py). `apply_sources` applies them in that order.

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

import dataclasses
import re
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import trees

# What a checkpoint or .npz offers: trained parameters, batch statistics.
COLLECTIONS = ('params', 'batch_stats')
HEAD_MODES = ('reset', 'match_by_name')
# The .npz key of the starting weights' tag names (model order).
TAGS_KEY = 'tags'


class InitError(ValueError):
  """The starting weights do not fit the model."""


@dataclasses.dataclass(frozen=True)
class Source:
  """Starting weights from the checkpoint or .npz at `path`.

  Without `renames`, the state's entries whose parameter path `include`
  (a regex) matches are taken from the same paths of the source, in the
  params and batch_stats collections; every selected parameter must be
  there. With `renames` ((source prefix, target prefix) of full
  'collection/parameter' paths, e.g. 'params/backbone/' ->
  'constants/providers_semantic/params/backbone/'), the source's entries
  under each source prefix move under its target prefix, and every state
  entry under a target prefix must be found: a sub-model taken whole.
  `what` names the source in messages (a config key).
  """
  path: str
  include: str = ''
  renames: tuple[tuple[str, str], ...] = ()
  what: str = 'config.init.path'
  # config.init.head and the new run's tag names (model order), for
  # 'match_by_name' (see the module docstring).
  head: str = 'reset'
  tag_names: tuple[str, ...] | None = None


def sources(init_config, tag_names=None) -> list[Source]:
  """The Sources of config.init: `path` with its `include` (and its `head`
  mode, which matches rows by `tag_names`), then `backbone` (every
  backbone parameter)."""
  out = []
  if init_config.path:
    out.append(Source(init_config.path, init_config.include,
                      head=init_config.get('head', 'reset'),
                      tag_names=None if tag_names is None else tuple(
                          tag_names)))
  if init_config.get('backbone'):
    out.append(Source(init_config.backbone, '^backbone/',
                      what='config.init.backbone'))
  return out


def apply_sources(state, starting: list[Source]):
  """`state` with each Source's weights written, in order."""
  for source in starting:
    if source.renames:
      state = apply_renamed(state, source)
    else:
      state = _apply_source(state, source)
  return state


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


def apply(state, init_config, tag_names=None):
  """`state` with config.init's starting weights (see `sources`)."""
  return apply_sources(state, sources(init_config, tag_names))


def _apply_source(state, source: Source):
  """`state` with the entries `source.include` selects replaced by the
  starting weights; with `source.head == 'match_by_name'`, also the head's
  rows of the tags in `source.tag_names` that the source has too."""
  if source.head not in HEAD_MODES:
    raise InitError(f'Unknown config.init.head {source.head!r}; valid: '
                    f'{", ".join(HEAD_MODES)}.')
  loaded = read(source.path)
  state = write(state, loaded, source.include, source.path)
  if source.head == 'match_by_name':
    if source.tag_names is None:
      raise InitError("config.init.head=match_by_name needs the run's tag "
                      'names.')
    state = match_head(state, loaded, list(source.tag_names), source.path)
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
  for key, leaf in trees.flatten(state.params).items():
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


def apply_renamed(state, source: Source) -> Any:
  """`state` with the entries of `source` put under other names (see
  Source): every state entry under a target prefix must be found."""
  loaded = read(source.path)
  moved: dict[str, dict[str, np.ndarray]] = {}
  for collection, entries in loaded.items():
    for key, value in entries.items():
      full = f'{collection}/{key}'
      for src, dst in source.renames:
        if full.startswith(src):
          target, _, rest = (dst + full[len(src):]).partition('/')
          moved.setdefault(target, {})[rest] = value
  taken = {}
  for src, dst in source.renames:
    target, _, prefix = dst.partition('/')
    taken.setdefault(target, []).append(prefix)
  for collection, prefixes in taken.items():
    tree = getattr(state, collection)
    wanted = [k for k in trees.flatten(tree)
              if any(k.startswith(p) for p in prefixes)]
    missing = [k for k in wanted if k not in moved.get(collection, {})]
    if missing:
      raise InitError(f'{source.what}: {source.path} lacks {len(missing)} '
                      f'entries the model needs, e.g. '
                      f'{[f"{collection}/{k}" for k in missing[:3]]}; is it a '
                      'run of the same architecture?')
    include = '^(' + '|'.join(re.escape(p) for p in prefixes) + ')'
    state = _write_collection(state, collection, moved.get(collection, {}),
                              include, source.path)
  return state


def write(state, loaded, include: str, source_name: str):
  """`state` with the parameters `include` selects taken from `loaded`."""
  replaced = {}
  for collection in COLLECTIONS:
    taken = select(trees.flatten(getattr(state, collection)),
                   loaded[collection], include, collection)
    replaced[collection] = len(taken)
    state = _replace(state, collection, taken)
  logging.info('Started from %s: %d parameter(s), %d batch-norm '
               'statistic(s) matching %r.', source_name,
               replaced['params'], replaced['batch_stats'], include)
  return state


def _write_collection(state, collection: str, loaded, include: str,
                      source_name: str):
  """`state` with the entries of one collection that `include` selects
  taken from `loaded` (all checked present by the caller)."""
  target = trees.flatten(getattr(state, collection))
  taken = select(target, loaded, include, collection)
  logging.info('Started from %s: %d %s entries matching %r.', source_name,
               len(taken), collection, include)
  return _replace(state, collection, taken)


def _replace(state, collection: str, taken: dict[str, np.ndarray]):
  """`state` with the leaves of `collection` that `taken` names replaced."""

  def take(key, leaf):
    if key not in taken:
      return leaf
    value = taken[key].astype(leaf.dtype)
    # Every process holds the same file: each fills its own shards.
    return jax.make_array_from_callback(
        value.shape, leaf.sharding, lambda index: value[index])

  return state.replace(**{collection: trees.map_with_names(
      take, getattr(state, collection))})
