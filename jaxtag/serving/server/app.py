"""The starlette app: routes, errors as JSON, one access-log line per
request, and the parts it drives (decode pool, batcher, metrics).

  server = Server(tagger, Settings(max_batch=16))
  server.start()          # the batching thread
  ... serve server.app with uvicorn (jaxtag/serve.py) or call it in-process
  server.close()
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from urllib import parse

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from jaxtag.serving.server import auth
from jaxtag.serving.server import batcher as batcher_lib
from jaxtag.serving.server import body as body_lib
from jaxtag.serving.server import decode as decode_lib
from jaxtag.serving.server import metrics as metrics_lib
from jaxtag.serving.server import page as page_lib
from jaxtag.serving.server import records as records_lib
from jaxtag.serving.server.errors import ClientGone
from jaxtag.serving.server.errors import RequestError

log = logging.getLogger('jaxtag.serve')
# Seconds a client told "queue full" should wait before trying again.
RETRY_AFTER_S = 1
# The status logged and counted for a client that left before its answer.
CLIENT_GONE = 499
METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']


@dataclasses.dataclass(frozen=True)
class Settings:
  """The server's limits (the flags of python -m jaxtag.serve)."""
  max_mb: float = 20.0
  max_megapixels: float = 50.0
  decode_workers: int = 2
  max_batch: int = 16
  max_wait_ms: float = 5.0
  max_queue: int = 256
  timeout_s: float = 30.0
  api_key: str | None = None
  cors_origins: tuple[str, ...] = ()

  @property
  def max_bytes(self) -> int:
    return int(self.max_mb * 2**20)

  @property
  def max_pixels(self) -> int:
    return int(self.max_megapixels * 1e6)


class AccessLog:
  """ASGI middleware: one log line and the metrics of each request."""

  def __init__(self, app, metrics: metrics_lib.Metrics):
    self.app, self.metrics = app, metrics

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    start = time.perf_counter()
    info = scope['jaxtag.log'] = {'status': None, 'batch': None}

    async def send_status(message):
      if message['type'] == 'http.response.start':
        info['status'] = message['status']
      await send(message)

    try:
      await self.app(scope, receive, send_status)
    finally:
      seconds = time.perf_counter() - start
      status = info['status'] or CLIENT_GONE
      self.metrics.observe(scope['path'], status, seconds)
      client = scope.get('client')
      batch = f' batch {info["batch"]}' if info['batch'] else ''
      log.info('%s %s %s %d %.1f ms%s',
               '%s:%d' % tuple(client) if client else '-', scope['method'],
               scope['path'], status, 1e3 * seconds, batch)


def _json(status: int, obj, *, headers=None, close: bool = False):
  headers = dict(headers or {})
  headers['Cache-Control'] = 'no-store'
  if close:
    headers['Connection'] = 'close'
  return JSONResponse(obj, status_code=status, headers=headers)


class Server:
  """A Tagger behind the HTTP API: see jaxtag/serve.py for the routes."""

  def __init__(self, tagger, settings: Settings = Settings()):
    self.tagger, self.settings = tagger, settings
    self.service = records_lib.TagService(tagger)
    self.model = batcher_lib.TaggerModel(tagger, settings.max_batch)
    self.batcher = batcher_lib.Batcher(
        self._run_batch, max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue)
    self.metrics = metrics_lib.Metrics(settings.max_batch,
                                       queue_depth=lambda: self.batcher.depth)
    self.batcher.on_batch = self.metrics.batch_size.observe
    self.decode = decode_lib.DecodePool(
        self.model.prepare, workers=settings.decode_workers,
        max_bytes=settings.max_bytes, max_pixels=settings.max_pixels)
    middleware = []
    if settings.cors_origins:
      middleware.append(Middleware(
          CORSMiddleware, allow_origins=list(settings.cors_origins),
          allow_methods=['GET', 'POST'],
          allow_headers=['Authorization', 'X-API-Key', 'X-Filename',
                         'Content-Type']))
    # Each endpoint checks its method, so that a wrong one is a JSON 404
    # as before rather than starlette's plain-text 405.
    routes = [Route(path, endpoint, methods=METHODS) for path, endpoint in (
        ('/', self.page), ('/index.html', self.page),
        ('/favicon.ico', self.favicon), ('/health', self.health),
        ('/metrics', self.prometheus), ('/tag', self.tag))]
    starlette = Starlette(routes=routes, middleware=middleware,
                          exception_handlers={404: self.not_found})
    self.app = AccessLog(starlette, self.metrics)

  def start(self) -> 'Server':
    self.batcher.start()
    return self

  def close(self) -> None:
    self.batcher.stop()
    self.decode.close()

  def _run_batch(self, inputs, options):
    return self.service.records(self.model.predict(inputs), options)

  # ------------------------------------------------------------ routes ---

  async def not_found(self, request: Request, exc=None) -> Response:
    path = request.url.path
    if request.method == 'POST':
      message = (f'POST {path} is not an API; use POST /tag with the image '
                 'bytes.')
    else:
      message = f'No page at {path}; the page is / and the API is POST /tag.'
    # A body is not read here: a client waiting for 100 Continue is let go.
    return _json(404, {'error': message},
                 close=body_lib.expects_continue(request.headers))

  async def page(self, request: Request) -> Response:
    if request.method not in ('GET', 'HEAD'):
      return await self.not_found(request)
    return HTMLResponse(page_lib.PAGE, headers={'Cache-Control': 'no-store'})

  async def favicon(self, request: Request) -> Response:
    return Response(status_code=204, media_type='image/x-icon')

  async def health(self, request: Request) -> Response:
    if request.method not in ('GET', 'HEAD'):
      return await self.not_found(request)
    return _json(200, {'ok': True, 'tags': len(self.tagger.names)})

  def _unauthorized(self, request: Request) -> Response | None:
    if auth.authorized(request.headers, self.settings.api_key):
      return None
    return _json(401, {'error': 'This server needs its API key: send '
                                '"Authorization: Bearer KEY" (or "X-API-Key: '
                                'KEY").'},
                 headers={'WWW-Authenticate': 'Bearer'},
                 close=body_lib.expects_continue(request.headers))

  async def prometheus(self, request: Request) -> Response:
    if request.method not in ('GET', 'HEAD'):
      return await self.not_found(request)
    refused = self._unauthorized(request)
    if refused is not None:
      return refused
    return Response(self.metrics.text(),
                    media_type=metrics_lib.Metrics.CONTENT_TYPE)

  async def tag(self, request: Request) -> Response:
    if request.method != 'POST':
      return await self.not_found(request)
    refused = self._unauthorized(request)
    if refused is not None:
      return refused
    continue_expected = body_lib.expects_continue(request.headers)
    try:
      ticket = self.batcher.reserve()
    except batcher_lib.QueueFull:
      return _json(503, {'error': f'The server has {self.settings.max_queue} '
                                  'requests in hand (--max_queue); retry '
                                  f'after {RETRY_AFTER_S} s.'},
                   headers={'Retry-After': str(RETRY_AFTER_S)},
                   close=continue_expected)
    with ticket:
      try:
        body = await body_lib.read_body(
            request.receive, request.headers,
            max_bytes=self.settings.max_bytes,
            timeout_s=self.settings.timeout_s)
        ticket.decoding()
        prepared = await self.decode(body)
        del body
        filename = parse.unquote(request.headers.get('x-filename') or
                                 'upload')
        with_scores = request.query_params.get('all', '0') in ('1', 'true')
        record, batch = await asyncio.wrap_future(
            ticket.submit(prepared, (filename, with_scores)))
      except RequestError as e:
        return _json(e.status, {'error': str(e)}, headers=e.headers,
                     close=e.close)
      except ClientGone:
        return Response(status_code=CLIENT_GONE)   # sent to nobody
      except RuntimeError as e:   # the model failed (logged by the batcher)
        return _json(500, {'error': str(e)})
    request.scope['jaxtag.log']['batch'] = batch
    return _json(200, record)
