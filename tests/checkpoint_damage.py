"""Damage to a checkpoint step as a crash or a full disk leaves it."""
import os

KINDS = ('iterator_json', 'metadata_truncated', 'metadata_missing',
         'array_file')


def truncate(path) -> None:
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def array_files(step_dir) -> list[str]:
  """The OCDBT data files of a step's state: under state/d, where small
  arrays land, and state/ocdbt.process_<i>/d."""
  return sorted(os.path.join(folder, name)
                for folder, _, names in os.walk(os.path.join(step_dir, 'state'))
                if os.path.basename(folder) == 'd' for name in names)


def damage(kind: str, step_dir: str) -> tuple[str, str | None]:
  """Damages a step; returns (the file or folder a message must name, a
  damaged file whose bytes must survive the move, or None)."""
  if kind == 'iterator_json':
    path = os.path.join(step_dir, 'data', 'process_0-of-1.json')
    truncate(path)
    return path, path
  if kind == 'metadata_truncated':
    path = os.path.join(step_dir, 'state', '_METADATA')
    truncate(path)
    return path, path
  if kind == 'metadata_missing':
    path = os.path.join(step_dir, 'state', '_METADATA')
    os.remove(path)
    return path, None
  assert kind == 'array_file', kind
  for path in array_files(step_dir):
    truncate(path)
  return os.path.join(step_dir, 'state'), array_files(step_dir)[0]
