"""Variable trees as flat dicts keyed by '/'-joined paths.

'params/backbone/stem/conv/kernel' names a leaf the same way in checkpoints,
bundles (their safetensors keys), starting weights, parameter groups and
plots. Dict and dataclass trees (a TrainState) flatten alike.
"""
from __future__ import annotations

from typing import Any, Callable

import jax


def _key_name(key) -> str:
  for attr in ('name', 'key', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path) -> str:
  """A leaf's jax key path as 'params/backbone/.../kernel'."""
  names = [_key_name(k) for k in path]
  for name in names:
    if '/' in name:
      raise ValueError(f'Variable name {name!r} contains "/", which separates '
                       'the keys of a flat tree.')
  return '/'.join(names)


def flatten(tree: Any) -> dict[str, Any]:
  """{'params': {'head': {'kernel': x}}} -> {'params/head/kernel': x}."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(path): leaf for path, leaf in leaves}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'params/head/kernel': x} -> {'params': {'head': {'kernel': x}}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def map_with_names(fn: Callable[[str, Any], Any], tree: Any) -> Any:
  """`tree` with each leaf replaced by fn(its flat name, leaf)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: fn(path_name(path), leaf), tree)
