r"""A timm model folder (WD v3 taggers among them) -> a jaxtag bundle.

  python -m jaxtag.serving.import_weights --timm DIR --out BUNDLE

DIR holds what timm's hub repositories hold: `model.safetensors`,
`config.json` (`architecture`, `num_classes`, `model_args`,
`pretrained_cfg`) and, in the WD v3 repositories
(SmilingWolf/wd-{vit,swinv2,convnext,eva02-large}-tagger-v3), a
`selected_tags.csv`. The families are jaxtag's timm-layout backbones:
`vit_*`, `eva02_*`, `convnext_*`, `swinv2_*` (jaxtag/models/). BUNDLE gets
the bundle files (jaxtag/serving/bundle.py) and `init.npz`, the Tagger's
parameters ('backbone/...', 'head/...') for `config.init.path`.

Preprocessing written into preprocess.json:
- With selected_tags.csv (a WD v3 tagger), WD's inference conventions
  (SmilingWolf's wd-tagger scripts): the image composited on white, padded
  to a white square, resized bicubically to the pretrained_cfg input size,
  normalised with the pretrained_cfg mean and std (0.5 for WD v3: [-1, 1]),
  then given to the model in BGR order (wdv3_timm.py flips the channels of
  the normalised tensor; the bundle flips the pixels first and stores mean
  and std in BGR order, which is the same). jaxtag's 'pad' geometry resizes
  the longest side and then pads, where WD pads and then resizes: the two
  differ only in the pixels at the image's border. The tag list, categories (9 rating, 0 general, 4 character) and
  counts are the CSV's; thresholds are WD's defaults per category (general
  0.35, character 0.85; config.eval.category_thresholds).
- Without it, timm's own: RGB, the pretrained_cfg `mean`, `std`,
  `interpolation` and `input_size`; the tags are config.json's
  `label_names` if it has them, else `class_<i>`, all general, under one
  global threshold of 0.5.

Every `model_args` entry is honoured or refused: the ones with a jaxtag
counterpart (the backbone's fields, jaxtag/models/{vit,eva02,convnext,
swinv2}.py) are passed on, the dropout rates (no effect at inference) are
dropped, and any other is an error naming it. The state dict must then map
one to one onto the model (every parameter present, shapes equal).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from jaxtag import config as config_lib
from jaxtag import models
from jaxtag import trees
from jaxtag import warm_start
from jaxtag.data import tag_metadata
from jaxtag.models import convnext
from jaxtag.models import eva02
from jaxtag.models import swinv2
from jaxtag.models import timm_layout
from jaxtag.models import transformer as tfm
from jaxtag.models import vit
from jaxtag.serving import bundle as bundle_lib

WEIGHTS, CONFIG, TAGS = 'model.safetensors', 'config.json', 'selected_tags.csv'
INIT = 'init.npz'
FAMILIES = ('vit', 'eva02', 'convnext', 'swinv2')
_CONVERTERS = {'vit': vit.timm_to_jaxtag, 'eva02': eva02.timm_to_jaxtag,
               'convnext': convnext.timm_to_jaxtag,
               'swinv2': swinv2.timm_to_jaxtag}
# timm's name -> jaxtag's, where they differ.
_RENAMED = {
    'eva02': {'num_reg_tokens': 'reg_tokens', 'use_fc_norm': 'fc_norm'},
    'convnext': {'kernel_sizes': 'kernel_size'},
    'vit': {}, 'swinv2': {},
}
# Arguments without effect on an eval forward pass (dropout of any kind) or
# that jaxtag always does (any input size), and ones that must keep timm's
# default.
_DROPPED = frozenset({
    'drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate',
    'attn_drop_rate', 'head_drop_rate', 'dynamic_img_size',
    'dynamic_img_pad', 'pretrained_cfg_overlay'})
_FIXED = {'in_chans': 3}
WD_THRESHOLDS = {'general': 0.35, 'character': 0.85}


class TimmImportError(ValueError):
  """The timm folder does not describe a model jaxtag can rebuild."""


@dataclasses.dataclass
class TimmModel:
  family: str
  backbone: str                 # a key of jaxtag.models.BACKBONES
  backbone_kwargs: dict[str, Any]
  head_norm: bool               # ConvNeXt's head.norm
  num_classes: int
  pretrained_cfg: dict[str, Any]


def _read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, CONFIG)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: a timm model folder holds '
                            f'{WEIGHTS} and {CONFIG}.')
  with open(path, encoding='utf-8') as f:
    config = json.load(f)
  if not isinstance(config, dict) or 'architecture' not in config:
    raise TimmImportError(f'{path} has no "architecture": not a timm '
                          'config.json.')
  return config


def _family(architecture: str) -> str:
  for family in FAMILIES:
    if architecture.startswith(family + '_'):
      return family
  raise TimmImportError(
      f'config.json architecture {architecture!r}: jaxtag imports the timm '
      f'families {", ".join(f + "_*" for f in FAMILIES)}.')


def _backbone_name(family: str, architecture: str) -> tuple[str, dict]:
  """jaxtag's backbone for timm's model name, and what the name itself
  fixes (swinv2's window)."""
  if family == 'swinv2':
    match = re.match(r'swinv2_(tiny|small|base)_window(\d+)_', architecture)
    name, implied = (match and f'swinv2_{match[1]}',
                     {'window_size': int(match[2])} if match else {})
  elif family == 'convnext':
    match = re.match(r'convnext_(tiny|small|base)(_|$)', architecture)
    name, implied = match and f'convnext_{match[1]}', {}
  elif family == 'vit':
    match = re.match(r'vit_(small|base|large)_patch(\d+)_', architecture)
    name, implied = match and f'vit_{match[1]}_patch{match[2]}', {}
  else:
    match = re.match(r'eva02_(small|base|large)_patch(\d+)_', architecture)
    name, implied = match and f'eva02_{match[1]}_patch{match[2]}', {}
  if not name or name not in models.BACKBONES:
    known = sorted(b for b in models.BACKBONES if b.startswith(family))
    raise TimmImportError(
        f'config.json architecture {architecture!r} is no timm model jaxtag '
        f'has; its {family} backbones: {", ".join(known)}.')
  return name, implied


def _fields(backbone: str) -> set[str]:
  factory = models.BACKBONES[backbone]
  cls = factory.func if hasattr(factory, 'func') else factory
  return {f.name for f in dataclasses.fields(cls)} - {
      'dtype', 'parent', 'name'}


def model_from_config(config: dict[str, Any]) -> TimmModel:
  """The jaxtag model a timm config.json describes; an unsupported
  model_args entry is an error naming it."""
  architecture = config['architecture']
  family = _family(architecture)
  backbone, kwargs = _backbone_name(family, architecture)
  args = dict(config.get('model_args') or {})
  pretrained = dict(config.get('pretrained_cfg') or {})
  num_classes = int(args.pop('num_classes', config.get('num_classes', 0)))
  if num_classes < 1:
    raise TimmImportError('config.json has no num_classes: a tagger needs '
                          'its classifier.')
  fields = _fields(backbone)
  global_pool = args.pop('global_pool', config.get('global_pool'))
  if family in ('vit', 'eva02'):
    if global_pool is not None:
      kwargs['global_pool'] = global_pool
    if 'img_size' not in args and 'input_size' in pretrained:
      args['img_size'] = tuple(pretrained['input_size'][1:])
  elif global_pool not in (None, 'avg'):
    raise TimmImportError(f'config.json global_pool {global_pool!r}: jaxtag\'s '
                          f'{family} pools by the average only.')
  else:
    args.pop('img_size', None)  # the window and grid follow the input
  unsupported = []
  for key, value in args.items():
    ours = _RENAMED[family].get(key, key)
    if key in _DROPPED:
      continue
    if key in _FIXED:
      if value != _FIXED[key]:
        unsupported.append(f'{key}={value!r}')
    elif ours in fields:
      if ours == 'kernel_size' and isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
          unsupported.append(f'{key}={value!r}')
          continue
        value = value[0]
      kwargs[ours] = tuple(value) if isinstance(value, list) else value
    else:
      unsupported.append(f'{key}={value!r}')
  if unsupported:
    raise TimmImportError(
        f'config.json model_args {", ".join(unsupported)} of {architecture} '
        f'are not supported by jaxtag\'s {backbone}; it takes '
        f'{", ".join(sorted(fields))}.')
  return TimmModel(family=family, backbone=backbone, backbone_kwargs=kwargs,
                   head_norm=family == 'convnext', num_classes=num_classes,
                   pretrained_cfg=pretrained)


def run_config(model: TimmModel, preprocess: bundle_lib.Preprocess,
               wd: bool) -> ml_collections.ConfigDict:
  """A jaxtag config (config.defaults()) that rebuilds `model`."""
  c = config_lib.defaults()
  c.model.backbone = model.backbone
  c.model.backbone_kwargs = dict(model.backbone_kwargs)
  c.model.head = 'linear'
  c.model.head_kwargs = {'norm': True} if model.head_norm else {}
  c.model.pool = 'gap'
  c.model.dtype = 'float32'
  c.data.image_size = preprocess.size
  c.data.interpolation = preprocess.interpolation
  c.data.mean = preprocess.mean
  c.data.std = preprocess.std
  c.eval.geometry = preprocess.geometry
  c.eval.thresholds = 'category' if wd else 'global'
  return c


def _preprocess(model: TimmModel, wd: bool) -> bundle_lib.Preprocess:
  cfg = model.pretrained_cfg
  size = cfg.get('input_size', [3, 224, 224])
  if size[1] != size[2]:
    raise TimmImportError(f'pretrained_cfg input_size {size}: the bundle '
                          'serves square inputs.')
  interpolation = cfg.get('interpolation', 'bicubic')
  if interpolation not in ('bilinear', 'bicubic'):
    interpolation = 'bicubic'
  default = (0.5, 0.5, 0.5) if wd else (0.485, 0.456, 0.406), (
      (0.5, 0.5, 0.5) if wd else (0.229, 0.224, 0.225))
  mean = tuple(float(v) for v in cfg.get('mean', default[0]))
  std = tuple(float(v) for v in cfg.get('std', default[1]))
  if wd:
    # WD normalises RGB, then flips to BGR: the model's order is BGR, and
    # so is that of the per-channel values the bundle applies after its flip.
    return bundle_lib.Preprocess(
        size=int(size[1]), geometry='pad', interpolation=interpolation,
        mean=mean[::-1], std=std[::-1], channel_order='BGR')
  return bundle_lib.Preprocess(
      size=int(size[1]), geometry='square', interpolation=interpolation,
      mean=mean, std=std, channel_order='RGB')


def read_wd_tags(path: str, num_classes: int):
  """(names, categories, counts, tag ids) of a WD selected_tags.csv
  (tag_id,name,category,count), one row per model output. The ids are
  WD's as written: Danbooru's, 9999999 for the ratings."""
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f)
    missing = {'name', 'category'} - set(reader.fieldnames or ())
    if missing:
      raise TimmImportError(f'{path} lacks the column(s) {sorted(missing)}; '
                            'a WD selected_tags.csv has tag_id,name,'
                            'category,count.')
    rows = list(reader)
  if len(rows) != num_classes:
    raise TimmImportError(f'{path} has {len(rows)} tags, the model '
                          f'{num_classes} outputs: they are from different '
                          'models.')
  names = [r['name'] for r in rows]
  try:
    categories = [int(r['category']) for r in rows]
    counts = [int(r.get('count') or 0) for r in rows]
  except ValueError as e:
    raise TimmImportError(f'{path}: a category or count is not an '
                          f'integer ({e}).') from e
  try:  # the shared reader: ids written as floats, empty ones, 0..C-1
    with open(path, encoding='utf-8', newline='') as f:
      tag_ids = [r.tag_id for r in tag_metadata.parse_selected_tags(
          f.read(), path)]
  except ValueError as e:
    raise TimmImportError(str(e)) from e
  return names, categories, counts, tag_ids


def convert_weights(model: TimmModel, state_dict, source: str):
  """{timm key: array} -> Tagger variables {'params': ...}, checked
  against the model's parameter tree (all present, shapes equal)."""
  converted = _CONVERTERS[model.family](state_dict)
  tagger = build(model)
  size = tfm.pair(model.backbone_kwargs.get('img_size', 64))
  shapes = timm_layout.param_shapes(jax.eval_shape(
      lambda: tagger.init(jax.random.key(0),
                          jnp.zeros((1, *size, 3), jnp.float32),
                          train=False)))
  problems = timm_layout.mismatches(
      {k: tuple(np.shape(v)) for k, v in converted.items()}, shapes)
  if problems:
    raise TimmImportError(
        f'{source} does not fit {model.backbone} with '
        f'{model.backbone_kwargs} ({len(problems)} differences, e.g. '
        f'{problems[:3]}): config.json describes another model.')
  return {k: np.asarray(v, np.float32) for k, v in converted.items()}


def build(model: TimmModel):
  config = ml_collections.ConfigDict(dict(
      backbone=model.backbone, backbone_kwargs=model.backbone_kwargs,
      head='linear', head_kwargs={'norm': True} if model.head_norm else {},
      pool='gap', dtype='float32'))
  return models.build_model(config, model.num_classes)


def import_timm(directory: str, out: str) -> dict[str, Any]:
  """Writes the bundle of the timm folder `directory` (and its init.npz)
  to `out`; returns a summary."""
  config = _read_config(directory)
  model = model_from_config(config)
  weights = os.path.join(directory, WEIGHTS)
  if not os.path.exists(weights):
    raise FileNotFoundError(f'{weights} is missing: a timm model folder '
                            f'holds {WEIGHTS} and {CONFIG}.')
  params = convert_weights(model, safetensors.numpy.load_file(weights),
                           weights)
  tags_path = os.path.join(directory, TAGS)
  wd = os.path.exists(tags_path)
  if wd:
    names, categories, counts, tag_ids = read_wd_tags(tags_path,
                                                      model.num_classes)
  else:
    names = list(config.get('label_names') or
                 [f'class_{i}' for i in range(model.num_classes)])
    if len(names) != model.num_classes:
      raise TimmImportError(f'config.json has {len(names)} label_names for '
                            f'{model.num_classes} classes.')
    categories, counts = [bundle_lib.GENERAL] * len(names), [0] * len(names)
    tag_ids = None
  preprocess = _preprocess(model, wd)
  run = run_config(model, preprocess, wd)
  if wd:
    per_tag = [WD_THRESHOLDS['character'] if c == bundle_lib.CHARACTER
               else WD_THRESHOLDS['general'] for c in categories]
    record = {'policy': 'category', 'tags': names, 'by_category': dict(
        run.eval.category_thresholds), 'per_tag': per_tag}
  else:
    per_tag = [0.5] * len(names)
    record = {'policy': 'global', 'tags': names, 'per_tag': per_tag}
  thresholds = {'run': record, 'by_category': dict(WD_THRESHOLDS),
                'per_tag': {'category': per_tag}}
  if os.path.exists(os.path.join(out, bundle_lib.INFO)):
    raise FileExistsError(f'{out} already holds a bundle; give another '
                          '--out or remove it.')
  variables = {'params': trees.unflatten(params)}
  bundle_lib.write_bundle(
      out, config=run, variables=variables, names=names,
      categories=categories, counts=counts, tag_ids=tag_ids,
      thresholds=thresholds, preprocess=preprocess,
      info={'source': os.path.abspath(directory), 'timm': {
          'architecture': config['architecture'],
          'model_args': config.get('model_args') or {}}, 'wd': wd})
  # The tag names let config.init.head=match_by_name match a new
  # vocabulary's rows (jaxtag/warm_start.py).
  np.savez(os.path.join(out, INIT), **params,
           **{warm_start.TAGS_KEY: np.array(names)})
  return {'bundle': out, 'init': os.path.join(out, INIT), 'wd': wd,
          'backbone': model.backbone, 'num_classes': model.num_classes,
          'parameters': int(sum(v.size for v in params.values()))}

