"""The server's parts without a network: the body reader, the batcher,
the API key rule, the metrics (all in-process and fast)."""
import asyncio
import threading

import numpy as np
import pytest

from jaxtag.serving.server import auth
from jaxtag.serving.server import batcher as batcher_lib
from jaxtag.serving.server import body as body_lib
from jaxtag.serving.server import metrics as metrics_lib
from jaxtag.serving.server.errors import ClientGone
from jaxtag.serving.server.errors import RequestError


def _receiver(*chunks, then=None):
  """An ASGI receive that gives `chunks` (the last one ends the body), then
  `then` ('disconnect', 'stall') in place of the end when given."""
  messages = [{'type': 'http.request', 'body': c, 'more_body': True}
              for c in chunks]
  if then is None and messages:
    messages[-1]['more_body'] = False
  calls = []

  async def receive():
    calls.append(1)
    if messages:
      return messages.pop(0)
    if then == 'disconnect':
      return {'type': 'http.disconnect'}
    await asyncio.Event().wait()   # a client that stalls

  return receive, calls


def _read(receive, headers, max_bytes=100, timeout_s=5.0):
  return asyncio.run(body_lib.read_body(receive, headers, max_bytes=max_bytes,
                                        timeout_s=timeout_s))


def test_body_is_read_whole_within_the_limit():
  receive, _ = _receiver(b'abc', b'de', b'')
  assert _read(receive, {'content-length': '5'}) == b'abcde'
  receive, _ = _receiver(b'x' * 100)
  assert _read(receive, {'transfer-encoding': 'chunked'}) == b'x' * 100


@pytest.mark.parametrize('length', ['-1', 'abc', '1e3', ''])
def test_content_length_that_is_not_a_count_is_a_400(length):
  receive, calls = _receiver(b'abc')
  with pytest.raises(RequestError, match='is not a number of bytes') as e:
    _read(receive, {'content-length': length})
  assert e.value.status == 400 and not calls


def test_declared_oversize_body_is_refused_before_reading():
  receive, calls = _receiver(b'x' * 1000)
  with pytest.raises(RequestError) as e:
    _read(receive, {'content-length': '314572800'})
  assert e.value.status == 413 and not calls   # receive never called
  assert str(e.value) == ('The image is 300 MB; this server takes at most '
                          '100 bytes (--max_mb).')
  # Without Expect the client's body is drained; with it, it never comes.
  assert not e.value.close
  with pytest.raises(RequestError) as e:
    _read(receive, {'content-length': '101', 'expect': '100-continue'})
  assert e.value.status == 413 and e.value.close and not calls


def test_chunked_body_is_cut_off_once_past_the_limit():
  receive, calls = _receiver(b'x' * 60, b'x' * 60, b'x' * 60)
  with pytest.raises(RequestError, match='passed 100 bytes while arriving'
                     ) as e:
    _read(receive, {'transfer-encoding': 'chunked'})
  assert e.value.status == 413 and len(calls) == 2   # the third never read
  # A chunked body's Content-Length (if any) does not count: TE wins.
  receive, _ = _receiver(b'x' * 60)
  assert _read(receive, {'transfer-encoding': 'chunked',
                         'content-length': '5'}) == b'x' * 60


def test_body_that_stops_arriving_is_a_408_and_a_gone_client_is_told():
  receive, _ = _receiver(b'abc', then='stall')
  with pytest.raises(RequestError, match=r'nothing came for 0\.05 s') as e:
    _read(receive, {'content-length': '10'}, timeout_s=0.05)
  assert e.value.status == 408 and e.value.close
  receive, _ = _receiver(b'abc', then='disconnect')
  with pytest.raises(ClientGone):
    _read(receive, {'content-length': '10'})


def test_batch_sizes_are_powers_of_two_and_the_largest():
  assert batcher_lib.batch_sizes(1) == [1]
  assert batcher_lib.batch_sizes(16) == [1, 2, 4, 8, 16]
  assert batcher_lib.batch_sizes(12) == [1, 2, 4, 8, 12]
  assert [batcher_lib.padded_size(n, [1, 2, 4, 8, 12]) for n in
          (1, 2, 3, 5, 9, 12)] == [1, 2, 4, 8, 12, 12]
  with pytest.raises(ValueError, match='--max_batch must be at least 1'):
    batcher_lib.batch_sizes(0)


class _Recorder:
  """A model run that records its batches: the result of x is x * 10."""

  def __init__(self, fail_on=None):
    self.batches, self.threads, self.fail_on = [], set(), fail_on

  def __call__(self, inputs, options):
    self.batches.append(list(inputs))
    self.threads.add(threading.current_thread().name)
    if self.fail_on in inputs:
      raise ValueError('boom')
    return [x * 10 for x in inputs]


def _batcher(run, **kwargs):
  kwargs = {'max_batch': 4, 'max_wait_ms': 60_000, 'max_queue': 100,
            **kwargs}
  return batcher_lib.Batcher(run, **kwargs).start()


def test_batcher_runs_requests_admitted_together_in_one_call():
  run = _Recorder()
  batcher = _batcher(run)
  try:
    tickets = [batcher.reserve() for _ in range(3)]
    assert batcher.depth == 3
    for ticket in tickets:
      ticket.decoding()
    futures = [t.submit(i, None) for i, t in enumerate(tickets)]
    # The loop waits (up to 60 s) until no request is decoding.
    results = [f.result(timeout=30) for f in futures]
    assert results == [(0, 3), (10, 3), (20, 3)]
    assert run.batches == [[0, 1, 2]] and run.threads == {'batcher'}
    for t in tickets:
      t.release()
    assert batcher.depth == 0
  finally:
    batcher.stop()


def test_batcher_caps_batches_and_does_not_wait_for_requests_that_fail():
  run = _Recorder()
  batcher = _batcher(run)
  try:
    tickets = [batcher.reserve() for _ in range(10)]
    for ticket in tickets:
      ticket.decoding()
    futures = [t.submit(i, None) for i, t in enumerate(tickets)]
    assert [f.result(timeout=30)[0] for f in futures] == list(range(0, 100, 10))
    assert [len(b) for b in run.batches] == [4, 4, 2]
    for t in tickets:
      t.release()
    # One submits, the other fails while decoding (a bad image): the batch
    # of one runs without waiting out the 60 s. A third is still reading
    # its body: no batch waits for it.
    first, second, third = (batcher.reserve() for _ in range(3))
    second.decoding()
    future = first.submit(7, None)
    second.release()
    assert future.result(timeout=30) == (70, 1)
    first.release()
    third.release()
    assert batcher.depth == 0
  finally:
    batcher.stop()


def test_batcher_queue_is_bounded():
  batcher = _batcher(_Recorder(), max_queue=2)
  try:
    a, b = batcher.reserve(), batcher.reserve()
    with pytest.raises(batcher_lib.QueueFull):
      batcher.reserve()
    a.release()
    a.release()   # releasing twice frees one place only
    c = batcher.reserve()
    with pytest.raises(batcher_lib.QueueFull):
      batcher.reserve()
    b.release()
    c.release()
  finally:
    batcher.stop()


def test_batcher_reports_a_failed_batch_and_goes_on():
  run = _Recorder(fail_on=1)
  batcher = _batcher(run)
  try:
    tickets = [batcher.reserve() for _ in range(2)]
    for ticket in tickets:
      ticket.decoding()
    futures = [t.submit(i, None) for i, t in enumerate(tickets)]
    for future in futures:
      with pytest.raises(RuntimeError, match='ValueError; see the server log'):
        future.result(timeout=30)
    for t in tickets:
      t.release()
    with batcher.reserve() as ticket:
      assert ticket.submit(5, None).result(timeout=30) == (50, 1)
  finally:
    batcher.stop()


class _FakePredictTagger:
  """A tagger whose bundle scores each image by its pixel sum and records
  the batch sizes it is called with."""

  def __init__(self):
    self.calls = []
    tagger = self

    class Bundle:
      def predict(self, pixels, mask=None):
        tagger.calls.append((len(pixels), None if mask is None
                             else mask.shape))
        return pixels.reshape(len(pixels), -1).sum(1, keepdims=True)

    self.bundle = Bundle()


def test_tagger_model_pads_to_the_batch_sizes_and_keeps_buckets_apart():
  tagger = _FakePredictTagger()
  model = batcher_lib.TaggerModel(tagger, max_batch=4)
  square = [(0, np.full((2, 2, 3), i, np.uint8), None) for i in range(3)]
  scores = model.predict(square)
  np.testing.assert_array_equal(scores[:, 0], [0, 12, 24])
  assert tagger.calls == [(4, None)]   # 3 padded to 4
  tagger.calls.clear()
  # Native geometry: two shape buckets, each with its mask: 7 in bucket 0
  # go as 4 + 3 (padded to 4), 6 in bucket 1 as 4 + 2.
  native = [(i % 2, np.full((2, 3, 3), i, np.uint8), np.ones((2, 3), np.uint8))
            for i in range(13)]
  scores = model.predict(native)
  np.testing.assert_array_equal(scores[:, 0], [18 * i for i in range(13)])
  assert tagger.calls == [(4, (4, 2, 3)), (4, (4, 2, 3)), (4, (4, 2, 3)),
                          (2, (2, 2, 3))]


def test_api_key_rule_for_addresses():
  for host in ('127.0.0.1', '127.0.0.2', '::1', '[::1]', 'localhost'):
    assert auth.is_loopback(host)
    auth.check_bind(host, None, False)
  for host in ('0.0.0.0', '::', '192.168.1.5', 'myhost.example'):
    assert not auth.is_loopback(host)
    with pytest.raises(ValueError, match=f'--host {host} can be reached from '
                       'other machines.*--api_key=KEY.*--no_auth'):
      auth.check_bind(host, None, False)
    auth.check_bind(host, 'secret', False)
    auth.check_bind(host, None, True)
  with pytest.raises(ValueError, match='contradict'):
    auth.check_bind('0.0.0.0', 'secret', True)


def test_api_key_is_read_from_either_header():
  key = 'k3y-with-some-length'
  assert auth.authorized({}, None)
  assert auth.authorized({'authorization': f'Bearer {key}'}, key)
  assert auth.authorized({'authorization': f'bearer  {key} '}, key)
  assert auth.authorized({'x-api-key': key}, key)
  for headers in ({}, {'authorization': key}, {'authorization': 'Bearer '},
                  {'authorization': f'Bearer {key}x'}, {'x-api-key': key[:-1]},
                  {'authorization': f'Basic {key}'}):
    assert not auth.authorized(headers, key), headers


def test_metrics_registry_is_per_server_and_routes_are_a_fixed_set():
  depth = [3]
  a = metrics_lib.Metrics(8, queue_depth=lambda: depth[0])
  b = metrics_lib.Metrics(8)
  a.observe('/tag', 200, 0.02)
  a.observe('/tag', 200, 0.2)
  a.observe('/no/such/page', 404, 0.001)
  a.batch_size.observe(3)
  text = a.text().decode()
  assert 'jaxtag_requests_total{route="/tag",status="200"} 2.0' in text
  assert 'jaxtag_requests_total{route="other",status="404"} 1.0' in text
  assert 'jaxtag_request_seconds_bucket{le="0.025",route="/tag"} 1.0' in text
  assert 'jaxtag_batch_size_bucket{le="2.0"} 0.0' in text
  assert 'jaxtag_batch_size_bucket{le="4.0"} 1.0' in text
  assert 'jaxtag_queue_depth 3.0' in text
  assert 'route="/tag"' not in b.text().decode()
