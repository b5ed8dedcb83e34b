"""Caption semantic features: a frozen captioner inside the tagger's step,
and the per-image cache that stands in for it."""
import io
import json

import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import models
from jaxtag import predictor as predictor_lib
from jaxtag.projects import semantic_cache
from jaxtag import sharding
from jaxtag import train
from jaxtag import trees
from jaxtag.data import captions
from jaxtag.models.heads import HEADS

import fake_methods


@pytest.fixture(scope='module')
def captioner_run(tiny_captioner_run):
  return tiny_captioner_run[0]


def _tagger_config(tiny_data_dir, captioner):
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.model.head = 'semantic_fake'
  config.model.features = {'semantic': {'provider': 'captioner',
                                        'captioner': captioner}}
  config.data.mean = (0.4, 0.45, 0.5)   # not the captioner's: undone inside
  config.data.std = (0.25, 0.2, 0.3)
  config.num_train_steps = 2
  config.eval_every_steps = config.checkpoint_every_steps = 2
  return config


@pytest.mark.slow
def test_frozen_captioner_in_the_step_and_its_cache(tiny_data_dir, tmp_path,
                                                    tiny_captioner_run,
                                                    read_state, monkeypatch):
  monkeypatch.setitem(HEADS, 'semantic_fake', fake_methods.SemanticHead)
  captioner_run, captioner_config = tiny_captioner_run
  config = _tagger_config(tiny_data_dir, captioner_run)
  workdir = str(tmp_path / 'tagger')
  train.train_and_evaluate(config, workdir)

  captioner, _ = read_state(captioner_run)
  state, step = read_state(workdir)
  assert step == 2
  flat_c = trees.flatten({'params': captioner['params'],
                          'batch_stats': captioner['batch_stats']})
  flat_f = trees.flatten(state['constants'])
  # The captioner's encoder arrived, with its batch statistics, and never
  # moved: it is no trained parameter and has no optimiser state.
  taken = 0
  for key, value in flat_c.items():
    for src, dst in (('params/backbone/', 'params/backbone/'),
                     ('params/head/annotate/', 'params/annotate/'),
                     ('batch_stats/backbone/', 'batch_stats/backbone/')):
      if key.startswith(src):
        np.testing.assert_array_equal(
            flat_f['providers_semantic/' + dst + key[len(src):]], value)
        taken += 1
  assert taken == len(flat_f)
  assert any(k.startswith('providers_semantic/params/annotate/')
             for k in flat_f)
  assert not any('providers_semantic' in k
                 for k in trees.flatten(state['params']))
  assert not any('providers_semantic' in k
                 for k in trees.flatten(state['opt_state']))

  # The step and the cache both give v_cap as the captioner run itself
  # computes it: its own model and checkpoint on the image normalised its
  # own way (numpy), the annotations averaged over the grid by numpy.
  vocab = captions.Vocabulary.load(f'{captioner_run}/caption_vocab.json')
  reference = models.build_model(captioner_config.model, len(vocab))

  def v_cap(pixels):
    x = (pixels / 255 - np.asarray(captioner_config.data.mean)) / np.asarray(
        captioner_config.data.std)
    a = reference.apply(
        {'params': captioner['params'],
         'batch_stats': captioner['batch_stats']}, x.astype(np.float32),
        method=lambda m, x: m.head.annotations(m.backbone(x, train=False))[0])
    return np.asarray(a, np.float64).mean(axis=1)

  out = str(tmp_path / 'vcap')
  semantic_cache.write_cache(config, out, splits=('test',))
  cached = np.load(io.BytesIO(open(f'{out}/test.npy', 'rb').read()))
  predictor = predictor_lib.Predictor(config, workdir)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats'],
               'constants': state['constants']}
  seen = 0
  for batch in predictor.eval_batches('test'):
    keep = np.asarray(batch['mask']) > 0
    pixels = np.asarray(batch['image'])[keep].astype(np.float64)
    want = v_cap(pixels)
    image = (pixels / 255 - np.asarray(config.data.mean)) / np.asarray(
        config.data.std)
    in_step = predictor.model.apply(variables, image.astype(np.float32),
                                    method='provided')['semantic']
    np.testing.assert_allclose(in_step, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cached[np.asarray(batch['index'])[keep]], want,
                               rtol=1e-4, atol=1e-4)
    seen += int(keep.sum())
  assert seen == len(cached) == 64
  predictor.close()

  # A run from the cache gets the same feature through the pipeline.
  config.model.features.semantic.captioner = ''
  config.model.features.semantic.cache = out
  config.dataset.train_split = 'test'   # the one split cached here
  cache_run = train.Run(config, str(tmp_path / 'from_cache'))
  batch = next(iter(cache_run.eval_batches('test')))
  keep = batch['mask'] > 0
  np.testing.assert_array_equal(batch['semantic'][keep],
                                cached[batch['index'][keep]])
  cache_run.close()


def test_semantic_config_errors(tiny_data_dir, tmp_path, monkeypatch):
  monkeypatch.setitem(HEADS, 'semantic_fake', fake_methods.SemanticHead)
  config = _tagger_config(tiny_data_dir, str(tmp_path / 'nowhere'))
  with pytest.raises(FileNotFoundError, match='trained captioner run'):
    train.Run(config, str(tmp_path / 'run'))
  config.model.features.semantic.captioner = ''
  config.model.features.semantic.cache = str(tmp_path / 'nocache')
  with pytest.raises(FileNotFoundError, match='semantic_cache'):
    train.Run(config, str(tmp_path / 'run'))
  config.model.features.semantic.cache = ''
  with pytest.raises(ValueError, match='needs captioner .* or cache'):
    train.Run(config, str(tmp_path / 'run'))
  config.model.features.semantic.update(captioner='a', cache='b')
  with pytest.raises(ValueError, match='Set one of'):
    train.Run(config, str(tmp_path / 'run'))
  config.model.features.semantic.update(captioner='', cache='', size=3)
  with pytest.raises(ValueError, match=r"Unknown key\(s\) \['size'\] in "
                     r'config.model.features.semantic .*valid: provider, '
                     'cache, captioner, pooling'):
    train.Run(config, str(tmp_path / 'run'))


@pytest.mark.slow
def test_tiny_addgcn_with_captions_trains(tiny_data_dir, tmp_path,
                                          captioner_run, read_params,
                                          independent_test_map):
  """configs/addgcn_caption_danbooru.py:tiny: v_cap from the frozen tiny
  captioner reaches the dynamic graph, which trains; the encoder stays."""
  config = config_lib.load_config_file(
      'configs/addgcn_caption_danbooru.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.model.features.semantic.captioner = captioner_run
  config.num_train_steps = 4
  config.log_every_steps = 1
  config.eval_every_steps = config.checkpoint_every_steps = 4
  workdir = str(tmp_path / 'addgcn_caption')
  result = train.train_and_evaluate(config, workdir)
  # The mAP its checkpoint gives, v_cap and all, outside the trainer.
  assert result['mAP'] == pytest.approx(
      independent_test_map(config, workdir), rel=1e-4)
  losses = [json.loads(line).get('train/loss') for line in
            open(f'{workdir}/metrics.jsonl')]
  losses = [v for v in losses if v is not None]
  assert len(losses) == 4 and np.all(np.isfinite(losses))

  captioner, _ = read_params(captioner_run)
  tagger, _ = read_params(workdir)
  frozen, _ = read_params(workdir, collection='constants')
  flat_c, flat_t = trees.flatten(captioner), trees.flatten(tagger)
  np.testing.assert_array_equal(
      trees.flatten(frozen)['providers_semantic/params/annotate/kernel'],
      flat_c['head/annotate/kernel'])
  # The adjacency kernel's v_cap rows (the context comes first, and with
  # replace_global the context is v_cap, 16 wide) left their start.
  fresh = train.Trainable(config, sharding.create_mesh(),
                          num_classes=flat_t['head/classifier_bias'].shape[0],
                          num_train_steps=1)
  start = trees.flatten(fresh.fresh_state().params)
  kernel = 'head/adjacency_kernel'
  assert flat_t[kernel].shape == start[kernel].shape
  assert not np.allclose(flat_t[kernel][:16], start[kernel][:16])
