"""Cartoonisation of photos, the anime adaptation of Lan et al.'s captioner.

Lan et al. (2022) train their captioner on cartoonised photos so that it
reads anime
illustrations better. The learned cartooniser it uses (White-box
Cartoonization) cannot be installed offline, so the default here is the
classical recipe from OpenCV, each step an option:

1. edge-preserving smoothing: `smooth_passes` bilateral filters
   (`diameter`, `sigma_color`, `sigma_space`) flatten texture and keep
   boundaries, as cel shading does;
2. colour quantisation: each channel to `levels` evenly spaced values, the
   flat fills of an illustration (uniform bins, not k-means: the result
   depends on the pixel alone, so it is deterministic and needs no seed);
3. ink outlines: adaptive thresholding (`edge_block`, `edge_offset`) of the
   median-blurred (`median_ksize`) grey image gives a dark line wherever the
   local contrast is high; the lines are drawn over the quantised colours.

A learned cartooniser that a user has converted plugs in by name:
`method='onnx'` runs an ONNX model with onnxruntime (`model_path`; NHWC
float input in `value_range`, White-box Cartoonization's convention is
[-1, 1]), and `method='callable'` imports `callable_path`
('package.module:function', uint8 [H, W, 3] -> uint8 [H, W, 3]), for
example a jitted JAX port.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class CartoonizeOptions:
  method: str = 'opencv'            # 'opencv' | 'onnx' | 'callable'
  smooth_passes: int = 2
  diameter: int = 7
  sigma_color: float = 60.0
  sigma_space: float = 7.0
  levels: int = 6                   # values per channel after quantisation
  median_ksize: int = 7
  edge_block: int = 9               # adaptive-threshold neighbourhood (odd)
  edge_offset: float = 6.0          # how much darker than the mean is an edge
  model_path: str = ''              # method='onnx'
  value_range: tuple[float, float] = (-1.0, 1.0)
  callable_path: str = ''           # method='callable'


def _cv2():
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Cartoonisation needs OpenCV: pip install '
                      '"jaxtag[captions]" (opencv-python-headless<5).') from e
  return cv2


def opencv_cartoonize(image: np.ndarray, o: CartoonizeOptions) -> np.ndarray:
  """The classical recipe of the module docstring; uint8 RGB in and out."""
  cv2 = _cv2()
  if o.edge_block % 2 == 0 or o.edge_block < 3:
    raise ValueError(f'edge_block must be odd and >= 3, not {o.edge_block}.')
  if o.levels < 2:
    raise ValueError(f'levels must be at least 2, not {o.levels}.')
  smooth = np.ascontiguousarray(image)
  for _ in range(o.smooth_passes):
    smooth = cv2.bilateralFilter(smooth, o.diameter, o.sigma_color,
                                 o.sigma_space)
  step = 255.0 / (o.levels - 1)
  flat = (np.round(smooth.astype(np.float32) / step) * step).astype(np.uint8)
  grey = cv2.medianBlur(cv2.cvtColor(np.ascontiguousarray(image),
                                     cv2.COLOR_RGB2GRAY), o.median_ksize)
  lines = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                cv2.THRESH_BINARY, o.edge_block,
                                o.edge_offset)
  return np.where(lines[..., None] == 0, 0, flat).astype(np.uint8)


def _onnx_cartoonizer(o: CartoonizeOptions) -> Callable:
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('method="onnx" needs onnxruntime: pip install '
                      '"jaxtag[onnx]".') from e
  session = onnxruntime.InferenceSession(
      o.model_path, providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  low, high = o.value_range

  def run(image):
    x = image.astype(np.float32)[None] / 255.0 * (high - low) + low
    y = session.run(None, {name: x})[0][0]
    y = (np.clip(y, low, high) - low) / (high - low) * 255.0
    return np.round(y).astype(np.uint8)
  return run


def _imported(path: str) -> Callable:
  module, _, name = path.partition(':')
  if not module or not name:
    raise ValueError(f'callable_path {path!r} must read '
                     '"package.module:function".')
  return getattr(importlib.import_module(module), name)


METHODS = ('opencv', 'onnx', 'callable')


def make_cartoonizer(options: CartoonizeOptions | None = None, **overrides
                     ) -> Callable[[np.ndarray], np.ndarray]:
  """A function uint8 [H, W, 3] RGB -> uint8 [H, W, 3] RGB, same size."""
  fields = [f.name for f in dataclasses.fields(CartoonizeOptions)]
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f'Unknown cartoonisation option(s) {unknown} '
                     '(config.data.cartoonize_options); valid: '
                     f'{", ".join(fields)}.')
  o = dataclasses.replace(options or CartoonizeOptions(), **overrides)
  if o.method == 'opencv':
    fn = lambda image: opencv_cartoonize(image, o)
  elif o.method == 'onnx':
    fn = _onnx_cartoonizer(o)
  elif o.method == 'callable':
    fn = _imported(o.callable_path)
  else:
    raise ValueError(f'Unknown cartoonisation method {o.method!r}; valid: '
                     f'{", ".join(METHODS)}.')

  def checked(image):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError('cartoonize takes uint8 [H, W, 3] RGB, not '
                       f'{image.dtype} {image.shape}.')
    out = np.asarray(fn(image))
    if out.shape != image.shape:
      raise ValueError(f'The {o.method} cartooniser returned {out.shape} for '
                       f'an image of {image.shape}; it must keep the size.')
    return out.astype(np.uint8)
  return checked
