"""The request body, read under a size limit and a read timeout.

A declared Content-Length over the limit is refused before a byte of the
body is read (and, since uvicorn sends `100 Continue` only when the app
first reads, a client that asked `Expect: 100-continue` never sends it).
A chunked body is counted as it arrives and cut off once it passes the
limit. Each wait for the next piece of the body is bounded by the timeout.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Mapping

from jaxtag.serving.server.errors import ClientGone
from jaxtag.serving.server.errors import RequestError


def megabytes(n: float) -> str:
  """Bytes as MB with three significant digits (0.05 MB, 20 MB, 300 MB)."""
  if n < 1024:
    return f'{int(n)} bytes'
  return f'{n / 2**20:.3g} MB'


def declared_length(headers: Mapping[str, str]) -> int | None:
  """The Content-Length of a body that is not chunked, or None.

  uvicorn's h11 parser already answers a malformed length with a 400; this
  check keeps the rule when the app runs under another server.
  """
  if 'chunked' in headers.get('transfer-encoding', '').lower():
    return None
  value = headers.get('content-length')
  if value is None:
    return None
  value = value.strip()
  if not value.isdigit():
    raise RequestError(400, f'Content-Length {value!r} is not a number of '
                       'bytes: send the length of the body (0 or more), or '
                       'Transfer-Encoding: chunked.', close=True)
  return int(value)


def expects_continue(headers: Mapping[str, str]) -> bool:
  return headers.get('expect', '').strip().lower() == '100-continue'


def too_large(size: float, max_bytes: int, *, close: bool) -> RequestError:
  return RequestError(413, f'The image is {megabytes(size)}; this server '
                      f'takes at most {megabytes(max_bytes)} (--max_mb).',
                      close=close)


async def read_body(receive: Callable[[], Awaitable[dict]],
                    headers: Mapping[str, str], *, max_bytes: int,
                    timeout_s: float) -> bytes:
  """The whole body from ASGI `receive`, or a RequestError (400, 408, 413),
  or ClientGone."""
  length = declared_length(headers)
  if length is not None and length > max_bytes:
    # Unread: a client waiting for 100 Continue will not send it, so the
    # connection closes; any other client's body is drained by the protocol.
    raise too_large(length, max_bytes, close=expects_continue(headers))
  chunks, size = [], 0
  while True:
    try:
      message = await asyncio.wait_for(receive(), timeout_s)
    except asyncio.TimeoutError:
      raise RequestError(
          408, f'The body stopped arriving: nothing came for {timeout_s:g} '
          's (--timeout_s).', close=True) from None
    if message['type'] == 'http.disconnect':
      raise ClientGone()
    chunk = message.get('body', b'')
    size += len(chunk)
    if size > max_bytes:
      chunks.clear()
      raise RequestError(413, f'The body passed {megabytes(max_bytes)} while '
                         f'arriving; this server takes at most '
                         f'{megabytes(max_bytes)} (--max_mb).')
    chunks.append(chunk)
    if not message.get('more_body', False):
      return b''.join(chunks)
