r"""Decode speed of the input pipeline on full-size originals.

  python -m jaxtag.bench --what=decode [--steps 5]

Times the pipeline's per-record work (jaxtag/data/pipeline.py `_Loader`:
decode, crop, resize to 448, flip) on 2-4 megapixel JPEG (q90) and WebP
(q90) originals of generated illustration-like pictures, with the decode
at full size ("before") and at reduced size ("after": ops.decode_image's
DCT scaling, which only JPEGs have), under two recipes:

- `wd_v3`: the data settings of configs/wd_v3.py:vit_base, the recipe for
  Danbooru at 448 px: a random square crop of 0.87-0.998 of the shorter
  side resized with area, bilinear or bicubic drawn per image, flip;
  evaluation under the WD contract (geometry 'pad', bicubic).
- `defaults`: the library defaults (jaxtag/config.py): random-resized
  crops keeping 0.5-1 of the area, bilinear; evaluation geometry 'square'.

Also times the same pictures stored at 768 px (the builders' `max_side`),
which is what WebP sources gain from. Each round times every variant once,
in turn, on new training crops, flips and filters (the same for every
variant within the round); img/s per core is the reciprocal of the median CPU seconds per
image of one thread, and the ratio is the median over rounds of before /
after (`*_768_vs_original`: originals decoded in full against the 768 px
copies). `--steps` is the number of rounds.

It also times what a build spends per original (data_builders/images.py
`_store_one`, CPU seconds of one thread): checking and keeping the file as
it is, and shrinking it to `max_side=768` stored as JPEG q95 or WebP q95.
"""
from __future__ import annotations

import io
import os
import statistics
import time

import numpy as np
from PIL import Image

from jaxtag import config as config_lib
from jaxtag.data import labels
from jaxtag.data import pipeline

SIZES = ((1632, 1224), (2048, 1536), (2304, 1728))   # 2.0, 3.1, 4.0 MP
IMAGE_SIZE = 448


def picture(width: int, height: int, seed: int) -> np.ndarray:
  """Flat colour regions with hard edges (line art), gradients and grain:
  an illustration's mix of cheap and expensive blocks for a JPEG decoder."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  base = (np.sin(x / rng.uniform(40, 90) + y / rng.uniform(40, 90))[..., None]
          * rng.uniform(20, 60, 3) + 128)
  for _ in range(24):   # flat shapes with dark outlines
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = rng.uniform(0.05, 0.25) * min(width, height)
    d = np.hypot(x - cx, y - cy)
    base[d < r] = rng.uniform(0, 255, 3)
    base[np.abs(d - r) < 2.5] = 20
  base += rng.normal(0, 4, base.shape)
  return base.clip(0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt, quality=quality)
  return buffer.getvalue()


def _shrunk(pixels: np.ndarray, side: int) -> np.ndarray:
  image = Image.fromarray(pixels)
  scale = side / max(image.size)
  return np.asarray(image.resize((round(image.width * scale),
                                  round(image.height * scale)), Image.BOX))


def recipes() -> dict:
  """{name: (data config, eval geometry)} of the recipes timed."""
  wd = config_lib.load_config_file('configs/wd_v3.py:vit_base')
  defaults = config_lib.defaults()
  out = {}
  for name, config in (('wd_v3', wd), ('defaults', defaults)):
    data = config.data
    data.update(dict(image_size=IMAGE_SIZE, workers=0))
    out[name] = (data, config.eval.geometry)
  return out


def _loader(records, recipe, train: bool, reduced: bool):
  data, geometry = recipe
  loader = pipeline._Loader(  # pylint: disable=protected-access
      records, data, labels.MultiHot(8), 'tags', 0, train,
      geometry=geometry)
  if not reduced:
    loader.reduced_decode = False   # the full-size decode every image had
  return loader


def _cpu_per_image(loader, count: int, round_index: int) -> float:
  """CPU seconds per record over records 0..count-1, as examples
  round_index * count + i: each round draws new crops, flips and filters,
  the same for every variant in that round."""
  start = time.process_time()
  for i in range(count):
    loader((round_index * count + i, i))
  return (time.process_time() - start) / count


def run(rounds: int = 5, per_size: int = 2) -> dict:
  """Figures of every variant (see the module doc)."""
  pictures = [picture(w, h, seed=i * 10 + j) for i, (w, h) in
              enumerate(SIZES) for j in range(per_size)]
  sets = {}
  for fmt in ('JPEG', 'WEBP'):
    sets[f'{fmt.lower()}_original'] = [_encode(p, fmt, 90) for p in pictures]
    sets[f'{fmt.lower()}_768'] = [_encode(_shrunk(p, 768), fmt, 95)
                                  for p in pictures]
  variants = {}
  timed = recipes()
  for recipe_name, recipe in timed.items():
    for name, images in sets.items():
      records = [{'image': data, 'tags': [1]} for data in images]
      for mode, train in (('train', True), ('eval', False)):
        for decode in ('full', 'reduced'):
          variants[(f'{recipe_name}/{name}', mode, decode)] = _loader(
              records, recipe, train, decode == 'reduced')
  load_before = os.getloadavg()
  times = {key: [] for key in variants}
  for round_index in range(rounds):
    for key, loader in variants.items():
      times[key].append(_cpu_per_image(loader, len(pictures), round_index))
  result = {'load_average': [round(v, 2) for v in load_before],
            'load_average_after': [round(v, 2) for v in os.getloadavg()],
            'rounds': rounds, 'images': len(pictures),
            'megapixels': [round(w * h / 1e6, 2) for w, h in SIZES],
            'bytes_per_image': {name: int(np.mean([len(d) for d in images]))
                                for name, images in sets.items()}}
  for (name, mode, decode), values in times.items():
    result[f'{name}/{mode}/{decode}_img_per_s_per_core'] = round(
        1 / statistics.median(values), 1)
  result.update(store_costs({'jpeg': sets['jpeg_original'],
                             'webp': sets['webp_original']}, rounds))
  for name in sorted({key[0] for key in variants}):
    for mode in ('train', 'eval'):
      ratios = [f / r for f, r in zip(times[(name, mode, 'full')],
                                      times[(name, mode, 'reduced')])]
      result[f'{name}/{mode}/speedup'] = round(statistics.median(ratios), 2)
  # Stored at 768 against the originals decoded in full (the code before):
  # what a build with max_side=768 gives training and evaluation.
  for recipe_name in timed:
    for fmt in ('jpeg', 'webp'):
      for mode in ('train', 'eval'):
        before = times[(f'{recipe_name}/{fmt}_original', mode, 'full')]
        after = times[(f'{recipe_name}/{fmt}_768', mode, 'reduced')]
        result[f'{recipe_name}/{fmt}_768_vs_original/{mode}/speedup'] = round(
            statistics.median(b / a for b, a in zip(before, after)), 2)
  return result


def store_costs(originals: dict[str, list[bytes]], rounds: int) -> dict:
  """Build-time CPU ms per original ({source format: files}), per way of
  storing it: kept as it is (checked by a full decode), or shrunk to 768
  and stored as JPEG q95 or WebP q95."""
  from data_builders import images  # pylint: disable=g-import-not-at-top
  shrink = images.Geometry(max_side=768)
  times = {}
  for _ in range(rounds):
    for source, files in originals.items():
      for way, geometry, fmt in (('keep', images.Geometry(), source),
                                 ('max_side_768_jpeg', shrink, 'jpeg'),
                                 ('max_side_768_webp', shrink, 'webp')):
        start = time.process_time()
        for data in files:
          images._store_one((data, geometry, fmt))  # pylint: disable=protected-access
        times.setdefault((source, way), []).append(
            (time.process_time() - start) / len(files))
  return {f'build/{source}_original/{way}_cpu_ms_per_image': round(
      1000 * statistics.median(values), 1)
          for (source, way), values in times.items()}
