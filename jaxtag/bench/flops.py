r"""FLOPs per image of the timm-layout backbones, from XLA's cost analysis.

  python -m jaxtag.bench --what=flops [--num_classes 10861]

Lowers the Tagger's forward pass, and the forward and backward pass of a
sigmoid cross-entropy, on one 448 px image with the linear head, and reads
XLA's 'flops' (a multiply-add counts 2) twice:
- of the program as lowered (before the backend's passes): the model's own
  arithmetic, the same on every backend; the figures to quote;
- of the program compiled for this backend. These can differ: the CPU
  backend rewrites the kernel gradient of a depthwise convolution (a
  convolution with batch_group_count = channels) as a dense convolution
  followed by a diagonal select, which multiplies its cost by the channel
  count; ConvNeXt's backward pass on CPU then costs about 8 forward passes.

Beside them, the published count: timm's GMACs at the model's native size,
scaled to 448 px by the number of tokens (pixels), times 2 for FLOPs. The
scaling is exact for a ConvNeXt. For a SwinV2 it assumes the window stays
8 and every feature map divides into windows; at 448 px the 28 and 14
maps of the last two stages are padded to 32 and 16 with window 8, and
the WD v3 model's window 14 makes attention dearer per token instead.
Published counts (fvcore's) leave out elementwise work (norms, GELU,
softmax), which XLA counts.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxtag import models
from jaxtag.models.heads.linear import LinearHead
from jaxtag.models.tagger import Tagger

IMAGE_SIZE = 448
# name -> (backbone, backbone_kwargs, the head's norm, published GMACs,
#          the size they were counted at), timm's results tables.
MODELS = {
    'convnext_base': ('convnext_base', {}, True, 15.4, 224),
    'convnext_base (WD v3)': ('convnext_base', {'act_layer': 'gelu_tanh'},
                              True, 15.4, 224),
    'swinv2_base_window8_256': ('swinv2_base', {'window_size': 8}, False,
                                20.4, 256),
    'swinv2_base (WD v3, window 14)': (
        'swinv2_base', {'window_size': 14, 'act_layer': 'gelu_tanh'}, False,
        20.4, 256),
}


def _flops(stage) -> float:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def count(backbone: str, backbone_kwargs: dict, norm: bool, *,
          num_classes: int, image_size: int = IMAGE_SIZE,
          batch: int = 1) -> dict[str, float]:
  """Forward and forward+backward FLOPs per image, float32: as lowered,
  and as compiled for this backend."""
  model = Tagger(backbone=models.BACKBONES[backbone](**backbone_kwargs),
                 head=LinearHead(num_classes=num_classes, norm=norm))
  image = jax.ShapeDtypeStruct((batch, image_size, image_size, 3),
                               jnp.float32)
  labels = jax.ShapeDtypeStruct((batch, num_classes), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), image)

  def forward(variables, image):
    return model.apply(variables, image, train=False)

  def loss(params, image, labels):
    logits = model.apply({'params': params}, image, train=True,
                         rngs={'dropout': jax.random.key(0)})
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

  forward_lowered = jax.jit(forward).lower(variables, image)
  train_lowered = jax.jit(jax.grad(loss)).lower(variables['params'], image,
                                                labels)
  return {'forward': _flops(forward_lowered) / batch,
          'forward_backward': _flops(train_lowered) / batch,
          'forward_compiled': _flops(forward_lowered.compile()) / batch,
          'forward_backward_compiled': _flops(train_lowered.compile()) / batch,
          'backend': jax.default_backend(),
          'params': models.count_params(variables['params'])}


def run(num_classes: int = 1000) -> dict[str, Any]:
  rows = {}
  for name, (backbone, kwargs, norm, gmacs, size) in MODELS.items():
    measured = count(backbone, kwargs, norm, num_classes=num_classes)
    rows[name] = {
        **measured,
        'published_gflops_at_448': 2 * gmacs * (IMAGE_SIZE / size)**2,
        'published_gmacs': gmacs, 'published_size': size,
    }
  return {'image_size': IMAGE_SIZE, 'num_classes': num_classes,
          'models': rows}


def print_table(result: dict[str, Any]) -> None:
  models_ = result['models']
  backend = next(iter(models_.values()))['backend']
  print(f'GFLOPs per image at {result["image_size"]} px, '
        f'{result["num_classes"]} classes (XLA cost analysis; lowered, and '
        f'compiled for {backend}):')
  print(f'{"model":32s} {"params":>7s} {"fwd":>6s} {"fwd+bwd":>8s} '
        f'{"fwd":>6s} {"fwd+bwd":>8s} {"published":>9s}')
  for name, row in models_.items():
    g = {k: v / 1e9 for k, v in row.items() if isinstance(v, float)}
    print(f'{name:32s} {row["params"] / 1e6:6.1f}M {g["forward"]:6.1f} '
          f'{g["forward_backward"]:8.1f} {g["forward_compiled"]:6.1f} '
          f'{g["forward_backward_compiled"]:8.1f} '
          f'{row["published_gflops_at_448"]:9.1f}')
