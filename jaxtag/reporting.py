"""Where a run's numbers go: the console, workdir/metrics.jsonl, TensorBoard.

Only process 0 writes files; every process may call these methods.
"""
from __future__ import annotations

import json
import time
from typing import Any

import jax
from absl import logging
from etils import epath

from jaxtag import storage


def _plain(value: Any) -> Any:
  try:
    return float(value)
  except (TypeError, ValueError):
    return value


class MetricWriter:
  """One JSON object per log or eval in metrics.jsonl, mirrored to TensorBoard.

  `resume_step`: the step the run starts from. Records an earlier attempt
  wrote after it (a run killed after its last checkpoint) are dropped,
  since this run writes those steps again, and TensorBoard is told to hide
  them. A record at the resume step itself is replaced by one of the same
  step that shares its names (the final evaluation of a finished run, run
  again), so that every step holds each metric once. A line cut short by a
  kill is dropped.
  """

  def __init__(self, workdir: epath.PathLike, *,
               resume_step: int | None = None):
    self._enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    self._resume_step = resume_step
    self._at_resume: list[frozenset[str]] = []
    if self._enabled:
      workdir = epath.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._path = workdir / 'metrics.jsonl'
      if resume_step is not None:
        kept = self._keep(lambda record: record['step'] <= resume_step)
        self._at_resume = [_names(r) for r in kept if r['step'] == resume_step]
      self._jsonl = storage.open_append(self._path)
      self._tb = storage.tensorboard_writer(
          workdir / 'tensorboard',
          purge_step=None if resume_step is None else resume_step + 1)

  def _keep(self, keep) -> list[dict[str, Any]]:
    """Rewrites metrics.jsonl with the records `keep` accepts, whole, so
    that a reader never sees half of it; returns them."""
    if not self._path.exists():
      return []
    lines = self._path.read_text().splitlines()
    records = []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and isinstance(record.get('step'), int):
        records.append(record)
    kept = [r for r in records if keep(r)]
    if len(kept) < len(lines):
      logging.info('%s: dropped %d records that this run writes again and %d '
                   'lines cut short.', self._path, len(records) - len(kept),
                   len(lines) - len(records))
      storage.replace_bytes(self._path, ''.join(
          json.dumps(r) + '\n' for r in kept).encode())
    return kept

  def write(self, step: int, metrics: dict[str, Any], prefix: str = '') -> None:
    if not self._enabled:
      return
    record = {'step': int(step), **{f'{prefix}{k}': _plain(v)
                                     for k, v in metrics.items()}}
    names = _names(record)
    if step == self._resume_step and any(n & names for n in self._at_resume):
      self._at_resume = [n for n in self._at_resume if not n & names]
      self._jsonl.close()
      self._keep(lambda r: r['step'] != step or not _names(r) & names)
      self._jsonl = storage.open_append(self._path)
    self._jsonl.write((json.dumps(record) + '\n').encode())
    self._jsonl.flush()
    for key, value in record.items():
      if key != 'step' and isinstance(value, float):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tb.close()


def _names(record: dict[str, Any]) -> frozenset[str]:
  return frozenset(record) - {'step'}


class Progress:
  """A one-line progress bar with loss, learning rate and throughput."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int):
    self.total = total_steps
    self.batch = global_batch
    self._t0 = time.perf_counter()
    self._last_time = self._t0
    self._last_step = start_step
    self.images_per_s = 0.0

  def restart_clock(self, step: int) -> None:
    """Excludes eval and checkpoint time from the next throughput figure."""
    self._last_time, self._last_step = time.perf_counter(), step

  def update(self, step: int, loss: float, lr: float) -> str:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    self.images_per_s = steps * self.batch / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    frac = step / max(self.total, 1)
    bar = '#' * int(frac * 20) + '.' * (20 - int(frac * 20))
    eta = (self.total - step) * self.batch / max(self.images_per_s, 1e-9)
    line = (f'[{bar}] {step}/{self.total} {100 * frac:5.1f}% | loss {loss:.4f}'
            f' | lr {lr:.2e} | {self.images_per_s:,.0f} img/s'
            f' | eta {int(eta) // 60}m{int(eta) % 60:02d}s')
    logging.info('%s', line)
    return line


def write_images(workdir: epath.PathLike, step: int,
                 images: dict[str, Any]) -> None:
  """TensorBoard images ({tag: [H, W, 3] uint8}) in workdir/tensorboard, on
  process 0; a writer of their own, so eval-only runs can add them too."""
  if jax.process_index() != 0 or not images:
    return
  tb = storage.tensorboard_writer(epath.Path(workdir) / 'tensorboard')
  for tag, image in images.items():
    tb.add_image(tag, image, int(step), dataformats='HWC')
  tb.close()
