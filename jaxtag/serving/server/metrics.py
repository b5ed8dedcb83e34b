"""Prometheus metrics of one server, in a registry of its own (so that two
servers in one process, as in the tests, do not share counters)."""
from __future__ import annotations

import prometheus_client as prom

# Routes are a fixed set, so a client cannot grow the label space.
ROUTES = ('/', '/tag', '/health', '/metrics', 'other')
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30)


class Metrics:
  """Requests by route and status, latency, batch sizes, queue depth."""

  def __init__(self, max_batch: int, queue_depth=None):
    self.registry = prom.CollectorRegistry(auto_describe=True)
    self.requests = prom.Counter(
        'jaxtag_requests', 'HTTP requests answered, by route and status '
        '(499: the client left first).', ['route', 'status'],
        registry=self.registry)
    self.latency = prom.Histogram(
        'jaxtag_request_seconds', 'Time from the request headers to the '
        'answer, by route.', ['route'], buckets=LATENCY_BUCKETS,
        registry=self.registry)
    sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch})
    self.batch_size = prom.Histogram(
        'jaxtag_batch_size', 'Images per model call.',
        buckets=[s for s in sizes if s <= max_batch], registry=self.registry)
    self.queue_depth = prom.Gauge(
        'jaxtag_queue_depth', 'Tag requests admitted and not yet answered '
        '(at most --max_queue).', registry=self.registry)
    if queue_depth is not None:
      self.queue_depth.set_function(queue_depth)

  @staticmethod
  def route(path: str) -> str:
    if path == '/index.html':
      return '/'
    return path if path in ROUTES else 'other'

  def observe(self, path: str, status: int, seconds: float) -> None:
    route = self.route(path)
    self.requests.labels(route, str(status)).inc()
    self.latency.labels(route).observe(seconds)

  def text(self) -> bytes:
    return prom.generate_latest(self.registry)

  CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
