"""A tagger is a backbone and a head, each chosen by name.

Two entry points, so that a method may predict differently from how it
trains: `__call__` is the training forward pass (teacher forcing included),
`predict` the evaluation and serving path, which never receives the head's
`teacher_features` (ground truth). A head without its own `predict` is
evaluated with its training forward pass in eval mode.
"""
from typing import Any

import flax.linen as nn

from jaxtag.models import pooling


class Tagger(nn.Module):
  backbone: nn.Module
  head: nn.Module

  def _features(self, image, image_mask, train: bool):
    features = self.backbone(image, train=train)
    mask = None
    if image_mask is not None:
      mask = pooling.downsample_mask(image_mask, *features.shape[1:3])
    return features, mask

  def __call__(self, image, *, train: bool, image_mask=None,
               **batch_features) -> Any:
    features, mask = self._features(image, image_mask, train)
    return self.head(features, train=train, feature_mask=mask,
                     **batch_features)

  def predict(self, image, *, image_mask=None, **batch_features) -> Any:
    features, mask = self._features(image, image_mask, False)
    if hasattr(self.head, 'predict'):
      return self.head.predict(features, feature_mask=mask, **batch_features)
    return self.head(features, train=False, feature_mask=mask,
                     **batch_features)
