"""The photographic style of a scene: the photo domain of Lan et al. (2022).

Lan et al. (2022) adapt a captioner from photos to anime.
`synthetic_anime/photo`
draws the same scenes as the anime configs (same people, clothes, objects,
captions) and then makes them look photographed instead of drawn:
- lighting: a smooth illumination field (a tilted ramp and two soft light
  blobs) multiplies the image, so flat fills become shaded surfaces;
- white balance: a per-image colour cast;
- texture: blurred multiplicative noise, the grain of skin, cloth and walls;
- optics: a Gaussian blur, so no edge is a crisp ink-like step;
- sensor noise: additive Gaussian noise per pixel and channel.
Every draw comes from the example's own stream (seed, split, index, 2), so
the drawing of the scene (stream 1) is that of the anime image.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def photographic(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """uint8 [S, S, 3] flat illustration -> uint8 [S, S, 3] 'photo'."""
  size = pixels.shape[0]
  image = pixels.astype(np.float32) / 255.0
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  angle = rng.uniform(0, 2 * np.pi)
  light = 0.85 + 0.25 * ((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle))
  for _ in range(2):
    cy, cx = rng.uniform(0, 1, 2)
    light += rng.uniform(0.05, 0.2) * np.exp(
        -((x - cx) ** 2 + (y - cy) ** 2) / (2 * rng.uniform(0.1, 0.3) ** 2))
  image *= light[..., None]
  image *= rng.uniform(0.9, 1.1, 3).astype(np.float32)
  grain = ndimage.gaussian_filter(
      rng.normal(0, 1, (size, size)).astype(np.float32), sigma=size / 40)
  image *= (1.0 + 0.06 * grain / max(float(grain.std()), 1e-6))[..., None]
  image = ndimage.gaussian_filter(image, sigma=(size / 110, size / 110, 0))
  image += rng.normal(0, 0.012, image.shape).astype(np.float32)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
