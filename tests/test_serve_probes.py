"""The server under bad input, stalls and load: each probe with its exact
outcome. Every probe runs against uvicorn with a fake tagger in a thread
(fast) and against `python -m jaxtag.serve` on a bundle in a subprocess
(slow). Every connection goes to 127.0.0.1."""
import io
import json
import logging
import re
import time
from concurrent import futures

import numpy as np
import pytest
from PIL import Image

import serve_fixtures as sf
from serve_fixtures import png

MAX_MB = 0.05           # 52,428 bytes
MAX_QUEUE = 10
BAD_LENGTH = ('The request is not valid HTTP/1.1: bad Content-Length. '
              'Content-Length must be the number of bytes of the body (0 or '
              'more), given once; or send the body with Transfer-Encoding: '
              'chunked.')


class Probed:
  """A running server: its address, its log, its process id (or None)."""

  def __init__(self, url, log, pid, timeout_s):
    self.url, self._log, self.pid, self.timeout_s = url, log, pid, timeout_s

  def log(self) -> str:
    return self._log()

  def metric(self, name: str) -> float:
    _, _, text = sf.get(self.url + '/metrics')
    found = re.search(rf'^{re.escape(name)} ([0-9.e+-]+)$', text.decode(),
                      re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope='module', params=[
    'thread', pytest.param('process', marks=pytest.mark.slow)])
def probed(request, tmp_path_factory):
  settings = {'max_mb': MAX_MB, 'max_megapixels': 0.5, 'max_queue': MAX_QUEUE,
              'max_batch': 8, 'max_wait_ms': 5.0}
  if request.param == 'thread':
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    level = logging.getLogger('jaxtag.serve').level
    logging.getLogger('jaxtag.serve').setLevel(logging.INFO)
    try:
      with sf.thread_server(timeout_s=1.0, **settings) as (url, _):
        yield Probed(url, stream.getvalue, None, 1.0)
    finally:
      root.removeHandler(handler)
      logging.getLogger('jaxtag.serve').setLevel(level)
  else:
    import serving_fixtures
    bundle_dir = serving_fixtures.shared_bundle()[0]
    log = tmp_path_factory.mktemp('probe_log') / 'stderr.txt'
    args = [f'--{k}={v}' for k, v in settings.items()] + ['--timeout_s=2']
    with sf.process_server(bundle_dir, log, *args) as (url, pid):
      yield Probed(url, log.read_text, pid, 2.0)


def _response(data: bytes):
  """(status, headers, body) of the first response in raw bytes."""
  head, _, body = data.partition(b'\r\n\r\n')
  lines = head.decode('latin-1').split('\r\n')
  status = int(lines[0].split()[1])
  headers = dict(line.lower().split(': ', 1) for line in lines[1:])
  return status, headers, body


def _head(length=None, extra=b''):
  lines = b'POST /tag HTTP/1.1\r\nHost: 127.0.0.1\r\n'
  if length is not None:
    lines += b'Content-Length: %s\r\n' % str(length).encode()
  return lines + extra + b'\r\n'


@pytest.mark.parametrize('length', [b'-1', b'abc', b'12, 13'])
def test_a_bad_content_length_is_a_json_400_not_a_dropped_connection(
    probed, length):
  data = sf.raw(probed.url, b'POST /tag HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                b'Content-Length: ' + length + b'\r\n\r\n' + png(), 30)
  status, headers, body = _response(data)
  assert status == 400
  assert headers['content-type'] == 'application/json; charset=utf-8'
  assert headers['connection'] == 'close'
  error = ('The request is not valid HTTP/1.1: conflicting Content-Length '
           'headers.' + BAD_LENGTH[BAD_LENGTH.index('. Content') + 1:]
           if b',' in length else BAD_LENGTH)
  assert json.loads(body) == {'error': error}
  assert sf.post(probed.url + '/tag', png())[0] == 200


def test_a_declared_oversize_body_is_refused_before_it_is_sent(probed):
  error = {'error': 'The image is 300 MB; this server takes at most 0.05 MB '
                    '(--max_mb).'}
  # Headers only: the answer comes without a byte of the 300 MB body.
  with sf.connect(probed.url) as sock:
    sock.sendall(_head(300 * 2**20))
    status, headers, body = sf.read_response(sock)
    assert (status, json.loads(body)) == (413, error)
  # With Expect: 100-continue, no 100 comes, and the connection closes.
  data = sf.raw(probed.url, _head(300 * 2**20, b'Expect: 100-continue\r\n'))
  assert not data.startswith(b'HTTP/1.1 100')
  status, headers, body = _response(data)
  assert (status, json.loads(body)) == (413, error)
  assert headers['connection'] == 'close'


def test_expect_100_continue_is_answered_before_the_body(probed):
  image = png()
  with sf.connect(probed.url) as sock:
    sock.sendall(_head(len(image), b'Expect: 100-continue\r\n'))
    sock.settimeout(30)
    interim = b''
    while not interim.endswith(b'\r\n\r\n'):
      interim += sock.recv(1)
    assert interim == b'HTTP/1.1 100 Continue\r\n\r\n'
    sock.sendall(image)
    status, _, body = sf.read_response(sock)
  assert status == 200 and set(json.loads(body)) == {
      'file', 'rating', 'general', 'character'}


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(probed):
  chunk = b'%x\r\n%s\r\n' % (20_000, b'\0' * 20_000)
  with sf.connect(probed.url) as sock:
    # 60,000 bytes of a longer body: the third chunk passes 52,428.
    sock.sendall(_head(None, b'Transfer-Encoding: chunked\r\n') + chunk * 3)
    status, _, body = sf.read_response(sock)
  assert (status, json.loads(body)) == (413, {
      'error': 'The body passed 0.05 MB while arriving; this server takes at '
               'most 0.05 MB (--max_mb).'})


def test_a_stalled_client_is_dropped_after_timeout_s(probed):
  limit = probed.timeout_s + 20
  socks = [sf.connect(probed.url) for _ in range(3)]
  try:
    socks[0].sendall(b'POST /tag HTTP/1.1\r\nHost: 127.0.0.1\r\n')  # headers
    socks[1].sendall(_head(1000) + b'\0' * 100)                     # body
    # socks[2] sends nothing at all.
    assert sf.read_until_closed(socks[0], limit) == b''
    status, headers, body = _response(sf.read_until_closed(socks[1], limit))
    assert (status, json.loads(body)) == (408, {
        'error': f'The body stopped arriving: nothing came for '
                 f'{probed.timeout_s:g} s (--timeout_s).'})
    assert headers['connection'] == 'close'
    assert sf.read_until_closed(socks[2], limit) == b''
  finally:
    for sock in socks:
      sock.close()
  assert sf.post(probed.url + '/tag', png())[0] == 200


def _wait_for(condition, limit_s=30):
  deadline = time.monotonic() + limit_s
  while not condition():
    assert time.monotonic() < deadline, 'the server did not get there'
    time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(probed):
  # MAX_QUEUE uploads that stall hold every place in the queue.
  holders = [sf.connect(probed.url) for _ in range(MAX_QUEUE)]
  try:
    for sock in holders:
      sock.sendall(_head(1000) + b'\0' * 10)
    _wait_for(lambda: probed.metric('jaxtag_queue_depth') == MAX_QUEUE)
    status, headers, record = sf.post(probed.url + '/tag', png())
    assert (status, record) == (503, {
        'error': f'The server has {MAX_QUEUE} requests in hand (--max_queue); '
                 'retry after 1 s.'})
    assert headers['retry-after'] == '1'
  finally:
    for sock in holders:
      sock.close()
  # The holders left: their places are free again.
  _wait_for(lambda: probed.metric('jaxtag_queue_depth') == 0)
  assert sf.post(probed.url + '/tag', png())[0] == 200


def test_a_client_that_leaves_is_logged_without_a_traceback(probed):
  with sf.connect(probed.url) as sock:       # leaves during its upload
    sock.sendall(_head(1000) + b'\0' * 10)
    _wait_for(lambda: probed.metric('jaxtag_queue_depth') == 1)
  with sf.connect(probed.url) as sock:       # leaves before its answer
    image = png()
    sock.sendall(_head(len(image)) + image)
  _wait_for(lambda: probed.metric('jaxtag_queue_depth') == 0)
  assert probed.metric('jaxtag_requests_total{route="/tag",status="499"}') >= 1
  sf.get(probed.url + '/health')
  log = probed.log()
  assert re.search(r'127\.0\.0\.1:\d+ POST /tag 499 [0-9.]+ ms\n', log)
  assert 'Traceback' not in log and 'Exception' not in log


def test_one_log_line_and_metrics_per_request(probed):
  before = probed.metric('jaxtag_requests_total{route="/tag",status="200"}')
  status, _, record = sf.post(probed.url + '/tag', png(), {
      'X-Filename': 'logged.png'})
  assert status == 200 and record['file'] == 'logged.png'
  assert sf.get(probed.url + '/nowhere')[0] == 404
  assert probed.metric(
      'jaxtag_requests_total{route="/tag",status="200"}') == before + 1
  assert probed.metric(
      'jaxtag_requests_total{route="other",status="404"}') >= 1
  assert probed.metric('jaxtag_request_seconds_count{route="/tag"}') >= 1
  assert probed.metric('jaxtag_batch_size_count') >= 1
  log = probed.log()
  assert re.search(r'127\.0\.0\.1:\d+ POST /tag 200 [0-9.]+ ms batch \d+\n',
                   log)
  assert re.search(r'127\.0\.0\.1:\d+ GET /nowhere 404 [0-9.]+ ms\n', log)


def _colours(n):
  return [png(40 + i, 30 + i, (int(c), 255 - int(c), 77))
          for i, c in enumerate(np.linspace(0, 255, n))]


def _batched_calls(probed) -> float:
  """Model calls so far that held more than one image."""
  return (probed.metric('jaxtag_batch_size_count')
          - probed.metric('jaxtag_batch_size_bucket{le="1.0"}'))


def _tag_together(probed, images):
  """Records of `images` posted on as many connections, whose bodies all
  end at once (the last byte of each is held back, then sent)."""
  socks = [sf.connect(probed.url) for _ in images]
  try:
    for sock, image in zip(socks, images):
      sock.sendall(b'POST /tag?all=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                   b'Content-Length: %d\r\n\r\n' % len(image) + image[:-1])
    for sock, image in zip(socks, images):
      sock.sendall(image[-1:])
    responses = [sf.read_response(sock) for sock in socks]
  finally:
    for sock in socks:
      sock.close()
  assert [r[0] for r in responses] == [200] * len(images)
  return [json.loads(r[2]) for r in responses]


def test_concurrent_requests_share_model_calls_and_equal_single_ones(probed):
  """Each record of a batch equals the one the same image gets alone."""
  images = _colours(8)
  alone = [sf.post(probed.url + '/tag?all=1', image)[2] for image in images]
  batched = _batched_calls(probed)
  # Bodies that end together are decoded together and share a model call;
  # the order of arrival is the OS's, so a few rounds make sure.
  for _ in range(5):
    together = _tag_together(probed, images)
    for one, other in zip(alone, together):
      assert one.keys() == other.keys()
      for group in ('rating', 'general', 'character'):
        assert list(one[group]) == list(other[group])
        assert one[group] == pytest.approx(other[group], abs=1e-6)
      for group in one['scores']:
        assert one['scores'][group] == pytest.approx(other['scores'][group],
                                                     abs=1e-6)
    if _batched_calls(probed) > batched:
      break
  assert _batched_calls(probed) > batched
