"""A tagger is a backbone and a head, each chosen by name, and the frozen
modules that provide the batch features its head declares.

Two entry points, so that a method may predict differently from how it
trains: `__call__` is the training forward pass (teacher forcing included),
`predict` the evaluation and serving path, which never receives the head's
`teacher_features` (ground truth). A head without its own `predict` is
evaluated with its training forward pass in eval mode. A head with a
`predict_image(backbone, image, *, image_mask, **batch_features)` takes the
whole prediction path itself, backbone included (Vallet's random crops).

`providers` ({feature: module}, built by jaxtag/models/features.py)
compute declared batch features inside the step from the image, unless the
batch already holds them. Their weights are frozen: they live in the
'constants' collection under `providers_<feature>/` (its `params` and
`batch_stats`), which is never trained and has no optimiser state, and the
modules run in inference mode.
"""
from typing import Any, Mapping

import flax.linen as nn

from jaxtag.models import pooling

# The collections a frozen module uses, kept under its name in 'constants'.
_FROZEN = ('params', 'batch_stats', 'constants')


def _frozen_view(variables):
  held = variables.get('constants', {})
  return {c: held.get(c, {}) for c in _FROZEN}


def _frozen_store(variables):
  return {'constants': {c: variables.get(c, {}) for c in _FROZEN},
          'params': {}, 'batch_stats': {}}


class Tagger(nn.Module):
  backbone: nn.Module
  head: nn.Module
  providers: Mapping[str, nn.Module] | None = None

  def provided(self, image, image_mask=None, **batch_features) -> dict:
    """The features the providers compute that `batch_features` lacks."""
    out = {}
    for name, module in (self.providers or {}).items():
      if name in batch_features:
        continue
      frozen = nn.map_variables(
          lambda m, x, mask: m(x, mask), _FROZEN, _frozen_view,
          _frozen_store, init=self.is_initializing())
      out[name] = frozen(module, image, image_mask)
    return out

  def _features(self, image, image_mask, train: bool):
    features = self.backbone(image, train=train)
    mask = None
    if image_mask is not None:
      mask = pooling.downsample_mask(image_mask, *features.shape[1:3])
    return features, mask

  def __call__(self, image, *, train: bool, image_mask=None,
               **batch_features) -> Any:
    batch_features.update(self.provided(image, image_mask, **batch_features))
    features, mask = self._features(image, image_mask, train)
    return self.head(features, train=train, feature_mask=mask,
                     **batch_features)

  def predict(self, image, *, image_mask=None, **batch_features) -> Any:
    batch_features.update(self.provided(image, image_mask, **batch_features))
    if hasattr(self.head, 'predict_image'):
      return self.head.predict_image(self.backbone, image,
                                     image_mask=image_mask, **batch_features)
    features, mask = self._features(image, image_mask, False)
    if hasattr(self.head, 'predict'):
      return self.head.predict(features, feature_mask=mask, **batch_features)
    return self.head(features, train=False, feature_mask=mask,
                     **batch_features)
