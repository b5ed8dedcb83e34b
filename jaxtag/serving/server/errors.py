"""A request the server refuses, and a client that went away."""
from __future__ import annotations


class RequestError(Exception):
  """A request the server refuses, with its HTTP status.

  `close` asks for `Connection: close`: the client should not send (or go
  on sending) a body the server will not read.
  """

  def __init__(self, status: int, message: str, *,
               headers: dict[str, str] | None = None, close: bool = False):
    super().__init__(message)
    self.status = status
    self.headers = dict(headers or {})
    self.close = close


class ClientGone(Exception):
  """The client closed the connection before its request was read."""
