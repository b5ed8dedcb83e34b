"""Dynamic batching: one loop owns the model; concurrent requests share
its calls.

Each tag request first takes a place in the queue (`reserve`; at most
`max_queue` requests are admitted at once, the rest are told to retry),
then reads its body, decodes its image (`decoding`) and submits the model
input. The loop takes the first waiting input and gathers more until it
has `max_batch`, or `max_wait_ms` has passed, or no request is still
decoding (so a lone request never waits, and a slow upload delays no
batch). One thread runs every model call, so the
jitted model is never entered from two threads, and batches are padded
to a few sizes (powers of two up to `max_batch`) so that only those
programs are compiled.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent import futures
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger('jaxtag.serve')


class QueueFull(Exception):
  """`max_queue` requests are already admitted."""


def batch_sizes(max_batch: int) -> list[int]:
  """The padded batch sizes: powers of two below `max_batch`, and it."""
  if max_batch < 1:
    raise ValueError(f'--max_batch must be at least 1, got {max_batch}.')
  sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
  return sizes + [max_batch]


def padded_size(n: int, sizes: Sequence[int]) -> int:
  return next(s for s in sizes if s >= n)


class TaggerModel:
  """A jaxtag Tagger split in two: `prepare` (the run's geometry, in the
  decode pool) and `predict` (padded batches, in the batching loop)."""

  def __init__(self, tagger, max_batch: int):
    self.tagger = tagger
    self.sizes = batch_sizes(max_batch)

  def prepare(self, image):
    """(shape bucket, uint8 pixels, mask or None) of a PIL image."""
    return self.tagger.geometry(image)

  def predict(self, prepared: Sequence[Any]) -> np.ndarray:
    """Scores [N, tags] (a captioner's token ids) of prepared images."""
    out = [None] * len(prepared)
    for bucket in sorted({p[0] for p in prepared}):
      rows = [i for i, p in enumerate(prepared) if p[0] == bucket]
      for start in range(0, len(rows), self.sizes[-1]):
        chunk = rows[start:start + self.sizes[-1]]
        result = self._predict_padded([prepared[i] for i in chunk])
        for i, row in zip(chunk, result):
          out[i] = row
    return np.stack(out)

  def _predict_padded(self, prepared) -> np.ndarray:
    n = len(prepared)
    pad = padded_size(n, self.sizes) - n
    pixels = np.stack([p[1] for p in prepared])
    pixels = np.concatenate([pixels, np.zeros((pad, *pixels.shape[1:]),
                                              np.uint8)])
    mask = None
    if prepared[0][2] is not None:
      mask = np.stack([p[2] for p in prepared])
      mask = np.concatenate([mask, np.ones((pad, *mask.shape[1:]), np.uint8)])
    return self.tagger.bundle.predict(pixels, mask)[:n]

  def warm_up(self) -> None:
    """Compiles every padded size now, before the first request."""
    from PIL import Image
    white = self.prepare(Image.new('RGB', (32, 32), (255, 255, 255)))
    for size in self.sizes:
      self._predict_padded([white] * size)


class Ticket:
  """A request's place in the queue, from admission to its answer."""
  # pylint: disable=protected-access  (a Ticket is its Batcher's own part)

  def __init__(self, batcher: 'Batcher'):
    self._batcher = batcher
    self._state = 'admitted'   # -> 'decoding' -> 'submitted' -> 'released'

  def decoding(self) -> None:
    """Its body is read: a model input is on its way."""
    if self._state == 'admitted':
      self._state = 'decoding'
      self._batcher._expect(+1)

  def submit(self, prepared, options) -> futures.Future:
    """Queues a model input; the future gives (result, batch size)."""
    self.decoding()
    future = self._batcher._submit(prepared, options)
    self._state = 'submitted'
    return future

  def release(self) -> None:
    if self._state == 'released':
      return
    if self._state == 'decoding':   # it failed: the loop need not wait
      self._batcher._expect(-1)
    self._state = 'released'
    self._batcher._release()

  def __enter__(self) -> 'Ticket':
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class Batcher:
  """The batching loop. `run(inputs, options) -> results` is called from
  one thread only, with up to `max_batch` inputs at a time."""

  def __init__(self, run: Callable[[list, list], list], *, max_batch: int,
               max_wait_ms: float, max_queue: int,
               on_batch: Callable[[int], None] | None = None):
    batch_sizes(max_batch)  # checks it
    if max_queue < 1:
      raise ValueError(f'--max_queue must be at least 1, got {max_queue}.')
    if max_wait_ms < 0:
      raise ValueError(f'--max_wait_ms must be 0 or more, got {max_wait_ms}.')
    self.run, self.on_batch = run, on_batch
    self.max_batch, self.max_queue = max_batch, max_queue
    self.max_wait_s = max_wait_ms / 1000
    self._cond = threading.Condition()
    self._waiting = collections.deque()   # (input, options, future)
    self._admitted = 0     # requests between reserve() and release()
    self._incoming = 0     # requests decoding, not yet submitted
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name='batcher',
                                    daemon=True)

  @property
  def depth(self) -> int:
    """Admitted requests not yet answered."""
    return self._admitted

  def start(self) -> 'Batcher':
    self._thread.start()
    return self

  def stop(self) -> None:
    with self._cond:
      self._stopping = True
      self._cond.notify_all()
    if self._thread.is_alive():
      self._thread.join()

  def reserve(self) -> Ticket:
    """A place in the queue, or QueueFull."""
    with self._cond:
      if self._admitted >= self.max_queue:
        raise QueueFull()
      self._admitted += 1
    return Ticket(self)

  def _expect(self, change: int) -> None:
    with self._cond:
      self._incoming += change
      self._cond.notify_all()

  def _submit(self, prepared, options) -> futures.Future:
    future = futures.Future()
    with self._cond:
      if self._stopping:
        raise RuntimeError('The server is shutting down.')
      self._incoming -= 1
      self._waiting.append((prepared, options, future))
      self._cond.notify_all()
    return future

  def _release(self) -> None:
    with self._cond:
      self._admitted -= 1

  def _gather(self) -> list | None:
    with self._cond:
      while not self._waiting and not self._stopping:
        self._cond.wait()
      if not self._waiting:
        return None
      deadline = time.monotonic() + self.max_wait_s
      while len(self._waiting) < self.max_batch and self._incoming > 0:
        left = deadline - time.monotonic()
        if left <= 0 or self._stopping:
          break
        self._cond.wait(left)
      take = min(len(self._waiting), self.max_batch)
      return [self._waiting.popleft() for _ in range(take)]

  def _loop(self) -> None:
    while (batch := self._gather()) is not None:
      live = [job for job in batch if job[2].set_running_or_notify_cancel()]
      if not live:
        continue
      try:
        results = self.run([j[0] for j in live], [j[1] for j in live])
      except Exception as e:  # pylint: disable=broad-except
        log.exception('The model failed on a batch of %d images.', len(live))
        for _, _, future in live:
          future.set_exception(RuntimeError(
              f'The model failed on this batch: {type(e).__name__}; see '
              'the server log.'))
        continue
      if self.on_batch is not None:
        self.on_batch(len(live))
      for (_, _, future), result in zip(live, results):
        future.set_result((result, len(live)))
