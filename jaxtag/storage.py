"""Run outputs on a local disk or an object store (gs://, s3://) alike.

Every file a run writes goes through `etils.epath`, the layer TFDS and Orbax
use, so that a `--workdir gs://bucket/run` reaches the bucket from every TPU
worker instead of a local folder named `gs:`.
"""
from __future__ import annotations

import itertools
import json
import os
import threading
from typing import Any

from etils import epath


def is_local(path: epath.PathLike) -> bool:
  return '://' not in os.fspath(path)


def as_path(path: epath.PathLike) -> epath.Path:
  """The epath of a local path or a URI; local paths are made absolute.

  Orbax refuses relative local paths, while `os.path.abspath('gs://b/run')`
  would turn a URI into the local folder `$PWD/gs:/b/run`.
  """
  path = epath.Path(path)
  return path.resolve() if is_local(path) else path


def write_text(path: epath.PathLike, text: str) -> None:
  epath.Path(path).write_text(text)


def write_json(path: epath.PathLike, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2))


class _RewrittenFile:
  """An append-only file on a store whose objects cannot be appended to.

  The whole content is kept in memory and uploaded again on each flush, as
  tf.io.gfile and tensorboardX's own GCS writer do: the object is replaced
  whole, so a reader sees every record up to the last flush and never half
  of one. Run logs are small enough for this.
  """

  def __init__(self, path: epath.Path, *, keep_existing: bool):
    self._path = path
    existing = path.read_bytes() if keep_existing and path.exists() else b''
    self._content = bytearray(existing)
    self._dirty = False
    # tensorboardX writes from its own thread and flushes from the caller's.
    self._lock = threading.Lock()

  def write(self, data: bytes) -> int:
    with self._lock:
      self._content += data
      self._dirty = True
    return len(data)

  def flush(self) -> None:
    with self._lock:
      if self._dirty:
        self._path.write_bytes(bytes(self._content))
        self._dirty = False

  def close(self) -> None:
    self.flush()


def open_append(path: epath.PathLike):
  """A binary file that `write`s at its end and is readable after `flush`.

  A local file is appended to in place; a remote one keeps its earlier
  content (e.g. metrics.jsonl of a resumed run) and is rewritten on flush.
  """
  path = epath.Path(path)
  if is_local(path):
    return path.open('ab')
  return _RewrittenFile(path, keep_existing=True)


def replace_bytes(path: epath.PathLike, data: bytes) -> None:
  """Writes `path` whole, so that a reader sees the old content or the new.

  A local file is written beside it and renamed over it; an object in a
  store is replaced whole by its upload anyway.
  """
  path = epath.Path(path)
  if not is_local(path):
    path.write_bytes(data)
    return
  partial = path.with_name(f'.{path.name}.partial')
  partial.write_bytes(data)
  os.replace(partial, path)


_WRITERS = itertools.count()


class _EpathRecordWriterFactory:
  """tensorboardX's hook for a URI scheme: event files opened through epath."""

  def open(self, path: str):
    # Event file names are unique per writer, so there is nothing to keep.
    return _RewrittenFile(epath.Path(path), keep_existing=False)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def tensorboard_writer(logdir: epath.PathLike, purge_step: int | None = None):
  """A tensorboardX SummaryWriter whose event files may live in a bucket.

  tensorboardX picks a file writer by the scheme before ':'. Its built-in
  gs:// and s3:// writers need google-cloud-storage or boto3 and their own
  credentials; registering epath for the logdir's scheme sends the events
  where the checkpoints go, with the same credentials. Local logdirs are
  left to tensorboardX as before. `purge_step` starts the file with a
  restart marker: TensorBoard then hides the earlier files' events from
  that step on, which a resumed run writes again. tensorboardX names a
  file by the second it was opened in, so each writer adds the process id
  and a count, lest a second writer of the same second replace the first's
  file (the run's writer and the plots', or a quick resume).
  """
  from tensorboardX import SummaryWriter  # only process 0 needs it
  from tensorboardX import record_writer
  logdir = os.fspath(logdir)
  if not is_local(logdir):
    record_writer.register_writer_factory(logdir.split('://', 1)[0],
                                          _EpathRecordWriterFactory())
  return SummaryWriter(logdir, purge_step=purge_step,
                       filename_suffix=f'.{os.getpid()}.{next(_WRITERS)}')
