"""The timm families (ViT, EVA-02, ConvNeXt, SwinV2) export to ONNX and
StableHLO: each imported fixture bundle (tests/test_timm_import.py) against
JAX, at batch 1 and batch 3, with a symbolic batch size."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import test_timm_import as timm_fixtures
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import onnx_export
from jaxtag.serving import stablehlo
from jaxtag.serving import timm_bundle

FAMILIES = sorted(timm_fixtures.CASES)


def _bundle(family, tmp_path, wd=False):
  folder = timm_fixtures.timm_folder(family, tmp_path / 'timm', wd=wd)
  timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  return bundle_lib.load_bundle(str(tmp_path / 'bundle'))


def _reference(bundle, model_input):
  """Bundle-order scores from the flax model on an already normalised
  input, independent of either export."""
  logits = jax.jit(lambda v, x: bundle.model.apply(v, x, train=False))(
      bundle.variables, jnp.asarray(model_input, jnp.float32))
  scores = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  scores = np.concatenate([scores, np.zeros((len(scores), 1))], axis=1)
  return scores[:, bundle.gather_index]


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_onnx_matches_jax(family, tmp_path):
  # The WD layout: BGR 0-255 in; a WD v3 folder (the model sees BGR) for
  # ConvNeXt, timm's RGB conventions for the others.
  wd = family == 'convnext'
  bundle = _bundle(family, tmp_path, wd=wd)
  # At the training size the graph is the model alone (no resize), so it
  # must give the flax model's scores on the same pixels.
  size = bundle.preprocess.size
  path = onnx_export.export_onnx(bundle, str(tmp_path / 'onnx'))
  proto = onnx.load(path)
  onnx.checker.check_model(proto, full_check=True)
  session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
  (inp,) = session.get_inputs()
  assert isinstance(inp.shape[0], str)
  mean, std = np.array(bundle.preprocess.mean), np.array(bundle.preprocess.std)
  rng = np.random.default_rng(0)
  for batch in (1, 3):
    bgr = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    seen = bgr if wd else bgr[..., ::-1]
    want = _reference(bundle, (seen / 255.0 - mean) / std)
    got = session.run(None, {inp.name: bgr})[0]
    assert got.shape == (batch, len(bundle.tags))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_stablehlo_matches_jax(family, tmp_path):
  bundle = _bundle(family, tmp_path)
  path = stablehlo.export_bundle(bundle, str(tmp_path / 'bundle'))
  fn = stablehlo.load_stablehlo(path)
  size = bundle.preprocess.size
  mean, std = np.array(bundle.preprocess.mean), np.array(bundle.preprocess.std)
  rng = np.random.default_rng(1)
  for batch in (1, 3):
    pixels = rng.integers(0, 256, (batch, size, size, 3), np.uint8)
    want = _reference(bundle, (pixels / 255.0 - mean) / std)
    np.testing.assert_allclose(np.asarray(fn(pixels)), want, atol=1e-4,
                               rtol=0)
