"""Vallet & Sakamoto's head: one set of FC weights, two networks.

Training network (their Table 1, layers 17-19): global average pooling,
FC 4096 + ReLU, dropout, FC 4096 + ReLU, dropout, FC C. The logits are the
per-label confidences C(W) that the multi-label softmax trains
(objective 'multilabel_softmax').

Test network (`predict` with prediction='fcn'): the same three FC layers
applied at every cell of the feature map, which is the 1x1 convolution that
shares their weights, so each label gets a confidence map. Then (their
Sec. 2.6):
1. multi-scale: each map is average-pooled with windows 3, 5 and 7
   (stride 1, same size) and the three results are averaged;
2. at each cell only the label of highest confidence is kept;
3. each label's score is the sum of the confidences it kept.
With a `feature_mask` (native-size evaluation pads images inside their
bucket) padded cells enter neither the pooling windows nor the sums.
Scores are raw confidences, not probabilities, as in the paper; the
`linear` threshold policy turns them into label sets.

The baseline of their Table 3 (prediction='crops') is the training network
on `crops` random crops of each image, each of side `crop_fraction` of the
shortest side of the batch (the image size the eval geometry resized to;
224 of 256 in the paper), inside the real pixels, with the confidences
averaged. The crops come before the backbone, so this path takes the
image (`predict_image`, which the tagger calls with its backbone): all
crops go through the backbone as one batch. They are drawn from a fixed
key, so every evaluation of a checkpoint sees the same crops.

Initialisation (their Sec. 2.4): Glorot kernels; biases 1 in the two hidden
FC layers, 0 in the output layer (the uppermost).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.models import crops as crops_lib
from jaxtag.models import layers
from jaxtag.models import pooling

PREDICTIONS = ('fcn', 'crops')
# Fixed: every evaluation of a checkpoint sees the same crops.
_CROP_SEED = 0


def multiscale_average(maps, windows: Sequence[int], mask=None):
  """[B, H, W, C] maps average-pooled with each window (stride 1, same
  size) over the real cells only, then averaged over the windows."""
  m = (jnp.ones(maps.shape[:3], maps.dtype) if mask is None
       else mask.astype(maps.dtype))[..., None]
  out = []
  for k in windows:
    window = dict(window_shape=(k, k), strides=(1, 1), padding='SAME')
    total = nn.avg_pool(maps * m, **window)   # both divided by k * k
    count = nn.avg_pool(m, **window)
    out.append(total / jnp.maximum(count, 1e-12))
  return sum(out) / len(out)


def keep_best_label(maps):
  """[B, H, W, C]: each cell keeps only its highest-confidence label (the
  first on ties); every other entry of the cell becomes 0."""
  best = jnp.argmax(maps, axis=-1)
  return maps * jax.nn.one_hot(best, maps.shape[-1], dtype=maps.dtype)


def sum_kept(pruned, mask=None):
  """[B, C]: per label, the sum of its kept confidences over real cells."""
  if mask is not None:
    pruned = pruned * mask[..., None].astype(pruned.dtype)
  return jnp.sum(pruned, axis=(1, 2))


class ValletHead(nn.Module):
  num_classes: int
  pool: str = 'gap'
  dtype: Any = jnp.float32
  width: float = 1.0            # scales the 4096 hidden units
  hidden_bias: float = 1.0      # initial bias of fc1 and fc2 (the paper: 1)
  dropout: float = 0.5
  prediction: str = 'fcn'       # 'fcn' (their method) or 'crops' (baseline)
  windows: Sequence[int] = (3, 5, 7)
  crops: int = 10
  crop_fraction: float = 224 / 256

  def setup(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f'Unknown config.model.head_kwargs.prediction '
                       f'{self.prediction!r}; valid: {", ".join(PREDICTIONS)}.')
    hidden = layers.scaled(4096, self.width)
    dense = lambda n, bias, name: nn.Dense(  # noqa: E731
        n, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=nn.initializers.glorot_uniform(),
        bias_init=nn.initializers.constant(bias), name=name)
    self.fc1 = dense(hidden, self.hidden_bias, 'fc1')
    self.fc2 = dense(hidden, self.hidden_bias, 'fc2')
    self.out = dense(self.num_classes, 0.0, 'out')
    self.drop = nn.Dropout(self.dropout)

  @property
  def test_crops(self) -> int:
    """Random crops a prediction averages over; 0 for one full image."""
    return self.crops if self.prediction == 'crops' else 0

  def _fc(self, x, train: bool):
    """The three FC layers on the last axis: on [B, D] the training
    network, on [B, H, W, D] the 1x1 convolutions of the test network."""
    x = self.drop(nn.relu(self.fc1(x)), deterministic=not train)
    x = self.drop(nn.relu(self.fc2(x)), deterministic=not train)
    return self.out(x).astype(jnp.float32)

  def __call__(self, features, *, train: bool, feature_mask=None):
    return self._fc(pooling.pool(features, self.pool, feature_mask), train)

  def confidence_maps(self, features):
    """[B, H, W, C]: the test network's per-label confidence maps."""
    return self._fc(features, train=False)

  def predict(self, features, *, feature_mask=None):
    if self.prediction == 'crops':  # one crop; predict_image averages them
      return {'scores': self(features, train=False, feature_mask=feature_mask)}
    maps = multiscale_average(self.confidence_maps(features), self.windows,
                              feature_mask)
    return {'scores': sum_kept(keep_best_label(maps), feature_mask)}

  def predict_image(self, backbone, image, *, image_mask=None):
    """The prediction path from the image: the test network on the whole
    image ('fcn'), or the training network averaged over `crops` random
    crops ('crops')."""
    if not self.test_crops:
      features = backbone(image, train=False)
      mask = None
      if image_mask is not None:
        mask = pooling.downsample_mask(image_mask, *features.shape[1:3])
      return self.predict(features, feature_mask=mask)
    num = self.test_crops
    size = int(round(min(image.shape[1:3]) * self.crop_fraction))
    views = crops_lib.random_crops(image, image_mask, num=num, size=size,
                                   key=jax.random.key(_CROP_SEED))
    outputs = self.predict(backbone(views, train=False), feature_mask=None)
    return jax.tree.map(
        lambda x: jnp.mean(x.reshape(num, -1, *x.shape[1:]), axis=0), outputs)
