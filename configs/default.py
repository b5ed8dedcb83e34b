r"""python -m jaxtag.main --config configs/default.py --workdir runs/demo

A small ResNet tagger on the embedded synthetic anime dataset. The default
builds `synthetic_anime/default` on first use (12k train images at 96 px,
about 10 s) and trains 8 epochs in about 9 minutes on 2 CPU cores.

  python -m jaxtag.main --config configs/default.py:tiny --workdir runs/tiny

trains a width-1/8 network on `synthetic_anime/tiny` for 8 steps, for tests.

  python -m jaxtag.main --config configs/default.py:wd --workdir runs/wd

is the default run meant for WD-tagger front ends (ONNX export): it
evaluates with the WD preprocessing contract, eval geometry 'pad' and the
'bicubic' filter (jaxtag/data/geometry.py), so thresholds fitted on
validation hold in those clients. Bicubic is the filter of SmilingWolf's
demo app, the WD models' reference front end, which pads first as the
contract does: its pixels then equal jaxtag.tag's. kohya's script (OpenCV
INTER_AREA when shrinking) and ComfyUI (Lanczos) differ from it by a few
levels of 255 at most.
"""
from jaxtag import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.dataset.name = 'synthetic_anime/default'
  config.data.image_size = 96
  config.data.crop = 'random_resized'
  config.data.crop_scale = (0.6, 1.0)
  config.data.workers = 'auto'   # 0 on a CPU-only host: the step uses the cores

  config.model.backbone = 'resnet18'
  # Half-width ResNet-18 with the standard stem: 0.44 GFLOP per training
  # image at 96 px, about 140 img/s on 2 CPU cores.
  config.model.backbone_kwargs = {'width': 0.5, 'small_stem': False}
  config.model.head = 'linear'
  config.model.pool = 'gap'

  config.optim.name = 'adamw'
  config.optim.lr = 2e-3
  config.optim.weight_decay = 1e-4
  config.optim.schedule = {'name': 'cosine', 'warmup_steps': 200,
                           'end_lr_factor': 0.01}

  config.batch_size = 64
  config.num_epochs = 8.0
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.eval.batch_size = 256

  if arg == 'tiny':
    config.dataset.name = 'synthetic_anime/tiny'
    config.data.image_size = 32
    config.model.backbone_kwargs = {'width': 0.125, 'small_stem': True}
    config.optim.schedule = {'name': 'cosine', 'warmup_steps': 2,
                             'end_lr_factor': 0.0}
    config.batch_size = 16
    config.num_epochs = None
    config.num_train_steps = 8
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.eval.batch_size = 32
  elif arg == 'wd':
    config.eval.geometry = 'pad'
    config.data.interpolation = 'bicubic'
  elif arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/default.py; '
                     'valid: tiny, wd (or none).')
  return config
