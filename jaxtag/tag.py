r"""Tags images with a bundle, the way the WD tagger front ends do.

  python -m jaxtag.tag PATH... --bundle BUNDLE [--recursive] \
      [--format txt|json|jsonl|csv] [--output FILE]

PATH is an image, a folder (its images; `--recursive` for subfolders too)
or a glob ('shots/**/*.png'). Images go through the model in batches, with
a progress bar on stderr.
- txt (default): writes `<image>.txt` beside each image, its general and
  character tags joined by ", ". An existing caption is left alone unless
  `--overwrite` (replace it) or `--append-existing` (keep it and add the new
  tags it lacks). `--replace-underscores` (kaomoji such as ^_^ kept),
  `--escape-parentheses`, `--exclude a,b`, `--prepend a,b` and
  `--character-first` shape the caption.
- json (one list), jsonl (one object a line): per image, its file and the
  scores of its rating, general and character tags, kept apart.
- csv: file, the top rating, the general and the character tags.
  json, jsonl and csv go to `--output` or stdout.

Thresholds: the bundle's (`--policy`), overridden by `--threshold` (every
tag), `--general-threshold` and `--character-threshold`.

A captioner's bundle (converted from a `show_attend_tell` run) writes its
sentence instead: the .txt holds it (after the existing text, on a line of
its own, with `--append-existing`), json/jsonl records are {file, caption},
csv has the columns file, caption. The options that shape tags
(thresholds, `--policy`, `--all-scores`, `--exclude`, `--prepend`,
`--replace-underscores`, `--escape-parentheses`, `--character-first`) do
not apply; given, they are named in one warning and ignored.
Unreadable files are reported on stderr with the reason and skipped. The
exit status is non-zero only when no file could be tagged (none was found,
or every one was unreadable); images skipped for their existing caption
are no failure.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys
import time
from typing import Sequence

from jaxtag.serving import images as images_lib
from jaxtag.serving import tagger as tagger_lib

FORMATS = ('txt', 'json', 'jsonl', 'csv')
# A tag with no two letters in a row is a face made of symbols (^_^, >_<,
# o_o, 0_0, (o)_(o)); its underscores are part of it.
_WORDS = re.compile(r'[A-Za-z]{2}')


# ----------------------------------------------------------------- inputs ---


def is_image(path: str) -> bool:
  return path.lower().endswith(images_lib.EXTENSIONS)


def find_files(paths: Sequence[str], recursive: bool) -> tuple[list[str],
                                                                list[tuple]]:
  """(image files in order without repeats, [(path, reason)] not found).

  Folders give their images (by extension); files named directly are
  tried whatever their extension; globs expand to both."""
  found, missing, seen = [], [], set()

  def add(path):
    key = os.path.abspath(path)
    if key not in seen:
      seen.add(key)
      found.append(path)

  for spec in paths:
    matches = ([spec] if os.path.exists(spec)
               else sorted(glob.glob(spec, recursive=True)))
    if not matches:
      missing.append((spec, 'no such file, folder or glob match'))
    for path in matches:
      if os.path.isdir(path):
        walk = (os.walk(path) if recursive
                else [next(os.walk(path), (path, [], []))])
        for root, dirs, files in walk:
          dirs.sort()
          for name in sorted(files):
            if is_image(name):
              add(os.path.join(root, name))
      else:
        add(path)
  return found, missing


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


# ------------------------------------------------------------------ output ---


class Progress:
  """'tagged 32/100 images, 12.5 img/s' on stderr, at most 5 times a second."""

  def __init__(self, total: int, enabled: bool):
    self.total, self.done, self.enabled = total, 0, enabled
    self.start = self.last = time.perf_counter()

  def __call__(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if self.enabled and (now - self.last > 0.2 or self.done >= self.total):
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      sys.stderr.write(f'\rtagged {self.done}/{self.total} images, '
                       f'{rate:.1f} img/s')
      if self.done >= self.total:
        sys.stderr.write('\n')
      sys.stderr.flush()


def top_rating(result: dict) -> str:
  ratings = result['rating']
  return max(ratings, key=ratings.get) if ratings else ''


def write_records(records: list[dict], fmt: str, stream) -> None:
  if fmt == 'json':
    json.dump(records, stream, indent=1)
    stream.write('\n')
  elif fmt == 'jsonl':
    for record in records:
      stream.write(json.dumps(record) + '\n')
  elif records and 'caption' in records[0]:
    writer = csv.writer(stream, lineterminator='\n')
    writer.writerow(['file', 'caption'])
    for r in records:
      writer.writerow([r['file'], r['caption']])
  else:
    writer = csv.writer(stream, lineterminator='\n')
    writer.writerow(['file', 'rating', 'general', 'character'])
    for r in records:
      writer.writerow([r['file'], top_rating(r), ', '.join(r['general']),
                       ', '.join(r['character'])])


# -------------------------------------------------------------------- main ---


# Options that shape tags: a captioner ignores them.
TAG_ONLY = ('policy', 'threshold', 'general_threshold', 'character_threshold',
            'all_scores', 'replace_underscores', 'escape_parentheses',
            'exclude', 'prepend', 'character_first')


def parse_args(argv=None) -> argparse.Namespace:
  return _parser().parse_args(argv)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m jaxtag.tag',
      description='Tags images with a jaxtag bundle.')
  parser.add_argument('paths', nargs='+', metavar='PATH',
                      help='Images, folders or globs.')
  parser.add_argument('--bundle', required=True,
                      help='A bundle folder (from jaxtag.serving.convert).')
  parser.add_argument('--recursive', action='store_true',
                      help='Also tag images in subfolders of folders.')
  parser.add_argument('--format', default='txt', choices=FORMATS)
  parser.add_argument('--output', default=None,
                      help='json/jsonl/csv file (default: stdout).')
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--policy', default='run', choices=tagger_lib.POLICIES,
                      help="The bundle's thresholds to start from.")
  parser.add_argument('--threshold', type=float, default=None,
                      help='One threshold for every tag.')
  parser.add_argument('--general-threshold', type=float, default=None)
  parser.add_argument('--character-threshold', type=float, default=None)
  parser.add_argument('--all-scores', action='store_true',
                      help='json/jsonl: every tag\'s score, not only those '
                      'at or above the threshold.')
  caption = parser.add_argument_group('txt captions')
  caption.add_argument('--caption-extension', default='.txt')
  caption.add_argument('--replace-underscores', action='store_true')
  caption.add_argument('--escape-parentheses', action='store_true')
  caption.add_argument('--exclude', default='', help='TAG,TAG,...')
  caption.add_argument('--prepend', default='', help='TAG,TAG,...')
  caption.add_argument('--append-existing', action='store_true')
  caption.add_argument('--character-first', action='store_true')
  caption.add_argument('--overwrite', action='store_true')
  parser.add_argument('--quiet', action='store_true', help='No progress bar.')
  return parser


def run(args) -> int:
  """Tags every file; returns the exit status."""
  files, failed = find_files(args.paths, args.recursive)
  skipped = 0
  if args.format == 'txt' and not (args.overwrite or args.append_existing):
    # (A file that is its own caption path is no image: it fails below.)
    todo = [f for f in files
            if caption_path(f, args.caption_extension) == f
            or not os.path.exists(caption_path(f, args.caption_extension))]
    skipped = len(files) - len(todo)
    if skipped:
      print(f'{skipped} image(s) already have a caption; use --overwrite or '
            '--append-existing to tag them again.', file=sys.stderr)
    files = todo
  tagger = tagger_lib.Tagger(
      args.bundle, batch_size=args.batch_size, policy=args.policy,
      threshold=args.threshold, general_threshold=args.general_threshold,
      character_threshold=args.character_threshold,
      all_scores=args.all_scores and args.format in ('json', 'jsonl'))
  if tagger.task == 'captioning':
    defaults = _parser()
    ignored = [f'--{k.replace("_", "-")}' for k in TAG_ONLY
               if getattr(args, k) != defaults.get_default(k)]
    if ignored:
      print(f'{args.bundle} is a captioner: {", ".join(ignored)} apply to '
            'tags only and are ignored.', file=sys.stderr)
  progress = Progress(len(files), enabled=not args.quiet)
  records = []
  for start in range(0, len(files), args.batch_size):
    images, names = [], []
    for path in files[start:start + args.batch_size]:
      try:
        images.append(images_lib.open_image(path))
        names.append(path)
      except Exception as e:  # pylint: disable=broad-except
        # Pillow raises many types for unreadable or non-image files.
        failed.append((path, f'{type(e).__name__}: {e}'))
        progress(1)
    if not images:
      continue
    for path, result in zip(names, tagger.tag(images, progress)):
      if args.format == 'txt':
        write_caption(path, result, args)
      records.append({'file': path, **result})
  if args.format != 'txt':
    if args.output:
      with open(args.output, 'w', encoding='utf-8', newline='') as f:
        write_records(records, args.format, f)
    else:
      write_records(records, args.format, sys.stdout)
  for path, reason in failed:
    print(f'skipped {path}: {reason}', file=sys.stderr)
  print(f'tagged {len(records)} image(s), {len(failed)} unreadable, '
        f'{skipped} already captioned.', file=sys.stderr)
  return 1 if not records and (failed or not skipped) else 0


def write_caption(path: str, result: dict, args) -> None:
  """The .txt caption: the tags, or a captioner's sentence (after the
  existing text, on its own line, with --append-existing)."""
  target = caption_path(path, args.caption_extension)
  existing = None
  if args.append_existing and os.path.exists(target):
    with open(target, encoding='utf-8') as f:
      existing = f.read()
  if 'caption' in result:
    text = result['caption']
    if existing and existing.strip():
      text = existing.rstrip('\n') + '\n' + text
  else:
    text = ', '.join(caption_tags(result, args, existing))
  with open(target, 'w', encoding='utf-8') as f:
    f.write(text)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f'Error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
