"""Danbooru post metadata as rows (dicts keyed by Danbooru's column names).

Three sources, told apart by their files:
- JSON Lines (`*.json`, `*.jsonl`): the gwern dumps; a line that does not
  parse is counted as `bad_json`;
- parquet (`*.parquet`): read in column batches with pyarrow, only the
  columns a Post uses;
- SQLite (`*.db`, `*.sqlite`, `*.sqlite3`): the table whose columns hold
  `id` and `tag_string_general` (or the one named by `table`).

`metadata_sources(path)` lists a folder's post files and tag files (rows
`id, name, category`: Danbooru's tag ids), or takes one file as the posts.
`tag_ids` reads those ids from the tag files (JSON Lines, parquet, or a
SQLite table with `id` and `name` columns) and from a `tags` table inside
the SQLite post files.
"""
from __future__ import annotations

import codecs
import json
import pathlib
import sqlite3
from collections.abc import Iterator, Sequence

from etils import epath

from data_builders import files
from data_builders import images

# The columns a Post reads; other columns of a parquet file are not loaded.
POST_COLUMNS = ('id', 'rating', 'file_ext', 'is_deleted', 'is_banned',
                'tag_string_general', 'tag_string_character',
                'tag_string_copyright', 'tag_string_artist',
                'tag_string_meta', 'tags')
JSON_SUFFIXES = ('.json', '.jsonl')
PARQUET_SUFFIXES = ('.parquet',)
SQLITE_SUFFIXES = ('.db', '.sqlite', '.sqlite3')
_SUFFIXES = JSON_SUFFIXES + PARQUET_SUFFIXES + SQLITE_SUFFIXES
_BATCH_ROWS = 65536


def metadata_sources(path: epath.Path) -> tuple[list, list]:
  """(post files, tag files) of a metadata folder, or ([path], []).

  In a folder, files named tags* hold tag rows; of the rest, the parquet
  files when there are any, else the SQLite files, else the JSON Lines
  files (posts* ones alone when a 2021+ dump has them).
  """
  if path.is_file():
    return [path], []
  files = sorted(p for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in _SUFFIXES)
  tag_files = [p for p in files if p.name.startswith('tags')]
  rest = [p for p in files if p not in tag_files]
  for suffixes in (PARQUET_SUFFIXES, SQLITE_SUFFIXES):
    chosen = [p for p in rest if p.suffix.lower() in suffixes]
    if chosen:
      return chosen, tag_files
  json_files = [p for p in rest if p.suffix.lower() in JSON_SUFFIXES]
  return [p for p in json_files if p.name.startswith('posts')] or (
      json_files), tag_files


def read_rows(paths: Sequence[epath.Path], counter: images.SkipCounter,
              table: str = '') -> Iterator[dict]:
  """Every row of every file, in file order."""
  for path in paths:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
      yield from _parquet_rows(path)
    elif suffix in SQLITE_SUFFIXES:
      yield from _sqlite_rows(path, table)
    else:
      yield from _json_rows(path, counter)


def _json_rows(path: epath.Path, counter: images.SkipCounter):
  """The JSON objects of a JSON-lines file, a line at a time (a dump is
  gigabytes): UTF-8, a BOM dropped; a line that is not UTF-8 is counted as
  bad_encoding, a file that cannot be read by files.FileSkipped's reasons."""
  try:
    f = files.open_binary(path)
  except files.FileSkipped as e:
    counter.skip(e.reason, path.name, e.detail)
    return
  with f:
    for number, data in enumerate(f, start=1):
      if number == 1:
        data = data.removeprefix(codecs.BOM_UTF8)
      try:
        line = data.decode('utf-8').strip()
      except UnicodeDecodeError:
        counter.skip(files.BAD_ENCODING, f'{path.name}:{number}')
        continue
      if not line:
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        counter.skip('bad_json', f'{path.name}:{number}')
        continue
      if isinstance(row, dict):
        yield row
      else:
        counter.skip('bad_json', f'{path.name}:{number}')


def _pyarrow_parquet():
  try:
    import pyarrow.parquet  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('Reading parquet metadata needs pyarrow: pip install '
                      '"jaxtag[danbooru]".') from None
  return pyarrow.parquet


def _parquet_rows(path: epath.Path, columns=POST_COLUMNS):
  parquet = _pyarrow_parquet()
  with path.open('rb') as f:
    reader = parquet.ParquetFile(f)
    present = [c for c in columns if c in reader.schema_arrow.names]
    if 'id' not in present:
      raise ValueError(f'{path}: no `id` column (columns: '
                       f'{", ".join(reader.schema_arrow.names)}); Danbooru '
                       'metadata needs Danbooru\'s column names.')
    for batch in reader.iter_batches(batch_size=_BATCH_ROWS,
                                     columns=present):
      yield from batch.to_pylist()


def _sqlite_table(connection: sqlite3.Connection, path, table: str) -> str:
  tables = [r[0] for r in connection.execute(
      "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
      'ORDER BY name')]
  if table:
    if table not in tables:
      raise ValueError(f'{path}: no table {table!r} (option '
                       f'`metadata_table`); tables: {", ".join(tables)}.')
    return table
  for name in tables:
    columns = {r[1] for r in connection.execute(
        f'PRAGMA table_info("{name}")')}
    if {'id', 'tag_string_general'} <= columns:
      return name
  raise ValueError(f'{path}: no table has the columns id and '
                   'tag_string_general (tables: '
                   f'{", ".join(tables) or "none"}); name the posts table '
                   'with the option `metadata_table`.')


def _sqlite_rows(path: epath.Path, table: str, columns=POST_COLUMNS):
  # Read-only, so that the user's database is never changed or locked for
  # writing.
  uri = pathlib.Path(path).absolute().as_uri() + '?mode=ro'
  connection = sqlite3.connect(uri, uri=True)
  try:
    table = _sqlite_table(connection, path, table)
    present = [r[1] for r in connection.execute(
        f'PRAGMA table_info("{table}")') if r[1] in columns]
    if 'id' not in present:
      raise ValueError(f'{path}: table {table!r} has no `id` column.')
    cursor = connection.execute(
        f'SELECT {", ".join(chr(34) + c + chr(34) for c in present)} '
        f'FROM "{table}"')
    while rows := cursor.fetchmany(_BATCH_ROWS):
      for row in rows:
        yield dict(zip(present, row))
  finally:
    connection.close()


def _sqlite_tags_table(connection: sqlite3.Connection) -> str | None:
  """The table of tag rows: `tags` if it has `id` and `name` columns, else
  the first (by name) that has them; None when no table does."""
  tables = [r[0] for r in connection.execute(
      "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
      'ORDER BY name')]
  with_columns = [
      name for name in tables if {'id', 'name'} <= {
          r[1] for r in connection.execute(f'PRAGMA table_info("{name}")')}]
  if 'tags' in with_columns:
    return 'tags'
  return with_columns[0] if with_columns else None


def _sqlite_tag_rows(path: epath.Path, required: bool):
  """(id, name) rows of a SQLite file's tag table; a tags* file without
  one is an error, a posts file without one has no ids."""
  uri = pathlib.Path(path).absolute().as_uri() + '?mode=ro'
  connection = sqlite3.connect(uri, uri=True)
  try:
    table = _sqlite_tags_table(connection)
    if table is None:
      if required:
        raise ValueError(f'{path}: no table has the columns id and name; a '
                         'tags file holds Danbooru\'s tags table (id, '
                         'name, category). Rename the file if it holds '
                         'no tags.')
      return
    cursor = connection.execute(f'SELECT "id", "name" FROM "{table}"')
    while rows := cursor.fetchmany(_BATCH_ROWS):
      for number, name in rows:
        yield {'id': number, 'name': name}
  finally:
    connection.close()


def tag_ids(tag_files: Sequence[epath.Path],
            post_files: Sequence[epath.Path] = ()) -> dict[str, int]:
  """Danbooru tag ids by name, from the tags* files (JSON Lines, parquet or
  SQLite) and the tag tables of SQLite post files; a tag named twice keeps
  its first id. Rows without a whole id or a name are passed over."""
  sources = [(p, True) for p in tag_files] + [
      (p, False) for p in post_files
      if p.suffix.lower() in SQLITE_SUFFIXES]
  ids = {}
  for path, required in sources:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
      rows = _parquet_rows(path, columns=('id', 'name'))
    elif suffix in SQLITE_SUFFIXES:
      rows = _sqlite_tag_rows(path, required)
    else:
      rows = _json_rows(path, images.SkipCounter('tags'))
    for row in rows:
      try:
        name, number = row['name'], int(str(row['id']))
      except (KeyError, TypeError, ValueError):
        continue
      if name is not None and number >= 0:
        ids.setdefault(str(name), number)
  return ids
