"""Orbax checkpoints of the train state and the data iterator, and preemption.

A checkpoint holds two items: `state` (params, batch stats, optimiser state,
step) and `data` (each process's grain iterator position), so that a resumed
run sees exactly the batches an uninterrupted run would.

A run resumes from the newest checkpoint that reads. A newer one whose files
are damaged or missing (a truncated JSON or `_METADATA`, a short array file)
is named in a warning and moved aside to `checkpoints/<step>.unreadable`,
which Orbax does not take for a step; nothing is deleted.
"""
from __future__ import annotations

import contextlib
import json
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

# TensorStore's status codes for files that are damaged, short or missing.
# Others (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, ...) say that the
# storage could not be reached or refused access, which is no reason to give
# up a checkpoint: those errors propagate as they are.
_DAMAGE_CODES = ('DATA_LOSS', 'OUT_OF_RANGE', 'FAILED_PRECONDITION',
                 'NOT_FOUND', 'INVALID_ARGUMENT')
SET_ASIDE_SUFFIX = '.unreadable'

# Orbax writes a replicated array in parts, one per replica, which takes one
# compiled slice per array shape and device. Where the parts would be under
# this size, the array is written whole by one replica: biases, norms and
# small layers gain nothing from splitting, and their slices had cost a
# small run a third of its time.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's handler for the state, with Orbax's own type handlers except
  that a replicated array is split only into parts of at least
  REPLICA_PARALLEL_MIN_BYTES."""
  handlers = ocp.type_handlers
  scalar = handlers.ScalarHandler()
  registry = handlers.create_type_handler_registry(
      (int, scalar), (float, scalar), (bytes, scalar), (np.number, scalar),
      (np.ndarray, handlers.NumpyHandler()),
      (jax.Array, handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES)),
      (str, handlers.StringHandler()))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class ShapeMismatchError(ValueError):
  """A checkpoint was written by another model or vocabulary."""


class UnreadableCheckpointError(ValueError):
  """A checkpoint's files are damaged or missing."""

  def __init__(self, step: int, path: epath.PathLike, what: str):
    self.step, self.path, self.what = step, str(path), what
    super().__init__(f'Checkpoint step {step} cannot be read: {path}: {what}')


class NoReadableCheckpointError(RuntimeError):
  """The run has checkpoints, and none of them can be read."""


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def damage(error: BaseException) -> str | None:
  """What `error` says when it means damaged or missing files, else None."""
  for e in _chain(error):
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, EOFError,
                      FileNotFoundError)):
      return f'{type(e).__name__}: {e}'
    message = str(e)
    if message.split(':', 1)[0] in _DAMAGE_CODES:
      return message.split(' [tensorstore_spec=', 1)[0]
  return None


@contextlib.contextmanager
def _reading(step: int, path: epath.Path):
  """Turns an error that means damaged files into UnreadableCheckpointError."""
  try:
    yield
  except (ShapeMismatchError, UnreadableCheckpointError):
    raise
  except Exception as e:  # pylint: disable=broad-except  (sorted by damage())
    what = damage(e)
    if what is None:
      raise
    raise UnreadableCheckpointError(step, path, what) from e


def _read_json(step: int, path: epath.Path) -> None:
  try:
    json.loads(path.read_text())
  except FileNotFoundError:
    raise UnreadableCheckpointError(step, path, 'the file is missing') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UnreadableCheckpointError(
        step, path, f'not valid JSON, perhaps cut short ({e})') from None


def _everywhere(ok: bool) -> bool:
  """True on every process when `ok` is true on every process."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


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
    self._state_handler = _state_handler()
    self._data_handler = grain.checkpoint.CheckpointHandler()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save),
        item_handlers={'state': self._state_handler,
                       'data': self._data_handler})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def check_compatible(self, step: int, abstract_state: Any, *,
                       partial: bool = False) -> None:
    """Compares stored shapes with the model's before any array is read;
    with `partial`, `abstract_state` is a part of the saved state (params,
    batch statistics, constants) and the rest may be stored beside it."""
    where = self.directory / str(step)
    # Without its _METADATA, Orbax describes a step from its array store,
    # which lacks some leaves: damage, not another model.
    _read_json(step, where / 'state' / '_METADATA')
    with _reading(step, where / 'state'):
      stored = _shapes(self._manager.item_metadata(step)['state'])
    expected = _shapes(abstract_state)
    problems = [f'{k}: checkpoint {stored[k]} vs model {v}'
                for k, v in expected.items() if k in stored and stored[k] != v]
    if partial:
      missing = [f'not in the checkpoint: {m}'
                 for m in sorted(set(expected) - set(stored))]
    else:
      missing = [f'only in one of them: {m}'
                 for m in sorted(set(expected) ^ set(stored))]
    if problems or missing:
      detail = '; '.join(problems[:5] + missing[:5])
      raise ShapeMismatchError(
          f'The checkpoint in {where} does not fit this model ({detail}). It '
          'was written by another model or tag vocabulary: use a fresh '
          '--workdir, or restore the config that wrote it.')

  def restore(self, step: int, abstract_state: Any,
              data_iterator: Any | None = None) -> Any:
    """Loads the state into `abstract_state`'s shardings (and the iterator).

    Raises ShapeMismatchError for another model's checkpoint and
    UnreadableCheckpointError, naming the file or item folder, for damaged
    or missing files. The items are read by their handlers rather than by
    the manager, whose restore ends in a barrier between processes: a
    process that fails would leave the others waiting there, where
    restore_latest needs every process to reach its own vote.
    """
    where = self.directory / str(step)
    if data_iterator is not None:
      self._check_data_files(step)
    self.check_compatible(step, abstract_state)
    with _reading(step, where / 'state'):
      state = self._state_handler.restore(
          where / 'state', args=ocp.args.PyTreeRestore(
              abstract_state, restore_args=ocp.checkpoint_utils
              .construct_restore_args(abstract_state)))
    if data_iterator is not None:
      with _reading(step, where / 'data'):
        self._data_handler.restore(
            where / 'data',
            args=grain.checkpoint.CheckpointRestore(data_iterator))
    return state

  def _check_data_files(self, step: int) -> None:
    """This process's iterator position: present and valid JSON; one
    written by another number of processes is a clear error, not damage."""
    folder = self.directory / str(step) / 'data'
    count = jax.process_count()
    path = folder / f'process_{jax.process_index()}-of-{count}.json'
    if not path.exists() and folder.exists():
      written = sorted(p.name for p in folder.glob('process_*-of-*.json'))
      if written and not any(n.endswith(f'-of-{count}.json') for n in written):
        raise ValueError(
            f'{folder} holds the data positions of a run with another number '
            f'of processes ({", ".join(written[:4])}); this run has {count}. '
            'Resume with the process count that wrote it, or start another '
            f'--workdir with config.init.path={self.directory.parent} to '
            'keep its weights.')
    _read_json(step, path)

  def restore_latest(self, abstract_state: Any,
                     data_iterator: Any | None = None, *,
                     set_aside: bool = True) -> tuple[Any, int] | None:
    """(state, step) of the newest checkpoint that reads; None without any
    (see newest_readable)."""
    return self.newest_readable(
        lambda step: self.restore(step, abstract_state, data_iterator),
        set_aside=set_aside)

  def newest_readable(self, read, *,
                      set_aside: bool = True) -> tuple[Any, int] | None:
    """(read(step), step) of the newest checkpoint that reads; None without
    any.

    An unreadable newer step is named in a warning and, when an older one
    reads and `set_aside`, moved to `<step>.unreadable`, so that the next
    start does not trip on it again. When none reads, nothing is moved (a
    fault common to every step, such as a changed layout, is not damage to
    set aside) and NoReadableCheckpointError names the folder. Every
    process tries each step and they vote, so all resume from the same one;
    only process 0 moves folders.
    """
    unreadable = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, problem = read(step), None
      except UnreadableCheckpointError as e:
        state, problem = None, e
        logging.warning('%s', e)
      if _everywhere(problem is None):
        if unreadable:
          logging.warning('Resuming from step %d, the newest checkpoint in %s '
                          'that every process can read.', step, self.directory)
          if set_aside:
            self._set_aside([bad for bad, _ in unreadable])
        return state, step
      if problem is None:
        logging.warning('Checkpoint step %d cannot be read by another process '
                        '(its log names the file).', step)
      unreadable.append((step, problem))
    if not unreadable:
      return None
    detail = '; '.join(
        f'step {s}: ' + (f'{p.path}: {p.what}' if p else
                         'another process could not read it (see its log)')
        for s, p in unreadable)
    raise NoReadableCheckpointError(
        f'No checkpoint in {self.directory} can be read ({detail}). Nothing '
        f'was moved. To start afresh, move {self.directory.parent} away or '
        'train with another --workdir; to resume, bring the damaged files '
        'back from a copy.')

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable steps to <step>.unreadable (then .unreadable-2, ...),
    on process 0, and lets every process's manager forget them."""
    if jax.process_index() == 0:
      for step in steps:
        source = self.directory / str(step)
        target = self.directory / f'{step}{SET_ASIDE_SUFFIX}'
        n = 1
        while target.exists():
          n += 1
          target = self.directory / f'{step}{SET_ASIDE_SUFFIX}-{n}'
        source.rename(target)
        logging.warning('Moved the unreadable step %d to %s; it is kept for '
                        'inspection and can be deleted.', step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('jaxtag_checkpoints_set_aside')
    self._manager.reload()

  def restore_variables(self, step: int, abstract: Any) -> Any:
    """The leaves of `abstract` (a part of the saved state: params, batch
    statistics, constants) from `step`, into its shardings; the rest of
    the state (the optimiser's) is never read."""
    where = self.directory / str(step)
    self.check_compatible(step, abstract, partial=True)
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract)
    with ocp.PyTreeCheckpointer() as checkpointer, _reading(step,
                                                           where / 'state'):
      return checkpointer.restore(where / 'state', args=ocp.args.PyTreeRestore(
          abstract, restore_args=restore_args, partial_restore=True))

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
