"""Commands that read a dataset build it on first use, as the trainer does:
an eval-only run and the semantic cache, pointed at an empty data_dir,
give what they give on the session's built dataset. (The character
recognisers' test is in test_characters.py.)"""
import copy
import glob
import io
import json
import os
import shutil

import numpy as np
import pytest

from jaxtag.projects import semantic_cache
from jaxtag import train


def _built(data_dir):
  return bool(glob.glob(os.path.join(data_dir, 'synthetic_anime', 'tiny',
                                     '*', 'dataset_info.json')))


@pytest.mark.slow  # evaluates a trained run twice
def test_an_eval_only_run_builds_its_dataset(tiny_captioner_run, tmp_path):
  workdir, config = tiny_captioner_run
  results = {}
  for name in ('session', 'fresh'):
    run_copy = str(tmp_path / f'run_{name}')
    shutil.copytree(workdir, run_copy)
    config_copy = copy.deepcopy(config)
    if name == 'fresh':
      config_copy.dataset.data_dir = str(tmp_path / 'fresh')
    train.evaluate_checkpoint(config_copy, run_copy, 'test')
    with open(os.path.join(run_copy, 'eval_test.json')) as f:
      results[name] = json.load(f)
  assert _built(str(tmp_path / 'fresh'))
  assert results['fresh'] == results['session']


@pytest.mark.slow  # runs a trained captioner over a split
def test_the_semantic_cache_builds_its_dataset(tiny_captioner_run, tmp_path):
  workdir, _ = tiny_captioner_run
  from jaxtag import config as config_lib
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.model.features.semantic.captioner = workdir
  caches = {}
  for name, data_dir in (('session', tiny_captioner_run[1].dataset.data_dir),
                         ('fresh', str(tmp_path / 'fresh'))):
    config.dataset.data_dir = data_dir
    out = str(tmp_path / f'vcap_{name}')
    semantic_cache.write_cache(config, out, splits=('test',))
    with open(os.path.join(out, 'test.npy'), 'rb') as f:
      caches[name] = np.load(io.BytesIO(f.read()))
  assert _built(str(tmp_path / 'fresh'))
  assert caches['fresh'].shape == (64, caches['fresh'].shape[1])
  np.testing.assert_array_equal(caches['fresh'], caches['session'])
