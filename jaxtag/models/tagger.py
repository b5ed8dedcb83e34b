"""A tagger is a backbone and a head, each chosen by name.

Two entry points, so that a method may predict differently from how it
trains: `__call__` is the training forward pass (teacher forcing included),
`predict` the evaluation and serving path, which never receives the head's
`teacher_features` (ground truth). A head without its own `predict` is
evaluated with its training forward pass in eval mode. A head whose
`test_crops` is above 0 is judged on that many random crops of each image
instead (see `_predict_on_crops`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.models import crops as crops_lib
from jaxtag.models import pooling

# Fixed: every evaluation of a checkpoint sees the same crops.
_CROP_SEED = 0


class Tagger(nn.Module):
  backbone: nn.Module
  head: nn.Module
  # A frozen encoder whose output reaches the head as the batch feature
  # 'semantic' (jaxtag/models/semantic.py: a captioner's v_cap), unless the
  # batch already holds it (a feature cache).
  semantic: nn.Module | None = None

  def _with_semantic(self, image, image_mask, batch_features):
    if self.semantic is None or 'semantic' in batch_features:
      return batch_features
    return {**batch_features, 'semantic': self.semantic(image, image_mask)}

  def _features(self, image, image_mask, train: bool):
    features = self.backbone(image, train=train)
    mask = None
    if image_mask is not None:
      mask = pooling.downsample_mask(image_mask, *features.shape[1:3])
    return features, mask

  def __call__(self, image, *, train: bool, image_mask=None,
               **batch_features) -> Any:
    batch_features = self._with_semantic(image, image_mask, batch_features)
    features, mask = self._features(image, image_mask, train)
    return self.head(features, train=train, feature_mask=mask,
                     **batch_features)

  def predict(self, image, *, image_mask=None, **batch_features) -> Any:
    batch_features = self._with_semantic(image, image_mask, batch_features)
    num_crops = int(getattr(self.head, 'test_crops', 0))
    if num_crops:
      return self._predict_on_crops(image, image_mask, num_crops,
                                    batch_features)
    features, mask = self._features(image, image_mask, False)
    if hasattr(self.head, 'predict'):
      return self.head.predict(features, feature_mask=mask, **batch_features)
    return self.head(features, train=False, feature_mask=mask,
                     **batch_features)

  def _predict_on_crops(self, image, image_mask, num: int, batch_features):
    """The head's prediction averaged over `num` random square crops of
    each image, of side `head.test_crop_fraction` of the shortest side of
    the batch (the image size the eval geometry resized to), inside the
    real pixels. All crops go through the backbone as one batch."""
    size = int(round(min(image.shape[1:3]) * self.head.test_crop_fraction))
    views = crops_lib.random_crops(image, image_mask, num=num, size=size,
                                   key=jax.random.key(_CROP_SEED))
    features = self.backbone(views, train=False)
    tiled = {k: jnp.concatenate([v] * num, axis=0)
             for k, v in batch_features.items()}
    outputs = self.head.predict(features, feature_mask=None, **tiled)
    return jax.tree.map(
        lambda x: jnp.mean(x.reshape(num, -1, *x.shape[1:]), axis=0), outputs)
