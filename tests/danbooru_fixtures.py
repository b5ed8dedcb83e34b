"""Danbooru as people hold it, made at test time: tar shards, parquet and
SQLite metadata, and TFRecord files in the WD tagger layout.

The posts are tar_posts(): builder_fixtures.danbooru_posts() (40 plain
JPEGs and one post of each awkward kind) and a WebP and an animated GIF
post; what each writer adds on top is listed in its docstring, with the
counts a build must report.
"""
from __future__ import annotations

import io
import json
import pathlib
import sqlite3
import struct
import tarfile

import builder_fixtures as fx
import numpy as np

# --- tar shards ---------------------------------------------------------------

# Two plain posts whose members a fault takes away: one behind a header with
# a broken checksum, one cut off by the end of a truncated shard.
BAD_HEADER_POST = 1000 + 7 * 48
CUT_OFF_POST = 1000 + 7 * 49
NOT_IN_METADATA = 99_991


def tar_posts() -> list[dict]:
  """builder_fixtures.danbooru_posts() and a WebP and a GIF post."""
  posts = fx.danbooru_posts()
  for i, (kind, ext) in enumerate((('webp', 'webp'), ('gif', 'gif'))):
    posts.append({'id': 2000 + 7 * i, 'rating': 'gs'[i],
                  'tags': [(0, '1girl'), (0, 'smile'), (4, 'hatsune_miku')],
                  'kind': kind, 'ext': ext, 'color': (40, 90 + 60 * i, 200)})
  return posts


# What a build of write_tar_dump(tar_posts()) reports.
TAR_SKIPS = {'not_image': 2, 'bad_member_name': 1, 'not_in_metadata': 2,
             'duplicate_member': 1, 'bad_header': 1, 'truncated': 1}
METADATA_SKIPS = {'no_id': 1, 'deleted': 1, 'banned': 1, 'duplicate_id': 1,
                  'not_image': 1, 'missing_file': 3}
DECODE_SKIPS = {'corrupt': 1, 'truncated': 1}
# 52 posts less no_id, deleted, banned, mp4, missing, the two posts whose
# members are lost, and the corrupt and truncated images.
TAR_EXAMPLES = 52 - 9


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w', format=tarfile.GNU_FORMAT) as t:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      info.mtime = 0
      t.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def _header_offset(tar: bytes, name: str) -> int:
  with tarfile.open(fileobj=io.BytesIO(tar), mode='r:') as t:
    return next(m.offset for m in t.getmembers() if m.name == name)


def post_member(post) -> tuple[str, bytes] | None:
  """<id>.<ext> and the bytes of a post's file; None when it has none."""
  if post['kind'] in ('missing', 'no_id'):
    return None
  if post['kind'] == 'webp':
    data = fx.encoded(fx.solid(post['color'], (18, 10)), 'WEBP', quality=90)
  elif post['kind'] == 'gif':
    data = fx.animated_gif((post['color'], (0, 0, 0)), size=(9, 9))
  else:
    data = fx._danbooru_image(post)  # pylint: disable=protected-access
  return f'{post["id"]}.{post["ext"]}', data


def write_tar_shards(root, posts) -> None:
  """original/data-000{0,1,2}.tar with members <id>.<ext>.

  Besides the posts' files (deleted and banned posts' too; no file for the
  `missing` post): readme.txt (not_image, as is the mp4), cover.jpg
  (bad_member_name), 99991.jpg and 99992.png (not_in_metadata), a second
  copy of the first post's file in data-0001 (duplicate_member);
  BAD_HEADER_POST's header has a broken checksum (bad_header), and
  data-0002 ends inside CUT_OFF_POST's file (truncated).
  """
  root = pathlib.Path(root)
  (root / 'original').mkdir(parents=True, exist_ok=True)
  members = [m for m in map(post_member, posts) if m]
  by_name = dict(members)
  cut = f'{CUT_OFF_POST}.jpg'
  bad = f'{BAD_HEADER_POST}.jpg'
  rest = [m for m in members if m[0] not in (cut, bad)]
  first = rest[0]
  shard0 = rest[0::2] + [(bad, by_name[bad]), ('readme.txt', b'hello\n'),
                         ('cover.jpg', fx.jpeg())]
  shard1 = rest[1::2] + [first, (f'{NOT_IN_METADATA}.jpg', fx.jpeg())]
  tar0 = bytearray(_tar_bytes(shard0))
  header = _header_offset(bytes(tar0), bad)
  tar0[header + 148:header + 156] = b'9999999\x00'   # the header checksum
  (root / 'original' / 'data-0000.tar').write_bytes(bytes(tar0))
  (root / 'original' / 'data-0001.tar').write_bytes(_tar_bytes(shard1))
  # A shard cut short: the good member before the cut is kept.
  tar2 = _tar_bytes([(f'{NOT_IN_METADATA + 1}.png', fx.png()),
                     (cut, by_name[cut] * 40)])
  end = _header_offset(tar2, cut) + 512 + 100
  (root / 'original' / 'data-0002.tar').write_bytes(tar2[:end])


# --- metadata -----------------------------------------------------------------

# Danbooru's ids of the fixture's tags, as its tags table gives them;
# kagamine_rin is missing from that table (its tag_id is then -1).
TAG_IDS = {'1girl': 470575, 'solo': 212816, 'long_hair': 15080,
           'smile': 1386, 'open_mouth': 1338, '^_^': 402217, '>_<': 3389,
           'hatsune_miku': 14620, 'saber_(fate)': 402, 'vocaloid': 1403,
           'some_artist': 99001, 'highres': 12}


def tag_rows() -> list[dict]:
  """Danbooru's tags table: id, name, category, post_count."""
  return [{'id': TAG_IDS[n], 'name': n, 'category': c, 'post_count': 5}
          for c, n in fx.DANBOORU_TAGS if n in TAG_IDS]


def metadata_rows(posts) -> list[dict]:
  """2021+ rows with Danbooru's columns; the first post's row is repeated
  (duplicate_id) and the no_id post's row has a null id."""
  rows = []
  for post in posts:
    row = {'id': None if post['kind'] == 'no_id' else post['id'],
           'rating': post['rating'], 'file_ext': post['ext'],
           'is_deleted': post['kind'] == 'deleted',
           'is_banned': post['kind'] == 'banned', 'score': 3}
    for category, field in fx._DANBOORU_FIELDS.items():  # pylint: disable=protected-access
      row[field] = ' '.join(n for c, n in post['tags'] if c == category)
    rows.append(row)
  rows.insert(5, {**rows[0], 'rating': 'g', 'tag_string_general': 'solo'})
  return rows


def write_parquet(path, rows) -> None:
  import pyarrow
  import pyarrow.parquet
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), str(path))


def write_sqlite(path, rows, table: str = 'posts', tags=()) -> None:
  """A posts table as Danbooru's columns (flags as 0/1) beside an unrelated
  table that the reader must not take for the posts, and a `tags` table of
  `tags` rows when given."""
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  with sqlite3.connect(path) as db:
    db.execute('CREATE TABLE aaa_notes (id INTEGER, text TEXT)')
    for name, table_rows in ((table, rows), ('tags', tags)):
      if not table_rows:
        continue
      columns = list(table_rows[0])
      db.execute(f'CREATE TABLE {name} ({", ".join(columns)})')
      db.executemany(
          f'INSERT INTO {name} VALUES ({", ".join("?" * len(columns))})',
          [[int(v) if isinstance(v, bool) else v for v in r.values()]
           for r in table_rows])
  # sqlite3's context manager commits but does not close.
  sqlite3.connect(path).close()


def write_tar_dump(root, posts, metadata: str = 'parquet') -> None:
  """The downloaded layout: original/*.tar and metadata/ as `metadata`
  (parquet, sqlite or jsonl), with Danbooru's tags table (tag_rows()) as
  tags.parquet, a `tags` table in the SQLite file, or tags.jsonl."""
  root = pathlib.Path(root)
  write_tar_shards(root, posts)
  rows = metadata_rows(posts)
  if metadata == 'parquet':
    # Two files, as a dump split in parts is.
    write_parquet(root / 'metadata' / 'posts-0000.parquet', rows[:20])
    write_parquet(root / 'metadata' / 'posts-0001.parquet', rows[20:])
    write_parquet(root / 'metadata' / 'tags.parquet', tag_rows())
  elif metadata == 'sqlite':
    write_sqlite(root / 'metadata' / 'danbooru.sqlite', rows,
                 tags=tag_rows())
  else:
    (root / 'metadata').mkdir(parents=True, exist_ok=True)
    (root / 'metadata' / 'posts.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in rows))
    (root / 'metadata' / 'tags.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in tag_rows()))


# --- TFRecord, WD layout ------------------------------------------------------

def crc32c_bitwise(data: bytes) -> int:
  """CRC-32C, one bit at a time (reflected polynomial 0x82F63B78): an
  implementation independent of the one under test."""
  crc = 0xffffffff
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xffffffff


def masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xffffffff) + 0xa282ead8) & 0xffffffff


def tfrecord_frame(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked(crc32c_bitwise(length))) + data +
          struct.pack('<I', masked(crc32c_bitwise(data))))


def wd_example(image_id: int, image: bytes, labels) -> bytes:
  """A tf.train.Example in the WD layout, written field by field with the
  protobuf wire format (no protobuf library)."""
  def varint(n):
    out = bytearray()
    while True:
      out.append((n & 0x7f) | (0x80 if n > 0x7f else 0))
      n >>= 7
      if not n:
        return bytes(out)

  def field(number, payload):  # length-delimited
    return varint(number << 3 | 2) + varint(len(payload)) + payload

  def int64_list(values):
    packed = b''.join(varint(v) for v in values)
    return field(3, field(1, packed))       # Feature.int64_list.value

  def bytes_list(value):
    return field(1, field(1, value))         # Feature.bytes_list.value

  def entry(key, feature):                   # map<string, Feature> entry
    return field(1, field(1, key.encode()) + field(2, feature))

  features = (entry('image_id', int64_list([image_id])) +
              entry('image_bytes', bytes_list(image)) +
              entry('label_indexes', int64_list(labels)))
  return field(1, features)                  # Example.features


WD_VOCABULARY = [(9999999, 'general', 9), (9999998, 'sensitive', 9),
                 (9999997, 'questionable', 9), (9999996, 'explicit', 9),
                 (470575, '1girl', 0), (212816, 'solo', 0),
                 (16867, 'long_hair', 0), (5, 'smile', 0),
                 (6, 'open_mouth', 0), (1, 'hatsune_miku', 4),
                 (2, 'kagamine_rin', 4)]
# What a build of write_wd_records(...) reports.
WD_SKIPS = {'corrupt': 2, 'truncated': 1, 'bad_framing': 1,
            'duplicate_id': 1}
WD_DECODE_SKIPS = {'corrupt': 1}


def wd_records(seed: int = 0) -> list[dict]:
  """24 records: image_id, labels (a rating, then general and character
  rows of WD_VOCABULARY), split."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(24):
    labels = [int(i % 4)] + sorted(int(v) for v in rng.choice(
        np.arange(4, len(WD_VOCABULARY)), rng.integers(1, 6), replace=False))
    out.append({'id': 5000 + 13 * i, 'labels': labels,
                'split': 'validation' if i % 6 == 5 else 'train',
                'color': tuple(int(v) for v in rng.integers(0, 256, 3))})
  return out


def write_wd_records(root, records) -> None:
  """record_shards_train/ and record_shards_val/ with selected_tags.csv.

  Each split's records go to part-0.tfrecord; the train file also holds
  a record whose data CRC is wrong and a record of bytes that are no
  Example (corrupt, 2), a record whose image is a corrupt JPEG (decode:
  corrupt), the first record again (duplicate_id), and ends inside one
  more record (truncated). part-1.tfrecord of train has a bad length CRC
  at its start: its two records are lost (bad_framing, counted once).
  """
  root = pathlib.Path(root)
  files = {'train': [], 'validation': []}
  for r in records:
    image = fx.jpeg(r['color'], size=(16, 12))
    files[r['split']].append(tfrecord_frame(
        wd_example(r['id'], image, r['labels'])))
  train = files['train']
  good = train[0]
  bad_crc = bytearray(tfrecord_frame(wd_example(7777, fx.jpeg(), [0, 4])))
  bad_crc[20] ^= 0xff                          # inside the data
  train.insert(2, bytes(bad_crc))
  train.insert(4, tfrecord_frame(b'\x0a\x03not an example'))
  train.append(tfrecord_frame(wd_example(8888, fx.corrupt_jpeg(), [1, 5])))
  train.append(good)                            # the same image_id again
  last = tfrecord_frame(wd_example(9999, fx.jpeg(), [2, 6]))
  train.append(last[:len(last) - 30])
  for split, folder in (('train', 'record_shards_train'),
                        ('validation', 'record_shards_val')):
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / 'part-0.tfrecord').write_bytes(b''.join(files[split]))
  lost = [tfrecord_frame(wd_example(6000 + i, fx.jpeg(), [0, 4]))
          for i in range(2)]
  broken = bytearray(b''.join(lost))
  broken[9] ^= 0x01                            # the length CRC
  (root / 'record_shards_train' / 'part-1.tfrecord').write_bytes(
      bytes(broken))
  (root / 'selected_tags.csv').write_text(
      'tag_id,name,category,count\n' + ''.join(
          f'{t},{n},{c},100\n' for t, n, c in WD_VOCABULARY))
