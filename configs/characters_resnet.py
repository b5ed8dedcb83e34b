r"""python -m jaxtag.main --config configs/characters_resnet.py:resnet34 --workdir runs/chars

Character recognition from face crops by fine-tuning a ResNet (Guan & Ge):
softmax cross-entropy over the characters (`class_id` labels: one character
per face), SGD lr 1e-3 with momentum 0.9, the rate x0.1 every 7 epochs, 25
epochs, random resized crops of 224 px with horizontal flips. Start from
trained weights with `--config.init.path=WEIGHTS` (a jaxtag workdir or a
.npz of ImageNet weights; see jaxtag/warm_start.py): only the backbone is
taken, the head starts fresh. Evaluation writes the single-label metrics
(top-1, top-5, per-class accuracy, most-confused pairs).

Variants (`:<variant>`):
- `resnet18`, `resnet34`, `resnet50`, `resnet101`: the paper's setting, on a
  face-crop dataset (default `image_folder`-style `animeface_character`;
  override with `--config.dataset.name`).
- `synthetic`: ResNet-34 at half width on `synthetic_anime/faces` (64 px
  crops), scaled down for CPUs: 64 px random resized crops, 6 epochs, the
  rate x0.1 at 4 and 5 epochs, lr 0.01 (no pretrained weights are given by
  default, so it trains from scratch and needs the larger rate).
- `tiny`: a few steps on `synthetic_anime/faces_tiny`, for tests.
"""
from jaxtag import config as config_lib

VARIANTS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'synthetic',
            'tiny')


def get_config(arg=None):
  arg = arg or 'resnet34'
  if arg not in VARIANTS:
    raise ValueError(f'Unknown variant {arg!r} of configs/characters_resnet.py'
                     f'; valid: {", ".join(VARIANTS)}.')
  config = config_lib.defaults()
  config.dataset.name = 'animeface_character'
  config.dataset.label_feature = 'tags'
  config.dataset.label_encoding = 'class_id'
  config.loss.name = 'softmax_ce'

  config.data.image_size = 224
  config.data.crop = 'random_resized'
  config.data.crop_scale = (0.08, 1.0)
  config.data.flip = True
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.data.workers = 'auto'

  config.model.backbone = arg if arg.startswith('resnet') else 'resnet34'
  config.model.head = 'linear'
  config.model.pool = 'gap'
  config.init.include = '^backbone/'

  config.optim.name = 'sgd'
  config.optim.lr = 1e-3
  config.optim.momentum = 0.9
  config.optim.weight_decay = 0.0
  # Fractions of the run: x0.1 at epochs 7, 14 and 21 of 25.
  config.optim.schedule = {'name': 'step', 'warmup_steps': 0,
                           'boundaries': (7 / 25, 14 / 25, 21 / 25),
                           'decay_factor': 0.1}
  config.batch_size = 32
  config.num_epochs = 25.0
  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 500
  config.eval.batch_size = 64

  if arg == 'synthetic':
    config.dataset.name = 'synthetic_anime/faces'
    config.data.image_size = 64
    config.data.crop_scale = (0.5, 1.0)
    # The standard stem: a stride-1 stem at 64 px costs as much as 256 px.
    config.model.backbone_kwargs = {'width': 0.5, 'small_stem': False}
    config.optim.lr = 0.01
    config.optim.schedule = {'name': 'step', 'warmup_steps': 0,
                             'boundaries': (4 / 6, 5 / 6),
                             'decay_factor': 0.1}
    config.batch_size = 64
    config.num_epochs = 6.0
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 100
  elif arg == 'tiny':
    config.dataset.name = 'synthetic_anime/faces_tiny'
    config.data.image_size = 32
    config.data.crop_scale = (0.5, 1.0)
    config.model.backbone = 'resnet18'
    config.model.backbone_kwargs = {'width': 0.125, 'small_stem': True}
    config.optim.lr = 0.05
    config.optim.schedule = {'name': 'constant', 'warmup_steps': 0}
    config.batch_size = 16
    config.num_epochs = None
    config.num_train_steps = 12
    config.log_every_steps = 2
    config.eval_every_steps = 12
    config.checkpoint_every_steps = 12
    config.eval.batch_size = 32
  return config
