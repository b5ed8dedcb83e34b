"""Global batches on the device, a few steps ahead of the train step.

`DeviceFeed` keeps `size` global batches whose host-to-device transfers are
already dispatched, so the transfer of batch k+1 overlaps step k. It is
also what the checkpoint saves for the data: its state is the position of
the first batch the step has not consumed yet, so prefetched batches are
read again after a resume rather than lost.
"""
from __future__ import annotations

import collections
import json
from typing import Any, Callable


class DeviceFeed:
  """An iterator of device batches over a checkpointable host iterator."""

  def __init__(self, host_iterator, to_device: Callable[[Any], Any],
               size: int = 2):
    if size < 1:
      raise ValueError(f'The device prefetch must hold at least 1 batch, not '
                       f'{size}.')
    self._host = host_iterator
    self._to_device = to_device
    self._size = int(size)
    self._queue = collections.deque()  # (host state before it, device batch)
    self.skipped_images = getattr(host_iterator, 'skipped_images', None)

  def _fill(self) -> None:
    while len(self._queue) < self._size:
      before = self._host.get_state()
      self._queue.append((before, self._to_device(next(self._host))))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    _, batch = self._queue.popleft()
    self._fill()  # dispatch the next transfers before the step runs
    return batch

  # The grain checkpoint handler's protocol for non-grain iterators.
  def get_state(self) -> bytes:
    state = self._queue[0][0] if self._queue else self._host.get_state()
    return json.dumps(state).encode()

  def set_state(self, state: bytes) -> None:
    self._queue.clear()
    self._host.set_state(json.loads(state.decode()))

  def start_prefetch(self) -> None:
    """Called by the grain handler after a restore; filling is lazy."""
