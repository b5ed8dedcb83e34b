r"""FLOPs per image of the timm-layout backbones, from XLA's cost analysis.

  python -m jaxtag.bench --what=flops                 # every family, 448 px
  python -m jaxtag.bench --what=flops --families=vit_base_patch16 \
      --image_sizes=224,384,448 --flops_from=lowered,compiled

Each family is a Tagger: its backbone (a transformer at `img_size` = the
measured size, so no position-embedding resampling is counted) and the
linear head over --num_classes tags (default 10,861, WD v3's), with the
head's post-pool norm where timm's classifier has one (ConvNeXt), in
float32; bf16 counts the same operations. Two counts, each divided by
--flop_batch images:
- forward: jit(model.apply(train=False)), the prediction;
- forward_backward: jit(grad of a sigmoid cross-entropy with respect to
  the parameters): a training step without the optimizer's update.
XLA counts 2 FLOPs per multiply-add and one per elementwise operation.
`--flops_from=lowered` (the default) reads the HLO as lowered, before the
backend's passes: the model's own arithmetic, the same on every backend,
the figures to quote; nothing is compiled, so the largest models are
counted in seconds on a CPU. `compiled` (columns `*_compiled`) reads the
HLO compiled for this backend. These can differ: the CPU backend rewrites
the kernel gradient of a depthwise convolution (a convolution with
batch_group_count = channels) as a dense convolution followed by a
diagonal select, which multiplies its cost by the channel count;
ConvNeXt's backward pass on CPU then costs about 8 forward passes.

`published` gives timm's GMACs x 2 (results/benchmark-infer-amp-nchw-
pt240-cu124-rtx3090.csv and timm's model tables; fvcore counts, which
include the attention products and the 1,000-class head but leave out
elementwise work: norms, GELU, softmax; the head over 10,861 classes adds
D x 9,861 MACs), at the sizes timm reports. For a family with
`published_scales`, sizes timm does not report are scaled from its
native size by the number of pixels (`published_from` names the size).
The scaling is exact for a ConvNeXt. For a SwinV2 it assumes the window
stays 8 and every feature map divides into windows; at 448 px the 28 and
14 maps of the last two stages are padded to 32 and 16 with window 8, and
the WD v3 model's window 14 makes attention dearer per token instead.
Add a family by adding an entry to FAMILIES.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxtag import models

STAGES = ('lowered', 'compiled')
# name -> the Tagger (backbone, backbone_kwargs, head_kwargs of the linear
# head; `img_size`: the backbone takes the image size), and timm's
# published GMACs {image size: GMACs} for the model `timm`.
FAMILIES = {
    'vit_base_patch16': dict(
        backbone='vit_base_patch16', backbone_kwargs={}, img_size=True,
        timm='vit_base_patch16_224 / _384', published_gmacs={224: 17.58,
                                                           384: 55.54}),
    'eva02_large_patch14': dict(
        backbone='eva02_large_patch14', backbone_kwargs={}, img_size=True,
        timm='eva02_large_patch14_448', published_gmacs={448: 362.33}),
    'convnext_base': dict(
        backbone='convnext_base', backbone_kwargs={},
        head_kwargs={'norm': True}, timm='convnext_base',
        published_gmacs={224: 15.4}, published_scales=True),
    'convnext_base_wd_v3': dict(
        backbone='convnext_base', backbone_kwargs={'act_layer': 'gelu_tanh'},
        head_kwargs={'norm': True}, timm='convnext_base',
        published_gmacs={224: 15.4}, published_scales=True),
    'swinv2_base_window8': dict(
        backbone='swinv2_base', backbone_kwargs={'window_size': 8},
        timm='swinv2_base_window8_256', published_gmacs={256: 20.4},
        published_scales=True),
    'swinv2_base_wd_v3': dict(  # window 14
        backbone='swinv2_base',
        backbone_kwargs={'window_size': 14, 'act_layer': 'gelu_tanh'},
        timm='swinv2_base_window8_256', published_gmacs={256: 20.4},
        published_scales=True),
}


def _model(family: dict, image_size: int, num_classes: int):
  backbone_kwargs = dict(family['backbone_kwargs'])
  if family.get('img_size'):
    backbone_kwargs['img_size'] = image_size
  config = ml_collections.ConfigDict(dict(
      backbone=family['backbone'], backbone_kwargs=backbone_kwargs,
      head='linear', head_kwargs=family.get('head_kwargs', {}), pool='gap',
      dtype='float32'))
  return models.build_model(config, num_classes)


def _flops(stage) -> float:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def count(family: dict, *, image_size: int, num_classes: int, batch: int,
          flops_from=('lowered',)) -> dict[str, Any]:
  """GFLOP per image of the forward and the forward + backward pass, for
  each of `flops_from` ('lowered', 'compiled')."""
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

  lowered = {
      'forward': jax.jit(forward).lower(variables, image),
      'forward_backward': jax.jit(jax.grad(loss)).lower(
          variables['params'], image, labels, rng)}
  row = {}
  for stage in flops_from:
    suffix = '' if stage == 'lowered' else '_compiled'
    for name, program in lowered.items():
      program = program.compile() if stage == 'compiled' else program
      row[f'{name}_gflop{suffix}'] = _flops(program) / batch / 1e9
  return {**row, 'backend': jax.default_backend(),
          'params': models.count_params(variables['params'])}


def _published(family: dict, size: int) -> dict[str, Any]:
  gmacs = family['published_gmacs']
  if size in gmacs:
    return {'published_gflop': 2 * gmacs[size],
            'published_model': family['timm']}
  if not family.get('published_scales'):
    return {}
  native = min(gmacs)
  return {'published_gflop': 2 * gmacs[native] * (size / native)**2,
          'published_model': family['timm'], 'published_from': native}


def run(*, families, image_sizes, num_classes: int, batch: int,
        flops_from=('lowered',)) -> dict[str, Any]:
  unknown = sorted(set(families) - set(FAMILIES))
  if unknown:
    raise ValueError(f'Unknown --families {unknown}; valid: '
                     f'{", ".join(FAMILIES)}.')
  bad = sorted(set(flops_from) - set(STAGES))
  if bad or not flops_from:
    raise ValueError(f'Unknown --flops_from {bad}; valid: lowered, compiled '
                     '(comma-separated, e.g. lowered,compiled).')
  rows = []
  for name in families:
    family = FAMILIES[name]
    for size in image_sizes:
      rows.append({'family': name, 'image_size': size,
                   'num_classes': num_classes, 'batch': batch,
                   'flops_from': list(flops_from),
                   **count(family, image_size=size, num_classes=num_classes,
                           batch=batch, flops_from=flops_from),
                   **_published(family, size)})
      print(rows[-1])
  return {'rows': rows, 'device_kind': jax.devices()[0].device_kind}


def print_table(result: dict[str, Any]) -> None:
  """GFLOP per image, a row per family and size; '-' where not counted."""
  columns = ['forward_gflop', 'forward_backward_gflop',
             'forward_gflop_compiled', 'forward_backward_gflop_compiled',
             'published_gflop']
  titles = ['fwd', 'fwd+bwd', 'fwd (compiled)', 'fwd+bwd (compiled)',
            'published']
  print(f'GFLOP per image (XLA cost analysis, {result["device_kind"]}):')
  print(f'{"family":24s} {"size":>5s} {"params":>8s} '
        + ' '.join(f'{t:>18s}' for t in titles))
  for row in result['rows']:
    cells = [f'{row[c]:18.1f}' if c in row else f'{"-":>18s}'
             for c in columns]
    print(f'{row["family"]:24s} {row["image_size"]:5d} '
          f'{row["params"] / 1e6:7.1f}M ' + ' '.join(cells))
