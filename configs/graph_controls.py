r"""The isolated comparison of the graph heads: one backbone, one budget,
one thing changed at a time, on `synthetic_anime/default` and on
`synthetic_anime/cooccur` (whose small tags are implied by other tags:
data_builders/synthetic_anime/cooccur.py).

The variant is `CONTROL[.DATASET[.OPTION...]]`:
- CONTROL: `linear_gap` (configs/default.py as it is), `linear_gmp` (the
  same with global max pooling), `mlgcn` (configs/mlgcn_anime.py
  :synthetic: ML-GCN head, global max pooling, no bias), `addgcn`
  (configs/addgcn_danbooru.py:synthetic, exact graphs), `addgcn_lowrank`
  (its low-rank graphs), `addgcn_caption` (configs/addgcn_caption_danbooru.py
  :synthetic: caption features in the dynamic graph; it needs
  `--config.model.features.semantic.captioner=RUN` or `.cache=DIR`).
- DATASET: `default` (the default), `cooccur`, or `tiny` / `cooccur_tiny`
  (configs/default.py:tiny's small backbone and small heads, for tests).
- OPTIONS, the references' choices: `learned`, `glove50` or `ppmi` (the
  ML-GCN label embeddings; `ppmi` is head_kwargs.embedding='cooccurrence',
  the default), `reference_code` (ML-GCN's graph in the direction of its
  code, the transpose: label_graph), `mean_over_tags` (the loss averaged
  over tags, as the references' MultiLabelSoftMarginLoss, with their
  gradient-norm clip at 10).

The comparison measured in docs/methods/mlgcn.md (3 seeds of each control on
each dataset, 1 epoch each, and the options at one seed: the 41 runs and
the captioner took 77 minutes of the 2 cores in two lanes; `glove50` needs
the `glove` extra):

  python -m jaxtag.data.build synthetic_anime/cooccur --data_dir DATA
  for d in default cooccur; do
    python -m jaxtag.projects.compare --seeds 3 --data_dir DATA \
      --num_epochs 1 --set optim.schedule.warmup_steps=20 \
      --workdir runs/graph_controls_$d \
      configs/graph_controls.py:{linear_gap,linear_gmp,mlgcn,addgcn,addgcn_lowrank}.$d
  done
  python -m jaxtag.projects.compare --seeds 1 --data_dir DATA \
      --num_epochs 1 --set optim.schedule.warmup_steps=20 \
      --workdir runs/graph_controls_cooccur \
      configs/graph_controls.py:mlgcn.cooccur.{learned,glove50,reference_code,mean_over_tags} \
      configs/graph_controls.py:linear_gap.cooccur.mean_over_tags

`addgcn_caption.$d` reads v_cap from a cache written once by a trained
captioner (`--set` reaches only the configs that have the key):

  python -m jaxtag.main --config configs/captioner_flickr8k.py:synthetic \
      --workdir runs/captioner_synth --config.num_epochs=2 \
      --config.dataset.data_dir=DATA
  python -m jaxtag.projects.semantic_cache \
      --config configs/graph_controls.py:addgcn_caption.$d \
      --config.model.features.semantic.captioner=runs/captioner_synth \
      --config.dataset.data_dir=DATA --out runs/vcap_$d
  python -m jaxtag.projects.compare --seeds 3 --data_dir DATA \
      --num_epochs 1 --set optim.schedule.warmup_steps=20 \
      --set model.features.semantic.cache=runs/vcap_$d \
      --workdir runs/graph_controls_$d configs/graph_controls.py:addgcn_caption.$d

A last `compare` over every control of a dataset (all trained, so nothing
trains again) writes the one table, with `--tags
fang,blush,smile,mole,hairband,open_mouth`, the six hard tags.
"""
import os

from jaxtag import config as config_lib

CONTROLS = ('linear_gap', 'linear_gmp', 'mlgcn', 'addgcn', 'addgcn_lowrank',
            'addgcn_caption')
DATASETS = ('default', 'cooccur', 'tiny', 'cooccur_tiny')
EMBEDDINGS = {'learned': 'learned', 'glove50': 'glove50',
              'ppmi': 'cooccurrence'}
OPTIONS = (*EMBEDDINGS, 'reference_code', 'mean_over_tags')


def _load(name, arg):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
  return config_lib.load_config_file(path + (f':{arg}' if arg else ''))


def _control(control, tiny):
  if control in ('linear_gap', 'linear_gmp'):
    config = _load('default.py', 'tiny' if tiny else None)
    config.model.pool = 'gap' if control == 'linear_gap' else 'gmp'
    return config
  if control == 'mlgcn':
    # configs/mlgcn_anime.py:synthetic's head on configs/default.py's
    # backbone (for `default`, that config itself); smaller when tiny.
    gcn = _load('mlgcn_anime.py', 'synthetic')
    config = _load('default.py', 'tiny' if tiny else None)
    config.model.head = gcn.model.head
    config.model.pool = gcn.model.pool
    config.model.head_kwargs = gcn.model.head_kwargs
    if tiny:
      config.model.head_kwargs.gcn_dims = (16,)
      config.model.head_kwargs.embedding_dim = 8
    return config
  if control == 'addgcn_caption':
    return _load('addgcn_caption_danbooru.py', 'tiny' if tiny else 'synthetic')
  lowrank = '_lowrank' if control == 'addgcn_lowrank' else ''
  return _load('addgcn_danbooru.py',
               ('tiny' if tiny else 'synthetic') + lowrank)


def get_config(arg=None):
  parts = (arg or '').split('.')
  control, dataset = parts[0], (parts[1] if len(parts) > 1 else 'default')
  options = parts[2:]
  if control not in CONTROLS:
    raise ValueError(f'Unknown control {control!r} of configs/'
                     f'graph_controls.py (CONTROL[.DATASET[.OPTION...]]); '
                     f'valid: {", ".join(CONTROLS)}.')
  if dataset not in DATASETS:
    raise ValueError(f'Unknown dataset {dataset!r} of configs/'
                     f'graph_controls.py:{arg}; valid: {", ".join(DATASETS)}.')
  unknown = [o for o in options if o not in OPTIONS]
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} of configs/'
                     f'graph_controls.py:{arg}; valid: {", ".join(OPTIONS)}.')
  config = _control(control, tiny=dataset in ('tiny', 'cooccur_tiny'))
  config.dataset.name = f'synthetic_anime/{dataset}'
  for option in options:
    if option in EMBEDDINGS or option == 'reference_code':
      if control != 'mlgcn':
        raise ValueError(f'Option {option!r} of configs/graph_controls.py '
                         "applies to the 'mlgcn' control only.")
      if option == 'reference_code':
        config.model.head_kwargs.direction = 'reference_code'
      else:
        config.model.head_kwargs.embedding = EMBEDDINGS[option]
    elif option == 'mean_over_tags':
      config.loss.kwargs.reduction = 'mean_over_tags'
      config.optim.clip_norm = 10.0
  return config
