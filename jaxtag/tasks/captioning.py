"""The captioning task: decoded token ids [N, T], judged by BLEU.

Metrics: BLEU-1..4 of the decoded captions against each image's
references (jaxtag/data/captions.py); `<name>_captions.csv`; a figure of
the first images with their captions. Its labels are the run's caption
vocabulary, which its bundle carries (`caption_vocab.json`); the bundle
returns token ids, `decode` the sentences; there are no thresholds, and
ONNX cannot express its beam search.
"""
from __future__ import annotations

import csv
import io
import os
from typing import ClassVar

import numpy as np
from etils import epath

from jaxtag import metrics as metrics_lib
from jaxtag.data import captions as captions_lib
from jaxtag.tasks import base

# Images drawn in the caption figure.
EXAMPLES = 8


class Captioning(base.Task):
  name: ClassVar[str] = 'captioning'
  summary_keys: ClassVar[tuple[str, ...]] = ('BLEU-1', 'BLEU-4', 'loss')

  def __init__(self, vocabulary: captions_lib.Vocabulary, tags=None):
    super().__init__(tags)
    self.vocabulary = vocabulary

  @classmethod
  def for_run(cls, *, tags, encoder):
    return cls(encoder.vocabulary, tags)

  @classmethod
  def for_bundle(cls, directory):
    path = os.path.join(directory, captions_lib.VOCAB_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} is missing: the bundle of a captioner carries its '
          'vocabulary. Convert the run again with python -m '
          'jaxtag.serving.convert.')
    return cls(captions_lib.Vocabulary.load(path))

  def __eq__(self, other):
    if isinstance(other, str):
      return other == self.name
    return type(other) is type(self) and other.vocabulary is self.vocabulary

  __hash__ = base.Task.__hash__

  # ---------------------------------------------------------- evaluation ---

  def score(self, pred, *, eval_config, thresholds=None):
    del eval_config, thresholds
    # scores: decoded token ids; labels: [R, T + 2] references per image.
    hyps = [captions_lib.hypothesis_words(t) for t in pred['scores']]
    refs = [captions_lib.reference_words(r) for r in pred['labels']]
    keep = [i for i, r in enumerate(refs) if r]
    result = metrics_lib.bleu([hyps[i] for i in keep],
                              [refs[i] for i in keep])
    return result, pred, None

  def write_files(self, folder, name, pred):
    """Per image: its record index, the decoded caption and its first
    reference (as the vocabulary spells it: unknown words read <unk>)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(['index', 'caption', 'reference'])
    for index, tokens, refs in zip(pred['index'], pred['scores'],
                                   pred['labels']):
      writer.writerow([int(index), self.sentence(tokens),
                       ' '.join(self.vocabulary.decode(refs[0]))])
    (epath.Path(folder) / f'{name}_captions.csv').write_text(out.getvalue())

  def figures(self, pred, *, title='', graphs=None, images=None):
    from jaxtag import plots  # pylint: disable=g-import-not-at-top
    del graphs
    if images is None or not len(pred['index']):
      return {}
    prefix = f'{title}: ' if title else ''
    index = [int(i) for i in pred['index'][:EXAMPLES]]
    captions = [self.sentence(t) for t in pred['scores'][:EXAMPLES]]
    return {'captions': plots.caption_figure(
        images(index), captions, title=f'{prefix}generated captions')}

  def sentence(self, tokens) -> str:
    return ' '.join(self.vocabulary.decode(np.asarray(tokens).astype(
        np.int64)))

  # ---------------------------------------------------------- conversion ---

  def bundle_labels(self):
    """The vocabulary's words in id order, so that the model is rebuilt
    with the right output width."""
    names = list(self.vocabulary.words)
    return (names, np.zeros(len(names), np.int64),
            np.zeros(len(names), np.int64))

  def bundle_thresholds(self, eval_config, workdir, predict):
    del eval_config, workdir, predict
    return {'run': {'policy': 'none'}, 'by_category': {}, 'per_tag': {}}

  def write_bundle_files(self, directory):
    self.vocabulary.save(os.path.join(directory, captions_lib.VOCAB_FILE))

  def onnx_refusal(self):
    return ('it decodes captions with a beam search, a loop over words '
            'whose length depends on the image')

  # -------------------------------------------------------------- bundle ---

  def bundle_output(self, scores, gather_index):
    del gather_index
    return scores   # token ids [B, T], as they are

  def decode(self, tokens):
    """Token ids [B, T] -> sentences (words up to the first END)."""
    return [self.sentence(row) for row in np.asarray(tokens)]

  # ------------------------------------------------------- tag and serve ---

  def empty_scores(self, num_tags):
    del num_tags
    return np.zeros((0, 0), np.float32)

  def thresholds(self, tagger, scores):
    raise ValueError(f'{tagger.bundle.directory} is a captioner: its '
                     'captions have no thresholds.')

  def results(self, tagger, scores):
    """{'caption': sentence} per image."""
    del tagger
    return [{'caption': c} for c in self.decode(scores)]

  def ignored_tag_options(self, changed):
    return list(changed)   # every option that shapes tags

  def text_file(self, result, existing, tags_text):
    """The sentence, after the existing text on a line of its own."""
    del tags_text
    text = result['caption']
    if existing and existing.strip():
      text = existing.rstrip('\r\n') + '\n' + text
    return text

  def csv_header(self):
    return ['file', 'caption']

  def csv_row(self, record):
    return [record['file'], record['caption']]

  def serve_records(self, tagger, scores, requests, page_extras=None):
    del page_extras   # a sentence has no scores
    return [{'file': name, **result} for (name, _), result in
            zip(requests, tagger.results(scores))]
