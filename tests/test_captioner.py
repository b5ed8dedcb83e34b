"""Show, Attend and Tell: captions as tokens, attention, loss, beam search."""
import csv
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from jaxtag import objectives
from jaxtag.data import captions
from jaxtag.models import beam_search
from jaxtag.models.captioner import ShowAttendTell


def test_vocabulary_and_encoding():
  vocab = captions.Vocabulary.build(
      ['Two girls, with red hair.', 'two boys at night', 'red sky'], 2)
  assert vocab.words == ['<pad>', '<start>', '<end>', '<unk>', 'red', 'two']
  encoder = captions.CaptionEncoder(vocabulary=vocab, max_tokens=3,
                                    references=3)
  out = encoder.encode([b'Two red cats at night', b'red two'], seed=0,
                       position=5)
  picked = int(np.random.default_rng([0, 5, 2]).integers(2))
  expected = {0: [1, 5, 4, 3, 2], 1: [1, 4, 5, 2, 0]}[picked]
  np.testing.assert_array_equal(out['caption_tokens'], expected)
  np.testing.assert_array_equal(out['caption_mask'],
                                np.array(expected) != 0)
  np.testing.assert_array_equal(out['labels'], [[1, 5, 4, 3, 2],
                                                [1, 4, 5, 2, 0],
                                                [0, 0, 0, 0, 0]])
  # BLEU references: a truncated caption keeps its 3 words; each <unk> is a
  # word no hypothesis can match; the missing third reference is left out.
  assert captions.reference_words(out['labels']) == [[5, 4, -1], [4, 5]]
  assert vocab.decode([1, 5, 4, 2, 4]) == ['two', 'red']
  with pytest.raises(captions.SkipExample):
    encoder.encode([b'  '], 0, 0)


def _head(**kw):
  return ShowAttendTell(num_classes=9, context_dim=8, embed_dim=6,
                        attention_dim=5, lstm_dim=7, dropout=0.0, **kw)


def test_attention_sums_to_one_over_real_cells_and_masked_tokens_do_not_count():
  head = _head()
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(2, 3, 4, 10)), jnp.float32)
  cell_mask = np.ones((2, 3, 4), np.float32)
  cell_mask[1, :, 3] = 0  # a padded column, as native-size eval pads
  tokens = jnp.asarray([[1, 4, 5, 2, 0, 0], [1, 6, 2, 0, 0, 0]], jnp.int32)
  kwargs = dict(train=False, feature_mask=jnp.asarray(cell_mask),
                caption_tokens=tokens)
  # Jitted: one compiled program each instead of one per operation.
  variables = jax.jit(lambda f: head.init(jax.random.key(0), f, **kwargs))(
      features)
  out = jax.jit(lambda v, f: head.apply(v, f, **kwargs))(variables, features)
  alpha = np.asarray(out['attention'])
  assert alpha.shape == (2, 5, 12)
  np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-6)
  assert (alpha[1].reshape(5, 3, 4)[:, :, 3] == 0).all()

  batch = {'caption_tokens': tokens,
           'caption_mask': (tokens > 0).astype(jnp.float32).at[:, 0].set(1)}
  objective = objectives.CaptionCE(attention_weight=0.5)
  loss, logged = objective.loss(out, batch)
  # The same loss in numpy: CE over the valid steps, plus the penalty.
  logits = np.asarray(out['sequence_logits'], np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets, steps = np.asarray(tokens[:, 1:]), np.asarray(
      batch['caption_mask'][:, 1:])
  ce = -(np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
         * steps).sum() / steps.sum()
  attended = (alpha * steps[..., None]).sum(1)
  penalty = (cell_mask.reshape(2, 12) * (1 - attended) ** 2).sum(-1).mean()
  assert float(logged['loss_tokens']) == pytest.approx(ce, rel=1e-5)
  assert float(loss) == pytest.approx(ce + 0.5 * penalty, rel=1e-5)

  # Tokens after END are padding: changing them changes nothing.
  noisy = tokens.at[0, 5].set(7).at[1, 4:].set(3)
  out2 = head.apply(variables, features, train=False,
                    feature_mask=jnp.asarray(cell_mask), caption_tokens=noisy)
  loss2, _ = objective.loss(out2, {**batch, 'caption_tokens': noisy})
  assert float(loss2) == pytest.approx(float(loss), rel=1e-6)


def _markov(vocab, steps, seed=0):
  """A decoder whose next-token logits depend on (step, previous token)."""
  table = jnp.asarray(np.random.default_rng(seed).normal(
      size=(steps, vocab, vocab)) * 2, jnp.float32)

  def step_fn(state, tokens):
    return table[state, tokens], state + 1
  return table, step_fn


def _exhaustive(table, *, steps, start, end, banned):
  vocab = table.shape[-1]
  allowed = [v for v in range(vocab) if v not in banned]
  words = [v for v in allowed if v != end]
  log_p = np.asarray(jax.nn.log_softmax(
      jnp.where(jnp.isin(jnp.arange(vocab), jnp.asarray(banned)), -jnp.inf,
                table), -1))
  hyps = []
  for n in range(steps + 1):
    for body in itertools.product(words, repeat=n):
      seq = list(body) + ([end] if n < steps else [])
      if not seq:
        continue
      prev, score = start, 0.0
      for t, tok in enumerate(seq):
        score += log_p[t, prev, tok]
        prev = tok
      hyps.append((score, seq + [end] * (steps - len(seq))))
  return sorted(hyps, key=lambda h: -h[0])


def test_beam_search_against_exhaustive_search():
  vocab, steps, start, end, banned = 5, 3, 1, 2, (0, 1)
  table, step_fn = _markov(vocab, steps)
  exact = _exhaustive(table, steps=steps, start=start, end=end, banned=banned)
  width = len(exact)  # 1 + 2 + 4 + 8 hypotheses: a beam that keeps them all
  # Jitted: one compiled program instead of one per operation and step.
  out = jax.jit(lambda state: beam_search.search(
      step_fn, state, vocab_size=vocab, beam_width=width, max_steps=steps,
      start=start, end=end, banned=banned))(jnp.zeros((1, width), jnp.int32))
  np.testing.assert_allclose(out.log_probs[0], [h[0] for h in exact],
                             rtol=1e-5)
  assert np.asarray(out.sequences[0]).tolist() == [h[1] for h in exact]
  # Width 1 is greedy decoding.
  greedy = jax.jit(lambda state: beam_search.search(
      step_fn, state, vocab_size=vocab, beam_width=1, max_steps=steps,
      start=start, end=end, banned=banned))(jnp.zeros((1, 1), jnp.int32))
  prev, seq = start, []
  log_p = np.asarray(jax.nn.log_softmax(
      jnp.where(jnp.isin(jnp.arange(vocab), jnp.asarray(banned)), -jnp.inf,
                table), -1))
  for t in range(steps):
    prev = end if prev == end and seq else int(np.argmax(log_p[t, prev]))
    seq.append(prev)
  assert np.asarray(greedy.sequences[0, 0]).tolist() == seq


def test_predict_decodes_with_the_training_weights():
  head = _head(beam_width=2, max_steps=4)
  features = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 2, 10)),
                         jnp.float32)
  tokens = jnp.ones((3, 6), jnp.int32)
  # Jitted: one compiled program each instead of one per operation.
  variables = jax.jit(lambda f: head.init(
      jax.random.key(1), f, train=False, caption_tokens=tokens))(features)
  out = jax.jit(lambda v, f: head.apply(v, f, method='predict'))(variables,
                                                                 features)
  assert out['tokens'].shape == (3, 4)
  assert set(np.unique(out['tokens'])) <= set(range(2, 9))
  np.testing.assert_array_equal(out['scores'], out['tokens'])
  # Greedy's first token is the argmax of the teacher-forced first step.
  first = jax.jit(lambda v, f: head.apply(
      v, f, train=False, caption_tokens=tokens))(
          variables, features)['sequence_logits'][:, 0]
  greedy = jax.jit(lambda v, f: head.clone(beam_width=1).apply(
      v, f, method='predict'))(variables, features)
  allowed = first.at[:, :2].set(-jnp.inf)
  np.testing.assert_array_equal(greedy['tokens'][:, 0],
                                jnp.argmax(allowed, -1))


@pytest.mark.slow
def test_tiny_captioner_run_lowers_the_loss_and_reports_bleu(tiny_data_dir,
                                                             tmp_path):
  import json
  from jaxtag import config as config_lib
  from jaxtag import train
  config = config_lib.load_config_file('configs/captioner_flickr8k.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.num_train_steps = 40
  config.eval_every_steps = 40
  config.checkpoint_every_steps = 40
  config.log_every_steps = 1
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  assert 0.0 <= result['BLEU-4'] <= result['BLEU-1'] <= 1.0
  assert result['BLEU-1'] > 0.1  # the scene grammar's common words
  lines = [json.loads(l) for l in open(f'{workdir}/metrics.jsonl')]
  losses = [l['train/loss_tokens'] for l in lines if 'train/loss_tokens' in l]
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
  vocab = captions.Vocabulary.load(f'{workdir}/caption_vocab.json')
  assert 'girl' in vocab.words
  rows = open(f'{workdir}/results_captions.csv').read().splitlines()
  assert rows[0] == 'index,caption,reference' and len(rows) == 65
  from PIL import Image
  with Image.open(f'{workdir}/plots/results_captions.png') as figure:
    assert figure.size[0] > 800  # 4 images a row, captions beneath


def test_photo_config_draws_the_same_scenes_photographed(tiny_data_dir):
  import io

  from PIL import Image

  from jaxtag.data import build
  anime = build.get_builder('synthetic_anime/tiny', tiny_data_dir)
  photo = build.get_builder('synthetic_anime/photo_tiny', tiny_data_dir)
  build.ensure_built(photo)
  a = anime.as_data_source('test')
  p = photo.as_data_source('test')
  assert len(a) == len(p) == 64
  for i in (0, 17, 63):
    assert a[i]['caption'] == p[i]['caption']
    np.testing.assert_array_equal(a[i]['tags'], p[i]['tags'])
    pixels_a = np.asarray(a[i]['image'], np.float32)
    pixels_p = np.asarray(p[i]['image'], np.float32)
    # Same drawing, other rendering: close on average, never identical,
    # and the photo has no flat fills (many more distinct colours).
    assert 0 < np.abs(pixels_a - pixels_p).mean() < 40
    colours = lambda x: len(np.unique(x.reshape(-1, 3), axis=0))  # noqa: E731
    assert colours(pixels_p) > 5 * colours(pixels_a)


def test_teacher_captions_replace_the_records_own(tmp_path):
  import io

  from PIL import Image

  from jaxtag import config as config_lib
  from jaxtag.data import pipeline

  buf = io.BytesIO()
  Image.new('RGB', (8, 8)).save(buf, format='PNG')
  source = [{'image': buf.getvalue(), 'caption': b'two girls'}] * 2
  path = tmp_path / 'eval_train_captions.csv'
  path.write_text('index,caption,reference\n0,red hair,two girls\n')
  targets = captions.load_targets(path)
  assert targets == {0: 'red hair'}
  vocab = captions.Vocabulary(['two', 'girls', 'red', 'hair'])
  encoder = captions.CaptionEncoder(vocabulary=vocab, max_tokens=4,
                                    references=1)
  data = config_lib.defaults().data
  data.update(dict(image_size=8, crop='none', flip=False, workers=0))
  loader = pipeline._Loader(source, data, encoder, 'caption', 0, train=True,
                            label_overrides=targets)
  np.testing.assert_array_equal(loader((0, 0))['caption_tokens'],
                                [1, 6, 7, 2, 0, 0])
  assert loader((1, 1)) is None  # the teacher wrote nothing for record 1
  assert loader.skipped.count == 1
  with pytest.raises(FileNotFoundError,
                     match='label_encoding_kwargs.targets'):
    captions.load_targets(tmp_path / 'missing.csv')


def _sacrebleu(path) -> dict[str, float]:
  """BLEU-1..4 of a captions CSV (caption, its image's one reference) by
  sacrebleu, unsmoothed on the words as written. An <unk> in a reference
  stands for a word the vocabulary lacks: as in jaxtag, it matches nothing."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  hyps = [r['caption'] for r in rows]
  refs = [' '.join(f'<unk{i}>' if w == '<unk>' else w
                   for i, w in enumerate(r['reference'].split()))
          for r in rows]
  return {f'BLEU-{n}': sacrebleu.metrics.BLEU(
      max_ngram_order=n, tokenize='none', smooth_method='none').corpus_score(
          hyps, [refs]).score / 100 for n in range(1, 5)}


@pytest.mark.slow
def test_adaptation_experiment_runs_the_three_captioners(tiny_data_dir,
                                                         tmp_path):
  import json

  from jaxtag.projects import caption_adaptation
  report = caption_adaptation.run(str(tmp_path), 'tiny', tiny_data_dir)
  assert set(report) == set(caption_adaptation.RUNS)
  # Each BLEU as sacrebleu scores the captions the run wrote (where no
  # n-gram matches, coco-caption's epsilons, which jaxtag keeps, leave about
  # 1e-8 rather than sacrebleu's 0).
  for name in caption_adaptation.RUNS:
    for split, file in (('anime_test', 'eval_synthetic_anime_tiny_test'),
                        ('photo_test', 'results')):
      want = _sacrebleu(tmp_path / name / f'{file}_captions.csv')
      got = {k: report[name][split][k] for k in want}
      assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (name, split)
  # The teacher's captions of the photo train split are what the third
  # run trained on; the judged illustrations are the anime test split.
  teacher = (tmp_path / 'photo' / 'eval_train_captions.csv').read_text()
  assert len(teacher.splitlines()) == 257
  assert (tmp_path / 'photo' /
          'eval_synthetic_anime_tiny_test.json').exists()
  config = json.loads((tmp_path / 'adapted_teacher' /
                       'config.json').read_text())
  assert config['data']['cartoonize'] == 'opencv'
  assert config['dataset']['label_encoding_kwargs']['targets'].endswith(
      'eval_train_captions.csv')
  assert '| adapted_teacher |' in (tmp_path / 'adaptation.md').read_text()


def test_adaptation_cartoonize_options_are_typed_and_checked():
  from jaxtag.projects import caption_adaptation
  from jaxtag.data import cartoonize
  options = caption_adaptation.parse_options(
      ['levels=12', 'edge_offset=255', 'smooth_passes=3'])
  assert options == {'levels': 12, 'edge_offset': 255.0, 'smooth_passes': 3}
  assert isinstance(options['levels'], int)
  # The options build a valid CartoonizeOptions.
  assert cartoonize.CartoonizeOptions(**options).levels == 12
  with pytest.raises(ValueError, match='levels'):   # lists the valid keys
    caption_adaptation.parse_options(['colours=3'])
  with pytest.raises(ValueError, match="levels='many' is not a value of type int"):
    caption_adaptation.parse_options(['levels=many'])
  assert caption_adaptation.parse_options(['value_range=0:1']) == {
      'value_range': (0.0, 1.0)}


def test_flat_style_draws_no_ink_outlines():
  """FLAT_STYLE (the embedded anime style: no outlines) keeps a red/blue
  boundary free of dark line pixels; the outlined default draws them."""
  from jaxtag.projects import caption_adaptation
  from jaxtag.data import cartoonize
  image = np.zeros((32, 32, 3), np.uint8)
  image[:, :16] = (200, 40, 40)
  image[:, 16:] = (40, 60, 200)
  brightness = lambda x: x.astype(int).sum(-1)  # noqa: E731
  darkest_fill = brightness(image).min()
  flat = cartoonize.opencv_cartoonize(
      image, cartoonize.CartoonizeOptions(**caption_adaptation.FLAT_STYLE))
  outlined = cartoonize.opencv_cartoonize(image,
                                          cartoonize.CartoonizeOptions())
  assert brightness(flat).min() >= darkest_fill - 30
  assert brightness(outlined).min() < darkest_fill / 4
