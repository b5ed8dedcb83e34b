"""`python -m jaxtag.serve` under load, bounded and on 127.0.0.1 only:
64 concurrent clients, a client that stalls meanwhile, and 12 concurrent
49-megapixel PNGs; the server's memory before and after (slow). The
benchmark (python -m jaxtag.bench --what=serve) measures 30 of them."""
import io
import os
from concurrent import futures

import pytest
from PIL import Image

import serve_fixtures as sf

DECODE_WORKERS = 2
# RSS may grow this much over a load test (allocator pools, metrics).
RSS_GROWTH_MB = 64
# Peak growth while decoding: each worker holds one image at 4 bytes a
# pixel, twice while converting; 256 MB for bodies, threads and buffers.
# Unbounded decoding of 12 such images would need about 2.3 GB.
PEAK_GROWTH_MB = DECODE_WORKERS * 2 * 4 * 49e6 / 2**20 + 256


@pytest.fixture(scope='module')
def loaded(tmp_path_factory):
  import serving_fixtures
  bundle_dir = serving_fixtures.shared_bundle()[0]
  log = tmp_path_factory.mktemp('load_log') / 'stderr.txt'
  with sf.process_server(
      bundle_dir, log, '--max_mb=5', '--max_megapixels=50',
      f'--decode_workers={DECODE_WORKERS}', '--max_batch=16',
      '--max_queue=256', '--timeout_s=60') as (url, pid):
    yield url, pid, log


def _reset_peak(pid: int) -> None:
  """Sets the process's peak RSS (VmHWM) to its RSS now."""
  with open(f'/proc/{pid}/clear_refs', 'w') as f:
    f.write('5')


def _tag_all(url, bodies, clients):
  """Statuses of POST /tag of each body from `clients` threads."""
  with futures.ThreadPoolExecutor(clients) as pool:
    return list(pool.map(lambda body: sf.post(url + '/tag', body,
                                              timeout=300)[0], bodies))


@pytest.mark.slow
def test_64_clients_get_no_errors_while_one_stalls(loaded):
  url, pid, log = loaded
  images = [sf.png(48 + i % 16, 40, (4 * i % 256, 90, 200)) for i in range(192)]
  assert _tag_all(url, images[:16], 16) == [200] * 16   # warm
  before = sf.rss_mb(pid)['VmRSS']
  stalled = sf.connect(url)
  try:
    stalled.sendall(b'POST /tag HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                    b'Content-Length: 100000\r\n\r\n' + b'\0' * 100)
    statuses = _tag_all(url, images, 64)
    # Every other request was answered while the stalled one was held.
    assert sf.still_open(stalled)
  finally:
    stalled.close()
  assert statuses == [200] * len(images)
  after = sf.rss_mb(pid)['VmRSS']
  assert after - before < RSS_GROWTH_MB, (before, after)
  assert 'Traceback' not in log.read_text()


@pytest.mark.slow
def test_large_pngs_decode_in_a_bounded_pool(loaded):
  url, pid, log = loaded
  buffer = io.BytesIO()
  Image.new('RGB', (7000, 7000), (120, 30, 200)).save(buffer, format='PNG')
  body = buffer.getvalue()          # 49 megapixels in about 150 KB
  assert _tag_all(url, [body], 1) == [200]   # the first large image
  before = sf.rss_mb(pid)['VmRSS']
  _reset_peak(pid)
  assert _tag_all(url, [body] * 12, 12) == [200] * 12
  memory = sf.rss_mb(pid)
  assert memory['VmHWM'] - before < PEAK_GROWTH_MB, (before, memory)
  # The decoded pixels went back to the system.
  assert memory['VmRSS'] - before < RSS_GROWTH_MB, (before, memory)
  assert 'Traceback' not in log.read_text()
