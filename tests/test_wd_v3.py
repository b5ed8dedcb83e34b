"""configs/wd_v3.py: every variant's model, and the recipe trained end to
end on the tiny synthetic dataset and converted (slow)."""
import csv
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest

from jaxtag import config as config_lib
from jaxtag import models
from jaxtag import train
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import convert as convert_lib
from jaxtag.serving import tagger as tagger_lib

CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs', 'wd_v3.py')
WD_TAGS = 10_861
# timm's parameter counts of the WD v3 models at 10,861 tags, as the
# backbone tests record them from timm (tests/fixtures/timm/*/
# full_size.json).
TIMM_PARAMS = {'vit_base': 94_602_349, 'swinv2_base': 98_026_341,
               'convnext_base': 98_698_989, 'eva02_large': 315_187_757}


def _config(variant):
  return config_lib.load_config_file(f'{CONFIG}:{variant}')


def test_timm_counts_are_the_fixtures():
  # The numbers above are the stored timm counts, not typed in afresh.
  fixtures = os.path.join(os.path.dirname(__file__), 'fixtures', 'timm')

  def stored(family, section, key):
    with open(os.path.join(fixtures, family, 'full_size.json')) as f:
      return json.load(f)[section][key]['num_params']
  assert TIMM_PARAMS == {
      'vit_base': stored('vit', 'configs', 'vit_base_patch16_224@448'),
      'swinv2_base': stored('swinv2', 'models', 'wd_v3'),
      'convnext_base': stored('convnext', 'models', 'wd_v3'),
      'eva02_large': stored('eva02', 'configs', 'eva02_large_patch14_448')}


@pytest.mark.parametrize('variant', sorted(TIMM_PARAMS))
def test_variant_builds_the_wd_v3_model_with_timms_parameter_count(variant):
  config = _config(variant)
  config_lib.validate(config)
  assert config.data.image_size == 448
  assert config.model.dtype == 'bfloat16'
  assert config.optim.name == 'lamb' and config.optim.clip_norm == 1.0
  model = models.build_model(config.model, WD_TAGS)
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
      jnp.zeros((1, 448, 448, 3)), train=False))['params']
  assert models.count_params(shapes) == TIMM_PARAMS[variant]


def test_recipe_settings():
  config = _config('vit_base')
  assert config.data.channel_order == 'BGR'
  assert (config.data.mean, config.data.std) == ((0.5,) * 3, (0.5,) * 3)
  low, high = config.data.crop_scale
  assert (low ** 0.5, high ** 0.5) == pytest.approx((0.87, 0.998))
  assert config.dataset.build_options['split_ranges'].startswith(
      'train=0-899,validation=950-999')
  # Stored at 768: the smallest 4:3 crop (0.87 of the shorter side, 576)
  # still has more than 448 pixels a side.
  assert config.dataset.build_options['max_side'] == 768
  assert 0.87 * 768 * 3 / 4 >= config.data.image_size
  # JAX-CV's random_resize_method in training; the WD contract in eval.
  assert config.data.train_interpolations == ('area', 'bilinear', 'bicubic')
  assert config.data.interpolation == 'bicubic'
  assert _config('synthetic').data.train_interpolations == ()
  for variant in ('tiny', 'synthetic', 'synthetic_swinv2',
                  'synthetic_convnext', 'synthetic_eva02', 'synthetic_resnet'):
    config_lib.validate(_config(variant))
  with pytest.raises(ValueError, match='vit_base, swinv2_base'):
    _config('vit_huge')


@pytest.mark.slow  # trains 8 steps and converts the run
def test_tiny_trains_and_converts_to_a_bgr_bundle(tiny_data_dir, tmp_path,
                                                  trainer_and_bundle_scores):
  config = _config('tiny')
  config.dataset.data_dir = tiny_data_dir
  workdir = str(tmp_path / 'run')
  test = train.train_and_evaluate(config, workdir)
  for key in ('mAP', 'F1_macro_PR', 'F1_macro_PR_tag', 'F1_micro_PR',
              'MCC_PR'):
    assert np.isfinite(test[key]), key
  out = convert_lib.convert(workdir, str(tmp_path / 'bundle'))
  with open(os.path.join(out, bundle_lib.PREPROCESS)) as f:
    preprocess = json.load(f)
  assert preprocess['channel_order'] == 'BGR'
  assert preprocess['mean'] == [0.5, 0.5, 0.5]
  # The bundle flips the channels as the trainer did: its scores are the
  # trainer's eval predictions.
  want, served, pil = trainer_and_bundle_scores(config, workdir, out, 16)
  np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5)
  # Read as RGB, the same bundle scores otherwise: the order reached it.
  rgb = tagger_lib.Tagger(out, batch_size=16)
  rgb.bundle.preprocess = dataclasses.replace(rgb.bundle.preprocess,
                                              channel_order='RGB')
  wrong = rgb.bundle.to_model_order(rgb.scores(pil))
  assert np.abs(wrong - want).max() > 0.01

  # ONNX, in the WD layout: BGR 0-255 in, the csv's rows out; it scores
  # as the bundle does (float32 graph against the bf16 model).
  onnx_dir = convert_lib.convert(workdir, str(tmp_path / 'onnx'), fmt='onnx')
  session = ort.InferenceSession(os.path.join(onnx_dir, 'model.onnx'),
                                 providers=['CPUExecutionProvider'])
  with open(os.path.join(onnx_dir, 'selected_tags.csv')) as f:
    rows = [r['name'] for r in csv.DictReader(f)]
  pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3),
                                             dtype=np.uint8)
  bundle = bundle_lib.load_bundle(out)
  bundled = dict(zip(bundle.names, np.asarray(bundle.predict(pixels)).T))
  got = session.run(None, {session.get_inputs()[0].name:
                           pixels[..., ::-1].astype(np.float32)})[0]
  np.testing.assert_allclose(got.T, [bundled[n] for n in rows], atol=2e-2)
  as_rgb = session.run(None, {session.get_inputs()[0].name:
                              pixels.astype(np.float32)})[0]
  assert np.abs(as_rgb.T - [bundled[n] for n in rows]).max() > 0.05


def test_unknown_channel_order_is_rejected_at_start_up():
  config = _config('tiny')
  config.data.channel_order = 'bgr'
  with pytest.raises(ValueError, match='channel_order .*RGB, BGR'):
    config_lib.validate(config)
