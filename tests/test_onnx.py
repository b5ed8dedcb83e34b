"""ONNX export: each backbone and head against JAX in onnxruntime, and a
WD-style client on the exported files against the jaxtag tagger."""
import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import onnx  # the `onnx` extra, in `test` too
import onnxruntime as ort

from jaxtag import config as config_lib  # noqa: E402
from jaxtag.models import build_model  # noqa: E402
from jaxtag.serving import onnx_export  # noqa: E402
from jaxtag.serving.onnx import UnsupportedError  # noqa: E402
from jaxtag.serving.onnx import to_onnx  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _model(backbone, head='linear', backbone_kwargs=None, head_kwargs=None,
           pool='gap', num_classes=7, size=64, **init_features):
  c = config_lib.defaults().model
  c.backbone, c.head, c.pool = backbone, head, pool
  c.backbone_kwargs = backbone_kwargs or {}
  c.head_kwargs = head_kwargs or {}
  model = build_model(c, num_classes)

  @jax.jit
  def init():
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                           train=False, **init_features)
    # Non-trivial batch-norm statistics, so folding them is tested.
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.05 * jnp.abs(jax.random.normal(k, x.shape))
              for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)
  return model, init()


def _session(proto):
  onnx.checker.check_model(proto, full_check=True)
  return ort.InferenceSession(proto.SerializeToString(),
                              providers=['CPUExecutionProvider'])


def _scores_of(outputs):
  return outputs['scores'] if isinstance(outputs, dict) else jax.nn.sigmoid(
      outputs)


# One block per stage (bottlenecks, strided and symmetric padding) and two
# dense layers per DenseNet block (concatenation, transitions) hold every
# operation of the full depths; the translator sees the same primitives,
# and constant folding a 121-layer graph cost minutes.
PARTS = [
    ('resnet18', 'linear', {'width': 0.125}, {}, 'gap'),
    ('resnet50', 'linear', {'width': 0.0625, 'symmetric_padding': True,
                            'stage_sizes': (1, 1, 1, 1)}, {}, 'gmp'),
    ('vallet', 'vallet', {'width': 0.0625}, {'width': 0.01}, 'gap'),
    ('densenet121', 'linear', {'width': 0.125, 'block_sizes': (2, 2, 2, 2)},
     {}, 'gap'),
]


@pytest.mark.slow
@pytest.mark.parametrize('backbone,head,backbone_kwargs,head_kwargs,pool',
                         PARTS)
def test_exported_graph_matches_jax(backbone, head, backbone_kwargs,
                                    head_kwargs, pool):
  size, num_classes = 64, 7
  model, variables = _model(backbone, head, backbone_kwargs, head_kwargs,
                            pool, num_classes, size)
  # Outputs in a WD order: two missing ratings (the zero column), then a
  # permutation of the model's tags.
  order = np.array([num_classes, 3, num_classes, 0, 6, 5, 4, 2, 1])
  proto = onnx_export.model_to_onnx(
      model, variables, _scores_of, gather_index=order, mean=MEAN, std=STD,
      image_size=size, head_name=head)
  session = _session(proto)
  (inp,), (out,) = session.get_inputs(), session.get_outputs()
  assert inp.name == 'input' and inp.shape[1:] == [size, size, 3]
  assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)

  predict = jax.jit(lambda x: _scores_of(model.apply(variables, x,
                                                     method='predict')))

  def reference(bgr):  # independent of the export: RGB, normalise, predict
    rgb = bgr[..., ::-1] / 255.0
    x = jnp.asarray((rgb - np.array(MEAN)) / np.array(STD), jnp.float32)
    scores = np.asarray(predict(x))
    return np.concatenate([scores, np.zeros((len(x), 1))], axis=1)[:, order]

  rng = np.random.default_rng(0)
  for batch in (1, 3):
    bgr = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    got = session.run(None, {inp.name: bgr})[0]
    want = reference(bgr)
    assert got.shape == (batch, len(order))
    assert np.abs(want).max() > 1e-3
    # Probabilities to 1e-4; Vallet's raw confidences (sums of unbounded
    # activations) to 1e-4 of their scale.
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=1e-4 * scale, rtol=0)
    assert np.all(got[:, [0, 2]] == 0)


@pytest.mark.slow
def test_vallet_training_network_and_masked_pooling_translate():
  """The head's training network (GAP + 3 FC) and its masked multi-scale
  pooling, translated directly, match JAX with a symbolic batch."""
  model, variables = _model('vallet', 'vallet', {'width': 0.0625},
                            {'width': 0.01}, size=64)
  from jaxtag.models.heads import vallet as vallet_head
  (b,) = jax.export.symbolic_shape('b')
  fn = jax.jit(lambda x: model.apply(variables, x, train=False))
  masked = lambda m, mask: vallet_head.multiscale_average(  # noqa: E731
      m, (3, 5), mask)
  x = np.random.default_rng(1).normal(size=(3, 64, 64, 3)).astype(np.float32)
  s = _session(to_onnx(fn, {'x': jax.ShapeDtypeStruct((b, 64, 64, 3),
                                                      jnp.float32)}, ['y']))
  want = np.asarray(fn(x))
  np.testing.assert_allclose(s.run(None, {'x': x})[0], want,
                             atol=1e-4 * max(1.0, np.abs(want).max()))
  maps = np.random.default_rng(2).normal(size=(2, 5, 6, 4)).astype(np.float32)
  mask = np.ones((2, 5, 6), np.float32)
  mask[1, 3:, 4:] = 0
  s = _session(to_onnx(masked, {
      'maps': jax.ShapeDtypeStruct((b, 5, 6, 4), jnp.float32),
      'mask': jax.ShapeDtypeStruct((b, 5, 6), jnp.float32)}, ['y']))
  np.testing.assert_allclose(s.run(None, {'maps': maps, 'mask': mask})[0],
                             masked(maps, mask), atol=1e-5)


@pytest.mark.slow
def test_heads_without_onnx_form_are_refused_by_name():
  model, variables = _model('resnet18', 'vallet', {'width': 0.125},
                            {'width': 0.01, 'prediction': 'crops'})
  with pytest.raises(onnx_export.NotExportableError,
                     match="Head 'vallet'.*test_crops.*stablehlo"):
    onnx_export.model_to_onnx(model, variables, _scores_of,
                              gather_index=[0], mean=MEAN, std=STD,
                              image_size=64, head_name='vallet')
  model, variables = _model('resnet18', 'lstm_decoder', {'width': 0.125},
                            {'embed_dim': 4, 'lstm_dim': 8, 'max_steps': 3},
                            label_sequence=jnp.zeros((1, 3), jnp.int32))
  with pytest.raises(onnx_export.NotExportableError,
                     match="Head 'lstm_decoder'.*stablehlo"):
    onnx_export.model_to_onnx(model, variables, _scores_of,
                              gather_index=[0], mean=MEAN, std=STD,
                              image_size=64, head_name='lstm_decoder')


def test_unsupported_primitive_is_named():
  spec = {'x': jax.ShapeDtypeStruct((2, 5), jnp.float32)}
  with pytest.raises(UnsupportedError, match="primitive 'cumsum'.*stablehlo"):
    to_onnx(lambda x: jnp.cumsum(x, axis=1), spec, ['y'])


# ---------------------------------------------------- a WD-style client ---


def wd_client(model_dir, paths, general_threshold, character_threshold):
  """Tags images the way WD tagger front ends read model.onnx and
  selected_tags.csv: the input name and size from the graph, RGBA
  composited on white, padded to a square with white, resized, BGR, 0-255;
  ratings at rows 0-3, then general (category 0) and character (4) tags."""
  session = ort.InferenceSession(os.path.join(model_dir, 'model.onnx'),
                                 providers=['CPUExecutionProvider'])
  inp = session.get_inputs()[0]
  size = inp.shape[1]
  with open(os.path.join(model_dir, 'selected_tags.csv')) as f:
    rows = list(csv.DictReader(f))
  names = [r['name'] for r in rows]
  general = [i for i, r in enumerate(rows) if r['category'] == '0']
  character = [i for i, r in enumerate(rows) if r['category'] == '4']
  batch = []
  for path in paths:
    image = Image.open(path).convert('RGBA')
    canvas = Image.new('RGBA', image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(canvas, image).convert('RGB')
    side = max(image.size)
    square = Image.new('RGB', (side, side), (255, 255, 255))
    square.paste(image, ((side - image.size[0]) // 2,
                         (side - image.size[1]) // 2))
    square = square.resize((size, size), Image.BOX)
    batch.append(np.asarray(square, np.float32)[:, :, ::-1])
  probs = session.run(None, {inp.name: np.stack(batch)})[0]
  out = []
  for p in probs:
    out.append({
        'rating': {names[i]: float(p[i]) for i in range(4)},
        'general': {names[i] for i in general if p[i] > general_threshold},
        'character': {names[i] for i in character
                      if p[i] > character_threshold}})
  return out, probs


def _write_images(folder):
  rng = np.random.default_rng(5)
  paths = []
  for i, (w, h, mode) in enumerate([(64, 64, 'RGB'), (32, 32, 'RGB'),
                                    (64, 32, 'RGB'), (32, 64, 'RGBA'),
                                    (64, 64, 'L')]):
    channels = {'RGB': 3, 'RGBA': 4, 'L': 1}[mode]
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    path = os.path.join(folder, f'img{i}.png')
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels,
                    mode).save(path)
    paths.append(path)
  return paths


def _midpoint_threshold(scores):
  """A threshold halfway between two neighbouring scores near the median,
  so float differences cannot move a tag across it."""
  s = np.sort(np.unique(scores))
  i = len(s) // 2
  return float((s[i - 1] + s[i]) / 2)


@pytest.mark.slow
def test_wd_client_on_exported_files_matches_jaxtag_tagger(tmp_path):
  import serving_fixtures
  from jaxtag.serving import bundle as bundle_lib
  from jaxtag.serving import tagger as tagger_lib
  config = serving_fixtures.tiny_config(**{'eval.geometry': 'pad',
                                           'data.interpolation': 'area'})
  directory, _, _ = serving_fixtures.make_bundle(tmp_path / 'bundle', config)
  bundle = bundle_lib.load_bundle(directory)
  out_dir = str(tmp_path / 'onnx')
  onnx_export.export_onnx(bundle, out_dir,
                          image_size=bundle.preprocess.size)
  with open(os.path.join(out_dir, 'selected_tags.csv')) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['tag_id', 'name', 'category', 'count',
                          'jaxtag_category']
  assert [r['name'] for r in rows[:4]] == ['general', 'sensitive',
                                           'questionable', 'explicit']
  paths = _write_images(str(tmp_path))
  tagger = tagger_lib.Tagger(bundle, batch_size=8)
  scores = tagger.scores(paths)
  _, probs = wd_client(out_dir, paths, 0.5, 0.5)
  # Same pixels both ways, so the same scores, ratings the model lacks at 0.
  np.testing.assert_allclose(probs, scores, atol=1e-4, rtol=0)
  assert np.all(probs[:, [1, 2]] == 0)
  categories = np.array([int(r['category']) for r in rows])
  general = _midpoint_threshold(scores[:, categories == 0])
  character = _midpoint_threshold(scores[:, categories == 4])
  client, _ = wd_client(out_dir, paths, general, character)
  ours = tagger_lib.Tagger(bundle, batch_size=8, general_threshold=general,
                           character_threshold=character).tag(paths)
  assert any(c['general'] for c in client)
  for c, o in zip(client, ours):
    assert c['general'] == set(o['general'])
    assert c['character'] == set(o['character'])
    assert c['rating'] == pytest.approx(o['rating'], abs=1e-4)


GRAPH_HEADS = [
    ('mlgcn', {'tau': 0.3, 'gcn_dims': (6,), 'embedding_dim': 5,
               'adjacency': 'dense'}),
    ('mlgcn', {'tau': 0.3, 'gcn_dims': (6,), 'embedding_dim': 5,
               'adjacency': 'sparse'}),
    ('addgcn', {'node_dim': 8}),
    ('addgcn', {'node_dim': 8, 'dynamic': 'lowrank', 'static': 'lowrank',
                'rank': 2}),
]


@pytest.mark.slow
@pytest.mark.parametrize('head,head_kwargs', GRAPH_HEADS)
def test_graph_heads_export_exactly(head, head_kwargs):
  """ML-GCN's graph depends on parameters only: the export folds the GCN
  (a sparse product included) into the classifier matrix. ADD-GCN's
  per-image graphs are translated as they are."""
  from test_mlgcn import _tags
  from jaxtag import objectives
  size, num_classes = 64, 10
  c = config_lib.defaults().model
  c.backbone, c.head, c.pool = 'resnet18', head, 'gmp'
  c.backbone_kwargs, c.head_kwargs = {'width': 0.125}, head_kwargs
  model = build_model(c, num_classes, tag_metadata=_tags(c=num_classes))
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                         train=False)
  scores = objectives.SigmoidBCE().scores
  proto = onnx_export.model_to_onnx(
      model, variables, scores, gather_index=np.arange(num_classes),
      mean=MEAN, std=STD, image_size=size, head_name=head)
  session = _session(proto)
  bgr = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(
      np.float32)
  x = ((bgr[..., ::-1] / 255.0) - np.array(MEAN)) / np.array(STD)
  want = np.asarray(scores(model.apply(variables, jnp.asarray(x, jnp.float32),
                                       method='predict')))
  got = session.run(None, {'input': bgr})[0]
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
