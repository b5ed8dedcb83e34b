"""Models by name: `build_model(config.model, num_classes)` -> Tagger.

The backbones in timm's layout (vit, eva02, convnext, swinv2) name their
modules after timm's, and one rule maps a timm state dict onto the
Tagger's parameters (jaxtag/models/timm_layout.py). timm's post-pool
LayerNorm lives with whoever pools: the vision transformers pool inside
the backbone (`global_pool` 'token' or 'avg', returning [B, 1, 1, D]), so
their `fc_norm` is the backbone's; ConvNeXt returns its feature map and
the head pools it (`config.model.pool`), so its `head.norm` is the linear
head's `norm` field (`head_kwargs.norm=True`).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtag.models import convnext
from jaxtag.models import densenet
from jaxtag.models import eva02
from jaxtag.models import resnet
from jaxtag.models import swinv2
from jaxtag.models import vallet
from jaxtag.models import vit
from jaxtag.models.heads import HEADS
from jaxtag.models.tagger import Tagger

BACKBONES = {
    'resnet18': resnet.ResNet18,
    'resnet34': resnet.ResNet34,
    'resnet50': resnet.ResNet50,
    'resnet101': resnet.ResNet101,
    'resnet152': resnet.ResNet152,
    'densenet121': densenet.DenseNet121,
    'densenet169': densenet.DenseNet169,
    'vallet': vallet.Vallet,
    # timm's layouts, so that timm weights map one to one
    # (jaxtag/models/timm_layout.py). The vision transformers
    # (jaxtag/models/vit.py, eva02.py) pool and apply fc_norm themselves;
    # ConvNeXt's post-pool norm is the linear head's (head_kwargs.norm=True).
    'vit_small_patch16': vit.VitSmallPatch16,
    'vit_base_patch16': vit.VitBasePatch16,
    'vit_large_patch16': vit.VitLargePatch16,
    'vit_large_patch14': vit.VitLargePatch14,
    'eva02_small_patch14': eva02.Eva02SmallPatch14,
    'eva02_base_patch14': eva02.Eva02BasePatch14,
    'eva02_large_patch14': eva02.Eva02LargePatch14,
    'convnext_tiny': convnext.ConvNeXtTiny,
    'convnext_small': convnext.ConvNeXtSmall,
    'convnext_base': convnext.ConvNeXtBase,
    'swinv2_tiny': swinv2.SwinV2Tiny,
    'swinv2_small': swinv2.SwinV2Small,
    'swinv2_base': swinv2.SwinV2Base,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _module_fields(factory) -> set[str]:
  cls = getattr(factory, 'func', factory)
  return {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}


def _make(registry, kind: str, name: str, kwargs: dict, key: str, **fixed):
  if name not in registry:
    raise ValueError(f'Unknown {kind} {name!r} (config.model.{kind}); valid: '
                     f'{", ".join(sorted(registry))}.')
  factory = registry[name]
  fields = _module_fields(factory)
  for k in kwargs:
    if k not in fields or k in fixed:
      raise ValueError(
          f'Unknown key config.model.{key}.{k} for {kind} {name!r}; valid: '
          f'{", ".join(sorted(fields - set(fixed)))}.')
  return factory(**{k: v for k, v in fixed.items() if k in fields}, **kwargs)


def build_model(model_config, num_classes: int, tag_metadata=None,
                semantic=None) -> Tagger:
  """The tagger `config.model` describes; `semantic`: a frozen encoder
  giving the head its 'semantic' feature (jaxtag/models/semantic.py)."""
  if model_config.dtype not in DTYPES:
    raise ValueError(f'Unknown config.model.dtype {model_config.dtype!r}; '
                     f'valid: {", ".join(DTYPES)}.')
  dtype = DTYPES[model_config.dtype]
  backbone = _make(BACKBONES, 'backbone', model_config.backbone,
                   dict(model_config.backbone_kwargs), 'backbone_kwargs',
                   dtype=dtype)
  head = _make(HEADS, 'head', model_config.head,
               dict(model_config.head_kwargs), 'head_kwargs',
               num_classes=num_classes, pool=model_config.pool, dtype=dtype,
               tag_metadata=tag_metadata)
  return Tagger(backbone=backbone, head=head, semantic=semantic)


def declared_features(model: Tagger) -> tuple[tuple[str, ...],
                                              tuple[str, ...]]:
  """(batch_features, teacher_features) that the model's head receives from
  the batch; 'semantic' is not among them when the model computes it."""
  head = model.head  # a head may declare per instance (a property)
  batch = tuple(getattr(head, 'batch_features', ()))
  if model.semantic is not None:
    batch = tuple(k for k in batch if k != 'semantic')
  return batch, tuple(getattr(head, 'teacher_features', ()))


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
