r"""python -m jaxtag.main --config configs/addgcn_danbooru.py \
    --config.dataset.manual_dir=/path/to/danbooru --workdir runs/addgcn

ADD-GCN (jaxtag/models/heads/addgcn.py) with the training settings of the
multi-modal anime paper (Lan et al. 2022): ResNet-101 at 448 px, the 100 most
frequent general tags of `danbooru`, random crop and horizontal flip, SGD
with momentum 0.9 and weight decay 1e-4, learning rate 0.5 for the
attention module and the GCNs and 0.05 for the backbone (the ADD-GCN
reference code uses 10x smaller ones). The paper gives no schedule; this
takes the reference's: 50 epochs, x0.1 at epochs 30 and 40, batch 16,
gradient-norm clipping at 10. The `danbooru` dataset is built on first use
from the dump in `config.dataset.manual_dir` (data_builders/danbooru/README.md).
Multi-modal input: `--config.model.head_kwargs.semantic_dim=N` with a
dataset that has a fixed-shape 'semantic' feature [N].

  python -m jaxtag.main --config configs/addgcn_danbooru.py:synthetic \
      --workdir runs/addgcn_synthetic

is the CPU comparison on `synthetic_anime/default`: configs/default.py (the
half-width ResNet-18 at 96 px, its data, AdamW schedule, batch and 8
epochs) with the linear head swapped for ADD-GCN, plus the reference's
clipping at 10. `:synthetic_lowrank` is the same with the low-rank static
and dynamic graphs of large vocabularies. `:tiny` (and `:tiny_lowrank`) is
configs/default.py:tiny with a small head, seconds, for tests.
"""
import os

from jaxtag import config as config_lib

VARIANTS = ('synthetic', 'synthetic_lowrank', 'tiny', 'tiny_lowrank')
_LOWRANK = {'dynamic': 'lowrank', 'static': 'lowrank'}


def _baseline(arg=None):
  """configs/default.py[:arg], the baseline this method is compared with."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  return config_lib.load_config_file(path + (f':{arg}' if arg else ''))


def _with_addgcn(config, **head_kwargs):
  config.model.head = 'addgcn'
  config.model.head_kwargs = head_kwargs
  config.loss.name = 'sigmoid_bce'   # on (s_m + s_r) / 2; branches logged
  config.optim.clip_norm = 10.0      # the reference's grad-norm clip
  return config


def get_config(arg=None):
  if arg in ('synthetic', 'synthetic_lowrank'):
    # Backbone width 256 at 3x3 cells; D = 256 keeps the SAM projection
    # square, as 2048 -> 1024 is a halving only for ResNet-101. Rank 16 of
    # 80 tags: a fifth of the exact graph's rank.
    lowrank = dict(_LOWRANK, rank=16) if arg == 'synthetic_lowrank' else {}
    # average: from scratch, the reference's sums start the loss in the
    # thousands (docs/methods/addgcn.md).
    return _with_addgcn(_baseline(), node_dim=256, average=True, **lowrank)
  if arg in ('tiny', 'tiny_lowrank'):
    lowrank = dict(_LOWRANK, rank=4) if arg == 'tiny_lowrank' else {}
    return _with_addgcn(_baseline('tiny'), node_dim=16, average=True,
                        **lowrank)
  if arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/addgcn_danbooru.py;'
                     f' valid: {", ".join(VARIANTS)} (or none).')

  config = config_lib.defaults()
  config.dataset.name = 'danbooru'
  config.dataset.label_feature = 'tags'
  # The 100 most frequent general tags, as Lan et al. (2022) train on (options
  # of data_builders/danbooru); the dump's folder comes from the command line,
  # --config.dataset.manual_dir=DUMP.
  config.dataset.build_options = {'categories': ('general',),
                                  'num_general': 100, 'ratings': False}
  config.data.image_size = 448
  config.data.crop = 'random'      # random crop, then resize to 448
  config.data.crop_scale = (0.6, 1.0)
  config.data.flip = True
  config.data.mean = (0.485, 0.456, 0.406)   # ImageNet statistics
  config.data.std = (0.229, 0.224, 0.225)
  config.data.workers = 'auto'

  config.model.backbone = 'resnet101'
  config.model.dtype = 'bfloat16'

  config.optim.name = 'sgd'
  config.optim.lr = 0.5                        # SAM and the GCNs
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4
  config.optim.param_groups = (('^backbone/', 0.1),)   # 0.05 for ResNet-101
  config.optim.schedule = {'name': 'step', 'warmup_steps': 0,
                           'boundaries': (0.6, 0.8),   # epochs 30 and 40 of 50
                           'decay_factor': 0.1}

  config.batch_size = 16
  config.num_epochs = 50.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  config.eval.batch_size = 64
  config.eval.thresholds = 'category'
  return _with_addgcn(config, node_dim=1024)
