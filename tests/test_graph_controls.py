"""configs/graph_controls.py: each control changes one thing against
configs/default.py, on either dataset, with the references' options."""
import pytest

from jaxtag.projects import compare
from jaxtag import config as config_lib

PATH = 'configs/graph_controls.py'


def _load(arg):
  return config_lib.load_config_file(f'{PATH}:{arg}')


@pytest.mark.parametrize('dataset', ['default', 'cooccur'])
def test_controls_differ_from_the_baseline_only_where_they_should(dataset):
  base = config_lib.load_config_file('configs/default.py')
  configs = {c: _load(f'{c}.{dataset}') for c in
             ('linear_gap', 'linear_gmp', 'mlgcn', 'addgcn',
              'addgcn_lowrank', 'addgcn_caption')}
  for config in configs.values():
    assert config.dataset.name == f'synthetic_anime/{dataset}'
    assert config.model.backbone == base.model.backbone
    assert config.data.image_size == base.data.image_size
  compare.check_equal_budgets(configs)
  gap, gmp = configs['linear_gap'], configs['linear_gmp']
  assert (gap.model.head, gap.model.pool) == ('linear', 'gap')
  assert (gmp.model.head, gmp.model.pool) == ('linear', 'gmp')
  gap.model.pool = 'gmp'
  assert gap.to_dict() == gmp.to_dict()   # pooling is the only change
  mlgcn = configs['mlgcn']
  assert (mlgcn.model.head, mlgcn.model.pool) == ('mlgcn', 'gmp')
  ref = config_lib.load_config_file('configs/mlgcn_anime.py:synthetic')
  assert mlgcn.model.head_kwargs.to_dict() == ref.model.head_kwargs.to_dict()
  assert configs['addgcn'].model.head_kwargs.get('dynamic') is None
  assert configs['addgcn_lowrank'].model.head_kwargs.dynamic == 'lowrank'
  assert configs['addgcn_caption'].model.head_kwargs.semantic_dim == 128


def test_reference_options():
  assert _load('mlgcn.cooccur.glove50').model.head_kwargs.embedding == (
      'glove50')
  assert _load('mlgcn.cooccur.learned').model.head_kwargs.embedding == (
      'learned')
  assert _load('mlgcn.default.ppmi').model.head_kwargs.embedding == (
      'cooccurrence')
  config = _load('mlgcn.cooccur.reference_code.mean_over_tags')
  assert config.model.head_kwargs.direction == 'reference_code'
  assert config.loss.kwargs.reduction == 'mean_over_tags'
  assert config.optim.clip_norm == 10.0
  tiny = _load('mlgcn.cooccur_tiny')
  assert tiny.dataset.name == 'synthetic_anime/cooccur_tiny'
  assert tiny.model.head_kwargs.gcn_dims == (16,)


def test_bad_variants_name_what_is_valid():
  with pytest.raises(ValueError, match='linear_gmp'):
    _load('resnet')
  with pytest.raises(ValueError, match='cooccur_tiny'):
    _load('mlgcn.coco')
  with pytest.raises(ValueError, match='mean_over_tags'):
    _load('mlgcn.default.bert')
  with pytest.raises(ValueError, match="'mlgcn' control only"):
    _load('addgcn.default.glove50')
