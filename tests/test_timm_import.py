"""`import_weights --timm`: timm folders (WD v3 taggers among them) -> bundles.

The folders are built from the timm fixtures (tests/fixtures/timm/, written
by make_timm_fixtures.py with timm 1.0.31): their model.safetensors and a
config.json in timm's hub layout; a generated selected_tags.csv makes one a
WD v3 folder. The references are timm's logits stored there.
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxtag import tag as tag_lib
from jaxtag import trees
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import timm_bundle

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'timm')
# family -> (weights, timm description, timm's reference, image key).
CASES = {
    'vit': ('vit/token.safetensors', 'vit/token.json', 'vit/token.npz',
            'image'),
    'eva02': ('eva02/small.safetensors', 'eva02/small.json',
              'eva02/small.npz', 'image'),
    'convnext': ('convnext/model.safetensors', 'convnext/config.json',
                 'convnext/reference.npz', 'image_64x64'),
    'swinv2': ('swinv2/model.safetensors', 'swinv2/config.json',
               'swinv2/reference.npz', 'image_64x64'),
}
# A WD selected_tags.csv for the fixtures' 5 outputs: two ratings (the
# other two are missing), two general tags and a character; Danbooru's ids
# written as floats, as WD's files do.
WD_TAGS = [('9999999', 'general', 9, 100), ('9999998', 'sensitive', 9, 50),
           ('470575.0', '1girl', 0, 40), ('212816.0', 'solo', 0, 30),
           ('14620.0', 'hatsune_miku', 4, 20)]


def timm_folder(family: str, directory, *, wd: bool = False,
                pretrained_cfg=None, **model_args) -> str:
  """A timm hub folder of the family's fixture model."""
  weights, description, _, image = CASES[family]
  os.makedirs(directory, exist_ok=True)
  shutil.copy(os.path.join(FIXTURES, weights),
              os.path.join(directory, 'model.safetensors'))
  with open(os.path.join(FIXTURES, description)) as f:
    record = json.load(f)
  if 'architecture' not in record:   # vit/eva02: {model, model_args}
    size = 32
    record = {'architecture': record['model'],
              'num_classes': record['model_args']['num_classes'],
              'model_args': record['model_args'],
              'pretrained_cfg': {'input_size': [3, size, size],
                                 'interpolation': 'bicubic',
                                 'mean': [0.485, 0.456, 0.406],
                                 'std': [0.229, 0.224, 0.225]}}
  record['model_args'].update(model_args)
  if wd:  # WD v3's pretrained_cfg (mean = std = 0.5), unless a test says
    record['pretrained_cfg'].update(mean=[0.5] * 3, std=[0.5] * 3)
  record['pretrained_cfg'].update(pretrained_cfg or {})
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(record, f)
  if wd:
    with open(os.path.join(directory, 'selected_tags.csv'), 'w',
              newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['tag_id', 'name', 'category', 'count'])
      writer.writerows(WD_TAGS)
  return str(directory)


def _reference(family):
  _, _, reference, image = CASES[family]
  with np.load(os.path.join(FIXTURES, reference)) as stored:
    logits = 'logits' if image == 'image' else image.replace('image', 'logits')
    return stored[image], stored[logits]


def _compiled(fn, *args):
  """jit(fn)(*args) without XLA's costlier passes: compiling dominates."""
  return jax.jit(fn).lower(*args).compile(compiler_options={
      'xla_backend_optimization_level': 0,
      'xla_llvm_disable_expensive_passes': True})(*args)


def _sigmoid(x):
  return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


@pytest.mark.parametrize('family', sorted(CASES))
def test_imported_bundle_reproduces_timm(family, tmp_path):
  folder = timm_folder(family, tmp_path / 'timm')
  summary = timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  assert not summary['wd']
  bundle = bundle_lib.load_bundle(str(tmp_path / 'bundle'))
  image, logits = _reference(family)
  # The model on timm's own (already normalised) input.
  ours = _compiled(lambda v, x: bundle.model.apply(v, x, train=False),
                   bundle.variables, image)
  np.testing.assert_allclose(ours, logits, atol=1e-4, rtol=0)
  # timm's conventions: RGB, pretrained_cfg's mean/std/interpolation.
  assert bundle.preprocess.channel_order == 'RGB'
  assert bundle.preprocess.interpolation == 'bicubic'
  np.testing.assert_allclose(bundle.preprocess.mean, (0.485, 0.456, 0.406))
  # No ratings: the four WD rating rows come first and score 0.
  assert bundle.names[4:] == [f'class_{i}' for i in range(5)]
  # The init file holds the same parameters.
  with np.load(summary['init']) as init:
    flat = trees.flatten(bundle.variables['params'])
    assert sorted(init.files) == sorted([*flat, 'tags'])
    assert list(init['tags']) == [f'class_{i}' for i in range(5)]
    for key in flat:
      np.testing.assert_array_equal(init[key], flat[key])


@pytest.mark.slow
def test_predict_normalises_uint8_rgb_as_timm(tmp_path):
  folder = timm_folder('vit', tmp_path / 'timm')
  timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  bundle = bundle_lib.load_bundle(str(tmp_path / 'bundle'))
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3),
                                             np.uint8)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = ((pixels / 255.0 - mean) / std).astype(np.float32)
  logits = bundle.model.apply(bundle.variables, x, train=False)
  # No ratings in the model: 4 zero columns first, then the 5 classes.
  np.testing.assert_allclose(bundle.predict(pixels)[:, 4:], _sigmoid(logits),
                             atol=1e-5)


@pytest.mark.slow
def test_wd_folder_gets_wd_tags_preprocessing_and_bgr(tmp_path):
  # Unequal channel statistics: WD normalises RGB, then flips to BGR.
  mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.3, 0.5, 0.7])
  folder = timm_folder('convnext', tmp_path / 'timm', wd=True,
                       pretrained_cfg={'mean': list(mean), 'std': list(std)})
  summary = timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  assert summary['wd']
  bundle = bundle_lib.load_bundle(str(tmp_path / 'bundle'))
  assert bundle.names == ['general', 'sensitive', 'questionable', 'explicit',
                          '1girl', 'solo', 'hatsune_miku']
  assert list(bundle.categories) == [9, 9, 9, 9, 0, 0, 4]
  assert [r['index_in_model'] for r in bundle.tags] == [0, 1, -1, -1, 2, 3, 4]
  # WD's ids kept; the ratings the model lacks have none.
  assert [r['tag_id'] for r in bundle.tags] == [
      9999999, 9999998, -1, -1, 470575, 212816, 14620]
  pre = bundle.preprocess
  assert (pre.channel_order, pre.interpolation, pre.geometry, pre.size,
          pre.pad_colour) == ('BGR', 'bicubic', 'pad', 224, (255, 255, 255))
  # WD's thresholds per category.
  np.testing.assert_allclose(bundle.threshold_values(np.zeros((1, 7))),
                             [0.35, 0.35, 1.0, 1.0, 0.35, 0.35, 0.85])
  # RGB uint8 in; the model sees the normalised image in BGR order.
  pixels = np.random.default_rng(1).integers(0, 256, (2, 48, 48, 3),
                                             np.uint8)
  x = ((pixels / 255.0 - mean) / std)[..., ::-1].astype(np.float32)
  logits = np.asarray(bundle.model.apply(bundle.variables, x, train=False))
  scores = bundle.predict(pixels)
  np.testing.assert_allclose(scores[:, [0, 1, 4, 5, 6]], _sigmoid(logits),
                             atol=1e-5)
  np.testing.assert_array_equal(scores[:, [2, 3]], 0)


@pytest.mark.slow
def test_imported_wd_bundle_tags_through_jaxtag_tag(tmp_path):
  folder = timm_folder('convnext', tmp_path / 'timm', wd=True)
  timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(np.random.default_rng(2).integers(
      0, 256, (40, 30, 3), np.uint8)).save(images / 'a.png')
  out = tmp_path / 'tags.jsonl'
  status = tag_lib.run(tag_lib.Options(
      paths=[str(images)], bundle=str(tmp_path / 'bundle'), format='jsonl',
      output=str(out), all_scores=True, quiet=True))
  assert status == 0
  (record,) = [json.loads(line) for line in out.read_text().splitlines()]
  # The same scores as the bundle on the image prepared by hand as WD's
  # own app does: pasted centred on a white square of its longest side
  # (30 x 40 -> 40 x 40, 5 columns of white each side), then resized
  # bicubic to the model's 224.
  bundle = bundle_lib.load_bundle(str(tmp_path / 'bundle'))
  image = Image.open(images / 'a.png').convert('RGB')
  square = np.full((40, 40, 3), 255, np.uint8)
  square[:, 5:35] = np.asarray(image)
  pixels = np.asarray(Image.fromarray(square).resize((224, 224),
                                                     Image.BICUBIC))[None]
  expected = dict(zip(bundle.names, bundle.predict(pixels)[0]))
  scores = _find_scores(record)
  for name in ('1girl', 'solo', 'hatsune_miku'):
    assert scores[name] == pytest.approx(expected[name], abs=1e-4)


def _find_scores(record) -> dict:
  """{tag: score} from a jsonl record with all_scores."""
  found = {}

  def walk(node):
    if isinstance(node, dict):
      for key, value in node.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          found[key] = value
        else:
          walk(value)
    elif isinstance(node, list):
      for item in node:
        walk(item)
  walk(record)
  return found


def test_unsupported_model_args_are_named(tmp_path):
  folder = timm_folder('vit', tmp_path / 'timm', pos_embed='none',
                       qk_norm=True)
  with pytest.raises(timm_bundle.TimmImportError,
                     match=r'pos_embed=.*qk_norm=True'):
    timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))


def test_model_args_are_honoured(tmp_path):
  # An honoured argument that the weights contradict is caught, not ignored.
  folder = timm_folder('vit', tmp_path / 'timm', depth=3)
  with pytest.raises(timm_bundle.TimmImportError, match='blocks_2'):
    timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))


def test_an_existing_bundle_is_not_overwritten(tmp_path):
  folder = timm_folder('vit', tmp_path / 'timm')
  timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  with pytest.raises(FileExistsError):
    timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))


def test_wrong_tag_count_and_unknown_family_are_errors(tmp_path):
  folder = timm_folder('vit', tmp_path / 'timm', wd=True)
  with open(os.path.join(folder, 'selected_tags.csv'), 'a') as f:
    f.write('4,extra,0,1\n')
  with pytest.raises(timm_bundle.TimmImportError, match='6 tags'):
    timm_bundle.import_timm(folder, str(tmp_path / 'bundle'))
  with pytest.raises(timm_bundle.TimmImportError, match='resnet50'):
    timm_bundle.model_from_config({'architecture': 'resnet50',
                                   'num_classes': 3})


@pytest.mark.slow
def test_command_line(tmp_path):
  folder = timm_folder('eva02', tmp_path / 'timm', wd=True)
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.serving.import_weights', '--timm',
       folder, '--out', str(tmp_path / 'bundle')],
      capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert 'WD v3' in done.stdout and 'init.npz' in done.stdout
  bundle = bundle_lib.load_bundle(str(tmp_path / 'bundle'))
  assert bundle.config.model.backbone == 'eva02_small_patch14'
  again = subprocess.run(
      [sys.executable, '-m', 'jaxtag.serving.import_weights', '--timm',
       folder, '--out', str(tmp_path / 'bundle')],
      capture_output=True, text=True, check=False)
  assert again.returncode != 0 and 'already holds a bundle' in again.stderr
