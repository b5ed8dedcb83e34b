"""Orbax checkpoints of the train state and the data iterator, and preemption.

A checkpoint holds two items: `state` (params, batch stats, optimiser state,
step) and `data` (each process's grain iterator position), so that a resumed
run sees exactly the batches an uninterrupted run would.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxtag import storage
from jaxtag import trees


class ShapeMismatchError(ValueError):
  """A checkpoint was written by another model or vocabulary."""


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {k: tuple(getattr(leaf, 'shape', ()))
          for k, leaf in trees.flatten(tree).items()}


def read_numpy(state_dir: epath.PathLike) -> dict[str, Any]:
  """A checkpoint's `state` folder as nested dicts of numpy arrays, read on
  the host alone: no model, no shardings, no devices."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        restore_args=as_numpy))


class Checkpointer:
  """The run's CheckpointManager under `workdir/checkpoints`."""

  def __init__(self, workdir: epath.PathLike, *, keep: int,
               async_save: bool = True):
    # Local workdirs become absolute for Orbax; gs:// and other URIs stay as
    # they are, so every worker writes to the same bucket.
    self.directory = storage.as_path(workdir) / 'checkpoints'
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """Compares stored shapes with the model's before any array is read."""
    stored = _shapes(self._manager.item_metadata(step)['state'])
    expected = _shapes(abstract_state)
    where = self.directory / str(step)
    problems = [f'{k}: checkpoint {stored[k]} vs model {v}'
                for k, v in expected.items() if k in stored and stored[k] != v]
    missing = sorted(set(expected) ^ set(stored))
    if problems or missing:
      detail = '; '.join(problems[:5] + [f'only in one of them: {m}'
                                         for m in missing[:5]])
      raise ShapeMismatchError(
          f'The checkpoint in {where} does not fit this model ({detail}). It '
          'was written by another model or tag vocabulary: use a fresh '
          '--workdir, or restore the config that wrote it.')

  def restore(self, step: int, abstract_state: Any,
              data_iterator: Any | None = None) -> Any:
    """Loads the state into `abstract_state`'s shardings (and the iterator)."""
    self.check_compatible(step, abstract_state)
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class PreemptionWatcher:
  """Tells the loop when to save and stop after SIGTERM or SIGINT.

  With several processes, jax's preemption service (started by
  jax.distributed.initialize) catches SIGTERM and agrees on one step at which
  every process saves, so they never wait on each other. SIGINT is turned
  into a SIGTERM to this process so that it takes the same path. A single
  process needs only its own flag.
  """

  def __init__(self):
    self._requested = threading.Event()
    self._multi = jax.process_count() > 1
    self._previous = {}
    signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM,
                                                    signal.SIGINT)
    for sig in signals:
      try:
        self._previous[sig] = signal.signal(sig, self._on_signal)
      except ValueError:  # not the main thread (e.g. inside a test runner)
        pass

  def _on_signal(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint, then exiting.',
                    signum)
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      self._requested.set()

  def should_stop(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested.is_set()

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
