"""BLEU against hand-worked cases and sacrebleu's unsmoothed corpus BLEU."""
import math

import numpy as np
import pytest
import sacrebleu

from jaxtag import metrics


def _words(*captions):
  return [c.split() for c in captions]


def test_bleu_worked_by_hand():
  hyp = _words('the cat sat on the mat')
  refs = [_words('the cat is on the mat', 'there is a cat on the mat')]
  # 1-grams: 'the' clipped at 2 (ref 1 has two), 'sat' unmatched: 5/6.
  # 2-grams: the cat, on the, the mat: 3/5. 3-grams: on the mat: 1/4.
  # 4-grams: none of 3. Closest reference length 6 = 6 words: no penalty.
  out = metrics.bleu(hyp, refs)
  assert out['BLEU-1'] == pytest.approx(5 / 6)
  assert out['BLEU-2'] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
  assert out['BLEU-3'] == pytest.approx(0.5)
  assert out['BLEU-4'] < 1e-3  # no 4-gram matches


def test_bleu_short_caption_and_uneven_references():
  # Image 1: a 2-word caption (no 3- or 4-grams), one reference of 3 words.
  # Image 2: 4 words, three references of lengths 2, 5 and 7: the closest
  # to 4 is 5 (|5-4| = 1 < |2-4| = 2).
  hyps = _words('a dog', 'a girl with hat')
  refs = [_words('a brown dog'),
          _words('one girl', 'a girl with a hat', 'a girl with red hair here')]
  out = metrics.bleu(hyps, refs, max_n=4)
  # 1-grams: (a, dog) 2/2; (a, girl, with, hat) 4/4 -> 6/6.
  # 2-grams: 'a dog' 0/1; 'a girl', 'girl with' match, 'with hat' does
  # not: 2/4 over the corpus. 3-grams: 'a girl with' 1/2 (image 1 has
  # none). 4-grams: 'a girl with hat' 0/1.
  # Lengths: hypotheses 6, references 3 + 5 = 8: penalty exp(1 - 8/6).
  penalty = math.exp(1 - 8 / 6)
  assert out['BLEU-1'] == pytest.approx(1.0 * penalty)
  assert out['BLEU-2'] == pytest.approx(math.sqrt(2 / 4) * penalty)
  assert out['BLEU-3'] == pytest.approx((2 / 4 * 1 / 2) ** (1 / 3) * penalty)
  assert out['BLEU-4'] < 0.05


def _random_corpus(rng, images, refs_per_image):
  words = 'a the girl with red hair'.split()  # few words: 4-grams match
  def caption():
    return list(rng.choice(words, int(rng.integers(3, 12))))
  hyps = [caption() for _ in range(images)]
  refs = [[caption() for _ in range(refs_per_image(i))] for i in range(images)]
  return hyps, refs


def test_bleu_matches_sacrebleu_and_ignores_repeated_references():
  rng = np.random.default_rng(0)
  hyps, refs = _random_corpus(rng, 200, lambda i: 1 + i % 5)
  ours = metrics.bleu(hyps, refs)
  # Repeating one of an image's references changes no count and no length.
  padded = [r + [r[0]] * (5 - len(r)) for r in refs]
  assert metrics.bleu(hyps, padded) == pytest.approx(ours, rel=1e-12)
  streams = [[' '.join(r[k]) for r in padded] for k in range(5)]
  for n in range(1, 5):
    scorer = sacrebleu.metrics.BLEU(max_ngram_order=n, tokenize='none',
                                    smooth_method='none')
    theirs = scorer.corpus_score([' '.join(h) for h in hyps], streams).score
    assert ours[f'BLEU-{n}'] == pytest.approx(theirs / 100, rel=1e-6)


def test_bleu_rejects_untokenised_captions():
  with pytest.raises(TypeError, match='untokenised'):
    metrics.bleu(['a cat'], [['a cat']])
  with pytest.raises(ValueError, match='one list of references'):
    metrics.bleu([['a']], [])
