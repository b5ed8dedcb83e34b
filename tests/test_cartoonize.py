"""The cartooniser against hand-made images, and its plug points."""
import numpy as np
import pytest

from jaxtag.data import cartoonize


def test_flat_regions_are_quantised_and_a_step_gets_an_ink_line():
  image = np.zeros((32, 40, 3), np.uint8)
  image[:, :20] = (70, 90, 110)
  image[:, 20:] = (230, 200, 40)
  out = cartoonize.make_cartoonizer(levels=6)(image)
  step = 255 / 5
  far_left = np.round(np.array([70, 90, 110]) / step) * step
  far_right = np.round(np.array([230, 200, 40]) / step) * step
  np.testing.assert_array_equal(out[10, 2], far_left.astype(np.uint8))
  np.testing.assert_array_equal(out[10, 37], far_right.astype(np.uint8))
  # The dark side of the step is darker than its neighbourhood's mean:
  # ink; the light side is not.
  assert (out[5:27, 19] == 0).all()
  assert (out[5:27, 21] > 0).any(axis=-1).all()
  assert set(np.unique(out)) <= {0} | set(np.round(np.arange(6) * step))


def test_deterministic_and_keeps_size():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
  f = cartoonize.make_cartoonizer()
  first = f(image)
  assert first.shape == image.shape and first.dtype == np.uint8
  np.testing.assert_array_equal(first, cartoonize.make_cartoonizer()(image))


def test_plug_points_and_errors():
  image = np.random.default_rng(1).integers(0, 256, (8, 6, 3), np.uint8)
  flip = cartoonize.make_cartoonizer(method='callable',
                                     callable_path='numpy:flipud')
  np.testing.assert_array_equal(flip(image), image[::-1])
  transpose = cartoonize.make_cartoonizer(method='callable',
                                          callable_path='numpy:transpose')
  with pytest.raises(ValueError, match='must keep the size'):
    transpose(image)
  with pytest.raises(ValueError, match='valid: opencv, onnx, callable'):
    cartoonize.make_cartoonizer(method='gan')
  with pytest.raises(ValueError, match='uint8'):
    cartoonize.make_cartoonizer()(image.astype(np.float32))


def test_onnx_cartooniser_round_trips_its_value_range(tmp_path):
  import onnx
  from onnx import TensorProto, helper
  x = helper.make_tensor_value_info('photo', TensorProto.FLOAT,
                                    [1, None, None, 3])
  y = helper.make_tensor_value_info('cartoon', TensorProto.FLOAT,
                                    [1, None, None, 3])
  graph = helper.make_graph([helper.make_node('Neg', ['photo'], ['cartoon'])],
                            'negate', [x], [y])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
  path = tmp_path / 'negate.onnx'
  onnx.save(model, str(path))
  image = np.random.default_rng(2).integers(0, 256, (9, 7, 3), np.uint8)
  # In [-1, 1], negation is 255 - pixel in uint8.
  out = cartoonize.make_cartoonizer(method='onnx', model_path=str(path))(image)
  np.testing.assert_array_equal(out, 255 - image)


def test_pipeline_cartoonises_before_cropping_and_rejects_unknown_options():
  import io

  from PIL import Image

  from jaxtag import config as config_lib
  from jaxtag.data import labels
  from jaxtag.data import pipeline

  rng = np.random.default_rng(3)
  pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='PNG')
  source = [{'image': buf.getvalue(), 'tags': np.array([1])}]
  data = config_lib.defaults().data
  data.update(dict(image_size=16, crop='none', flip=False, workers=0,
                   cartoonize='opencv', cartoonize_options={'levels': 3}))
  loader = pipeline._Loader(source, data, labels.MultiHot(3), 'tags', 0,
                            train=True)
  expected = cartoonize.make_cartoonizer(levels=3)(pixels)
  np.testing.assert_array_equal(loader((0, 0))['image'], expected)
  data.cartoonize_options = {'colours': 3}
  with pytest.raises(ValueError, match='valid: method, smooth_passes'):
    pipeline._Loader(source, data, labels.MultiHot(3), 'tags', 0, train=True)
