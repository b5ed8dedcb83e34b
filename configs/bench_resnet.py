r"""python -m jaxtag.bench --config configs/bench_resnet.py:r50_224

Accelerator throughput of the standard backbones (train step, bf16). Other
variants: `:r101_448` (ResNet-101, 448 px, batch 64), `:densenet121_512`,
and `:cpu_tiny` (a width-1/4 ResNet-18 at 96 px that runs on any laptop);
r50_224 uses batch 256. The batch is sized for one device; on N devices pass
--config.batch_size=<N x that>.
"""
from jaxtag import config as config_lib

_VARIANTS = {
    # name: (backbone, image_size, batch on one device, width, small stem, dtype)
    'r50_224': ('resnet50', 224, 256, 1.0, False, 'bfloat16'),
    'r101_448': ('resnet101', 448, 64, 1.0, False, 'bfloat16'),
    'densenet121_512': ('densenet121', 512, 32, 1.0, False, 'bfloat16'),
    'cpu_tiny': ('resnet18', 96, 32, 0.25, True, 'float32'),
}


def get_config(arg=None):
  arg = arg or 'r50_224'
  if arg not in _VARIANTS:
    raise ValueError(f'Unknown variant {arg!r} of configs/bench_resnet.py; '
                     f'valid: {", ".join(_VARIANTS)}.')
  backbone, size, per_device, width, small_stem, dtype = _VARIANTS[arg]
  config = config_lib.defaults()
  config.dataset.name = 'synthetic_anime/large'
  config.data.image_size = size
  config.model.backbone = backbone
  config.model.backbone_kwargs = {'width': width, 'small_stem': small_stem}
  config.model.dtype = dtype
  config.optim.name = 'sgd'
  config.optim.lr = 0.1
  config.optim.weight_decay = 1e-4
  config.optim.nesterov = True
  config.batch_size = per_device
  config.num_train_steps = 1000
  return config
