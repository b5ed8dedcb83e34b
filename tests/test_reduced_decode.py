"""Decoding at reduced size: a JPEG larger than the pipeline needs is decoded
with libjpeg's DCT scaling; everything else decodes as it always did."""
import functools
import io

import numpy as np
import pytest
from PIL import Image

from jaxtag import config as config_lib
from jaxtag.data import labels
from jaxtag.data import ops
from jaxtag.data import pipeline


def _picture(width, height, seed=0) -> np.ndarray:
  """Smooth colour fields with a little grain, like an illustration."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = (np.sin(x / 37.0 + y / 53.0)[..., None] * rng.uniform(40, 90, 3) +
          np.cos(y / 29.0 - x / 61.0)[..., None] * rng.uniform(40, 90, 3) +
          128)
  noisy = base + rng.normal(0, 3, base.shape)
  return noisy.clip(0, 255).astype(np.uint8)


def _encoded(pixels, fmt, **kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


@pytest.mark.parametrize('size, shortest, longest, scale', [
    ((2000, 1500), 448, None, 2),    # 750 >= 448; 375 is not
    ((4000, 3000), 448, None, 4),    # 750; 375 is not
    ((8000, 6000), 448, None, 8),    # 750; the largest scale libjpeg has
    ((800, 600), 448, None, 1),      # 300 < 448
    ((896, 1200), 448, None, 2),     # 448 exactly
    ((3000, 1000), None, 448, 4),    # the longer side: 750; 375 is not
    ((3000, 1000), 448, 448, 2),     # both: the shorter side decides
])
def test_reduction_keeps_the_needed_side(size, shortest, longest, scale):
  assert ops.reduction(*size, shortest, longest) == scale


def test_a_large_jpeg_decodes_reduced_and_close_to_the_full_decode():
  pixels = _picture(1030, 771)
  data = _encoded(pixels, 'JPEG', quality=95)
  reduced = ops.decode_image(data, shortest=300)
  # 771 // 2 = 385 >= 300, 771 // 4 = 192 is not: half size, rounded up.
  assert reduced.size == (515, 386) and reduced.mode == 'RGB'
  # The DCT-scaled decode is close to a 2x2 box average of the full one.
  full = np.asarray(ops.decode_image(data), np.float64)[:770, :1030]
  box = full.reshape(385, 2, 515, 2, 3).mean(axis=(1, 3))
  diff = np.abs(np.asarray(reduced, np.float64)[:385] - box)
  assert diff.mean() < 2.0


@pytest.mark.parametrize('fmt, size', [
    ('JPEG', (800, 600)),     # not twice as large as needed
    ('PNG', (1200, 1000)),    # no reduced decoding in Pillow
    ('WEBP', (1200, 1000)),
])
def test_images_at_size_decode_exactly_as_before(fmt, size):
  data = _encoded(_picture(*size, seed=1), fmt)
  after = np.asarray(ops.decode_image(data, shortest=448))
  full = Image.open(io.BytesIO(data))
  full.load()
  np.testing.assert_array_equal(after, np.asarray(full.convert('RGB')))


def test_decode_scaled_reports_the_scale_it_applied():
  jpeg = _encoded(_picture(1030, 771), 'JPEG', quality=90)
  image, scale = ops.decode_scaled(ops.open_image(jpeg), 4)
  assert (image.size, scale) == ((258, 193), 4)   # ceil(1030 / 4), ...
  png = _encoded(_picture(1030, 771), 'PNG')
  image, scale = ops.decode_scaled(ops.open_image(png), 4)
  assert (image.size, scale) == ((1030, 771), 1)
  # Too small for 1/4 of a side (the caller asked anyway): what libjpeg
  # can do is decoded, and said.
  small = _encoded(_picture(24, 20), 'JPEG', quality=90)
  image, scale = ops.decode_scaled(ops.open_image(small), 8)
  assert (image.size, scale) == ((3, 3), 8)


def _loader(source=(), train=True, geometry='square', **data):
  config = config_lib.defaults().data
  config.update(dict(image_size=448, crop='random_resized',
                     crop_scale=(0.5, 1.0), workers=0))
  config.update(data)
  return pipeline._Loader(  # pylint: disable=protected-access
      list(source), config, labels.MultiHot(3), 'tags', 7, train,
      geometry=geometry)


def test_the_crop_is_drawn_from_the_stored_size_at_any_scale():
  loader = _loader()
  full = _loader()
  full.reduced_decode = False
  scales = set()
  for g in range(40):
    box, flip, scale, interpolation = loader._plan(2048, 1536, g)  # pylint: disable=protected-access
    rng = np.random.default_rng([7, g])
    want = ops.random_resized_crop_box(1536, 2048, rng, (0.5, 1.0))
    assert box == want and flip == (rng.random() < 0.5)
    assert interpolation == 'bilinear'
    assert full._plan(2048, 1536, g) == (box, flip, 1, 'bilinear')  # pylint: disable=protected-access
    # The crop keeps 448 pixels on its shorter side at that scale, and
    # would not at twice it.
    short = min(box[2] - box[0], box[3] - box[1])
    assert short // scale >= 448 and (scale == 8 or short // (2 * scale) < 448)
    scales.add(scale)
  assert scales == {2}   # crops of 1086-1536 pixels: half size, not 1/4
  assert _loader(crop='none')._plan(4000, 3000, 0)[2] == 4  # pylint: disable=protected-access
  # Eval: the shorter side for square, the longer one for pad.
  assert _loader(train=False)._plan(3000, 1000, 0) == (  # pylint: disable=protected-access
      None, False, 2, 'bilinear')
  assert _loader(train=False, geometry='pad')._plan(3000, 1000, 0) == (  # pylint: disable=protected-access
      None, False, 4, 'bilinear')
  assert _loader(cartoonize='opencv')._plan(4000, 3000, 0)[2] == 1  # pylint: disable=protected-access


@pytest.mark.parametrize('train, geometry', [(True, 'square'),
                                             (False, 'square'),
                                             (False, 'pad')])
def test_the_loader_output_barely_changes_on_large_jpegs(train, geometry):
  # The pad geometry (the WD contract) needs only the longer side: 2048
  # decodes at 1/4; the others at 1/2.
  big = _encoded(_picture(2048, 1536, seed=2), 'JPEG', quality=90)
  small = _encoded(_picture(640, 520, seed=3), 'JPEG', quality=90)
  source = [{'image': big, 'tags': [1]}, {'image': small, 'tags': [2]}]
  reduced = _loader(source, train, geometry)
  full = _loader(source, train, geometry)
  full.reduced_decode = False
  for g in range(4):
    a = reduced((g, 0))['image'].astype(np.float64)
    b = full((g, 0))['image'].astype(np.float64)
    assert a.shape == b.shape == (448, 448, 3)
    assert np.abs(a - b).mean() < 1.0   # another crop: about 70
    # An image not twice as large as needed: exactly what it always was.
    np.testing.assert_array_equal(reduced((g, 1))['image'],
                                  full((g, 1))['image'])


@functools.cache
def _large(fmt) -> bytes:
  return _encoded(_picture(1920, 1800, seed=4), fmt)


@pytest.mark.parametrize('fmt', ['WEBP', 'PNG'])
@pytest.mark.parametrize('train, geometry', [(True, 'square'),
                                             (False, 'square'),
                                             (False, 'pad')])
def test_large_images_without_reduced_decoding_keep_their_crop(
    fmt, train, geometry):
  # Four times the size needed: a JPEG this large decodes at 1/2 or 1/4.
  # Pillow decodes WebP and PNG only in full, so the crop must stay in
  # full-size pixels: the output is exactly the full decode's. (A crop box
  # divided by the scale the decode never applied would show the top-left
  # part of the picture instead: a mean difference of tens of levels.)
  source = [{'image': _large(fmt), 'tags': [1]}]
  reduced = _loader(source, train, geometry)
  full = _loader(source, train, geometry)
  full.reduced_decode = False
  for g in range(2):
    np.testing.assert_array_equal(reduced((g, 0))['image'],
                                  full((g, 0))['image'])


def test_the_decode_benchmark_times_the_recipes_as_configured(monkeypatch):
  from jaxtag.bench import decode as decode_bench  # pylint: disable=g-import-not-at-top
  recipes = decode_bench.recipes()
  wd_data, wd_geometry = recipes['wd_v3']
  assert (wd_data.crop, wd_data.interpolation, wd_geometry) == (
      'random', 'bicubic', 'pad')
  assert wd_data.train_interpolations == ('area', 'bilinear', 'bicubic')
  assert recipes['defaults'][1] == 'square'
  # Small pictures, one round: every figure is there and positive.
  monkeypatch.setattr(decode_bench, 'SIZES', ((160, 120),))
  monkeypatch.setattr(decode_bench, 'IMAGE_SIZE', 32)
  result = decode_bench.run(rounds=1, per_size=1)
  for recipe in ('wd_v3', 'defaults'):
    for stored in ('jpeg_original', 'webp_original', 'jpeg_768', 'webp_768'):
      for mode in ('train', 'eval'):
        assert result[f'{recipe}/{stored}/{mode}/speedup'] > 0
        assert result[f'{recipe}/{stored}/{mode}/reduced_img_per_s_per_core'] > 0
    for fmt in ('jpeg', 'webp'):
      assert result[f'{recipe}/{fmt}_768_vs_original/train/speedup'] > 0
