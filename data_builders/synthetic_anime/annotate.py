"""Samples what one synthetic illustration shows, before anything is drawn.

`sample_scene(seed, split, index, drop_prob, structure)` is pure: the same
arguments give the same scene on any machine, which makes the shards
reproducible and lets the builder compute the train split's tag statistics
cheaply. structure 'cooccur' draws the hard tags from the other tags and the
archetypes and characters with a long tail (cooccur.py); 'default' draws
them as they always were.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_builders.synthetic_anime import cooccur
from data_builders.synthetic_anime import vocab

SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
_NUMBER_WORDS = {1: 'one', 2: 'two', 3: 'three'}


@dataclasses.dataclass
class Figure:
  gender: str                 # 'girl' | 'boy'
  character: str | None       # a named character, or None for a generic one
  tags: set[str]              # the figure's own general tags


@dataclasses.dataclass
class Scene:
  figures: list[Figure]
  background: set[str]
  tags_clean: list[int]       # tag ids, sorted
  tags: list[int]             # tags_clean minus dropped general tags
  characters: list[int]
  caption: str


def _choose(rng, table):
  names = list(table)
  weights = np.array([table[n][0] for n in names])
  return names[rng.choice(len(names), p=weights / weights.sum())]


def _one_outfit(tags: set[str]) -> set[str]:
  """Keeps the first outfit group present, so a figure wears one outfit."""
  for group in vocab.OUTFIT_GROUPS:
    if tags & set(group):
      others = {t for g in vocab.OUTFIT_GROUPS if g != group for t in g}
      return tags - others
  return tags


STRUCTURES = ('default', 'cooccur')


def _generic_figure(rng, gender: str, girl_archetypes=None) -> Figure:
  table = ((girl_archetypes or vocab.GIRL_ARCHETYPES) if gender == 'girl'
           else vocab.BOY_ARCHETYPES)
  tags = {t for t, p in table[_choose(rng, table)][1].items()
          if rng.random() < p}
  tags |= {t for t, p in vocab.EXTRAS.items() if rng.random() < p}
  tags.add(list(vocab.HAIR_COLORS)[rng.integers(len(vocab.HAIR_COLORS))])
  tags.add(list(vocab.EYE_COLORS)[rng.integers(len(vocab.EYE_COLORS))])
  if gender == 'girl' and rng.random() < 0.7:
    tags.add('long_hair')
    if rng.random() < 0.4:
      tags.add(vocab.HAIR_STYLES[rng.integers(2)])
  else:
    tags.add('short_hair')
  if gender == 'boy':
    tags -= vocab.GIRL_ONLY
  return Figure(gender, None, _one_outfit(tags))


def _character_figure(rng, name: str) -> Figure:
  gender, hair, length, style, eyes, signature = vocab.CHARACTERS[name]
  tags = {hair, length, eyes, *signature} | ({style} if style else set())
  tags |= {t for t in ('blush', 'smile', 'open_mouth')
           if rng.random() < vocab.EXTRAS[t]}
  return Figure(gender, name, tags)


def _caption(figures: list[Figure], background: set[str]) -> str:
  girls = sum(f.gender == 'girl' for f in figures)
  boys = len(figures) - girls
  who = []
  if girls:
    who.append(f'{_NUMBER_WORDS[girls]} girl{"s" * (girls > 1)}')
  if boys:
    who.append(f'{_NUMBER_WORDS[boys]} boy{"s" * (boys > 1)}')
  all_tags = set().union(*(f.tags for f in figures))
  hair = sorted(t.replace('_hair', '') for t in all_tags
                if t in vocab.HAIR_COLORS)
  parts = [' and '.join(who)]
  if hair:
    parts.append(f'with {" and ".join(hair)} hair')
  extras = sorted(t.replace('_', ' ') for t in all_tags
                  if t in vocab.ACCESSORIES)
  if extras:
    parts.append(('and ' if hair else 'with ') + ' and '.join(extras))
  outfits = sorted(t for t in all_tags
                   if t in ('maid', 'swimsuit', 'kimono', 'school_uniform',
                            'dress', 'hoodie'))
  if outfits:
    parts.append('wearing ' + ' and '.join(
        o.replace('_', ' ') + (' outfit' if o == 'maid' else '')
        for o in outfits))
  place = ('at night' if 'night' in background else
           'indoors' if 'indoors' in background else
           'under the sky' if 'sky' in background else
           'on a plain background')
  return ' '.join(parts) + ', ' + place


def sample_scene(seed: int, split: str, index: int, drop_prob: float,
                 structure: str = 'default') -> Scene:
  if structure not in STRUCTURES:
    raise ValueError(f'Unknown synthetic_anime structure {structure!r}; '
                     f'valid: {", ".join(STRUCTURES)}.')
  long_tail = structure == 'cooccur'
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 0])
  n = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
  names = list(vocab.CHARACTERS)
  figures, used = [], set()
  for _ in range(n):
    if rng.random() < 0.35:
      name = names[rng.choice(len(names), p=cooccur.character_weights())
                   if long_tail else rng.integers(len(names))]
      if name not in used:
        used.add(name)
        figures.append(_character_figure(rng, name))
        continue
    figures.append(_generic_figure(
        rng, 'girl' if rng.random() < 0.8 else 'boy',
        cooccur.GIRL_ARCHETYPES if long_tail else None))
  if long_tail:
    for fig in figures:
      fig.tags = cooccur.imply(rng, fig.tags, fig.gender)
  all_tags = set().union(*(f.tags for f in figures))
  if 'swimsuit' in all_tags and rng.random() < 0.8:
    background = {'sky', 'outdoors'}
  else:
    background = [{'simple_background', 'white_background'},
                  {'simple_background'}, {'sky', 'outdoors'},
                  {'night', 'outdoors'}, {'indoors'}][int(rng.choice(
                      5, p=[0.25, 0.15, 0.25, 0.15, 0.2]))]
  girls = sum(f.gender == 'girl' for f in figures)
  boys = n - girls
  counts = set()
  if girls:
    counts.add({1: '1girl', 2: '2girls', 3: '3girls'}[girls])
  if girls > 1:
    counts.add('multiple_girls')
  if boys == 1:
    counts.add('1boy')
  if boys > 1:
    counts.add('multiple_boys')
  if n == 1:
    counts.add('solo')
  rating = ('rating:sensitive' if all_tags & vocab.SENSITIVE_OUTFITS
            else 'rating:general')
  chars = sorted(vocab.TAG_ID[f.character] for f in figures if f.character)
  clean = sorted({vocab.TAG_ID[t] for t in all_tags | background | counts}
                 | set(chars) | {vocab.TAG_ID[rating]})
  # Danbooru-like annotation noise: taggers forget general tags, not the
  # character or the rating.
  kept = [t for t in clean if vocab.CATEGORIES[t] != vocab.GENERAL
          or rng.random() >= drop_prob]
  return Scene(figures, background, clean, kept, chars,
               _caption(figures, background))
