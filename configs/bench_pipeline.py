r"""python -m jaxtag.bench --config configs/bench_pipeline.py:cpu --pipeline

The host input pipeline at 448 px, the resolution of the ResNet-101 runs
(configs/bench_resnet.py:r101_448): 512 px PNGs of synthetic_anime/large_4k
(built on first use, about 30 s on 2 cores) are decoded, randomly cropped,
resized to 448, flipped and batched. The benchmark prints the loader's
images/s on one core, the train step's images/s and their ratio.

Variants: the default is ResNet-101 in bf16, 64 images per device, for an
accelerator (pass --config.batch_size=<64 x devices>); `:cpu` swaps in a
width-1/8 ResNet-18 in float32 so that the step also runs on a 2-core CPU
(there only the loader's figures say anything).
"""
from jaxtag import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.dataset.name = 'synthetic_anime/large_4k'
  config.data.image_size = 448
  config.data.crop = 'random_resized'
  config.data.crop_scale = (0.6, 1.0)
  config.data.workers = 0

  config.model.backbone = 'resnet101'
  config.model.backbone_kwargs = {'width': 1.0, 'small_stem': False}
  config.model.dtype = 'bfloat16'
  config.optim.name = 'sgd'
  config.optim.lr = 0.1
  config.optim.weight_decay = 1e-4
  config.optim.nesterov = True
  config.batch_size = 64
  config.num_train_steps = 1000

  if arg == 'cpu':
    config.model.backbone = 'resnet18'
    config.model.backbone_kwargs = {'width': 0.125, 'small_stem': False}
    config.model.dtype = 'float32'
    config.batch_size = 32
  elif arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/bench_pipeline.py; '
                     'valid: cpu (or none).')
  return config
