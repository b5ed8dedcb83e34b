"""FLOPs per image of the timm-layout backbones, from XLA's cost analysis.

  python -m jaxtag.bench --what=flops                 # every family, 448 px
  python -m jaxtag.bench --what=flops --families=vit_base_patch16 \
      --image_sizes=224,384,448 --flops_from=compiled

Each family is a Tagger: its backbone, at `img_size` = the measured size
(so no position-embedding resampling is counted), and the linear head over
--num_classes tags (default 10,861, WD v3's), in float32; bf16 counts the
same operations. Two counts, each divided by --flop_batch images:
- forward: jit(model.apply(train=False)), the prediction;
- forward_backward: jit(grad of a sigmoid cross-entropy with respect to
  the parameters): a training step without the optimizer's update.
XLA counts 2 FLOPs per multiply-add and one per elementwise operation.
`--flops_from=lowered` (the default) reads the HLO as lowered, before
XLA's optimisations: nothing is compiled, so the largest models are
counted in seconds on a CPU; `compiled` reads the optimised HLO.

`published` gives timm's GMACs for the same model at the sizes timm
reports (results/benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv, fvcore
counts that include the attention products and the 1,000-class head;
the head over 10,861 classes adds D x 9,861 MACs). Add a family by adding
an entry to FAMILIES.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtag import models

FAMILIES = {
    'vit_base_patch16': dict(
        backbone='vit_base_patch16', backbone_kwargs={},
        timm='vit_base_patch16_224 / _384', published_gmacs={224: 17.58,
                                                           384: 55.54}),
    'eva02_large_patch14': dict(
        backbone='eva02_large_patch14', backbone_kwargs={},
        timm='eva02_large_patch14_448', published_gmacs={448: 362.33}),
}


def _model(family: dict, image_size: int, num_classes: int):
  config = ml_collections.ConfigDict(dict(
      backbone=family['backbone'],
      backbone_kwargs={**family['backbone_kwargs'], 'img_size': image_size},
      head='linear', head_kwargs={}, pool='gap', dtype='float32'))
  return models.build_model(config, num_classes)


def _flops(jitted, *args, flops_from: str) -> float:
  lowered = jitted.lower(*args)
  cost = (lowered.compile() if flops_from == 'compiled'
          else lowered).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def count(family: dict, *, image_size: int, num_classes: int, batch: int,
          flops_from: str = 'lowered') -> dict[str, float]:
  """GFLOP per image of the forward and the forward + backward pass."""
  model = _model(family, image_size, num_classes)
  image = jax.ShapeDtypeStruct((batch, image_size, image_size, 3),
                               jnp.float32)
  labels = jax.ShapeDtypeStruct((batch, num_classes), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
      train=False))
  rng = jax.eval_shape(lambda: jax.random.key(0))

  def forward(variables, image):
    return model.apply(variables, image, train=False)

  def loss(params, image, labels, rng):
    logits = model.apply({'params': params}, image, train=True,
                         rngs={'dropout': rng})
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

  forward_flops = _flops(jax.jit(forward), variables, image,
                         flops_from=flops_from)
  train_flops = _flops(jax.jit(jax.grad(loss)), variables['params'], image,
                       labels, rng, flops_from=flops_from)
  return {'forward_gflop': forward_flops / batch / 1e9,
          'forward_backward_gflop': train_flops / batch / 1e9,
          'params': models.count_params(variables['params'])}


def run(*, families, image_sizes, num_classes: int, batch: int,
        flops_from: str) -> dict[str, Any]:
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    raise ValueError(f'Unknown --families {unknown}; valid: '
                     f'{", ".join(FAMILIES)}.')
  rows = []
  for name in families:
    family = FAMILIES[name]
    for size in image_sizes:
      row = {'family': name, 'image_size': size, 'num_classes': num_classes,
             'batch': batch, 'flops_from': flops_from,
             **count(family, image_size=size, num_classes=num_classes,
                     batch=batch, flops_from=flops_from)}
      if size in family['published_gmacs']:
        row['published_gflop'] = 2 * family['published_gmacs'][size]
        row['published_model'] = family['timm']
      rows.append(row)
      print(row)
  return {'rows': rows, 'device_kind': jax.devices()[0].device_kind}
