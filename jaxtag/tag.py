r"""Tags images with a bundle, the way the WD tagger front ends do.

  python -m jaxtag.tag PATH... --bundle BUNDLE [--recursive] \
      [--format txt|json|jsonl|csv] [--output FILE]

PATH is an image, a folder (its images; `--recursive` for subfolders too)
or a glob ('shots/**/*.png': the images among its matches, and those of
the folders it matches). A file named directly is tried whatever its
extension. Images go through the model in batches of `--batch_size`, with
a progress bar on stderr. Flags are written with underscores, as in
kohya's sd-scripts tagger.
- txt (default): writes `<image stem><--caption_extension>` (default
  `.txt`) beside each image, its general and character tags joined by
  ", ". An existing tag file is left alone unless `--overwrite` (replace
  it) or `--append_existing` (keep it and add the new tags it lacks).
  `--replace_underscores` (kaomoji such as ^_^ kept),
  `--escape_parentheses`, `--exclude a,b`, `--prepend a,b` and
  `--character_first` shape the caption.
- json (one list), jsonl (one object a line): per image, its file and the
  scores of its rating, general and character tags, kept apart.
- csv: file, the top rating, the general and the character tags.
  json, jsonl and csv go to `--output` or stdout.

Thresholds: the bundle's (`--policy`), overridden by `--threshold` (every
tag), `--general_threshold` and `--character_threshold`.

Speed and scale:
- `--backend auto|jax|onnxruntime` (jaxtag/serving/backends.py): auto runs
  onnxruntime on CPU when the bundle exports to ONNX (a `model.onnx` beside
  the bundle at its training size, else one exported once into
  ~/.cache/jaxtag/onnx/, or $JAXTAG_CACHE; bundle files are never written),
  and JAX on accelerators, each batch split over all local devices (pad
  the last). `--decode_workers` threads (default min(8, CPUs)) decode the
  next two batches while the model runs.
- Under a multi-process launch (launch/local.sh, SLURM, TPU pods:
  jaxtag/distributed.py) process i of n tags every n-th file of the sorted
  list, starting at the i-th. json/jsonl/csv then need `--output`: each
  process appends its records to `OUTPUT.part{i}-of-{n}.jsonl` batch by
  batch, and process 0 merges them, in file order, into OUTPUT at the end
  (and removes the parts).
- `--skip_existing` resumes a killed run (counted as skipped): txt skips
  images whose tag file exists (as it always does without `--overwrite`);
  json/jsonl/csv skip those already in the part file of a run with the
  same number of processes. The progress bar shows img/s and the ETA.

A captioner's bundle (converted from a `show_attend_tell` run) writes its
sentence instead: the tag file holds it (after the existing text, on a
line of its own, with `--append_existing`), json/jsonl records are {file,
caption}, csv has the columns file, caption. The options that shape tags
(thresholds, `--policy`, `--all_scores`, `--exclude`, `--prepend`,
`--replace_underscores`, `--escape_parentheses`, `--character_first`) do
not apply; given, they are named in one warning and ignored.

Tag files never touch anything but tag files:
- `--caption_extension` must start with a dot and must not be, or end in,
  an image extension (.png, .JPG, ...): refused before any work (exit 2).
  `--output` must not be one of the images.
- A tag file is written only as a regular file. When its path is a
  symlink (dangling or not), a folder, a FIFO or another non-regular file,
  or one of the images being tagged (an image named `photo.txt`), nothing
  is written and the image is reported as failed.
- Images with one stem in one folder (a.png, a.webp) would share a tag
  file: the one whose file name sorts first by code point (a.jpg < a.png <
  a.webp) gets it, the others are skipped as `same_stem`, on every run.
- Inputs that are FIFOs, devices or sockets are skipped without being
  opened (`not_regular_file`); a dangling symlink or a symlink loop is
  skipped as `unreadable`; a file Pillow cannot read as `corrupt` (named
  as an image) or `not_an_image` (named otherwise).
- An existing tag file is read (`--append_existing`) as UTF-8, with or
  without a BOM, or UTF-16 with its BOM (data_builders/files.py), and
  written back in the same encoding. In any other encoding it is left
  untouched and the image fails (`existing_bad_encoding`).
- Writes are atomic: a temporary file in the same folder, fsync, then a
  rename over the tag file, so a killed run leaves the old file or the new
  one. A replaced file keeps its permission bits.

Each skipped or failed file is reported on stderr with its reason, and the
last line counts the tagged, skipped (by reason) and failed images. The
exit status is 1 when a tag file could not be written, or when no image
could be tagged at all (none was found, or every one was unusable);
images skipped for their existing tag file or a shared stem are no
failure. A bad flag value exits with 2.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import glob
import io
import json
import os
import re
import secrets
import stat
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from PIL import UnidentifiedImageError

from data_builders import files as files_lib
from jaxtag.serving import backends
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import images as images_lib
from jaxtag.serving import tagger as tagger_lib

PROG = 'python -m jaxtag.tag'
FORMATS = ('txt', 'json', 'jsonl', 'csv')
# A tag with no two letters in a row is a face made of symbols (^_^, >_<,
# o_o, 0_0, (o)_(o)); its underscores are part of it.
_WORDS = re.compile(r'[A-Za-z]{2}')

# Skips that are no failure even when nothing was tagged.
_SKIPS_BY_CHOICE = frozenset({'caption_exists', 'same_stem'})


@dataclasses.dataclass
class Options:
  """What the command's flags set; library callers fill it directly."""
  paths: Sequence[str] = ()
  bundle: str = ''
  recursive: bool = False
  format: str = 'txt'
  output: str | None = None
  batch_size: int = 32
  policy: str = 'run'
  threshold: float | None = None
  general_threshold: float | None = None
  character_threshold: float | None = None
  all_scores: bool = False
  caption_extension: str = '.txt'
  replace_underscores: bool = False
  escape_parentheses: bool = False
  exclude: str = ''
  prepend: str = ''
  append_existing: bool = False
  character_first: bool = False
  overwrite: bool = False
  skip_existing: bool = False
  backend: str = 'auto'
  decode_workers: int = 0
  quiet: bool = False


# ----------------------------------------------------------------- inputs ---


def is_image(path: str) -> bool:
  return path.lower().endswith(images_lib.EXTENSIONS)


def find_files(paths: Sequence[str], recursive: bool) -> tuple[list[str],
                                                                list[tuple]]:
  """(files in order without repeats, [(path, reason)] not found).

  Folders and globs give their images (by extension); files named
  directly are tried whatever their extension."""
  found, missing, seen = [], [], set()

  def add(path):
    key = os.path.abspath(path)
    if key not in seen:
      seen.add(key)
      found.append(path)

  def add_folder(path):
    walk = (os.walk(path) if recursive
            else [next(os.walk(path), (path, [], []))])
    for root, dirs, names in walk:
      dirs.sort()
      for name in sorted(names):
        if is_image(name):
          add(os.path.join(root, name))

  for spec in paths:
    if os.path.lexists(spec):
      if os.path.isdir(spec):
        add_folder(spec)
      else:
        add(spec)   # named directly: tried whatever it is
      continue
    matches = sorted(glob.glob(spec, recursive=True))
    if not matches:
      missing.append((spec, 'no such file, folder or glob match'))
    for path in matches:
      if os.path.isdir(path):
        add_folder(path)
      elif is_image(path):
        add(path)
  return found, missing


def entry_key(path: str) -> str:
  """One name for a folder entry however it is spelled: the real path of
  its folder and its own name (a symlink itself, not its target)."""
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(os.path.realpath(folder), name)


def check_extension(extension: str) -> None:
  """ValueError unless `extension` is a suffix that names no image."""
  if not extension.startswith('.') or len(extension) < 2:
    raise ValueError(f'--caption_extension {extension!r} must start with a '
                     'dot, as in .txt.')
  if '/' in extension or os.sep in extension or '\0' in extension:
    raise ValueError(f'--caption_extension {extension!r} must be a file '
                     'suffix such as .txt, not a path.')
  if is_image(extension):
    raise ValueError(f'--caption_extension {extension!r} is an image '
                     'extension: tag files would be written over images. '
                     'Use .txt, .caption or another suffix.')


def check_options(options: Options) -> None:
  """ValueError, before any work, for a value that cannot be used."""
  if options.format not in FORMATS:
    raise ValueError(f'--format {options.format!r}; valid: '
                     f'{", ".join(FORMATS)}.')
  if options.batch_size < 1:
    raise ValueError(f'--batch_size {options.batch_size} must be at least 1.')
  if options.backend not in backends.BACKENDS:
    raise ValueError(f'--backend {options.backend!r}; valid: '
                     f'{", ".join(backends.BACKENDS)}.')
  if options.skip_existing and (options.overwrite or options.append_existing):
    raise ValueError('--skip_existing keeps what an earlier run wrote; it '
                     'cannot go with --overwrite or --append_existing.')
  if options.format == 'txt':
    check_extension(options.caption_extension)
  if not options.bundle:
    raise ValueError('Give the bundle folder as --bundle.')
  if not options.paths:
    raise ValueError('Give at least one image, folder or glob.')


# ---------------------------------------------------------------- captions ---


def split_tags(text: str) -> list[str]:
  return [t.strip() for t in text.split(',') if t.strip()]


def format_tag(tag: str, *, replace_underscores: bool,
               escape_parentheses: bool) -> str:
  if replace_underscores and _WORDS.search(tag):
    tag = tag.replace('_', ' ')
  if escape_parentheses:
    tag = tag.replace('(', r'\(').replace(')', r'\)')
  return tag


def caption_tags(result: dict, args, existing: str | None = None) -> list[str]:
  """The caption's tags for one result dict, after every txt option."""
  groups = (('character', 'general') if args.character_first
            else ('general', 'character'))
  exclude = set(split_tags(args.exclude or ''))
  tags = [t for g in groups for t in result.get(g, {}) if t not in exclude]
  tags = split_tags(args.prepend or '') + tags
  tags = [format_tag(t, replace_underscores=args.replace_underscores,
                     escape_parentheses=args.escape_parentheses)
          for t in tags if t not in exclude]
  out = split_tags(existing) if existing else []
  for tag in tags:
    if tag not in out and tag not in exclude:
      out.append(tag)
  return out


def caption_path(image_path: str, extension: str) -> str:
  return os.path.splitext(image_path)[0] + extension


def caption_text(task, result: dict, args, existing: str | None) -> str:
  """The tag file's text, as the bundle's `task` writes it: the tags after
  every txt option, or a captioner's sentence after the existing text."""
  return task.text_file(
      result, existing, lambda r, e: ', '.join(caption_tags(r, args, e)))


# -------------------------------------------------------------- tag files ---


class NotWritten(Exception):
  """A tag file that is not written; `reason` is a short key."""

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail


def check_tag_file(target: str, inputs=frozenset()) -> os.stat_result | None:
  """The stat of an existing tag file that may be replaced, None when there
  is none; NotWritten when `target` is one of `inputs` (entry_key names),
  a symlink or not a regular file."""
  if entry_key(target) in inputs:
    raise NotWritten('tag_file_is_input',
                     'it is one of the images being tagged')
  try:
    info = os.lstat(target)
  except FileNotFoundError:
    return None
  except OSError as e:
    raise NotWritten('tag_file_unreadable', e.strerror or str(e)) from e
  if stat.S_ISLNK(info.st_mode):
    raise NotWritten('tag_file_is_symlink',
                     f'a symlink to {os.readlink(target)}; never written '
                     'through')
  if not stat.S_ISREG(info.st_mode):
    raise NotWritten('tag_file_not_regular', files_lib.kind(info.st_mode))
  return info


def write_atomic(path: str, data: bytes, mode: int | None = None) -> None:
  """Writes `path` whole or not at all: a temporary file beside it, fsync,
  then os.replace. `mode` sets the permission bits (default: the umask's).
  On any error the temporary file is removed and `path` is unchanged."""
  folder = os.path.dirname(path) or '.'
  for _ in range(100):
    temporary = os.path.join(
        folder, f'.{os.path.basename(path)}.{secrets.token_hex(4)}.tmp')
    try:
      fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                   | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)
      break
    except FileExistsError:
      continue
  else:
    raise FileExistsError(f'No free temporary name beside {path}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      if mode is not None:
        os.fchmod(f.fileno(), stat.S_IMODE(mode))
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise
  # The rename itself is durable once the folder is synced.
  with contextlib.suppress(OSError):
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
      os.fsync(folder_fd)
    finally:
      os.close(folder_fd)


def write_caption(task, path: str, result: dict, args,
                  target: str | None = None, inputs=frozenset()) -> bool:
  """Writes the tag file of image `path`, as the bundle's `task` (jaxtag/
  tasks/) renders `result` (default target: its stem plus
  args.caption_extension); False when one exists and neither
  args.overwrite nor args.append_existing. NotWritten when it may not be
  written or read; OSError when writing fails."""
  target = target or caption_path(path, args.caption_extension)
  info = check_tag_file(target, inputs)
  existing, encoding = None, 'utf-8'
  if info is not None:
    if args.append_existing:
      try:
        old = files_lib.read(target)
      except files_lib.FileSkipped as e:
        raise NotWritten(f'existing_{e.reason}', e.detail) from None
      existing, encoding = old.text, old.encoding
    elif not args.overwrite:
      return False
  data = files_lib.encode(caption_text(task, result, args, existing),
                          encoding)
  write_atomic(target, data, info.st_mode if info is not None else None)
  return True


# ------------------------------------------------------------------ output ---


def _eta(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return (f'{hours}h{rest // 60:02d}m' if hours
          else f'{rest // 60}m{rest % 60:02d}s')


class Progress:
  """'tagged 32/100 images, 12.5 img/s, ETA 0m05s' on stderr, at most 5
  times a second."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.done, self.enabled = total, 0, enabled
    self.start = self.last = time.perf_counter()

  def __call__(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if self.enabled and (now - self.last > 0.2 or self.done >= self.total):
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      left = (self.total - self.done) / rate if rate > 0 else 0.0
      sys.stderr.write(f'\rtagged {self.done}/{self.total} images, '
                       f'{rate:.1f} img/s, ETA {_eta(left)}  ')
      if self.done >= self.total:
        sys.stderr.write('\n')
      sys.stderr.flush()


def write_records(task, records: list[dict], fmt: str, stream) -> None:
  """json, jsonl or csv (the columns the bundle's `task` names)."""
  if fmt == 'json':
    json.dump(records, stream, indent=1)
    stream.write('\n')
  elif fmt == 'jsonl':
    for record in records:
      stream.write(json.dumps(record) + '\n')
  else:
    writer = csv.writer(stream, lineterminator='\n')
    writer.writerow(task.csv_header())
    writer.writerows(task.csv_row(r) for r in records)


class Summary:
  """What happened to each image, reported on stderr as it happens."""

  def __init__(self, owned=None):
    self.tagged = 0
    self.skipped = collections.Counter()
    self.failed = collections.Counter()
    # Under a multi-process launch, the paths this process reports on.
    self.owned = owned

  def skip(self, path: str, reason: str, detail: str) -> None:
    if self.owned is not None and path not in self.owned:
      return
    self.skipped[reason] += 1
    if reason != 'caption_exists':  # one line for all of them, at the end
      print(f'skipped {path}: {reason} ({detail})', file=sys.stderr)

  def fail(self, path: str, reason: str, detail: str) -> None:
    if self.owned is not None and path not in self.owned:
      return
    self.failed[reason] += 1
    print(f'failed {path}: {reason} ({detail})', file=sys.stderr)

  def line(self) -> str:
    def counts(counter):
      n = sum(counter.values())
      by_reason = ', '.join(f'{r} {k}' for r, k in sorted(counter.items()))
      return f'{n} ({by_reason})' if n else '0'
    return (f'tagged {self.tagged} image(s); skipped '
            f'{counts(self.skipped)}; failed {counts(self.failed)}.')

  def exit_status(self) -> int:
    if self.failed:
      return 1
    if self.tagged:
      return 0
    return 0 if self.skipped and set(self.skipped) <= _SKIPS_BY_CHOICE else 1


# -------------------------------------------------------------------- main ---


# Options that shape tags; a task may ignore them (a captioner does).
TAG_ONLY = ('policy', 'threshold', 'general_threshold', 'character_threshold',
            'all_scores', 'replace_underscores', 'escape_parentheses',
            'exclude', 'prepend', 'character_first')


def _usable(paths, summary: Summary) -> list[str]:
  """The regular files among `paths`; the others skipped, never opened."""
  usable = []
  for path in paths:
    try:
      files_lib.check_regular(path)
      usable.append(path)
    except files_lib.FileSkipped as e:
      summary.skip(path, e.reason, e.detail)
  return usable


def plan_tag_files(images, options: Options, inputs, summary: Summary
                   ) -> list[tuple[str, str]]:
  """(image, tag file) of each image whose tag file is to be written; the
  others skipped (same_stem, caption_exists) or failed, before the model
  runs."""
  by_target = collections.defaultdict(list)
  for path in images:
    target = caption_path(path, options.caption_extension)
    by_target[entry_key(target)].append((path, target))
  first_of = {}
  for group in by_target.values():
    ordered = sorted(group, key=lambda g: (os.path.basename(g[0]), g[0]))
    for path, target in ordered[1:]:
      first_of[path] = (ordered[0][0], target)
  plan = []
  for path in images:
    target = caption_path(path, options.caption_extension)
    if path in first_of:
      winner, _ = first_of[path]
      summary.skip(path, 'same_stem',
                   f'{target} is the tag file of {winner}, which sorts first')
      continue
    try:
      info = check_tag_file(target, inputs)
    except NotWritten as e:
      summary.fail(path, e.reason, f'{target}: {e.detail}')
      continue
    if info is not None and not (options.overwrite or
                                 options.append_existing):
      summary.skip(path, 'caption_exists', target)
      continue
    plan.append((path, target))
  return plan


def _check_output(output: str, inputs) -> None:
  if entry_key(output) in inputs:
    raise ValueError(f'--output {output} is one of the images to tag.')
  try:
    check_tag_file(output)
  except NotWritten as e:
    raise ValueError(f'--output {output}: {e.detail}; name a regular file, '
                     'or leave --output out to write to stdout.') from None


def _decode(path: str):
  """A PIL image of a regular file; (reason, detail) when it cannot be."""
  try:
    data = files_lib.read_bytes(path)
  except files_lib.FileSkipped as e:
    return e.reason, e.detail
  # A file named as an image that does not decode is a broken image.
  reason = 'corrupt' if is_image(path) else 'not_an_image'
  try:
    return images_lib.open_image(io.BytesIO(data))
  except UnidentifiedImageError:
    return reason, 'Pillow cannot identify it'
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises many types for a truncated or broken file.
    return reason, f'{type(e).__name__}: {e}'


def processes() -> tuple[int, int]:
  """(this process's index, the number of processes) of the JAX job."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index(), jax.process_count()


def part_path(output: str, index: int, count: int) -> str:
  """The JSON lines file process `index` of `count` writes its records to
  before process 0 merges them into `output`."""
  return f'{output}.part{index}-of-{count}.jsonl'


def read_part(path: str) -> list[dict]:
  """The whole records of a part file (a line cut by a kill is dropped)."""
  records = []
  try:
    with open(path, encoding='utf-8') as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(record, dict) and 'file' in record:
          records.append(record)
  except FileNotFoundError:
    pass
  return records


def run(options: Options) -> int:
  """Tags every file; returns the exit status (ValueError for bad options,
  before any work)."""
  check_options(options)
  index, count = processes()
  records_format = options.format != 'txt'
  if count > 1 and records_format and not options.output:
    raise ValueError(f'--format {options.format} under a launch of {count} '
                     'processes needs --output FILE: each process writes '
                     'its part beside it and process 0 merges them.')
  # The bundle's task (jaxtag/tasks/) renders tag files and tables.
  task = bundle_lib.read_task(options.bundle)
  found, missing = find_files(options.paths, options.recursive)
  inputs = frozenset(entry_key(p) for p in found)
  if records_format and options.output:
    _check_output(options.output, inputs)
  # Each process takes every count-th file of the sorted list; a file's
  # skips and failures are reported by the process that owns it.
  mine = found[index::count]
  summary = Summary(owned=set(mine) if count > 1 else None)
  if index == 0:
    for spec, reason in missing:
      summary.skip(spec, 'not_found', reason)
  images = _usable(found, summary)
  owned = set(mine)
  targets = {}
  if not records_format:
    plan = plan_tag_files(images, options, inputs, summary)
    images, targets = [p for p, _ in plan if p in owned], dict(plan)
  else:
    images = [p for p in images if p in owned]
  part = None
  if records_format and options.output:
    part = part_path(options.output, index, count)
    done = set()
    if options.skip_existing:
      done = {r['file'] for r in read_part(part)}
    else:
      write_atomic(part, b'')
    for path in images:
      if path in done:
        summary.skip(path, 'already_tagged', part)
    images = [p for p in images if p not in done]
  records = []
  if images:
    records = _tag_all(task, images, targets, options, inputs, summary,
                       part)
  if records_format:
    if count > 1:
      from jax.experimental import multihost_utils  # pylint: disable=C0415
      multihost_utils.sync_global_devices('jaxtag.tag: parts written')
    if index == 0:
      if options.output:
        records = _merge_parts(options.output, count, found)
      text = io.StringIO(newline='')
      write_records(task, records, options.format, text)
      if options.output:
        write_atomic(options.output, text.getvalue().encode('utf-8'))
        for i in range(count):
          with contextlib.suppress(FileNotFoundError):
            os.unlink(part_path(options.output, i, count))
      else:
        sys.stdout.write(text.getvalue())
  if summary.skipped['caption_exists']:
    print(f'{summary.skipped["caption_exists"]} image(s) already have a '
          'tag file; use --overwrite or --append_existing to tag them '
          'again.', file=sys.stderr)
  print(summary.line(), file=sys.stderr)
  return summary.exit_status()


def _merge_parts(output: str, count: int, found) -> list[dict]:
  """Every process's records, in the order of the file list."""
  order = {path: i for i, path in enumerate(found)}
  by_file = {}
  for i in range(count):
    for record in read_part(part_path(output, i, count)):
      by_file[record['file']] = record
  return sorted(by_file.values(),
                key=lambda r: (order.get(r['file'], len(order)), r['file']))


def _load(tagger, path: str):
  """('ok', prepared model input) or ('skip', reason, detail); runs in a
  decoding thread."""
  image = _decode(path)
  if isinstance(image, tuple):
    return ('skip', *image)
  return 'ok', tagger.prepare(image)


def decoded_batches(images, tagger, batch_size: int, workers: int,
                    ahead: int = 2):
  """Yields (paths, loads) batch by batch while threads decode the next
  `ahead` batches: decoding overlaps the model, and at most ahead + 1
  batches of model inputs (and `workers` full-size images) are held."""
  pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
  starts = iter(range(0, len(images), batch_size))
  pending = collections.deque()

  def submit():
    start = next(starts, None)
    if start is not None:
      chunk = images[start:start + batch_size]
      pending.append((chunk, [pool.submit(_load, tagger, p) for p in chunk]))

  try:
    for _ in range(ahead + 1):
      submit()
    while pending:
      chunk, futures = pending.popleft()
      loads = [f.result() for f in futures]
      submit()
      yield chunk, loads
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _tag_all(task, images, targets, options: Options, inputs,
             summary: Summary, part: str | None = None) -> list[dict]:
  tagger = tagger_lib.Tagger(
      options.bundle, batch_size=options.batch_size, policy=options.policy,
      threshold=options.threshold,
      general_threshold=options.general_threshold,
      character_threshold=options.character_threshold,
      all_scores=options.all_scores and options.format in ('json', 'jsonl'))
  tagger.predict = backends.make_predictor(tagger.bundle, options.backend)
  defaults = Options()
  ignored = task.ignored_tag_options(
      [f'--{k}' for k in TAG_ONLY if getattr(options, k) != getattr(defaults, k)])
  if ignored:
    print(f'{options.bundle} is a {task.name} bundle: {", ".join(ignored)} '
          'apply to tags only and are ignored.', file=sys.stderr)
  progress = Progress(len(images), enabled=not options.quiet)
  records = []
  workers = options.decode_workers or min(8, os.cpu_count() or 1)
  sink = None
  if part:
    sink = open(part, 'a+', encoding='utf-8')
    if sink.tell():   # after a line a kill cut short, start a new one
      sink.seek(sink.tell() - 1)
      if sink.read(1) != '\n':
        sink.write('\n')
  try:
    for chunk, loads in decoded_batches(images, tagger, options.batch_size,
                                        workers):
      names, prepared = [], []
      for path, load in zip(chunk, loads):
        if load[0] == 'skip':
          summary.skip(path, *load[1:])
          progress(1)
        else:
          names.append(path)
          prepared.append(load[1])
      if not prepared:
        continue
      results = tagger.results(tagger.scores_of(prepared, progress))
      batch = _write_batch(task, names, results, targets, options, inputs,
                           summary)
      records.extend(batch)
      if sink is not None and batch:
        # One write per batch: a kill leaves whole batches (and at most
        # one cut line, which read_part drops).
        sink.write(''.join(json.dumps(r) + '\n' for r in batch))
        sink.flush()
  finally:
    if sink is not None:
      sink.close()
  return records


def _write_batch(task, names, results, targets, options: Options, inputs,
                 summary: Summary) -> list[dict]:
  """Writes the tag files of one batch (txt); returns its records."""
  records = []
  for path, result in zip(names, results):
    if options.format == 'txt':
      try:
        if not write_caption(task, path, result, options, targets[path],
                             inputs):
          summary.skip(path, 'caption_exists', targets[path])
          continue
      except NotWritten as e:
        summary.fail(path, e.reason, f'{targets[path]}: {e.detail}')
        continue
      except OSError as e:
        summary.fail(path, 'write_error',
                     f'{targets[path]}: {e.strerror or e}')
        continue
    summary.tagged += 1
    records.append({'file': path, **result})
  return records


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, on `flag_values`; defined only when it runs."""
  d = Options()
  fv = {'flag_values': flag_values}
  flags.DEFINE_string('bundle', None,
                      'A bundle folder (from jaxtag.serving.convert).', **fv)
  flags.DEFINE_boolean('recursive', d.recursive,
                       'Also tag images in subfolders of folders.', **fv)
  flags.DEFINE_enum('format', d.format, FORMATS, 'What to write.', **fv)
  flags.DEFINE_string('output', d.output,
                      'json/jsonl/csv file (default: stdout).', **fv)
  flags.DEFINE_integer('batch_size', d.batch_size, 'Images per model call.',
                       lower_bound=1, **fv)
  flags.DEFINE_enum('policy', d.policy, tagger_lib.POLICIES,
                    "The bundle's thresholds to start from.", **fv)
  flags.DEFINE_float('threshold', d.threshold, 'One threshold for every tag.',
                     **fv)
  flags.DEFINE_float('general_threshold', d.general_threshold,
                     'Threshold of general tags.', **fv)
  flags.DEFINE_float('character_threshold', d.character_threshold,
                     'Threshold of character tags.', **fv)
  flags.DEFINE_boolean('all_scores', d.all_scores,
                       "json/jsonl: every tag's score, not only those at or "
                       'above the threshold.', **fv)
  flags.DEFINE_string('caption_extension', d.caption_extension,
                      'Suffix of the tag files (txt); never an image one.',
                      **fv)
  flags.DEFINE_boolean('replace_underscores', d.replace_underscores,
                       'long_hair -> long hair (kaomoji kept).', **fv)
  flags.DEFINE_boolean('escape_parentheses', d.escape_parentheses,
                       r'( -> \( and ) -> \).', **fv)
  flags.DEFINE_string('exclude', d.exclude, 'TAG,TAG,...: left out.', **fv)
  flags.DEFINE_string('prepend', d.prepend, 'TAG,TAG,...: put first.', **fv)
  flags.DEFINE_boolean('append_existing', d.append_existing,
                       'Keep an existing tag file and add the new tags it '
                       'lacks.', **fv)
  flags.DEFINE_boolean('character_first', d.character_first,
                       'Character tags before general tags.', **fv)
  flags.DEFINE_boolean('overwrite', d.overwrite,
                       'Replace existing tag files.', **fv)
  flags.DEFINE_boolean('skip_existing', d.skip_existing,
                       'Resume a killed run: skip images tagged before '
                       '(txt: whose tag file exists, the default anyway; '
                       'json/jsonl/csv: whose record is in the part file '
                       'beside --output).', **fv)
  flags.DEFINE_enum('backend', d.backend, backends.BACKENDS,
                    'auto: onnxruntime on CPU when the bundle exports to '
                    'ONNX, JAX on accelerators.', **fv)
  flags.DEFINE_integer('decode_workers', d.decode_workers,
                       'Threads decoding images ahead of the model '
                       '(0: min(8, CPUs)).', lower_bound=0, **fv)
  flags.DEFINE_boolean('quiet', d.quiet, 'No progress bar.', **fv)


def options_from_flags(flag_values: flags.FlagValues,
                       paths: Sequence[str]) -> Options:
  return Options(paths=list(paths), **{
      f.name: flag_values[f.name].value for f in dataclasses.fields(Options)
      if f.name != 'paths'})


def parse_args(argv: Sequence[str]) -> Options:
  """Options of a command line (without the program name), parsed on
  flags of their own; flags.Error for a bad flag."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  rest = flag_values([PROG, *argv])
  return options_from_flags(flag_values, rest[1:])


def run_checked(options: Options) -> int:
  """run(), with a bad option or path reported as one line and exit 2.
  Joins a multi-process launch first (jaxtag/distributed.py)."""
  from jaxtag import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize()
  try:
    return run(options)
  except (FileNotFoundError, ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
  """The command on an argument list (default: sys.argv[1:])."""
  try:
    options = parse_args(sys.argv[1:] if argv is None else argv)
  except flags.Error as e:
    print(f'Error: {e}', file=sys.stderr)
    return 2
  return run_checked(options)


def _app_main(argv) -> int:
  return run_checked(options_from_flags(flags.FLAGS, argv[1:]))


if __name__ == '__main__':
  define_flags()
  app.run(_app_main)
