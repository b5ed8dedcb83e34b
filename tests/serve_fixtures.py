"""Servers for the serve tests, and clients that talk raw HTTP to them.

- FakeTagger: the Tagger's interface on numpy (tag i scores
  (mean red / 255) ** i), with a fake bundle that records its calls.
- thread_server(): uvicorn with the real app and protocol in a thread of
  the test process, on 127.0.0.1 and a free port.
- process_server(): `python -m jaxtag.serve` in a subprocess.
- raw(): one HTTP exchange on a plain socket, bytes as sent.
Every client here connects to 127.0.0.1 only.
"""
import contextlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from urllib import parse

import numpy as np
from PIL import Image
from PIL import ImageDraw

from jaxtag import serve
from jaxtag import tasks
from jaxtag.serving.server import app as app_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = '127.0.0.1'


def png(width=64, height=48, colour=(200, 120, 60)) -> bytes:
  image = Image.new('RGB', (width, height), colour)
  ImageDraw.Draw(image).ellipse((8, 8, width // 2, height // 2),
                                fill=(30, 30, 200))
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


class FakeBundle:
  """bundle.predict on numpy: records the (padded) size of each call."""

  def __init__(self, num_tags: int):
    self.num_tags = num_tags
    self.calls = []
    self._lock = threading.Lock()

  def predict(self, pixels, mask=None):
    with self._lock:
      self.calls.append(len(pixels))
    red = pixels[..., 0].reshape(len(pixels), -1).mean(axis=1) / 255
    return (red[:, None] ** np.arange(self.num_tags)).astype(np.float32)


class FakeTagger:
  """The Tagger's interface on numpy: tag i scores (mean red / 255) ** i
  of the image resized to 16 x 16 (its 'geometry')."""

  names = ['general', 'sensitive', 'questionable', 'explicit', 'hat',
           'smile', 'blush', 'aoi_(synthetic)']
  groups = {'rating': np.arange(4), 'general': np.array([4, 5, 6]),
            'character': np.array([7])}
  limits = np.array([0, 0, 0, 0, 0.3, 0.5, 0.7, 0.9], np.float32)
  task = tasks.MultiLabel()

  def __init__(self):
    self.bundle = FakeBundle(len(self.names))

  def geometry(self, image):
    return 0, np.asarray(image.convert('RGB').resize((16, 16))), None

  def scores(self, images):
    """The reference: each image alone, computed here with numpy."""
    rows = []
    for image in images:
      pixels = self.geometry(image)[1]
      red = pixels[..., 0].mean() / 255
      rows.append(red ** np.arange(len(self.names)))
    return np.asarray(rows, np.float32)

  def thresholds(self, scores):
    return np.broadcast_to(self.limits, scores.shape)

  def results(self, scores):
    out = []
    for row in scores:
      result = {'rating': {self.names[i]: float(row[i]) for i in range(4)}}
      for group in ('general', 'character'):
        keep = [i for i in self.groups[group] if row[i] >= self.limits[i]]
        result[group] = {self.names[i]: float(row[i]) for i in keep}
      out.append(result)
    return out


@contextlib.contextmanager
def thread_server(tagger=None, **settings):
  """(base URL, Server) of the real app under uvicorn in a thread."""
  server = app_lib.Server(tagger or FakeTagger(),
                          app_lib.Settings(**settings)).start()
  sock = serve.listen(HOST, 0, 128)
  runner = serve.uvicorn_server(server, timeout_s=server.settings.timeout_s,
                                backlog=128)
  thread = threading.Thread(target=runner.run, kwargs={'sockets': [sock]},
                            daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not runner.started and time.monotonic() < deadline:
    time.sleep(0.01)
  try:
    yield f'http://{HOST}:{sock.getsockname()[1]}', server
  finally:
    runner.should_exit = True
    thread.join(timeout=30)
    server.close()
    sock.close()


@contextlib.contextmanager
def process_server(bundle_dir, log_path, *args):
  """(base URL, pid) of `python -m jaxtag.serve` on a free port."""
  with open(log_path, 'w') as stderr:
    process = subprocess.Popen(
        [sys.executable, '-m', 'jaxtag.serve', '--bundle', bundle_dir,
         '--port', '0', *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
        env={**os.environ, 'PYTHONPATH': REPO})
  try:
    line = process.stdout.readline()
    if 'Serving' not in line:
      process.wait(timeout=30)
      raise RuntimeError(f'jaxtag.serve did not start: {line!r}\n'
                         f'{open(log_path).read()}')
    yield line.split(' on ')[1].strip().rstrip('/'), process.pid
  finally:
    process.terminate()
    process.wait(timeout=60)


def port_of(url: str) -> int:
  return int(url.rsplit(':', 1)[1])


def connect(url: str, timeout: float = 30) -> socket.socket:
  sock = socket.create_connection((HOST, port_of(url)), timeout=timeout)
  return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
  """Everything the server sends until it closes the connection; an
  AssertionError if it is still open after `limit_s`."""
  sock.settimeout(limit_s)
  out = b''
  try:
    while chunk := sock.recv(65536):
      out += chunk
  except ConnectionResetError:
    pass
  except socket.timeout:
    raise AssertionError(f'The server kept the connection open for '
                         f'{limit_s} s; it sent {out[:200]!r}') from None
  return out


def still_open(sock: socket.socket) -> bool:
  """Whether the server has neither closed `sock` nor sent on it."""
  sock.setblocking(False)
  try:
    sock.recv(1, socket.MSG_PEEK)   # b'' (closed) or an answer
    return False
  except BlockingIOError:
    return True
  except OSError:
    return False
  finally:
    sock.setblocking(True)


def read_response(sock: socket.socket, limit_s: float = 30):
  """(status, headers dict, body) of one response read off `sock`."""
  response = http.client.HTTPResponse(sock)
  sock.settimeout(limit_s)
  response.begin()
  body = response.read()
  return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def raw(url: str, data: bytes, limit_s: float = 30) -> bytes:
  """Sends `data` as is and returns all the server answers until it closes
  the connection (or `limit_s` passes)."""
  with connect(url) as sock:
    sock.sendall(data)
    return read_until_closed(sock, limit_s)


def request(method, url, body=None, headers=None, timeout=120):
  """(status, headers, body) of one request on a fresh connection; a JSON
  body is parsed."""
  parts = parse.urlsplit(url)
  connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
  try:
    path = parts.path + (f'?{parts.query}' if parts.query else '')
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
  finally:
    connection.close()
  headers = {k.lower(): v for k, v in response.getheaders()}
  if headers.get('content-type', '').startswith('application/json'):
    data = json.loads(data)
  return response.status, headers, data


def post(url, body, headers=None, timeout=120):
  return request('POST', url, body, headers, timeout)


def get(url, headers=None, timeout=60):
  return request('GET', url, None, headers, timeout)


def rss_mb(pid: int) -> dict[str, float]:
  """VmRSS (now) and VmHWM (peak) of a process in MB."""
  out = {}
  with open(f'/proc/{pid}/status') as status:
    for line in status:
      key, _, value = line.partition(':')
      if key in ('VmRSS', 'VmHWM'):
        out[key] = int(value.split()[0]) / 1024
  return out
