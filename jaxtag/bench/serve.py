"""`python -m jaxtag.serve` under concurrent clients: latency, throughput,
batch sizes, and memory under large images.

  python -m jaxtag.bench --what=serve [--bundle BUNDLE] [--concurrency 1,8,64]
  python -m jaxtag.bench --what=serve --serve_args=--max_batch=1  # no batching

The server runs in a subprocess on 127.0.0.1 with its default flags
(--max_batch 16, --max_wait_ms 5, --decode_workers 2; --serve_args adds
others) and the clients are
threads of this process, each on its own keep-alive connection, sending
the same 768 x 768 JPEG (about 50 KB) one request after another. For each
number of clients: p50 and p95 latency, images per second, and the mean
batch size (from the server's /metrics). Then 30 clients send a
49-megapixel PNG at once: the server's RSS before, its peak, and after.

Without --bundle, the bundle is `--config` (default configs/default.py,
a half-width ResNet-18 at 96 px) with random weights and --num_classes
tags, written to a temporary folder: serving cost does not depend on what
the weights are. The clients share the machine with the server, so on a
2-core machine the figures are the whole system's, not the server's alone.
"""
from __future__ import annotations

import http.client
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
HOST = '127.0.0.1'


def random_bundle(directory: str, config, num_classes: int) -> str:
  """A bundle of `config`'s model with random weights and made-up tags
  (four ratings, then general and 5% character tags)."""
  import jax
  from jaxtag import models
  from jaxtag.serving import bundle as bundle_lib
  model = models.build_model(config.model, num_classes)
  size = int(config.data.image_size)
  image = np.zeros((1, size, size, 3), np.float32)
  variables = jax.device_get(jax.jit(lambda x: model.init(
      jax.random.key(0), x, train=False))(image))
  ratings = ['general', 'sensitive', 'questionable', 'explicit']
  names = [f'rating:{r}' for r in ratings]
  categories = [bundle_lib.RATING] * 4
  for i in range(num_classes - 4):
    character = i % 20 == 19
    names.append(f'character_{i}' if character else f'tag_{i}')
    categories.append(bundle_lib.CHARACTER if character
                      else bundle_lib.GENERAL)
  bundle_lib.write_bundle(
      directory, config=config, variables=variables, names=names,
      categories=categories, counts=np.arange(num_classes, 0, -1),
      thresholds={'run': {'policy': 'global', 'tags': names,
                          'per_tag': [0.5] * num_classes}},
      preprocess=bundle_lib.Preprocess.from_config(config),
      info={'step': 0, 'workdir': ''})
  return directory


def test_image() -> bytes:
  """A 768 x 768 JPEG with gradients and shapes (about 50 KB)."""
  y, x = np.mgrid[0:768, 0:768]
  pixels = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
  image = Image.fromarray(pixels)
  draw = ImageDraw.Draw(image)
  for i in range(12):
    draw.ellipse((40 * i, 30 * i, 40 * i + 200, 30 * i + 150),
                 fill=(20 * i, 255 - 20 * i, 128))
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def large_png(side: int = 7000) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', (side, side), (120, 30, 200)).save(buffer, format='PNG')
  return buffer.getvalue()


class ServerProcess:
  """`python -m jaxtag.serve` on a free port of 127.0.0.1."""

  def __init__(self, bundle: str, *args: str):
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'jaxtag.serve', '--bundle', bundle,
         '--port', '0', *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    line = self.process.stdout.readline()
    if 'Serving' not in line:
      self.close()
      raise RuntimeError(f'jaxtag.serve did not start: {line!r}')
    self.port = int(line.rsplit(':', 1)[1].strip().rstrip('/'))

  def rss_mb(self) -> dict[str, float]:
    out = {}
    with open(f'/proc/{self.process.pid}/status') as status:
      for line in status:
        key, _, value = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
          out[key] = int(value.split()[0]) / 1024
    return out

  def reset_peak(self) -> None:
    with open(f'/proc/{self.process.pid}/clear_refs', 'w') as f:
      f.write('5')

  def metric(self, name: str) -> float:
    connection = http.client.HTTPConnection(HOST, self.port, timeout=60)
    connection.request('GET', '/metrics')
    text = connection.getresponse().read().decode()
    connection.close()
    found = re.search(rf'^{re.escape(name)} ([0-9.e+-]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0

  def close(self) -> None:
    self.process.terminate()
    self.process.wait(timeout=60)


def _client(port: int, body: bytes, count: int, latencies: list,
            errors: list) -> None:
  connection = http.client.HTTPConnection(HOST, port, timeout=300)
  try:
    for _ in range(count):
      start = time.perf_counter()
      connection.request('POST', '/tag', body=body)
      response = connection.getresponse()
      response.read()
      latencies.append(time.perf_counter() - start)
      if response.status != 200:
        errors.append(response.status)
  finally:
    connection.close()


def load(server: ServerProcess, body: bytes, clients: int,
         requests: int) -> dict[str, Any]:
  """`requests` POST /tag from `clients` threads at once."""
  per_client = [requests // clients + (i < requests % clients)
                for i in range(clients)]
  latencies, errors = [], []
  batches = (server.metric('jaxtag_batch_size_sum'),
             server.metric('jaxtag_batch_size_count'))
  threads = [threading.Thread(target=_client, args=(
      server.port, body, n, latencies, errors)) for n in per_client]
  start = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  seconds = time.perf_counter() - start
  images = (server.metric('jaxtag_batch_size_sum') - batches[0])
  calls = (server.metric('jaxtag_batch_size_count') - batches[1])
  return {'clients': clients, 'requests': requests, 'errors': len(errors),
          'p50_ms': round(1e3 * float(np.percentile(latencies, 50)), 1),
          'p95_ms': round(1e3 * float(np.percentile(latencies, 95)), 1),
          'img_per_s': round(len(latencies) / seconds, 1),
          'mean_batch': round(images / max(calls, 1), 2)}


def run(*, bundle: str | None, config, num_classes: int,
        concurrency: list[int], requests: int, large_images: int,
        server_args: list[str] = ()) -> dict[str, Any]:
  with tempfile.TemporaryDirectory(prefix='jaxtag_bench_serve_') as tmp:
    served = bundle
    if bundle is None:
      bundle = random_bundle(os.path.join(tmp, 'bundle'), config,
                             num_classes)
      served = (f'{config.model.backbone} {dict(config.model.backbone_kwargs)}'
                f' at {config.data.image_size} px, random weights, '
                f'{num_classes} tags')
    server = ServerProcess(bundle, *server_args)
    try:
      body = test_image()
      load(server, body, 8, 64)   # warm: every padded batch size
      levels = [load(server, body, c, max(requests, 4 * c))
                for c in concurrency]
      memory = {}
      if large_images:
        png = large_png()
        load(server, png, 1, 1)
        before = server.rss_mb()['VmRSS']
        server.reset_peak()
        result = load(server, png, large_images, large_images)
        after = server.rss_mb()
        memory = {'large_png_clients': large_images,
                  'large_png_errors': result['errors'],
                  'large_png_kb': len(png) // 1024,
                  'rss_before_mb': round(before),
                  'rss_peak_mb': round(after['VmHWM']),
                  'rss_after_mb': round(after['VmRSS'])}
    finally:
      server.close()
  return {'bundle': served, 'server_args': ' '.join(server_args),
          'jpeg_kb': len(body) // 1024,
          'levels': levels, **memory}
