"""The API key, and the rule that guards addresses other machines reach.

A server bound to a loopback address (127.0.0.1, ::1, localhost) needs no
key. Any other address needs --api_key, or --no_auth to say that open
access is meant. With a key, POST /tag and GET /metrics need the header
`Authorization: Bearer KEY` (or `X-API-Key: KEY`); the page and /health
stay open (the page asks for the key when the API answers 401).
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Mapping


def is_loopback(host: str) -> bool:
  if host.strip().lower() == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host.strip('[]')).is_loopback
  except ValueError:
    return False   # a name other machines may resolve to this one


def check_bind(host: str, api_key: str | None, no_auth: bool) -> None:
  """Raises ValueError, saying what to do, for an unguarded public bind."""
  if api_key and no_auth:
    raise ValueError('--api_key and --no_auth contradict each other: keep '
                     'one.')
  if not is_loopback(host) and not api_key and not no_auth:
    raise ValueError(
        f'--host {host} can be reached from other machines, so the API '
        'needs a key: pass --api_key=KEY (clients send "Authorization: '
        'Bearer KEY"; put the flag in a --flagfile to keep it out of the '
        'process list), or --no_auth to serve anyone who can connect.')


def presented_key(headers: Mapping[str, str]) -> str | None:
  authorization = headers.get('authorization', '')
  scheme, _, token = authorization.partition(' ')
  if scheme.lower() == 'bearer' and token.strip():
    return token.strip()
  return headers.get('x-api-key')


def authorized(headers: Mapping[str, str], api_key: str | None) -> bool:
  """Whether the request carries the key (always, when there is none)."""
  if not api_key:
    return True
  presented = presented_key(headers)
  if presented is None:
    return False
  # Constant time: the comparison does not tell how much of a guess matched.
  return hmac.compare_digest(presented.encode(), api_key.encode())
