"""compare --seeds: one config per seed, and the mean ± std against numpy."""
import numpy as np
import pytest

from jaxtag.projects import compare
from jaxtag import config as config_lib


def test_with_seeds_sets_the_seed_and_names_the_workdir():
  base = config_lib.load_config_file('configs/mlgcn_anime.py:tiny')
  seeded = compare.with_seeds({'mlgcn_anime-tiny': base}, 3)
  assert list(seeded) == [f'mlgcn_anime-tiny-seed{k}' for k in range(3)]
  assert [c.seed for c in seeded.values()] == [0, 1, 2]
  assert base.seed == config_lib.load_config_file(
      'configs/mlgcn_anime.py:tiny').seed   # the original is untouched
  with pytest.raises(ValueError, match='--seeds'):
    compare.with_seeds({'a': base}, 0)


def test_summary_is_the_mean_and_sample_std_over_seeds():
  rng = np.random.default_rng(0)
  maps = rng.random((2, 3))   # [config, seed]
  blush = rng.random((2, 3))
  runs = [{'name': f'{n}-seed{k}', 'train_seconds': 10.0,
           'metrics': {'mAP': maps[i, k], 'CF1': 0.5},
           'per_tag_ap': {'blush': blush[i, k]}}
          for i, n in enumerate(['a', 'b']) for k in range(3)]
  results = {'runs': runs, 'tags': ['blush']}
  results['summary'] = compare.summarize(results, ['a', 'b'], 3)
  for i, row in enumerate(results['summary']):
    assert row['metrics']['mAP']['mean'] == pytest.approx(maps[i].mean())
    assert row['metrics']['mAP']['std'] == pytest.approx(maps[i].std(ddof=1))
    assert row['per_tag_ap']['blush']['std'] == pytest.approx(
        blush[i].std(ddof=1))
    assert row['metrics']['CF1']['std'] == 0.0
    assert row['train_seconds'] == 30.0
  table = compare.to_markdown(results)
  assert 'Mean ± std over 3 seeds' in table
  assert (f'| a | {100 * maps[0].mean():.1f} ± '
          f'{100 * maps[0].std(ddof=1):.1f} | 50.0 ± 0.0 |') in table


def test_set_reaches_the_configs_that_have_the_key():
  specs = ['configs/graph_controls.py:linear_gap.tiny',
           'configs/graph_controls.py:addgcn_caption.tiny']
  configs = compare.load_configs(
      specs, None, 0.5, ['optim.schedule.warmup_steps=3',
                         'config.model.features.semantic.cache=/tmp/vcap',
                         "model.pool='gmp'"])
  linear, caption = configs.values()
  assert linear.num_epochs == caption.num_epochs == 0.5
  assert linear.num_train_steps is None
  assert linear.optim.schedule.warmup_steps == 3
  assert caption.optim.schedule.warmup_steps == 3
  assert linear.model.pool == caption.model.pool == 'gmp'
  # Only the caption control has the feature: the linear one is unchanged.
  assert caption.model.features.semantic.cache == '/tmp/vcap'
  assert 'semantic' not in linear.model.get('features', {})
  fresh = config_lib.load_config_file(specs[0])
  assert fresh.optim.schedule.warmup_steps != 3   # files untouched


def test_set_refuses_a_key_no_config_has_and_a_malformed_setting():
  specs = ['configs/graph_controls.py:linear_gap.tiny']
  with pytest.raises(ValueError, match='optim.schedul.warmup_steps') as e:
    compare.load_configs(specs, None, None, ['optim.schedul.warmup_steps=3'])
  # The error lists the keys the configs have where the path went wrong.
  assert 'Keys of config.optim there:' in str(e.value)
  assert 'schedule' in str(e.value)
  with pytest.raises(ValueError, match='Keys of config.optim.schedule there:'
                     ' .*warmup_steps'):
    compare.load_configs(specs, None, None, ['optim.schedule.warmup_stepz=3'])
  # A value of the wrong type names the key, the config and the type held.
  with pytest.raises(ValueError, match=r"warmup_steps of graph_controls-"
                     r"linear_gap.tiny, which holds \d+ \(type int\)"):
    compare.load_configs(specs, None, None, ['optim.schedule.warmup_steps=abc'])
  with pytest.raises(ValueError, match='KEY=VALUE'):
    compare.load_configs(specs, None, None, ['optim.lr'])
