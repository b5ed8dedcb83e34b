"""Captions as token sequences: tokeniser, vocabulary and label encoding.

- Tokens: lower-cased words, punctuation dropped (`tokenize`), as
  captioning papers score BLEU on (coco-caption's tokeniser strips
  punctuation the same way).
- Vocabulary: the train split's words seen at least `min_count` times, most
  frequent first (ties alphabetical), after four specials: PAD 0, START 1,
  END 2, UNK 3. A run builds it once from its train split and saves it in
  its workdir (`caption_vocab.json`), so a resumed or converted run decodes
  with the same ids.
- Encoding `caption` (config.dataset.label_encoding; its options are
  config.dataset.label_encoding_kwargs, see `CaptionEncoder`):
  `caption_tokens` [T + 2] is START, the words (at most T = `max_tokens`),
  END, then PAD; `caption_mask` [T + 2] is 1 from START to END. A record may
  hold one caption or several (Flickr8k's five): training draws one per
  example and epoch from (seed, position), so a resumed run sees the same.
  `labels` [R, T + 2] holds up to R references (`references`) encoded the
  same way, rows of PAD past the last: the BLEU references of the
  evaluation.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import re
from typing import Any, ClassVar, Iterable

import numpy as np
from etils import epath

from jaxtag.data.labels import SkipExample

PAD, START, END, UNK = 0, 1, 2, 3
SPECIALS = ('<pad>', '<start>', '<end>', '<unk>')
VOCAB_FILE = 'caption_vocab.json'

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def texts_of(value) -> list[str]:
  """The caption strings of a record's feature: a str, bytes, or a list or
  array of them (TFDS Text and Sequence(Text) features)."""
  if isinstance(value, (str, bytes)):
    value = [value]
  out = []
  for v in np.asarray(value, dtype=object).reshape(-1):
    text = v.decode('utf-8') if isinstance(v, bytes) else str(v)
    if text.strip():
      out.append(text)
  return out


class Vocabulary:
  """Word <-> id; ids 0..3 are PAD, START, END, UNK."""

  def __init__(self, words: Iterable[str]):
    self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
    self.ids = {w: i for i, w in enumerate(self.words)}

  def __len__(self) -> int:
    return len(self.words)

  @classmethod
  def build(cls, texts: Iterable[str], min_count: int) -> 'Vocabulary':
    counts = collections.Counter(w for t in texts for w in tokenize(t))
    kept = sorted((w for w, n in counts.items() if n >= min_count),
                  key=lambda w: (-counts[w], w))
    return cls(kept)

  def encode(self, text: str) -> list[int]:
    return [self.ids.get(w, UNK) for w in tokenize(text)]

  def decode(self, ids) -> list[str]:
    """Words up to the first END; PAD and START left out."""
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if i == END:
        break
      if i not in (PAD, START):
        words.append(self.words[i] if 0 <= i < len(self.words) else
                     SPECIALS[UNK])
    return words

  def save(self, path) -> None:
    epath.Path(path).write_text(json.dumps({'words': self.words}))

  @classmethod
  def load(cls, path) -> 'Vocabulary':
    words = json.loads(epath.Path(path).read_text())['words']
    if tuple(words[:4]) != SPECIALS:
      raise ValueError(f'{path} is not a jaxtag caption vocabulary (its '
                       f'first words are {words[:4]}, not {SPECIALS}).')
    return cls(words[4:])


def sequence(ids, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [T + 2] START ids END PAD..., mask [T + 2])."""
  ids = list(ids)[:max_tokens]
  tokens = np.full((max_tokens + 2,), PAD, np.int32)
  tokens[0] = START
  tokens[1:1 + len(ids)] = ids
  tokens[1 + len(ids)] = END
  mask = np.zeros((max_tokens + 2,), np.float32)
  mask[:len(ids) + 2] = 1.0
  return tokens, mask


@dataclasses.dataclass
class CaptionEncoder:
  """The `caption` encoder. Options (config.dataset.label_encoding_kwargs):
  `max_tokens` (T), `references` (R), `min_count` (of a word to enter the
  vocabulary) and `targets` (a CSV whose captions replace the train
  records' own, see `load_targets`; '' keeps them). `prepare` reads the
  run's vocabulary, building it from the train split on the first start."""
  name: ClassVar[str] = 'caption'
  max_tokens: int = 20
  references: int = 5
  min_count: int = 5
  targets: str = ''
  # Set by the run: the record feature holding the captions (config.
  # dataset.label_feature).
  label_feature: str = 'caption'
  # Set by `prepare` (or given directly): the run's vocabulary.
  vocabulary: Vocabulary | None = dataclasses.field(
      default=None, repr=False, metadata={'option': False})

  def __post_init__(self):
    if self.max_tokens < 1 or self.references < 1:
      raise ValueError('config.dataset.label_encoding_kwargs.max_tokens and '
                       'references must be at least 1.')
    self.max_tokens, self.references = int(self.max_tokens), int(
        self.references)

  def prepare(self, workdir: str, source) -> None:
    """The run's vocabulary: built by process 0 from the train `source`
    into the workdir on the first start, read from there afterwards (by
    every process). Evaluation alone (`source` None) reads it."""
    import jax  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    path = epath.Path(workdir) / VOCAB_FILE
    if source is None:
      if not path.exists():
        raise FileNotFoundError(
            f'{path} is missing: the caption vocabulary is written when the '
            'run starts training; train the run first.')
    elif jax.process_index() == 0:
      run_vocabulary(workdir, source, self.label_feature, self.min_count,
                     is_writer=True)
    if source is not None and jax.process_count() > 1:
      multihost_utils.sync_global_devices('jaxtag_caption_vocabulary')
    self.vocabulary = Vocabulary.load(path)

  @property
  def num_classes(self) -> int:
    if self.vocabulary is None:
      raise ValueError('The caption encoder has no vocabulary yet: call '
                       'prepare(workdir, train_source) first.')
    return len(self.vocabulary)

  def train_labels(self) -> dict[int, str] | None:
    return load_targets(self.targets) if self.targets else None

  @property
  def spec(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    length = self.max_tokens + 2
    return {'caption_tokens': ((length,), np.int32),
            'caption_mask': ((length,), np.float32),
            'labels': ((self.references, length), np.int32)}

  def encode(self, value, seed: int, position: int) -> dict[str, np.ndarray]:
    texts = texts_of(value)
    if not texts:
      raise SkipExample('the example has no caption')
    pick = int(np.random.default_rng([seed, position, 2]).integers(len(texts)))
    tokens, mask = sequence(self.vocabulary.encode(texts[pick]),
                            self.max_tokens)
    refs = np.full((self.references, self.max_tokens + 2), PAD, np.int32)
    for r, text in enumerate(texts[:self.references]):
      refs[r] = sequence(self.vocabulary.encode(text), self.max_tokens)[0]
    return {'caption_tokens': tokens, 'caption_mask': mask, 'labels': refs}

  def padding(self) -> dict[str, np.ndarray]:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in
            self.spec.items()}


def run_vocabulary(workdir: str, source, label_feature: str,
                   min_count: int, *, is_writer: bool) -> Vocabulary:
  """The run's vocabulary: read from the workdir, or built from the train
  split's captions by the writing process (the others wait for the file)."""
  path = epath.Path(workdir) / VOCAB_FILE
  if not path.exists() and is_writer:
    texts = []
    for i in range(len(source)):
      record = source[i]
      if label_feature not in record:
        raise KeyError(f'The dataset has no feature {label_feature!r} '
                       '(config.dataset.label_feature); its features are '
                       f'{sorted(record)}.')
      texts.extend(texts_of(record[label_feature]))
    vocabulary = Vocabulary.build(texts, min_count)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocabulary.save(path)
  return Vocabulary.load(path)


def load_targets(path) -> dict[int, str]:
  """{record index: caption} from a CSV with `index` and `caption` columns
  (a captioner's eval_<split>_captions.csv)."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'config.dataset.label_encoding_kwargs.targets: '
                            f'{path} does not '
                            'exist; write it with --mode=eval of the teacher '
                            'captioner on the train split.')
  rows = list(csv.DictReader(io.StringIO(path.read_text())))
  if rows and not {'index', 'caption'} <= set(rows[0]):
    raise ValueError(f'{path} needs the columns index and caption; it has '
                     f'{sorted(rows[0])}.')
  return {int(r['index']): r['caption'] for r in rows}


def reference_words(refs: np.ndarray) -> list[list[int]]:
  """Token-id references of one image for BLEU: each row's ids between START
  and END. An UNK in a reference stands for a word the vocabulary lacks, which
  no hypothesis can produce: each gets its own negative id, so it never
  matches (as the raw word would not) yet counts in the length."""
  out = []
  for row in np.asarray(refs):
    if row[0] != START:
      continue  # a PAD row: fewer references than the maximum
    words, unknown = [], 0
    for i in row[1:].tolist():
      if i in (END, PAD):
        break
      if i == UNK:
        unknown += 1
        i = -unknown
      words.append(i)
    out.append(words)
  return out


def hypothesis_words(tokens) -> list[int]:
  """Token ids of a decoded caption up to END (PAD and START dropped)."""
  out = []
  for i in np.asarray(tokens).astype(np.int64).reshape(-1).tolist():
    if i == END:
      break
    if i not in (PAD, START):
      out.append(i)
  return out
