r"""Show, Attend and Tell captioner (the captioner of Lan et al., 2022).

  python -m jaxtag.main --config configs/captioner_flickr8k.py \
      --config.dataset.manual_dir=/data/flickr8k --workdir runs/captioner

Flickr8k photos and their five captions (the `flickr8k` builder; see
data_builders/flickr8k/README.md). The encoder is a ResNet-50 without its
last stage: stride 16, a 14 x 14 x 1024 grid at 224 px, the grid size of
Xu et al.'s VGG conv5_4; the decoder is jaxtag/models/captioner.py with
its default sizes. Adam 4e-4 (common for this model; Xu et al. used
RMSProp/Adam without giving rates), 20 epochs, the doubly stochastic
attention penalty with lambda 1, BLEU-1..4 on the test split with the
beam width 3.

Variants:
- `:tiny`: a width-1/8 network on synthetic_anime/tiny's captions, a few
  steps, for tests.
- `:synthetic`: synthetic_anime/default's captions (one per image), sized
  for a CPU run.
"""
from jaxtag import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.dataset.name = 'flickr8k'
  config.dataset.label_feature = 'captions'
  config.dataset.label_encoding = 'caption'
  # Words kept per caption, references kept per image for BLEU, how often
  # a train word must occur to enter the vocabulary, and a CSV of captions
  # replacing the train records' own ('': none; jaxtag/data/captions.py).
  config.dataset.label_encoding_kwargs = {
      'max_tokens': 20, 'references': 5, 'min_count': 5, 'targets': ''}
  config.dataset.eval_split = 'validation'

  config.data.image_size = 224
  config.data.crop = 'random_resized'
  config.data.crop_scale = (0.7, 1.0)
  config.data.flip = False          # captions say "left" and "right"
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.data.workers = 'auto'

  config.model.backbone = 'resnet50'
  config.model.backbone_kwargs = {'stage_sizes': (3, 4, 6)}
  config.model.head = 'show_attend_tell'
  config.model.head_kwargs = {'beam_width': 3, 'max_steps': 21}
  config.loss.name = 'caption_ce'
  config.loss.kwargs = {'attention_weight': 1.0}

  config.optim.name = 'adam'
  config.optim.lr = 4e-4
  config.optim.clip_norm = 5.0
  config.optim.schedule = {'name': 'cosine', 'warmup_steps': 500,
                           'end_lr_factor': 0.1}
  config.batch_size = 32
  config.num_epochs = 20.0
  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 1000
  config.eval.batch_size = 64

  if arg == 'tiny':
    config.dataset.name = 'synthetic_anime/tiny'
    config.dataset.label_feature = 'caption'
    config.dataset.label_encoding_kwargs.update(
        {'max_tokens': 8, 'references': 1, 'min_count': 1})
    config.data.image_size = 32
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    config.data.workers = 0
    config.model.backbone = 'resnet18'
    config.model.backbone_kwargs = {'width': 0.125, 'small_stem': True,
                                    'stage_sizes': (2, 2, 2)}
    config.model.head_kwargs = {'context_dim': 16, 'embed_dim': 16,
                                'attention_dim': 16, 'lstm_dim': 32,
                                'beam_width': 2, 'max_steps': 9}
    config.optim.lr = 3e-3
    config.optim.schedule = {'name': 'constant', 'warmup_steps': 0}
    config.batch_size = 16
    config.num_epochs = None
    config.num_train_steps = 8
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.eval.batch_size = 32
  elif arg == 'synthetic':
    config.dataset.name = 'synthetic_anime/default'
    config.dataset.label_feature = 'caption'
    config.dataset.label_encoding_kwargs.update(
        {'max_tokens': 18, 'references': 1, 'min_count': 5})
    config.data.image_size = 96
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    config.model.backbone = 'resnet18'
    # Half-width ResNet-18 without its last stage: a 6 x 6 grid at 96 px.
    config.model.backbone_kwargs = {'width': 0.5, 'small_stem': False,
                                    'stage_sizes': (2, 2, 2)}
    config.model.head_kwargs = {'context_dim': 128, 'embed_dim': 128,
                                'attention_dim': 128, 'lstm_dim': 256,
                                'beam_width': 3, 'max_steps': 19}
    config.optim.lr = 2e-3
    config.optim.schedule = {'name': 'cosine', 'warmup_steps': 200,
                             'end_lr_factor': 0.05}
    config.batch_size = 64
    config.num_epochs = 4.0
    config.log_every_steps = 50
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 500
    config.eval.batch_size = 250
  elif arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/captioner_flickr8k.py;'
                     ' valid: tiny, synthetic (or none).')
  return config
