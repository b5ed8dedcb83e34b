"""Per-sample MixUp and cutout, inside the jitted train step.

config.data.mixup_prob / mixup_alpha: each image, with probability
`mixup_prob`, becomes lam x + (1 - lam) x' with its partner x' (the image
at the mirrored position of the global batch, timm's 'elem' mode), lam ~
Beta(alpha, alpha) drawn per image; its multi-hot labels mix with the same
lam, so the sigmoid cross-entropy trains on soft targets.
config.data.cutout_prob / cutout_size: each image, with probability
`cutout_prob`, has a square of `cutout_size` x its side, centred anywhere
in the image and clipped at the borders (DeVries & Taylor 2017), set to 0:
the dataset mean once normalised, mid-grey for inputs in [-1, 1].

Why on the device and not in the grain pipeline: MixUp needs a partner
image and its labels, and the pipeline's batches are per process, so a
partner drawn there would depend on the number of processes, which the
pipeline promises never changes a global batch (jaxtag/data/pipeline.py);
here the partner is a position of the global batch. Both are a few
elementwise operations on the normalised batch, where the host would pay
float32 work per pixel at 448 px, four times the bytes of the uint8 it
sends. The draws come from the step's key, so a resumed run repeats them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mix(images, labels, lam):
  """images [B, H, W, C] and labels [B, L] mixed with their mirrored
  partners by per-image weights lam [B] (1 keeps an image as it is)."""
  w = lam.astype(jnp.float32)
  mixed = (w[:, None, None, None] * images.astype(jnp.float32)
           + (1 - w[:, None, None, None]) * images[::-1].astype(jnp.float32))
  mixed_labels = (w[:, None] * labels.astype(jnp.float32)
                  + (1 - w[:, None]) * labels[::-1].astype(jnp.float32))
  return mixed.astype(images.dtype), mixed_labels


def cutout_keep(height: int, width: int, centres, side: int, apply):
  """[B, H, W] float: 0 inside each applied image's square of `side` pixels
  centred at centres [B, 2] (row, col), clipped at the borders; 1 elsewhere."""
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  top = centres[:, 0, None, None] - side // 2
  left = centres[:, 1, None, None] - side // 2
  inside = ((rows >= top) & (rows < top + side)
            & (cols >= left) & (cols < left + side))
  return jnp.where(inside & apply[:, None, None], 0.0, 1.0)


class BatchAugment:
  """(image, batch, key) -> (image, batch) of the config's augmentations."""

  def __init__(self, *, mixup_prob=0.0, mixup_alpha=0.2, cutout_prob=0.0,
               cutout_size=0.5):
    for name, value in (('mixup_prob', mixup_prob),
                        ('cutout_prob', cutout_prob),
                        ('cutout_size', cutout_size)):
      if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f'config.data.{name} must lie in [0, 1], not '
                         f'{value}.')
    if mixup_prob and float(mixup_alpha) <= 0:
      raise ValueError('config.data.mixup_alpha (Beta(alpha, alpha)) must be '
                       f'positive, not {mixup_alpha}.')
    self.mixup_prob, self.mixup_alpha = float(mixup_prob), float(mixup_alpha)
    self.cutout_prob, self.cutout_size = float(cutout_prob), float(cutout_size)

  def __call__(self, image, batch, key):
    k_mix, k_lam, k_cut, k_centre = jax.random.split(key, 4)
    b, h, w = image.shape[:3]
    if self.mixup_prob > 0:
      lam = jax.random.beta(k_lam, self.mixup_alpha, self.mixup_alpha, (b,))
      lam = jnp.where(jax.random.uniform(k_mix, (b,)) < self.mixup_prob,
                      lam, 1.0)
      image, labels = mix(image, batch['labels'], lam)
      batch = {**batch, 'labels': labels}
    if self.cutout_prob > 0 and self.cutout_size > 0:
      side = max(1, round(self.cutout_size * min(h, w)))
      centres = jax.random.randint(k_centre, (b, 2), 0,
                                   jnp.asarray([h, w]))
      apply = jax.random.uniform(k_cut, (b,)) < self.cutout_prob
      keep = cutout_keep(h, w, centres, side, apply)
      image = (image * keep[..., None].astype(image.dtype))
    return image, batch


def from_config(data_config, label_encoding: str) -> BatchAugment | None:
  """The config's BatchAugment, or None when MixUp and cutout are off."""
  mixup = float(data_config.get('mixup_prob', 0.0))
  cutout = float(data_config.get('cutout_prob', 0.0))
  if not mixup and not cutout:
    return None
  if mixup and label_encoding != 'multi_hot':
    raise ValueError('config.data.mixup_prob mixes multi-hot labels; '
                     f'config.dataset.label_encoding is {label_encoding!r}. '
                     'Set mixup_prob to 0 for this run.')
  return BatchAugment(mixup_prob=mixup,
                      mixup_alpha=data_config.get('mixup_alpha', 0.2),
                      cutout_prob=cutout,
                      cutout_size=data_config.get('cutout_size', 0.5))
