"""CNN-RNN: the beam search against exhaustive search and a plain-Python
beam, the decoder against a numpy LSTM, its prediction path against its own
teacher-forced pass, training and prediction through the trainer, and its
config against the baseline's."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse

from jaxtag import config as config_lib
from jaxtag import sharding
from jaxtag import train
from jaxtag.data import tag_metadata
from jaxtag.models import beam_search
from jaxtag.models.heads import lstm_decoder

C = 4                        # labels; START = 4, END = 5
START, END, V = C, C + 1, C + 2
BASE = V + 1                 # prefix codes: one digit per token, 0 = none


# ------------------------------------------- a decoder made of a table ---


def _code(prefix):
  code = 0
  for token in prefix:
    code = code * BASE + token + 1
  return code


def _table_step(table):
  """A decoder whose logits depend on the whole prefix: table[b, code]."""
  table = jnp.asarray(table)

  def step(code, tokens):
    code = code * BASE + tokens + 1
    return table[jnp.arange(code.shape[0])[:, None], code], code

  return step


def _tables(batch, max_steps, seed, scale=2.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal((batch, BASE ** max_steps, V))
          ).astype(np.float32)


def _search(table, width, max_steps):
  batch = table.shape[0]
  # Jitted: one compiled program instead of one per operation and step.
  search = jax.jit(lambda table, state: beam_search.beam_search(
      _table_step(table), state, num_labels=C, beam_width=width,
      max_steps=max_steps))
  return jax.device_get(search(table, jnp.zeros((batch, width), jnp.int32)))


def _log_probs(logits, prefix):
  """Log-softmax over the tokens still allowed after `prefix` (numpy)."""
  allowed = np.ones(V, bool)
  allowed[START] = False
  allowed[[t for t in prefix if t < C]] = False
  x = np.where(allowed, logits.astype(np.float64), -np.inf)
  top = x[allowed].max()
  return x - top - np.log(np.exp(x[allowed] - top).sum())


def _padded(tokens, max_steps):
  return tuple(tokens) + (END,) * (max_steps - len(tokens))


def _exhaustive(table_b, max_steps):
  """Every hypothesis (distinct labels, then END unless max_steps labels)
  with its log-probability, best first."""
  out = []
  for n in range(max_steps + 1):
    for labels in itertools.permutations(range(C), n):
      tokens = list(labels) + ([END] if n < max_steps else [])
      prefix, score = [START], 0.0
      for token in tokens:
        score += _log_probs(table_b[_code(prefix)], prefix)[token]
        prefix.append(token)
      out.append((score, _padded(tokens, max_steps)))
  return sorted(out, key=lambda s: -s[0])


def _python_beam(table_b, width, max_steps):
  """A plain beam search: lists of (score, prefix, finished)."""
  beams, label_probs = [(0.0, [START], False)], np.zeros(C)
  for _ in range(max_steps):
    candidates = []
    for score, prefix, done in beams:
      if done:
        candidates.append((score, prefix + [END], True))
        continue
      log_p = _log_probs(table_b[_code(prefix)], prefix)
      label_probs = np.maximum(label_probs, np.exp(log_p[:C]))
      candidates += [(score + log_p[t], prefix + [t], t == END)
                     for t in range(V) if np.isfinite(log_p[t])]
    beams = sorted(candidates, key=lambda s: -s[0])[:width]
  return [(s, tuple(p[1:])) for s, p, _ in beams], label_probs


# --------------------------------------------------------- beam search ---


@pytest.mark.parametrize('max_steps,width', [(3, 17), (4, 41)])
def test_a_beam_wide_enough_is_exhaustive_search(max_steps, width):
  # width >= the number of prefixes one step before the last, so nothing
  # is pruned: the beams are the exhaustive top `width`, in order.
  tables = _tables(3, max_steps, seed=max_steps)
  out = _search(tables, width, max_steps)
  for b in range(3):
    best = _exhaustive(tables[b], max_steps)[:width]
    np.testing.assert_allclose(out.log_probs[b], [s for s, _ in best],
                               rtol=1e-5, atol=1e-5)
    assert [tuple(s) for s in out.sequences[b].tolist()] == [
        seq for _, seq in best]


@pytest.mark.parametrize('width', [1, 2, 3])
def test_a_narrow_beam_matches_a_python_beam_search(width):
  max_steps = 4
  tables = _tables(6, max_steps, seed=10 + width)
  out = _search(tables, width, max_steps)
  for b in range(6):
    beams, label_probs = _python_beam(tables[b], width, max_steps)
    np.testing.assert_allclose(out.log_probs[b], [s for s, _ in beams],
                               rtol=1e-5, atol=1e-5)
    assert [tuple(s) for s in out.sequences[b].tolist()] == [
        seq for _, seq in beams]
    # Each label's score: its highest probability in any live beam.
    np.testing.assert_allclose(out.label_probs[b], label_probs, rtol=1e-5,
                               atol=1e-7)
    for seq in out.sequences[b]:
      labels = [t for t in seq if t < C]
      assert len(labels) == len(set(labels)) and START not in seq


def test_width_3_finds_the_set_that_greedy_misses():
  max_steps = 3
  table = np.zeros((1, BASE ** max_steps, V), np.float32)
  table[0, _code([START])] = [3.0, 2.9, -5, -5, 0, -5]   # 0 a bit likelier...
  table[0, _code([START, 1])] = [-9, 0, -9, -9, 0, 9.0]  # ...but 1 is sure
  # After 0 every continuation is equally likely (the table's zeros).
  exhaustive = _exhaustive(table[0], max_steps)
  assert exhaustive[0][1] == (1, END, END)
  greedy = _search(table, 1, max_steps)
  assert greedy.sequences[0, 0, 0] == 0
  beam = _search(table, 3, max_steps)
  assert tuple(beam.sequences[0, 0]) == exhaustive[0][1]
  assert beam.log_probs[0, 0] == pytest.approx(exhaustive[0][0], abs=1e-5)
  assert beam.log_probs[0, 0] > greedy.log_probs[0, 0]
  labels = beam_search.multi_hot(jnp.asarray(beam.sequences[:, 0]), C)
  np.testing.assert_array_equal(labels, [[0, 1, 0, 0]])


# ------------------------------------------------------------- decoder ---


def _decoder(**kw):
  return lstm_decoder.LSTMDecoder(num_classes=C, embed_dim=8, lstm_dim=6,
                                  **kw)


def _inputs(seed=0, batch=3):
  rng = np.random.default_rng(seed)
  features = rng.standard_normal((batch, 2, 3, 5)).astype(np.float32)
  sequence = np.array([[START, 2, 0, END, END], [START, 1, END, END, END],
                       [START, 3, 1, 2, 0]][:batch], np.int32)
  return jnp.asarray(features), jnp.asarray(sequence)


def _numpy_decoder(params, features, tokens):
  """Logits [B, T, V] of the decoder on the given input tokens, by numpy."""
  p = jax.tree.map(np.asarray, params)
  cell, emb = p['cell'], p['label_embedding']['embedding']
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  image = features.mean((1, 2)) @ p['image_proj']['kernel'] + (
      p['image_proj']['bias'])
  c = h = np.zeros((features.shape[0], 6))
  out = []
  for t in range(tokens.shape[1]):
    x = emb[tokens[:, t]]
    gate = {g: x @ cell[f'i{g}']['kernel'] + h @ cell[f'h{g}']['kernel']
            + cell[f'h{g}']['bias'] for g in 'ifgo'}
    c = sigmoid(gate['f']) * c + sigmoid(gate['i']) * np.tanh(gate['g'])
    h = sigmoid(gate['o']) * np.tanh(c)
    joint = 1.7159 * np.tanh(2 / 3 * (h @ p['recurrent_proj']['kernel']
                                      + image))
    logits = joint @ emb.T + p['output_bias']
    logits[:, START] = -1e9
    out.append(logits)
  return np.stack(out, axis=1)


def test_teacher_forced_logits_match_a_numpy_lstm():
  features, sequence = _inputs()
  head = _decoder()
  # Jitted: one compiled program each instead of one per operation.
  variables = jax.jit(lambda f: head.init(
      jax.random.key(0), f, train=False, label_sequence=sequence))(features)
  out = jax.jit(lambda v, f: head.apply(
      v, f, train=True, label_sequence=sequence))(variables, features)
  logits = np.asarray(out['sequence_logits'])
  assert logits.shape == (3, 4, V)
  want = _numpy_decoder(variables['params'], np.asarray(features),
                        np.asarray(sequence)[:, :-1])
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
  # START is never predicted; the tied output reads the embedding matrix.
  assert (jax.nn.softmax(logits, -1)[..., START] == 0).all()
  assert variables['params']['label_embedding']['embedding'].shape == (V, 8)
  assert 'Dense_0' not in variables['params']


def test_prediction_is_the_teacher_forced_model_searched():
  features, sequence = _inputs(seed=1)
  head = _decoder(beam_width=1, max_steps=4)  # greedy: checkable by hand
  variables = head.init(jax.random.key(1), features, train=False,
                        label_sequence=sequence)
  pred = jax.jit(lambda v, f: head.apply(v, f, method='predict'))(
      variables, features)
  best = np.asarray(pred['best_sequence'])
  assert pred['scores'].shape == (3, C) and best.shape == (3, 4)
  # Feed the emitted tokens back with teacher forcing: every emitted token
  # is the argmax of the allowed ones, and each label's score is its
  # highest probability before END.
  forced = np.concatenate([np.full((3, 1), START), best], axis=1)
  logits = np.asarray(head.apply(variables, features, train=False,
                                 label_sequence=jnp.asarray(forced))
                      ['sequence_logits'])
  for b in range(3):
    prefix, label_probs = [START], np.zeros(C)
    for t in range(4):
      log_p = _log_probs(logits[b, t], prefix)
      label_probs = np.maximum(label_probs, np.exp(log_p[:C]))
      assert best[b, t] == np.argmax(log_p)
      prefix.append(best[b, t])
      if best[b, t] == END:
        break
    np.testing.assert_allclose(pred['scores'][b], label_probs, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_array_equal(
        pred['best_beam'][b], np.isin(np.arange(C), best[b]).astype(float))


def test_feature_mask_drops_padded_cells_from_the_image():
  features, sequence = _inputs(seed=2)
  head = _decoder(max_steps=3)
  variables = jax.jit(lambda f: head.init(
      jax.random.key(2), f, train=False, label_sequence=sequence))(features)
  mask = np.ones((3, 2, 3), np.float32)
  mask[:, :, 2] = 0
  padded = np.asarray(features).copy()
  padded[:, :, 2] = 100.0   # whatever sits in padding must not count
  # Jitted: one compiled program each instead of one per operation and step.
  predict = jax.jit(lambda v, f, m: head.apply(v, f, method='predict',
                                               feature_mask=m))
  with_mask = predict(variables, jnp.asarray(padded), jnp.asarray(mask))
  cropped = predict(variables, features[:, :, :2], None)
  np.testing.assert_allclose(with_mask['scores'], cropped['scores'],
                             rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ through trainer ---


@pytest.fixture
def decoder_config(tiny_data_dir):
  config = config_lib.load_config_file('configs/cnn_rnn_danbooru.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.optim.lr = 1e-2
  return config


def _counts_only(num_classes):
  rng = np.random.default_rng(0)
  return tag_metadata.TagMetadata(
      names=[f't{i}' for i in range(num_classes)],
      categories=np.zeros(num_classes, int),
      counts=rng.integers(1, 100, num_classes),
      cooccurrence=scipy.sparse.eye_array(num_classes, format='csr'),
      num_images=100)


@pytest.mark.slow  # several training steps
def test_decoder_trains_and_predicts_without_labels(decoder_config):
  mesh = sharding.create_mesh()
  tags = _counts_only(12)
  t = train.Trainable(decoder_config, mesh, num_classes=12,
                      num_train_steps=100, tag_metadata=tags)
  assert t.train_keys == ('label_sequence',) and t.predict_keys == ()
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)

  def batch(size, eval_rows):
    rows = [t.encoder.encode(rng.choice(12, size, replace=False), 0, i)
            for i in range(16)]
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    out['image'] = images
    if eval_rows:
      out.update(mask=np.ones(16, np.float32),
                 index=np.arange(16, dtype=np.int32))
    return out

  a, b = batch(3, True), batch(5, True)
  # Most frequent tag first, as the encoder was told.
  first = a['label_sequence'][:, 1:4]
  assert (np.diff(tags.counts[first], axis=1) <= 0).all()
  state = t.fresh_state()
  out_a = jax.device_get(t.eval_step(state, sharding.to_global(a, mesh)))
  out_b = jax.device_get(t.eval_step(state, sharding.to_global(b, mesh)))
  np.testing.assert_array_equal(out_a['scores'], out_b['scores'])
  assert out_a['scores'].shape == (16, 12)
  assert ((out_a['scores'] >= 0) & (out_a['scores'] <= 1)).all()
  assert abs(float(out_a['loss_sum']) - float(out_b['loss_sum'])) > 1e-3

  train_batch = sharding.to_global(
      {k: v for k, v in a.items() if k not in ('mask', 'index')}, mesh)
  losses = []
  for _ in range(20):
    state, m = t.train_step(state, train_batch, t.step_rng)
    losses.append(float(m['loss']))
  assert losses[-1] < 0.5 * losses[0], losses


# -------------------------------------------------------------- config ---


def _flat(config):
  return {k: v for k, v in config_lib._keys(config).items()  # pylint: disable=protected-access
          if not hasattr(v, 'items')}


def test_synthetic_variant_is_the_baseline_with_the_decoder():
  base = config_lib.load_config_file('configs/default.py')
  ours = config_lib.load_config_file('configs/cnn_rnn_danbooru.py:synthetic')
  config_lib.validate(ours)
  a, b = _flat(base), _flat(ours)
  changed = {k for k in a if a[k] != b[k]}
  assert changed == {'model.head', 'loss.name', 'dataset.label_encoding'}
  assert (ours.model.head, ours.loss.name, ours.dataset.label_encoding) == (
      'lstm_decoder', 'sequence_ce', 'sequence')
  assert dict(base.dataset.label_encoding_kwargs) == {}
  assert dict(ours.dataset.label_encoding_kwargs) == {'order': 'frequent',
                                                      'max_labels': 24}
  kwargs = dict(ours.model.head_kwargs)
  assert kwargs == {'embed_dim': 64, 'lstm_dim': 512, 'beam_width': 3,
                    'max_steps': 25}
  # The beam's length follows the sequence's.
  ours.dataset.label_encoding_kwargs.max_labels = 10
  assert ours.model.head_kwargs.max_steps == 11
  default = config_lib.load_config_file('configs/cnn_rnn_danbooru.py')
  config_lib.validate(default)
  assert default.dataset.name == 'danbooru'
  with pytest.raises(ValueError, match='valid: synthetic, tiny'):
    config_lib.load_config_file('configs/cnn_rnn_danbooru.py:huge')


@pytest.mark.slow
def test_tiny_run_end_to_end(decoder_config, tmp_path, independent_test_map):
  """The decoder trains through the trainer, and the mAP the run reports is
  the one its checkpoint's beam search gives the test images (sklearn)."""
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(decoder_config, workdir)
  assert result['mAP'] == pytest.approx(
      independent_test_map(decoder_config, workdir), rel=1e-4)
  assert np.isfinite(result['loss'])
