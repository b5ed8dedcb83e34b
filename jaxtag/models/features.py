"""Feature providers: where a head's declared batch features come from
when neither the label encoder nor the dataset has them.

`config.model.features` maps a feature to its provider and the provider's
options: {'semantic': {'provider': 'captioner', 'captioner': RUN, ...}}.
The options are checked against the provider's fields, as head_kwargs are
against a head's. `build_providers` gives each provider the feature's name
and the data config; a provider then offers
- `module()`: a flax Module computing the feature inside the model's step,
  `(image, image_mask) -> [B, ...]` on the image as the tagger normalised
  it; the model builder puts it in the Tagger, which keeps its weights
  frozen in the 'constants' collection (jaxtag/models/tagger.py). Or None,
  when the feature is read per record instead:
- `open(source, split)`: the split's records with the feature added; the
  returned source's `feature_specs` give its (shape, dtype);
- `init_sources(prefix)`: where the module's weights start from
  (jaxtag/warm_start.py Sources, renamed under `prefix`); the trainer
  applies them with config.init's.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxtag.models import semantic

PROVIDERS = {
    'captioner': semantic.CaptionerFeature,
}
# Fields that the builder sets, never the config.
BUILDER_FIELDS = ('feature', 'data_config', 'backbones')
# Where a provided feature's module lives in the Tagger ('providers' field).
PREFIX = 'providers_'


def build_providers(features_config, data_config, backbones) -> dict[str, Any]:
  """{feature: provider} of config.model.features."""
  out = {}
  for feature, entry in (features_config or {}).items():
    entry = dict(entry)
    where = f'config.model.features.{feature}'
    name = entry.pop('provider', None)
    if name not in PROVIDERS:
      raise ValueError(f'{where}.provider is {name!r}; valid: '
                       f'{", ".join(sorted(PROVIDERS))}.')
    cls = PROVIDERS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    valid = fields - set(BUILDER_FIELDS)
    unknown = sorted(set(entry) - valid)
    if unknown:
      raise ValueError(f'Unknown key(s) {unknown} in {where} for provider '
                       f'{name!r}; valid: provider, '
                       f'{", ".join(sorted(valid))}.')
    fixed = {'feature': feature, 'data_config': data_config,
             'backbones': backbones}
    out[feature] = cls(**{k: v for k, v in fixed.items() if k in fields},
                       **entry)
  return out


def modules(providers) -> dict[str, Any]:
  """{feature: module} of the providers that compute inside the step."""
  out = {}
  for feature, provider in providers.items():
    module = provider.module()
    if module is not None:
      out[feature] = module
  return out


def init_sources(providers) -> list[Any]:
  """The starting weights of the provided modules, as warm_start Sources."""
  return [source for feature, provider in providers.items()
          for source in provider.init_sources(
              f'constants/{PREFIX}{feature}/')]


def open_split(providers, source, split: str):
  """`source` with every per-record feature of `split` added."""
  for provider in providers.values():
    source = provider.open(source, split)
  return source
