"""jaxtag.tag end to end on CPU against a plain onnxruntime loop.

  python -m jaxtag.bench --what=tag [--config CONFIG] [--steps 3]

A bundle of the config's model (default configs/default.py, the main
job's) with random weights at --image_size (448) and 1,000 tags, and a
folder of --images (200) JPEGs of 500-900 px. Alternating, --steps rounds
each, decoding included:
- `tag_ort`: jaxtag.tag.run (--backend onnxruntime: threads decoding ahead
  of the model) writing jsonl;
- `plain_ort`: the loop a WD front end runs: per batch, open each image
  with Pillow, RGB, resize, BGR float32, InferenceSession.run, one thread
  for Python;
- `tag_jax`: jaxtag.tag.run with --backend jax (XLA:CPU, compiled in the
  untimed warm-up).
Both onnxruntime paths use the same model.onnx. The bundle is loaded once
(load_bundle is the same for every path); each run makes its own
onnxruntime session, as a command would. Reports img/s per round and the
median of tag_ort / plain_ort.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image

from jaxtag.bench import serve as serve_bench


def make_images(folder: str, count: int, seed: int = 0) -> list[str]:
  """JPEGs of 500-900 px per side with smooth content (random noise would
  make decoding unrealistically slow)."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i in range(count):
    w, h = (int(v) for v in rng.integers(500, 900, 2))
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    path = os.path.join(folder, f'{i:04d}.jpg')
    image.save(path, quality=90)
    paths.append(path)
  return paths


def plain_ort(model_path: str, paths: list[str], size: int,
              batch: int) -> int:
  """A WD front end's loop; returns the images scored."""
  import onnxruntime  # pylint: disable=import-outside-toplevel
  session = onnxruntime.InferenceSession(
      model_path, providers=['CPUExecutionProvider'])
  name = session.get_inputs()[0].name
  done = 0
  for start in range(0, len(paths), batch):
    rows = []
    for path in paths[start:start + batch]:
      with Image.open(path) as image:
        image = image.convert('RGB').resize((size, size), Image.BILINEAR)
      rows.append(np.asarray(image, np.float32)[..., ::-1])
    session.run(None, {name: np.stack(rows)})
    done += len(rows)
  return done


def run(config, *, num_classes: int = 1000, image_size: int = 448,
        images: int = 200, rounds: int = 3, batch: int = 8
        ) -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  from jaxtag import tag as tag_lib  # pylint: disable=import-outside-toplevel
  from jaxtag.serving import backends  # pylint: disable=C0415
  from jaxtag.serving import bundle as bundle_lib  # pylint: disable=C0415
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.image_size = image_size
  with tempfile.TemporaryDirectory(prefix='jaxtag_bench_tag_') as tmp:
    os.environ['JAXTAG_CACHE'] = os.path.join(tmp, 'cache')
    directory = serve_bench.random_bundle(os.path.join(tmp, 'bundle'),
                                          config, num_classes)
    bundle = bundle_lib.load_bundle(directory)
    real_load = bundle_lib.load_bundle
    bundle_lib.load_bundle = lambda d: bundle if d == directory else \
        real_load(d)
    try:
      model_path = backends.onnx_model(bundle)
      folder = os.path.join(tmp, 'images')
      paths = make_images(folder, images)

      def tag(backend):
        options = tag_lib.Options(
            paths=[folder], bundle=directory, format='jsonl',
            output=os.path.join(tmp, f'{backend}.jsonl'), batch_size=batch,
            backend=backend, quiet=True)
        assert tag_lib.run(options) == 0
        return images

      runs = {'tag_ort': lambda: tag('onnxruntime'),
              'plain_ort': lambda: plain_ort(model_path, paths, image_size,
                                             batch),
              'tag_jax': lambda: tag('jax')}
      for fn in runs.values():   # warm: compiles, page cache, sessions
        fn()
      rates = {k: [] for k in runs}
      for _ in range(rounds):
        for key, fn in runs.items():
          start = time.perf_counter()
          n = fn()
          rates[key].append(n / (time.perf_counter() - start))
    finally:
      bundle_lib.load_bundle = real_load
  ratio = statistics.median(a / b for a, b in zip(rates['tag_ort'],
                                                  rates['plain_ort']))
  jax_ratio = statistics.median(a / b for a, b in zip(rates['tag_jax'],
                                                      rates['plain_ort']))
  return {
      'model': f'{config.model.backbone} {dict(config.model.backbone_kwargs)}'
               f' {config.model.dtype}',
      'image_size': image_size, 'images': images, 'batch': batch,
      'rounds': rounds, 'img_per_s': rates,
      'median_img_per_s': {k: statistics.median(v) for k, v in rates.items()},
      'tag_ort_over_plain_ort': ratio, 'tag_jax_over_plain_ort': jax_ratio,
      'load_average': os.getloadavg(), 'cpus': os.cpu_count(),
      'device': jax.devices()[0].device_kind,
  }
