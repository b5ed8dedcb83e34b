"""The HTTP server behind `python -m jaxtag.serve` (see jaxtag/serve.py).

Stack: uvicorn (HTTP/1.1 through h11, the asyncio event loop) with
starlette (routing, requests and responses, CORS), and prometheus_client
for /metrics. uvicorn and starlette are a small, well-kept ASGI stack with
few dependencies; FastAPI would add pydantic and request validation that
an API of one binary body does not need. The parts a server needs under
load are ours and small:

  errors.py     RequestError: a refused request, its status and message
  body.py       the request body read under --max_mb and --timeout_s
  decode.py     decoding in a bounded thread pool (--decode_workers)
  batcher.py    the batching loop that owns the model (--max_batch,
                --max_wait_ms) and the bounded queue (--max_queue)
  records.py    scores -> the API's JSON records
  protocol.py   uvicorn's h11 protocol with an idle timeout for clients
                that stall, a JSON 400 for bad requests, and a bounded drain
  auth.py       the API key and the rule for non-loopback addresses
  metrics.py    Prometheus metrics, one registry per server
  app.py        the starlette app: routes, the access log
  page.py       the page at /
"""
