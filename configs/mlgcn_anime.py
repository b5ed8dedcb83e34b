r"""python -m jaxtag.main --config configs/mlgcn_anime.py --workdir runs/mlgcn \
    --config.dataset.manual_dir=/path/to/danbooru

ML-GCN for anime illustrations, with the settings of Deng et al.'s anime
ML-GCN paper (undated): a
DenseNet-121 at 512 px with global max pooling, a 2-layer GCN (d -> 1024 ->
1024) over the re-weighted correlation matrix (tau 0.002, p 0.2) giving the
classifiers, Adam at 1e-3 for 30 epochs, random flips. The paper embeds
tags with GloVe (300-d); here the embeddings come from the train
co-occurrences by default ('cooccurrence', no download), and
`--config.model.head_kwargs.embedding=glove50` takes the GloVe 6B 50-d
vectors of the `glove` extra. The default targets the `danbooru` dataset,
whose TFDS builder reads a local dump (`config.dataset.manual_dir`; layouts
in data_builders/danbooru/README.md) and is built on first use.

  python -m jaxtag.projects.compare configs/default.py configs/mlgcn_anime.py:synthetic \
      configs/addgcn_danbooru.py:synthetic \
      configs/addgcn_danbooru.py:synthetic_lowrank --workdir runs/compare

is the CPU comparison on `synthetic_anime/default` (docs/methods/mlgcn.md,
"The synthetic comparison"): `:synthetic` is configs/default.py
(a half-width ResNet-18 at 96 px, its data, optimiser and schedule) with
the linear head and global average pooling swapped for the ML-GCN head
and global max pooling, so configs/default.py is its baseline and every
head of the comparison shares one backbone and one budget.
`:synthetic_densenet` and `:synthetic_densenet_baseline` are the paper's
backbone at CPU size (a half-width DenseNet-121 at 96 px, Adam 1e-3, 3
epochs; 0.88 GFLOP per training image, 36 img/s on 2 shared cores, about
17 minutes a run), the second with the linear head and global average
pooling (the paper's vanilla DenseNet-121). `:tiny` trains in seconds on
`synthetic_anime/tiny`, for tests.
"""
import os

from jaxtag import config as config_lib

VARIANTS = ('synthetic', 'synthetic_densenet', 'synthetic_densenet_baseline',
            'tiny', 'tiny_baseline')


def _mlgcn_head(config, *, tau, hidden, embedding_dim, adjacency='auto'):
  config.model.head = 'mlgcn'
  config.model.pool = 'gmp'
  config.model.head_kwargs = {
      'tau': tau, 'p': 0.2, 'scheme': 'paper', 'adjacency': adjacency,
      'gcn_dims': (hidden,), 'embedding': 'cooccurrence',
      'embedding_dim': embedding_dim}
  return config


def _default(arg=None):
  """configs/default.py[:arg]: the project's synthetic run and its data."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  return config_lib.load_config_file(path + (f':{arg}' if arg else ''))


def _synthetic_densenet():
  """configs/default.py with a half-width DenseNet-121 and the paper's
  optimiser (Adam, 1e-3), 3 epochs, linear head, global average pooling."""
  config = _default()
  config.model.backbone = 'densenet121'
  config.model.backbone_kwargs = {'width': 0.5, 'small_stem': False}
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.0
  config.num_epochs = 3.0
  config.eval_every_steps = 1000
  return config


def _tiny():
  """configs/default.py:tiny with a one-layer-per-block DenseNet."""
  config = _default('tiny')
  config.model.backbone = 'densenet121'
  config.model.backbone_kwargs = {'width': 0.125, 'small_stem': True,
                                  'block_sizes': (1, 1, 1, 1)}
  config.optim.name = 'adam'
  config.optim.weight_decay = 0.0
  return config


def get_config(arg=None):
  # tau: the 80 synthetic tags co-occur far more often than Danbooru's
  # thousands; at 0.002 the graph links 98.7% of pairs, a near-complete
  # graph that averages every classifier with every other. ML-GCN's COCO
  # value, 0.4, keeps about 8 neighbours per tag (10.8% density).
  if arg == 'synthetic':
    return _mlgcn_head(_default(), tau=0.4, hidden=1024, embedding_dim=64)
  if arg == 'synthetic_densenet':
    return _mlgcn_head(_synthetic_densenet(), tau=0.4, hidden=1024,
                       embedding_dim=64)
  if arg == 'synthetic_densenet_baseline':
    return _synthetic_densenet()
  if arg == 'tiny':
    return _mlgcn_head(_tiny(), tau=0.4, hidden=16, embedding_dim=8)
  if arg == 'tiny_baseline':
    return _tiny()
  if arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/mlgcn_anime.py; '
                     f'valid: {", ".join(VARIANTS)} (or none).')

  config = config_lib.defaults()
  config.dataset.name = 'danbooru'
  config.dataset.label_feature = 'tags'
  config.data.image_size = 512                 # the paper's input size
  config.data.crop = 'none'                    # random flips only
  config.data.flip = True
  config.data.workers = 'auto'
  config.model.backbone = 'densenet121'
  config.model.dtype = 'bfloat16'
  _mlgcn_head(config, tau=0.002, hidden=1024, embedding_dim=300)
  config.optim.name = 'adam'
  config.optim.lr = 1e-3
  config.optim.schedule = {'name': 'constant'}
  config.batch_size = 64
  config.num_epochs = 30.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  config.eval.batch_size = 128
  config.eval.thresholds = 'category'
  return config
