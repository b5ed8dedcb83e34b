r"""A web page that tags an image, and its JSON API, served under load.

  python -m jaxtag.serve --bundle BUNDLE [--port 8000] [--host 127.0.0.1]

Open http://127.0.0.1:8000/, choose or drop an image: the page shows the
rating, character and general tags with their scores as bars, a threshold
slider per category that filters the lists as it moves, and a button that
copies the caption (tags joined by ", ", general then character, as
`python -m jaxtag.tag --format txt` writes it).

API:
- `POST /tag` with the image file's bytes as the body: 200 and the record
  of `python -m jaxtag.tag --format json` for that image (`file`, `rating`,
  `general`, `character`: tag -> score). `?all=1` adds `scores` (every tag
  of each category scoring at least 0.01, for the page's sliders) and
  `thresholds` (each category's threshold). `X-Filename` names the file.
- Errors, each with the body `{"error": "..."}`; the server keeps serving:
  400 an empty body, or a Content-Length that is negative or not a number;
  401 a missing or wrong API key (with --api_key);
  404 other paths;
  408 a body that stops arriving for --timeout_s (the connection closes);
  413 a body over --max_mb (a declared one is refused before it is read;
      a chunked one when it passes the limit) or an image over
      --max_megapixels (checked from its header, before decoding);
  415 bytes that are not a decodable image;
  503 --max_queue requests already in hand, with `Retry-After: 1`.
  `Expect: 100-continue` is answered: `100 Continue` when the body is
  wanted, the final status (and a closed connection) when it is not.
- `GET /health`: `{"ok": true, "tags": N}`.
- `GET /metrics`: Prometheus text: `jaxtag_requests_total{route,status}`
  (499: the client left before its answer), `jaxtag_request_seconds`
  (latency histogram by route), `jaxtag_batch_size` (images per model
  call), `jaxtag_queue_depth` (tag requests in hand).

How it holds under load (jaxtag/serving/server/, uvicorn + starlette):
- Decoding runs in a pool of --decode_workers threads, each turning its
  image into the model input before the next: decoded pixels held at once
  stay under decode_workers x --max_megapixels x 4 bytes (Pillow's RGB;
  x2 while a non-RGB image is converted), plus the compressed bodies
  waiting, and go back to the system after each image.
- Dynamic batching: one thread owns the model and runs concurrent
  requests in one call, up to --max_batch images, waiting at most
  --max_wait_ms for more while other requests are still decoding (a lone
  request does not wait). Batches are padded to powers of two up to
  --max_batch, all compiled at start; each image's scores equal those of
  a call on it alone.
- A client that stalls (incomplete headers, or a body that stops) is
  dropped after --timeout_s; idle keep-alive connections after 5 s. The
  listen backlog is --backlog.
- One log line per request on stderr: client, method, path, status,
  milliseconds and, for /tag, the batch it was tagged in. A client that
  disconnects is logged as 499, without a traceback.

Security: it binds to 127.0.0.1 unless --host says otherwise. Any other
address needs --api_key (clients send `Authorization: Bearer KEY` or
`X-API-Key: KEY`; /health and the page stay open, and the page asks for
the key) or an explicit --no_auth; it refuses to start otherwise. Keep the
key out of the process list with `--flagfile=FILE` holding
`--api_key=KEY`. CORS is off unless --cors_origin names origins.
"""
from __future__ import annotations

import logging
import os
import socket
import sys

from absl import app
from absl import flags

# The API's pieces, importable from here as before.
from jaxtag.serving.server.decode import decode_image  # noqa: F401
from jaxtag.serving.server.errors import RequestError  # noqa: F401
from jaxtag.serving.server.page import PAGE  # noqa: F401
from jaxtag.serving.server.records import PAGE_MIN_SCORE  # noqa: F401
from jaxtag.serving.server.records import TagService  # noqa: F401

log = logging.getLogger('jaxtag.serve')


def define_flags(flag_values=flags.FLAGS) -> None:
  """The command's flags; defined only when it runs (other commands have
  --port or --bundle too)."""
  fv = flag_values
  flags.DEFINE_string('bundle', None, 'Bundle folder (python -m '
                      'jaxtag.serving.convert).', flag_values=fv)
  flags.DEFINE_string('host', '127.0.0.1', 'Address to bind (default '
                      '127.0.0.1: this machine only; any other needs '
                      '--api_key or --no_auth).', flag_values=fv)
  flags.DEFINE_integer('port', 8000, 'Port (0 picks a free one).',
                       flag_values=fv)
  flags.DEFINE_string('policy', 'run', 'Threshold policy of the bundle: run, '
                      'category, f1 or precision_recall.', flag_values=fv)
  flags.DEFINE_float('max_mb', 20.0, 'Largest request body in MB.',
                     flag_values=fv)
  flags.DEFINE_float('max_megapixels', 50.0, 'Largest image in megapixels.',
                     flag_values=fv)
  flags.DEFINE_integer('decode_workers', 2, 'Images decoded at once.',
                       flag_values=fv)
  flags.DEFINE_integer('max_batch', 16, 'Most images in one model call.',
                       flag_values=fv)
  flags.DEFINE_float('max_wait_ms', 5.0, 'Longest wait for more images '
                     'before a model call.', flag_values=fv)
  flags.DEFINE_integer('max_queue', 256, 'Tag requests in hand at once; more '
                       'get 503 with Retry-After.', flag_values=fv)
  flags.DEFINE_float('timeout_s', 30.0, 'A client that sends nothing for '
                     'this long in a request is dropped.', flag_values=fv)
  flags.DEFINE_integer('backlog', 2048, 'Listen backlog: connections the '
                       'kernel queues before the server accepts them.',
                       flag_values=fv)
  flags.DEFINE_string('api_key', None, 'Key that POST /tag and GET /metrics '
                      'need ("Authorization: Bearer KEY" or "X-API-Key: '
                      'KEY").', flag_values=fv)
  flags.DEFINE_bool('no_auth', False, 'Serve a non-loopback --host without '
                    'an API key.', flag_values=fv)
  flags.DEFINE_multi_string('cors_origin', [], 'An origin allowed to call '
                            'the API from a browser (repeat for more); none '
                            'by default.', flag_values=fv)


def settings_from_flags(fv=flags.FLAGS):
  from jaxtag.serving.server import app as app_lib
  return app_lib.Settings(
      max_mb=fv.max_mb, max_megapixels=fv.max_megapixels,
      decode_workers=fv.decode_workers, max_batch=fv.max_batch,
      max_wait_ms=fv.max_wait_ms, max_queue=fv.max_queue,
      timeout_s=fv.timeout_s, api_key=fv.api_key or None,
      cors_origins=tuple(fv.cors_origin))


def listen(host: str, port: int, backlog: int) -> socket.socket:
  """A listening socket, bound before the model loads so that the port is
  known (and clients queue) from the start."""
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host.strip('[]'), port))
  sock.listen(backlog)
  return sock


def uvicorn_server(server, *, timeout_s: float, backlog: int):
  """A uvicorn.Server running `server.app` with the guarded protocol."""
  import uvicorn
  from jaxtag.serving.server import protocol

  def on_bad_request(client, message):
    server.metrics.observe('other', 400, 0.0)
    log.info('%s - - 400 0.0 ms (%s)', '%s:%d' % client if client else '-',
             message)

  config = uvicorn.Config(
      server.app, http=protocol.GuardedH11Protocol.with_limits(
          timeout_s=timeout_s, drain_bytes=server.settings.max_bytes,
          on_bad_request=on_bad_request),
      lifespan='off', access_log=False, log_config=None, backlog=backlog,
      timeout_keep_alive=5, timeout_graceful_shutdown=5, server_header=False,
      proxy_headers=False)
  return uvicorn.Server(config)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments {argv[1:]}: python -m '
                         'jaxtag.serve --bundle BUNDLE [--port 8000]')
  fv = flags.FLAGS
  from jaxtag.serving.server import auth
  try:
    auth.check_bind(fv.host, fv.api_key, fv.no_auth)
  except ValueError as e:
    sys.exit(str(e))
  if not fv.bundle:
    sys.exit('--bundle is required: a folder written by `python -m '
             'jaxtag.serving.convert --workdir RUN --out BUNDLE`.')
  if not os.path.isdir(fv.bundle):
    sys.exit(f'--bundle {fv.bundle} is not a folder: convert a run first '
             'with `python -m jaxtag.serving.convert --workdir RUN --out '
             'BUNDLE`.')
  logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                      format='%(asctime)s %(levelname)s %(message)s')
  settings = settings_from_flags(fv)
  from jaxtag.serving.server import decode
  decode.return_large_frees_to_os()
  sock = listen(fv.host, fv.port, fv.backlog)
  from jaxtag.serving import tagger as tagger_lib
  from jaxtag.serving.server import app as app_lib
  tagger = tagger_lib.Tagger(fv.bundle, batch_size=1, policy=fv.policy)
  server = app_lib.Server(tagger, settings)
  # Every padded batch size compiles now, before the first visitor.
  server.model.warm_up()
  server.start()
  host, port = sock.getsockname()[:2]
  # Tests and scripts read this line to find the port.
  print(f'Serving {fv.bundle} on http://{host}:{port}/', flush=True)
  try:
    uvicorn_server(server, timeout_s=settings.timeout_s,
                   backlog=fv.backlog).run(sockets=[sock])
  finally:
    server.close()
    sock.close()


if __name__ == '__main__':
  define_flags()
  app.run(main)
