"""Inference bundles: tag order, variables, thresholds, predictions, StableHLO.

Fast tests use bundles of randomly initialised tiny models
(tests/serving_fixtures.py) and compare them with the trainer's eval step;
slow ones train configs/default.py:tiny once and convert it.
"""
import io
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

import serving_fixtures as fx
from jaxtag import sharding
from jaxtag import train
from jaxtag import trees
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import convert as convert_lib
from jaxtag.serving import images as images_lib
from jaxtag.serving import onnx_export
from jaxtag.serving import stablehlo
from jaxtag.serving import tagger as tagger_lib


def _images(n, size=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3),
                                              dtype=np.uint8)


@pytest.fixture
def random_bundle():
  return fx.shared_bundle()


# ---------------------------------------------------------------- tag order ---


def test_wd_order_puts_the_four_ratings_first_then_general_then_character():
  rows = bundle_lib.wd_order(fx.NAMES, fx.CATEGORIES, np.arange(10) + 1)
  assert [r['name'] for r in rows] == [
      'general', 'sensitive', 'questionable', 'explicit',
      '1girl', '^_^', 'long_hair', 'smile_(happy)', 'solo', 'white_background',
      'hakurei_reimu', 'kirisame_marisa']
  assert [r['index_in_model'] for r in rows] == [1, -1, -1, 5, 0, 3, 4, 6, 8,
                                                 9, 2, 7]
  assert [r['count'] for r in rows][:5] == [2, 0, 0, 6, 1]
  # No ids given: every row says it has none.
  assert [r['tag_id'] for r in rows] == [-1] * 12
  assert [r['category'] for r in rows] == [9] * 4 + [0] * 6 + [4] * 2


def test_wd_order_moves_each_tag_id_with_its_tag():
  ids = [470575, 9999999, 14620, 402217, 15080, 9999998, 1386, 16369,
         212816, 515193]   # model order, as fx.NAMES
  rows = bundle_lib.wd_order(fx.NAMES, fx.CATEGORIES, np.ones(10), ids)
  by_name = dict(zip(fx.NAMES, ids))
  # The ratings the model lacks (sensitive, questionable) have none.
  assert [r['tag_id'] for r in rows] == [
      9999999, -1, -1, 9999998, 470575, 402217, 15080, 1386, 212816, 515193,
      14620, 16369]
  for row in rows[4:]:
    assert row['tag_id'] == by_name[row['name']]
    assert ids[row['index_in_model']] == row['tag_id']


def test_other_categories_sit_between_general_and_character_as_exported():
  names = ['rating:general', 'reimu', 'touhou', '1girl', 'zun', 'solo']
  categories = [9, 4, 3, 0, 1, 0]
  rows = bundle_lib.wd_order(names, categories, np.ones(6))
  assert [r['name'] for r in rows] == [
      'general', 'sensitive', 'questionable', 'explicit', '1girl', 'solo',
      'zun', 'touhou', 'reimu']
  # The ONNX export keeps this order: its csv can stand for the bundle's.
  assert onnx_export.wd_rows(rows) == list(range(len(rows)))


def test_the_onnx_exports_csv_reads_as_the_bundles_own(tmp_path):
  names = ['rating:general', 'reimu', 'touhou', '1girl', 'zun', 'solo']
  categories = [9, 4, 3, 0, 1, 0]
  rows = bundle_lib.wd_order(names, categories, np.arange(6) + 1,
                             [-1, 14620, 1403, 470575, 99001, 212816])
  info = {'index_in_model': [r['index_in_model'] for r in rows],
          'model_tags': names}
  onnx_export.write_tags_csv(str(tmp_path / 'selected_tags.csv'),
                             onnx_export.wd_tags(rows))
  read = bundle_lib.read_tags(str(tmp_path), info)
  # The real categories come back from jaxtag_category.
  assert read == rows
  # A csv whose rows are not bundle.json's is refused.
  swapped = [rows[0], rows[1], rows[2], rows[3], rows[5], rows[4],
             *rows[6:]]
  (tmp_path / 'selected_tags.csv').write_text(bundle_lib.tags_csv(swapped))
  with pytest.raises(ValueError, match="names 'solo' where bundle.json"):
    bundle_lib.read_tags(str(tmp_path), info)


def test_onnx_columns_of_an_older_bundles_order():
  """Bundles once listed other categories after the characters; the graph
  exported from one has them before, and the ONNX backend reorders."""
  import types
  from jaxtag.serving import backends
  tags = [{'name': n, 'category': c} for n, c in [
      ('general', 9), ('1girl', 0), ('reimu', 4), ('touhou', 3), ('zun', 1)]]
  graph = onnx_export.wd_rows(tags)          # bundle row of each column
  columns = backends.graph_columns(types.SimpleNamespace(tags=tags))
  out = np.array([graph])                    # graph column j scores row graph[j]
  assert out[:, columns].tolist() == [[0, 1, 2, 3, 4]]
  assert backends.graph_columns(types.SimpleNamespace(
      tags=bundle_lib.wd_order(['1girl', 'zun', 'reimu'], [0, 1, 4],
                               np.ones(3)))) is None


def test_an_older_bundles_renumbered_tag_ids_read_as_none(tmp_path):
  rows = bundle_lib.wd_order(fx.NAMES, fx.CATEGORIES, np.ones(10))
  info = {'index_in_model': [r['index_in_model'] for r in rows]}
  old = [{**r, 'tag_id': i} for i, r in enumerate(rows)]   # as written before
  (tmp_path / 'selected_tags.csv').write_text(bundle_lib.tags_csv(old))
  read = bundle_lib.read_tags(str(tmp_path), info)
  assert [r['tag_id'] for r in read] == [-1] * 12
  assert [r['name'] for r in read] == [r['name'] for r in rows]
  # Real ids are read as written.
  ids = [r['tag_id'] + 100 for r in old]
  (tmp_path / 'selected_tags.csv').write_text(bundle_lib.tags_csv(
      [{**r, 'tag_id': i} for r, i in zip(rows, ids)]))
  assert [r['tag_id'] for r in bundle_lib.read_tags(str(tmp_path), info)
          ] == ids


def test_a_rating_that_is_not_a_wd_rating_is_an_error():
  with pytest.raises(ValueError, match='rating:safe.*general, sensitive'):
    bundle_lib.wd_order(['rating:safe'], [9], [1])


def test_selected_tags_csv_has_the_wd_header(random_bundle):
  with open(os.path.join(random_bundle[0], 'selected_tags.csv')) as f:
    lines = f.read().splitlines()
  assert lines[0] == 'tag_id,name,category,count'
  assert lines[1:5] == ['-1,general,9,90', '-1,sensitive,9,0',
                        '-1,questionable,9,0', '-1,explicit,9,50']
  assert lines[5] == '-1,1girl,0,100'


# -------------------------------------------------------------- variables ---


def test_params_file_holds_the_inference_variables_exactly(random_bundle):
  directory, _, state, _ = random_bundle
  stored = safetensors.numpy.load_file(os.path.join(directory,
                                                    'params.safetensors'))
  expected = flax.traverse_util.flatten_dict(
      {'params': state.params, 'batch_stats': state.batch_stats,
       'constants': state.constants}, sep='/')
  assert sorted(stored) == sorted(expected)
  assert not any('opt_state' in k or k.startswith('step') for k in stored)
  for key, value in expected.items():
    np.testing.assert_array_equal(stored[key], np.asarray(value), err_msg=key)


def test_flatten_and_unflatten_are_inverse():
  tree = {'params': {'a': {'kernel': np.ones((2, 3))}, 'b': np.zeros(4)},
          'constants': {'order': np.arange(3)}}
  flat = trees.flatten(tree)
  # flax's own flattening is the reference, for every key and leaf.
  reference = flax.traverse_util.flatten_dict(tree, sep='/')
  assert sorted(flat) == sorted(reference) == [
      'constants/order', 'params/a/kernel', 'params/b']
  assert all(flat[key] is leaf for key, leaf in reference.items())
  back = trees.unflatten(flat)
  assert jax.tree.structure(back) == jax.tree.structure(tree)
  assert all(a is b for a, b in zip(jax.tree.leaves(back),
                                    jax.tree.leaves(tree)))
  # Dataclass trees (a TrainState) flatten by field name.
  state = State(params={'w': np.ones(2)}, step=np.int32(3))
  assert sorted(trees.flatten(state)) == ['params/w', 'step']
  with pytest.raises(ValueError, match='contains "/"'):
    trees.flatten({'a/b': np.ones(1)})


@flax.struct.dataclass
class State:
  params: dict
  step: np.ndarray


# ------------------------------------------------------------- predictions ---


def test_bundle_predicts_what_the_trainer_evaluates(random_bundle):
  directory, trainable, state, _ = random_bundle
  bundle = bundle_lib.load_bundle(directory)
  images = _images(16)
  expected = fx.trainer_scores(trainable, state, images)
  np.testing.assert_allclose(bundle.model_scores(images), expected,
                             rtol=1e-5, atol=1e-6)
  scores = bundle.predict(images)
  assert scores.shape == (16, 12)
  index = [r['index_in_model'] for r in bundle.tags]
  for column, i in enumerate(index):
    want = np.zeros(16) if i < 0 else expected[:, i]
    np.testing.assert_allclose(scores[:, column], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(bundle.to_model_order(scores),
                                bundle.model_scores(images))


def test_predict_rejects_images_that_are_not_uint8_nhwc(random_bundle):
  bundle = random_bundle[3]
  with pytest.raises(ValueError, match='uint8 images'):
    bundle.predict(np.zeros((2, 32, 32, 3), np.float32))


def test_missing_bundle_file_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match='bundle.json.*convert'):
    bundle_lib.load_bundle(tmp_path)


@pytest.mark.parametrize('spec', ['configs/cnn_rnn_danbooru.py:tiny',
                                  'configs/vallet_pixiv.py:tiny'])
@pytest.mark.slow  # a beam search or ten crops, compiled three times
def test_heads_with_their_own_predict_serve_through_bundle_and_stablehlo(
    spec, tmp_path):
  directory, trainable, state = fx.make_bundle(tmp_path, fx.tiny_config(spec))
  bundle = bundle_lib.load_bundle(directory)
  size = bundle.preprocess.size
  images = _images(8, size)
  expected = fx.trainer_scores(trainable, state, images)
  np.testing.assert_allclose(bundle.model_scores(images), expected,
                             rtol=1e-5, atol=1e-6)
  stablehlo.export_bundle(bundle, directory)
  served = np.asarray(stablehlo.load_stablehlo(directory)(images[:3]))
  np.testing.assert_allclose(served, bundle.predict(images)[:3], rtol=1e-5,
                             atol=1e-6)


def test_stablehlo_round_trip_with_a_symbolic_batch(random_bundle, tmp_path):
  bundle = random_bundle[3]
  path = stablehlo.export_bundle(bundle, str(tmp_path))
  call = stablehlo.load_stablehlo(path)
  for n in (1, 5):
    images = _images(n, seed=n)
    np.testing.assert_allclose(np.asarray(call(images)), bundle.predict(images),
                               rtol=1e-5, atol=1e-6)
  exported = jax.export.deserialize(bytearray(open(path, 'rb').read()))
  assert str(exported.in_avals[0].shape[0]) == 'b'
  with pytest.raises(FileNotFoundError, match='--format stablehlo'):
    stablehlo.load_stablehlo(str(tmp_path / 'nothing'))


# -------------------------------------------------------------- thresholds ---


def test_precision_recall_threshold_matches_a_brute_force_search():
  rng = np.random.default_rng(0)
  scores = rng.random((200, 6)).astype(np.float32)
  labels = rng.random((200, 6)) < np.array([0.1, 0.3, 0.5, 0.05, 0.2, 0.0])
  scores = np.where(labels, np.minimum(scores + 0.3, 0.999), scores)
  got = convert_lib.precision_recall_per_tag(scores, labels,
                                             np.full(6, 0.77))
  for c in range(6):
    if not labels[:, c].any():
      assert got[c] == pytest.approx(0.77)
      continue
    grid = np.arange(1, 100) / 100
    gaps = []
    for t in grid:
      predicted = scores[:, c] >= np.float32(t)
      tp = (predicted & labels[:, c]).sum()
      precision = tp / max(predicted.sum(), 1)
      recall = tp / labels[:, c].sum()
      gaps.append(abs(precision - recall) if predicted.any() else np.inf)
    # Where some tag is predicted, |P - R| = tp |n_true - n_pred| / (...):
    # the grid point of fewest count difference is also of least |P - R|.
    best = grid[int(np.argmin(gaps))]
    assert got[c] == pytest.approx(best), c


def test_threshold_policies_come_out_in_bundle_order(random_bundle):
  bundle = random_bundle[3]
  scores = bundle.predict(_images(2))
  assert bundle.threshold_values(scores, 'run').tolist() == [
      0.5, 1.0, 1.0, 0.5] + [0.5] * 8
  f1 = np.linspace(0.1, 0.9, 10)
  index = [r['index_in_model'] for r in bundle.tags]
  np.testing.assert_allclose(bundle.threshold_values(scores, 'f1'),
                             [1.0 if i < 0 else f1[i] for i in index],
                             rtol=1e-6)
  with pytest.raises(ValueError, match='valid: run, category, f1'):
    bundle.threshold_values(scores, 'nope')


def test_tagger_overrides_thresholds_by_category(random_bundle):
  tagger = tagger_lib.Tagger(random_bundle[3], general_threshold=0.0,
                             character_threshold=1.5)
  result = tagger.tag(list(_images(2)))
  assert set(result[0]) == {'rating', 'general', 'character'}
  assert list(result[0]['rating']) == ['general', 'sensitive', 'questionable',
                                      'explicit']
  assert result[0]['rating']['sensitive'] == 0.0
  assert len(result[0]['general']) == 6 and result[0]['character'] == {}
  values = list(result[0]['general'].values())
  assert values == sorted(values, reverse=True)
  everything = tagger_lib.Tagger(random_bundle[3], threshold=1.5).tag(
      list(_images(1)))[0]
  assert everything['general'] == {} and everything['character'] == {}


def test_the_tasks_server_records_are_the_taggers_results(random_bundle):
  """What jaxtag.serve answers per image: the tagger's result, and with
  scores every score and threshold, handed to the page's own summary."""
  tagger = tagger_lib.Tagger(random_bundle[3], general_threshold=0.3)
  images = list(_images(2))
  scores = tagger.scores(images)
  seen = []

  def page_extras(row_scores, row_thresholds):
    seen.append((row_scores, row_thresholds))
    return 'every score', 'per category'

  records = tagger.task.serve_records(
      tagger, scores, [('a.png', False), ('b.png', True)], page_extras)
  results = tagger.results(scores)
  assert records == [{'file': 'a.png', **results[0]},
                     {'file': 'b.png', **results[1], 'scores': 'every score',
                      'thresholds': 'per category'}]
  assert len(seen) == 1
  np.testing.assert_array_equal(seen[0][0], scores[1])
  np.testing.assert_array_equal(seen[0][1], tagger.thresholds(scores)[1])
  assert (seen[0][1][tagger.groups['general']] == 0.3).all()


def test_tagger_takes_paths_pil_images_and_arrays_alike(random_bundle,
                                                        tmp_path):
  pixels = _images(1, size=48)[0]
  Image.fromarray(pixels).save(tmp_path / 'a.png')
  tagger = tagger_lib.Tagger(random_bundle[3], batch_size=2)
  inputs = [str(tmp_path / 'a.png'), Image.fromarray(pixels), pixels]
  # The three reach the model as the same pixels ...
  prepared = [tagger.prepare(x) for x in inputs]
  for other in prepared[1:]:
    assert other[0] == prepared[0][0]
    np.testing.assert_array_equal(other[1], prepared[0][1])
  # ... and score alike, up to the last bit XLA may round differently in
  # another row or (padded) batch.
  a, b, c = tagger.scores(inputs)
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)
  # The default geometry of configs/default.py is 'square': a plain resize.
  resized = np.asarray(Image.fromarray(pixels).resize((32, 32),
                                                      Image.BILINEAR))
  bundle = tagger.bundle
  np.testing.assert_allclose(a, bundle.predict(resized[None])[0], atol=1e-6)


# ------------------------------------------------------------------ images ---


def test_rgba_is_composited_on_white():
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (200, 100, 0, 255)    # opaque
  rgba[0, 1] = (200, 100, 0, 0)      # transparent: white
  rgba[1, 0] = (0, 0, 0, 128)        # half black over white
  rgb = np.asarray(images_lib.from_array(rgba))
  assert rgb[0, 0].tolist() == [200, 100, 0]
  assert rgb[0, 1].tolist() == [255, 255, 255]
  assert abs(int(rgb[1, 0, 0]) - round(255 * 127 / 255)) <= 1


def test_other_modes_become_rgb():
  gray = images_lib.from_array(np.full((3, 3), 7, np.uint8))
  assert np.asarray(gray).tolist()[0][0] == [7, 7, 7]
  deep = Image.fromarray(np.full((2, 2), 65535, np.uint16))
  assert np.asarray(images_lib.to_rgb(deep))[0, 0].tolist() == [255] * 3
  palette = Image.new('P', (2, 2), 0)
  palette.putpalette([10, 20, 30] + [0] * 765)
  palette.info['transparency'] = 0
  assert np.asarray(images_lib.to_rgb(palette))[0, 0].tolist() == [255] * 3
  with pytest.raises(ValueError, match='uint8'):
    images_lib.from_array(np.zeros((2, 2, 3), np.float32))


def test_pad_geometry_centres_the_image_on_white():
  preprocess = bundle_lib.Preprocess(size=32, geometry='pad')
  bucket, pixels, mask = images_lib.Geometry(preprocess)(
      Image.new('RGB', (40, 20), (0, 0, 0)))
  assert bucket == 0 and mask is None and pixels.shape == (32, 32, 3)
  # Padded first to 40 x 40 (rows 10..29 black), then resized to 32: rows
  # 8..23; the filter blends the two rows on each edge.
  assert (pixels[:7] == 255).all() and (pixels[25:] == 255).all()
  assert (pixels[9:23] == 0).all()
  # The contract's order: EXIF turn, alpha on white, pad, resize.
  rgba = Image.new('RGBA', (20, 40), (0, 0, 0, 0))
  exif = Image.Exif()
  exif[0x0112] = 6   # turned 90 degrees: shown 40 x 20
  buffer = io.BytesIO()
  rgba.save(buffer, 'PNG', exif=exif.tobytes())
  image = images_lib.open_image(buffer)
  assert image.size == (40, 20) and image.mode == 'RGB'
  assert (np.asarray(image) == 255).all()


# ---------------------------------------------------- a trained run (slow) ---


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data_dir):
  config = fx.tiny_config()
  config.dataset.data_dir = tiny_data_dir
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(config, workdir)
  out = str(tmp_path_factory.mktemp('converted'))
  convert_lib.convert(workdir, out)
  return config, workdir, out


def _size(path):
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)


@pytest.mark.slow  # trains a run
def test_converted_run_predicts_the_trainers_eval_predictions(
    trained, trainer_and_bundle_scores):
  config, workdir, out = trained
  want, served, _ = trainer_and_bundle_scores(config, workdir, out)
  np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5)
  tagger = tagger_lib.Tagger(out, batch_size=16)

  saved = json.loads(open(os.path.join(workdir, 'thresholds.json')).read())
  bundled = json.loads(open(os.path.join(out, 'thresholds.json')).read())
  assert bundled['run'] == saved
  assert bundled['by_category'] == {'general': 0.35, 'character': 0.85}
  assert set(bundled['per_tag']) == {'category', 'f1', 'precision_recall'}
  assert len(bundled['per_tag']['f1']) == len(tagger.names)
  steps = os.listdir(os.path.join(workdir, 'checkpoints'))
  checkpoint = os.path.join(workdir, 'checkpoints',
                            str(max(int(s) for s in steps if s.isdigit())))
  print(f'bundle {_size(out)} bytes, checkpoint {_size(checkpoint)} bytes')
  assert _size(os.path.join(out, 'params.safetensors')) < _size(checkpoint)


@pytest.mark.slow  # subprocesses on a trained run
def test_convert_command_and_a_bundle_that_needs_no_orbax(trained, tmp_path):
  _, workdir, _ = trained
  env = {**os.environ, 'PYTHONPATH': os.getcwd(), 'JAX_PLATFORMS': 'cpu'}
  out = str(tmp_path / 'b')
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.serving.convert', '--workdir', workdir,
       '--out', out, '--format', 'stablehlo', '--step', '4'],
      capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert json.loads(open(os.path.join(out, 'bundle.json')).read())['step'] == 4
  code = ('import sys, numpy as np, jaxtag.serving as s; '
          f'b = s.load_bundle({out!r}); x = np.zeros((2, 32, 32, 3), np.uint8);'
          f' d = abs(b.predict(x) - np.asarray(s.load_stablehlo({out!r})(x)));'
          ' assert d.max() < 1e-5, d.max(); '
          "assert 'orbax' not in ' '.join(sys.modules), 'orbax loaded'; "
          "assert 'jaxtag.train' not in sys.modules; print('ok')")
  done = subprocess.run([sys.executable, '-c', code], capture_output=True,
                        text=True, env=env, check=False)
  assert done.stdout.strip() == 'ok', done.stderr
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.serving.convert', '--workdir', workdir,
       '--out', out, '--step', '5'], capture_output=True, text=True, env=env,
      check=False)
  assert done.returncode != 0 and 'saved steps: 4, 8' in done.stderr


@pytest.mark.slow  # compiles a third model
def test_native_geometry_batches_by_bucket_with_the_image_mask(tmp_path):
  config = fx.tiny_config(**{'eval.geometry': 'native'})
  directory, trainable, state = fx.make_bundle(tmp_path, config)
  tagger = tagger_lib.Tagger(directory, batch_size=2)
  rng = np.random.default_rng(1)
  wide = rng.integers(0, 256, (40, 80, 3), np.uint8)    # -> bucket 32 x 64
  square = rng.integers(0, 256, (50, 50, 3), np.uint8)  # -> bucket 32 x 32
  scores = tagger.scores([wide, square, wide])
  np.testing.assert_array_equal(scores[0], scores[2])
  # By hand: the wide image resized to 64 x 32 fills its bucket exactly.
  pixels = np.asarray(Image.fromarray(wide).resize((64, 32), Image.BILINEAR))
  batch = fx.eval_batch(trainable, np.stack([pixels] * 8))
  batch['image_mask'] = np.ones((8, 32, 64), np.uint8)
  out = trainable.eval_step(state, sharding.to_global(batch, trainable.mesh))
  served = tagger.bundle.to_model_order(scores[:1])
  np.testing.assert_allclose(served, np.asarray(out['scores'])[:1],
                             rtol=1e-5, atol=1e-6)
