"""uvicorn's HTTP/1.1 protocol (h11) with the guards a public server needs.

- An idle timeout on clients that owe the server bytes: a connection that
  has not sent complete request headers, or that stops sending a body the
  app is not reading, is closed after --timeout_s without progress. (While
  the app reads a body it applies the same timeout itself and answers
  408.) uvicorn's own keep-alive timeout covers idle connections between
  requests, but not one that never completes its first request.
- A request h11 cannot parse (a negative or non-numeric Content-Length,
  conflicting lengths, a malformed request line) gets a 400 with a JSON
  error naming the fault, instead of uvicorn's plain-text one.
- A body left unread because the answer came first (a 413, a 401) is read
  and thrown away so that the client sees the answer, but only up to
  `drain_bytes`; past that the connection is closed.
"""
from __future__ import annotations

import json
import logging
import sys

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger('jaxtag.serve')


def bad_request_message(error: BaseException | None) -> str:
  reason = str(error) if error is not None else 'unreadable request'
  if 'Content-Length' in reason:
    return (f'The request is not valid HTTP/1.1: {reason}. Content-Length '
            'must be the number of bytes of the body (0 or more), given '
            'once; or send the body with Transfer-Encoding: chunked.')
  return f'The request is not valid HTTP/1.1: {reason}.'


class GuardedH11Protocol(H11Protocol):
  """See the module docstring; configure with `with_limits`."""

  timeout_s: float = 30.0
  drain_bytes: int = 20 * 2**20
  # Called as on_bad_request(client, message) after a 400 sent here.
  on_bad_request = None

  @classmethod
  def with_limits(cls, *, timeout_s: float, drain_bytes: int,
                  on_bad_request=None) -> type['GuardedH11Protocol']:
    return type(cls.__name__, (cls,), {
        'timeout_s': float(timeout_s), 'drain_bytes': int(drain_bytes),
        'on_bad_request': staticmethod(on_bad_request) if on_bad_request
                          else None})

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._last_data = self.loop.time()
    self._idle_timer = None
    self._drained = 0
    self._watch()

  def connection_lost(self, exc) -> None:
    if self._idle_timer is not None:
      self._idle_timer.cancel()
      self._idle_timer = None
    super().connection_lost(exc)

  def data_received(self, data: bytes) -> None:
    self._last_data = self.loop.time()
    if self._draining():
      self._drained += len(data)
      if self._drained > self.drain_bytes:
        self.transport.close()
        return
    else:
      self._drained = 0
    super().data_received(data)
    self._watch()

  def _draining(self) -> bool:
    """The answer is sent and the client is still sending its body."""
    return (self.cycle is not None and self.cycle.response_complete
            and self.conn.their_state is h11.SEND_BODY)

  def _owed_by_client(self) -> bool:
    """The client, not the app, is the one to move (headers or a body
    nobody is reading)."""
    if self.cycle is not None and not self.cycle.response_complete:
      return False   # the app has the request; it times its own reads
    return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

  def _watch(self) -> None:
    if self._idle_timer is None and self._owed_by_client():
      self._idle_timer = self.loop.call_later(self.timeout_s, self._on_idle)

  def _on_idle(self) -> None:
    self._idle_timer = None
    if self.transport.is_closing() or not self._owed_by_client():
      return
    idle = self.loop.time() - self._last_data
    if idle < self.timeout_s:
      self._idle_timer = self.loop.call_later(self.timeout_s - idle,
                                              self._on_idle)
      return
    client = '%s:%d' % self.client if self.client else '-'
    log.info('%s closed: no request bytes for %g s (--timeout_s)', client,
             self.timeout_s)
    self.transport.close()

  def send_400_response(self, msg: str) -> None:
    # uvicorn calls this inside its `except h11.RemoteProtocolError`.
    message = bad_request_message(sys.exc_info()[1])
    body = json.dumps({'error': message}).encode()
    headers = [(b'content-type', b'application/json; charset=utf-8'),
               (b'content-length', str(len(body)).encode()),
               (b'connection', b'close')]
    for event in (h11.Response(status_code=400, headers=headers,
                               reason=b'Bad Request'),
                  h11.Data(data=body), h11.EndOfMessage()):
      self.transport.write(self.conn.send(event))
    self.transport.close()
    if self.on_bad_request is not None:
      self.on_bad_request(self.client, message)
