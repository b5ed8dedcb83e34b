r"""python -m jaxtag.main --config configs/wd_v3.py:vit_base \
    --config.dataset.manual_dir=/path/to/danbooru --workdir runs/wd_vit

The WD v3 taggers' recipe (SmilingWolf's wd-*-tagger-v3, trained with
JAX-CV; docs/methods/wd_v3.md): one of the four WD v3 backbones at 448 px
on `danbooru` selected as WD v3 was, with
- LAMB, weight decay on the kernels only (jaxtag/optim.py decay_mask: not
  on biases, norms, layer scales, position embeddings or tokens), the
  gradient's global norm clipped at 1.0;
- a linear warmup from 0.1x the peak learning rate to the peak, then a
  cosine down to 0.01x;
- bf16 computation (parameters stay float32);
- per-sample MixUp and cutout (jaxtag/data/batch_augment.py) and drop path;
- a random square crop of 0.87-0.998 of the shorter side (drawn uniformly
  in area: config.data.crop_scale is an area fraction), then 448 px with
  area, bilinear or bicubic resampling drawn per image (the Danbooru
  variants; the synthetic ones keep one filter);
- BGR input in [-1, 1] (mean = std = 0.5, config.data.channel_order BGR),
  the WD models' input, so a converted bundle and its ONNX export take
  images as the WD front ends give them;
- validation metrics beside mAP: macro-F1 at P = R (per tag, and at one
  global threshold), micro-F1 and MCC (jaxtag/tasks/multi_label.py).

Variants (the backbones as the WD v3 repositories' config.json set them,
parameter counts equal to timm's at 10,861 tags):
- `vit_base`: vit_base_patch16 at 448 px (94,602,349 parameters);
- `swinv2_base`: swinv2_base, window 14, tanh GELU (98,026,341);
- `convnext_base`: convnext_base, tanh GELU, the head's norm (98,698,989);
- `eva02_large`: eva02_large_patch14 at 448 px (315,187,757).

The data: ids mod 1000 in 0-899 train, 950-999 validation (WD v3's split),
900-949 a test split WD v3 left unused; posts with fewer than 10 general
tags left out, general tags with 600 train images or more and character
tags with 50 or more, the four ratings first, images stored with the
longest side at 768 px (data_builders/danbooru).
For WD v3's own 10,861 tags in their order, give its list:
--config.dataset.build_options.vocabulary=/path/to/selected_tags.csv.
Per-tag loss weights: --config.loss.tag_weights=weights.csv (`tag,weight`
rows, jaxtag/objectives.py). The learning rate, batch, epochs, MixUp,
cutout and drop-path values are jaxtag's: the WD v3 cards do not publish
them.

  python -m jaxtag.main --config configs/wd_v3.py:tiny --workdir runs/wd_tiny

is the recipe on a 2-block ViT on `synthetic_anime/tiny` at 32 px for 8
steps (seconds, for tests). `:synthetic` (ViT), `:synthetic_swinv2`,
`:synthetic_convnext`, `:synthetic_eva02` and `:synthetic_resnet` (the
baseline's half-width ResNet-18 with configs/default.py's AdamW) run the
same budget on `synthetic_anime/default` at 64 px on 2 CPU cores, a few
minutes each: the comparison of docs/methods/wd_v3.md.
"""
from jaxtag import config as config_lib

# variant -> (backbone, backbone_kwargs, head_kwargs): the WD v3 models.
BACKBONES = {
    'vit_base': ('vit_base_patch16', {'img_size': 448,
                                      'drop_path_rate': 0.1}, {}),
    'swinv2_base': ('swinv2_base', {'window_size': 14,
                                    'act_layer': 'gelu_tanh',
                                    'drop_path_rate': 0.1}, {}),
    'convnext_base': ('convnext_base', {'act_layer': 'gelu_tanh',
                                        'drop_path_rate': 0.1},
                      {'norm': True}),
    'eva02_large': ('eva02_large_patch14', {'img_size': 448,
                                            'drop_path_rate': 0.1}, {}),
}
# The small networks of the synthetic comparison, at 64 px.
SYNTHETIC = {
    'synthetic': ('vit_small_patch16', dict(
        img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
        drop_path_rate=0.05), {}),
    'synthetic_swinv2': ('swinv2_tiny', dict(
        embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
        window_size=8, drop_path_rate=0.05), {}),
    'synthetic_convnext': ('convnext_tiny', dict(
        dims=(32, 64, 128, 256), depths=(1, 1, 3, 1), drop_path_rate=0.05),
        {'norm': True}),
    'synthetic_eva02': ('eva02_small_patch14', dict(
        img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
        ref_feat_shape=(8, 8), drop_path_rate=0.05), {}),
}
TINY = ('vit_small_patch16', dict(img_size=32, patch_size=8, embed_dim=32,
                                  depth=2, num_heads=2), {})
VARIANTS = (*BACKBONES, *SYNTHETIC, 'synthetic_resnet', 'tiny')


def _recipe(config, model):
  """The WD v3 recipe's settings on `config` with `model`'s backbone."""
  backbone, backbone_kwargs, head_kwargs = model
  config.model.backbone = backbone
  config.model.backbone_kwargs = dict(backbone_kwargs)
  config.model.head = 'linear'
  config.model.head_kwargs = dict(head_kwargs)
  config.model.pool = 'gap'
  config.model.dtype = 'bfloat16'

  config.data.crop = 'random'      # square, then resized
  config.data.crop_scale = (0.87 ** 2, 0.998 ** 2)   # of the side: 0.87-0.998
  config.data.flip = True
  config.data.mean = (0.5, 0.5, 0.5)   # [-1, 1]
  config.data.std = (0.5, 0.5, 0.5)
  config.data.channel_order = 'BGR'
  config.data.mixup_prob = 0.5
  config.data.mixup_alpha = 0.2
  config.data.cutout_prob = 0.5
  config.data.cutout_size = 0.25
  config.data.workers = 'auto'

  config.loss.name = 'sigmoid_bce'
  config.optim.name = 'lamb'
  config.optim.weight_decay = 0.05
  config.optim.clip_norm = 1.0
  return config


def _schedule(warmup_steps):
  return {'name': 'cosine', 'warmup_steps': warmup_steps,
          'init_lr_factor': 0.1, 'end_lr_factor': 0.01}


def _synthetic(model):
  """The comparison's budget on synthetic_anime/default at 64 px."""
  config = config_lib.defaults()
  config.dataset.name = 'synthetic_anime/default'
  config.data.image_size = 64
  config.batch_size = 64
  config.num_train_steps = 400
  config.log_every_steps = 50
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  config.eval.batch_size = 256
  if model is None:  # the baseline: configs/default.py's model and AdamW
    config.data.crop = 'random_resized'
    config.data.crop_scale = (0.6, 1.0)
    config.data.workers = 'auto'
    config.model.backbone = 'resnet18'
    config.model.backbone_kwargs = {'width': 0.5, 'small_stem': False}
    config.optim.name = 'adamw'
    config.optim.lr = 2e-3
    config.optim.weight_decay = 1e-4
    config.optim.schedule = {'name': 'cosine', 'warmup_steps': 40,
                             'end_lr_factor': 0.01}
    return config
  _recipe(config, model)
  config.optim.lr = 2e-3
  config.optim.schedule = _schedule(40)
  return config


def get_config(arg=None):
  if arg == 'tiny':
    config = _recipe(config_lib.defaults(), TINY)
    config.dataset.name = 'synthetic_anime/tiny'
    config.data.image_size = 32
    config.data.workers = 0
    config.optim.lr = 1e-3
    config.optim.schedule = _schedule(2)
    config.batch_size = 16
    config.num_train_steps = 8
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.eval.batch_size = 32
    config.eval.plots = False
    return config
  if arg in SYNTHETIC:
    return _synthetic(SYNTHETIC[arg])
  if arg == 'synthetic_resnet':
    return _synthetic(None)
  if arg not in BACKBONES:
    raise ValueError(f'Unknown variant {arg!r} of configs/wd_v3.py; valid: '
                     f'{", ".join(VARIANTS)}.')

  config = _recipe(config_lib.defaults(), BACKBONES[arg])
  config.dataset.name = 'danbooru'
  config.dataset.label_feature = 'tags'
  config.dataset.test_split = 'test'
  config.dataset.build_options = {
      'categories': ('general', 'character'), 'ratings': True,
      'split_ranges': 'train=0-899,validation=950-999,test=900-949',
      'min_general_tags': 10, 'min_count': 600, 'min_count_character': 50,
      # min_count decides; no top-K cut.
      'num_general': 1_000_000, 'num_character': 1_000_000,
      # Originals stored with the longest side at 768 (JPEG q95), the 448
      # crops' size with room: training decodes them 4-6x faster per core
      # than 2-4 MP originals (docs/benchmarks.md, "Decoding at reduced
      # size"). max_side=0 keeps the originals.
      'max_side': 768}
  config.data.image_size = 448
  config.data.interpolation = 'bicubic'
  # Each training image resized with area, bilinear or bicubic, drawn per
  # image, as JAX-CV trained WD v3 (random_resize_method), so the tagger
  # does not learn one resampler's look; evaluation stays bicubic.
  config.data.train_interpolations = ('area', 'bilinear', 'bicubic')
  # Evaluated and served under the WD contract (configs/default.py:wd).
  config.eval.geometry = 'pad'
  config.eval.thresholds = 'category'

  config.optim.lr = 1e-3
  config.optim.schedule = _schedule(10_000)
  config.batch_size = 256
  config.num_epochs = 40.0
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2_000
  config.eval.batch_size = 256
  return config
