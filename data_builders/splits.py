"""Stable split assignment: a record's split is a function of its key alone.

The key (a post id, a path relative to the dataset root) is hashed with
SHA-256, never Python's salted hash(), so every process on every machine
agrees, and a record keeps its split when the dataset grows.
"""
from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Hashable, Iterable, Mapping

DEFAULT_FRACTIONS = {'train': 0.9, 'validation': 0.05, 'test': 0.05}


def stable_unit(key: object, salt: str = '') -> float:
  """A number in [0, 1) fixed by str(key) and salt."""
  digest = hashlib.sha256(f'{salt}\x00{key}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2**64


def stable_id(key: object) -> int:
  """A non-negative int64 fixed by str(key): an `id` for records that have
  none of their own (a file path)."""
  digest = hashlib.sha256(f'id\x00{key}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') >> 1


def check_fractions(fractions: Mapping[str, float],
                    option: str = 'split_fractions') -> dict[str, float]:
  """The fractions as a dict; an error naming `option` unless they are
  non-negative and sum to 1."""
  fractions = dict(fractions)
  if not fractions or any(f < 0 for f in fractions.values()) or not math.isclose(
      sum(fractions.values()), 1.0, abs_tol=1e-6):
    raise ValueError(f'{option} = {fractions!r}: give non-negative fractions '
                     'per split that sum to 1, e.g. '
                     'train=0.9,validation=0.05,test=0.05.')
  return fractions


def parse_fractions(text: str,
                    option: str = 'split_fractions') -> dict[str, float]:
  """'train=0.8,validation=0.1,test=0.1' -> {'train': 0.8, ...}."""
  out = {}
  for part in text.split(','):
    name, sep, value = part.partition('=')
    try:
      if not sep:
        raise ValueError
      out[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f'{option} = {text!r}: write it as '
                       'train=0.8,validation=0.1,test=0.1.') from None
  return check_fractions(out, option)


def assign_split(key: object, fractions: Mapping[str, float],
                 salt: str = '') -> str:
  """The split of one key; splits take consecutive slices of [0, 1) in the
  order of `fractions`."""
  u = stable_unit(key, salt)
  total = 0.0
  name = None
  for name, fraction in fractions.items():
    total += fraction
    if u < total:
      return name
  return name  # rounding left u above the last boundary


def _largest_remainder(n: int, fractions: Mapping[str, float]) -> dict:
  """Split sizes for n items that sum to n, each within 1 of n * fraction."""
  exact = {s: n * f for s, f in fractions.items()}
  sizes = {s: math.floor(v) for s, v in exact.items()}
  order = sorted(fractions, key=lambda s: (-(exact[s] - sizes[s]),
                                           list(fractions).index(s)))
  for s in order[:n - sum(sizes.values())]:
    sizes[s] += 1
  return sizes


def stratified_splits(items: Iterable[tuple[object, Hashable]],
                      fractions: Mapping[str, float],
                      salt: str = '') -> dict[object, str]:
  """{key: split} with each class divided in the given fractions.

  Within a class, keys are ordered by their hash and cut into consecutive
  runs of the sizes that fractions give (largest remainder), so each split
  holds round(n * fraction) of every class, and adding a file moves at most
  the records at the cut points.
  """
  by_class = collections.defaultdict(list)
  for key, label in items:
    by_class[label].append(key)
  out = {}
  for keys in by_class.values():
    keys = sorted(keys, key=lambda k: (stable_unit(k, salt), str(k)))
    start = 0
    for split, size in _largest_remainder(len(keys), fractions).items():
      for key in keys[start:start + size]:
        out[key] = split
      start += size
  return out
