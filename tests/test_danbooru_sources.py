"""The danbooru builder on the layouts people download: tar shards read in
place, parquet and SQLite metadata, TFRecord files in the WD layout; and the
WD v3 selection options. Fixtures: danbooru_fixtures.py."""
import collections
import io
import json
import os
import tarfile

import builder_fixtures as fx
import danbooru_fixtures as dfx
import numpy as np
import pytest
from PIL import Image

from data_builders import images
from data_builders import splits
from data_builders.danbooru import danbooru
from data_builders.danbooru import metadata
from data_builders.danbooru import tar_index
from data_builders.danbooru import tfrecord
from jaxtag.data import tag_metadata

RATING_NAMES = {'g': 'general', 's': 'sensitive', 'q': 'questionable',
                'e': 'explicit'}


@pytest.fixture(scope='module', autouse=True)
def index_cache(tmp_path_factory):
  """Indexes go to a fresh cache folder, never the user's."""
  with pytest.MonkeyPatch.context() as patch:
    folder = tmp_path_factory.mktemp('cache')
    patch.setenv('JAXTAG_CACHE', str(folder))
    yield folder


def _build(manual_dir, data_dir, **options):
  from jaxtag.data import build
  build.ensure_built(build.get_builder('danbooru', str(data_dir), options),
                     str(manual_dir))
  return build.get_builder('danbooru', str(data_dir), options)


def _report(builder):
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    return json.load(f)


def _examples(builder):
  """{id: (tag names, image bytes, split)} of every split."""
  import tensorflow_datasets as tfds
  names = tag_metadata.load_tag_metadata(builder.data_dir).names
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(
        split, decoders={'image': tfds.decode.SkipDecoding()})
    for i in range(len(source)):
      e = source[i]
      out[int(e['id'])] = ({names[t] for t in e['tags']}, bytes(e['image']),
                           split)
  return out


def _csv(builder):
  with open(os.path.join(builder.data_dir, 'selected_tags.csv')) as f:
    return f.read()


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


def _expected_labels(posts, train_ids):
  """Name sets by post id: the rating, and every general/character tag that
  some train post has (the default top-K keeps them all)."""
  vocabulary = {n for p in posts if p['id'] in train_ids
                for c, n in p['tags'] if c in (0, 4)}
  return {p['id']: {f'rating:{RATING_NAMES[p["rating"]]}'} |
          ({n for c, n in p['tags'] if c in (0, 4)} & vocabulary)
          for p in posts}


# --- the readers --------------------------------------------------------------

def test_crc32c_matches_the_standard_check_value():
  # The CRC-32C check value (RFC 3720, B.4) of the ASCII digits 1..9.
  assert tfrecord.crc32c(b'123456789') == 0xE3069283
  assert dfx.crc32c_bitwise(b'123456789') == 0xE3069283
  # Masked by hand: 0xE3069283 >> 15 = 0x0001C60D; its low 15 bits 0x1283
  # << 17 = 0x25060000; rotated 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5.
  assert tfrecord.masked_crc32c(b'123456789') == 0xC78AB0E5
  data = bytes(range(256)) * 3
  assert tfrecord.masked_crc32c(data) == dfx.masked(dfx.crc32c_bitwise(data))


def test_tar_index_finds_members_in_place_and_counts_faults(tmp_path):
  posts = dfx.tar_posts()
  dfx.write_tar_shards(tmp_path, posts)
  files = {name: data for name, data in filter(None, map(dfx.post_member,
                                                          posts))}
  found, faults = {}, collections.Counter()
  for n in range(3):
    index = tar_index.scan(tmp_path / 'original' / f'data-000{n}.tar')
    faults.update(index.faults)
    for name, offset, size in index.members:
      found.setdefault(name, index.member(offset, size).read_bytes())
  assert faults == {'bad_header': 1, 'truncated': 1}
  lost = {f'{dfx.BAD_HEADER_POST}.jpg', f'{dfx.CUT_OFF_POST}.jpg'}
  assert set(files) - set(found) == lost
  for name in set(files) - lost:
    assert found[name] == files[name], name
  assert {'readme.txt', 'cover.jpg', '99991.jpg', '99992.png'} <= set(found)


def test_tar_index_is_cached_until_the_shard_changes(tmp_path, monkeypatch):
  shard = tmp_path / 'a.tar'
  with tarfile.open(shard, 'w') as t:
    for name in ('1.jpg', '2.jpg'):
      info = tarfile.TarInfo(name)
      info.size = 3
      t.addfile(info, io.BytesIO(b'abc'))
  first = tar_index.load(shard)
  cached = list(tar_index.index_cache.cache_dir().glob('tar_index/a.tar.*'))
  assert len(cached) == 1 and first.members == [('1.jpg', 512, 3),
                                                ('2.jpg', 1536, 3)]

  def no_scan(path):
    raise AssertionError(f'{path} scanned again')
  with monkeypatch.context() as patch:
    patch.setattr(tar_index, 'scan', no_scan)
    assert tar_index.load(shard).members == first.members
  stat = os.stat(shard)
  os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  scanned = []
  real_scan = tar_index.scan
  monkeypatch.setattr(tar_index, 'scan',
                      lambda p: scanned.append(p) or real_scan(p))
  assert tar_index.load(shard).members == first.members and scanned


def test_tfrecord_reader_checks_both_crcs(tmp_path):
  dfx.write_wd_records(tmp_path, dfx.wd_records())
  seen, faults = [], collections.Counter()
  for path in sorted((tmp_path / 'record_shards_train').iterdir()):
    index = tfrecord.scan(path)
    faults.update(index.faults)
    seen += index.ids.tolist()
  assert faults == {'corrupt': 2, 'truncated': 1, 'bad_framing': 1}
  train = [r['id'] for r in dfx.wd_records() if r['split'] == 'train']
  assert seen == train + [8888, train[0]]
  index = tfrecord.scan(tmp_path / 'record_shards_train' / 'part-0.tfrecord')
  record = dfx.wd_records()[0]
  assert index.labels_of(0) == record['labels']
  assert index.image(0).read_bytes() == fx.jpeg(record['color'], (16, 12))


def test_tfrecord_index_is_cached_until_the_file_changes(tmp_path,
                                                        monkeypatch):
  dfx.write_wd_records(tmp_path, dfx.wd_records())
  path = tmp_path / 'record_shards_train' / 'part-0.tfrecord'
  first = tfrecord.load(path)

  def no_scan(p):
    raise AssertionError(f'{p} scanned again')
  with monkeypatch.context() as patch:
    patch.setattr(tfrecord, 'scan', no_scan)
    cached = tfrecord.load(path)
  for field in ('offsets', 'lengths', 'ids', 'label_starts', 'labels'):
    np.testing.assert_array_equal(getattr(cached, field),
                                  getattr(first, field))
  assert cached.faults == first.faults == {'corrupt': 2, 'truncated': 1}
  path.write_bytes(path.read_bytes()[:100])   # a shorter file: scanned again
  assert len(tfrecord.load(path)) == 0


def test_sqlite_reader_finds_the_posts_table_or_names_the_tables(tmp_path):
  rows = dfx.metadata_rows(dfx.tar_posts()[:3])
  dfx.write_sqlite(tmp_path / 'm.db', rows, table='zz_posts')
  got = list(metadata.read_rows([tmp_path / 'm.db'],
                                images.SkipCounter()))
  assert [r['id'] for r in got] == [r['id'] for r in rows]
  assert got[0]['is_deleted'] == 0 and 'score' not in got[0]
  with pytest.raises(ValueError, match='aaa_notes, zz_posts'):
    list(metadata.read_rows([tmp_path / 'm.db'], images.SkipCounter(),
                            table='post'))


# --- builds -------------------------------------------------------------------

@pytest.fixture(scope='module')
def tar_dump(tmp_path_factory):
  """The downloaded layout (parquet metadata), built with no option."""
  root = tmp_path_factory.mktemp('danbooru2023')
  dfx.write_tar_dump(root, dfx.tar_posts(), 'parquet')
  before = _files(root)
  builder = _build(root, tmp_path_factory.mktemp('tfds'))
  assert _files(root) == before   # read in place: nothing written beside
  return root, builder


def test_tar_shards_with_parquet_build_with_exact_counts(tar_dump):
  _, builder = tar_dump
  report = _report(builder)
  assert report['extra']['images_tree'] == 'tar'
  assert report['skipped']['metadata'] == dfx.METADATA_SKIPS
  assert report['skipped']['tar'] == dfx.TAR_SKIPS
  decode = collections.Counter()
  for split in builder.info.splits:
    decode.update(report['skipped'][split])
  assert decode == dfx.DECODE_SKIPS
  examples = _examples(builder)
  assert len(examples) == dfx.TAR_EXAMPLES == sum(report['examples'].values())
  posts = dfx.tar_posts()
  train = {i for i, (_, _, s) in examples.items() if s == 'train'}
  expected = _expected_labels(posts, train)
  by_id = {p['id']: p for p in posts}
  for post_id, (names, image, split) in examples.items():
    assert names == expected[post_id], post_id
    assert split == splits.assign_split(post_id, splits.DEFAULT_FRACTIONS)
    member = dfx.post_member(by_id[post_id])[1]
    if by_id[post_id]['kind'] == 'jpg':   # plain JPEGs are stored as they are
      assert image == member
    else:   # the rest re-encoded: the same pixels within JPEG's loss
      stored = np.asarray(Image.open(io.BytesIO(image)), np.float64)
      assert np.abs(stored - images.load_image(member)).mean() < 3
  kinds = {by_id[i]['kind'] for i in examples}
  assert {'webp', 'gif', 'rgba_png', 'png16', 'cmyk_jpg', 'jpg'} <= kinds
  # tag_id from metadata/tags.parquet; -1 for the ratings and for
  # kagamine_rin, which that table lacks.
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert 'kagamine_rin' in meta.names
  assert meta.tag_ids.tolist() == [-1] * 4 + [
      dfx.TAG_IDS.get(n, -1) for n in meta.names[4:]]


@pytest.mark.parametrize('kind', ['sqlite', 'jsonl'])
def test_sqlite_and_json_lines_metadata_give_the_same_dataset(
    tar_dump, kind, tmp_path):
  _, parquet = tar_dump
  root = tmp_path / 'dump'
  dfx.write_tar_dump(root, dfx.tar_posts(), kind)
  builder = _build(root, tmp_path / 'tfds')
  assert _report(builder)['skipped'] == _report(parquet)['skipped']
  assert _examples(builder) == _examples(parquet)
  # The tags table (SQLite: inside the posts file) gives the same ids.
  assert _csv(builder) == _csv(parquet)


def test_wd_tfrecords_build_with_their_labels(tmp_path):
  records = dfx.wd_records()
  dfx.write_wd_records(tmp_path / 'wd', records)
  builder = _build(tmp_path / 'wd', tmp_path / 'tfds')
  report = _report(builder)
  assert report['extra']['images_tree'] == 'tfrecord'
  assert report['skipped']['tfrecord'] == dfx.WD_SKIPS
  assert report['skipped']['train'] == dfx.WD_DECODE_SKIPS
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == [n for _, n, _ in dfx.WD_VOCABULARY]
  assert meta.tag_ids.tolist() == [t for t, _, _ in dfx.WD_VOCABULARY]
  examples = _examples(builder)
  assert set(examples) == {r['id'] for r in records}
  for r in records:
    names, image, split = examples[r['id']]
    assert names == {dfx.WD_VOCABULARY[i][1] for i in r['labels']}
    assert split == r['split']
    assert image == fx.jpeg(r['color'], size=(16, 12))
  train = [r for r in records if r['split'] == 'train']
  assert meta.counts.tolist() == [
      sum(i in r['labels'] for r in train)
      for i in range(len(dfx.WD_VOCABULARY))]


def test_wd_tfrecords_without_ratings_and_by_id_ranges(tmp_path):
  records = dfx.wd_records()
  dfx.write_wd_records(tmp_path / 'wd', records)
  builder = _build(tmp_path / 'wd', tmp_path / 'tfds', ratings='false',
                   split_ranges='train=0-149,validation=150-999',
                   min_general_tags='3')
  names = tag_metadata.load_tag_metadata(builder.data_dir).names
  assert names == [n for _, n, c in dfx.WD_VOCABULARY if c != 9]
  general = {i for i, (_, _, c) in enumerate(dfx.WD_VOCABULARY) if c == 0}
  kept = [r for r in records if len(set(r['labels']) & general) >= 3]
  examples = _examples(builder)
  assert set(examples) == {r['id'] for r in kept}
  for r in kept:
    assert examples[r['id']][0] == {
        dfx.WD_VOCABULARY[i][1] for i in r['labels']} - set(
            RATING_NAMES.values())
    assert examples[r['id']][2] == ('train' if r['id'] % 1000 < 150
                                    else 'validation')
  # and record 8888 (a corrupt JPEG) has one general tag.
  assert _report(builder)['skipped']['tfrecord']['few_general_tags'] == (
      len(records) - len(kept) + 1)


def test_wd_v3_selection_options(tar_dump, tmp_path):
  root, _ = tar_dump
  builder = _build(root, tmp_path / 'tfds', min_general_tags='2',
                   split_ranges='train=0-199,validation=200-299',
                   min_count='3', min_count_character='2', num_general='4')
  posts = {p['id']: p for p in dfx.tar_posts()}
  examples = _examples(builder)
  report = _report(builder)['skipped']['metadata']

  def general(post):
    return sum(1 for c, _ in post['tags'] if c == 0)
  located = [p for p in posts.values() if p['kind'] in (
      'jpg', 'rgba_png', 'cmyk_jpg', 'png16', 'corrupt', 'truncated', 'webp',
      'gif') and
             p['id'] not in (dfx.BAD_HEADER_POST, dfx.CUT_OFF_POST)]
  few = [p for p in located if general(p) < 2]
  outside = [p for p in located if general(p) >= 2 and p['id'] % 1000 >= 300]
  assert report['few_general_tags'] == len(few)
  assert report['outside_split_ranges'] == len(outside)
  for post_id, (_, _, split) in examples.items():
    assert split == ('train' if post_id % 1000 < 200 else 'validation')
    assert general(posts[post_id]) >= 2
  # Tags need 3 train images (characters 2); the top 4 general ones.
  train = [posts[i] for i, (_, _, s) in examples.items() if s == 'train']
  counts = collections.Counter(t for p in train for t in p['tags'])
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  general_names = sorted((n for (c, n), k in counts.items()
                          if c == 0 and k >= 3),
                         key=lambda n: (-counts[(0, n)], n))[:4]
  characters = sorted((n for (c, n), k in counts.items() if c == 4 and k >= 2),
                      key=lambda n: (-counts[(4, n)], n))
  assert meta.names == ([f'rating:{r}' for r in danbooru.RATINGS] +
                        general_names + characters)


def test_max_side_shrinks_and_stores_webp(tar_dump, tmp_path):
  root, default = tar_dump
  builder = _build(root, tmp_path / 'tfds', max_side='14',
                   image_format='webp')
  examples = _examples(builder)
  assert set(examples) == set(_examples(default))
  posts = {p['id']: p for p in dfx.tar_posts()}
  for post_id, (_, data, _) in examples.items():
    image = Image.open(io.BytesIO(data))
    assert image.format == 'WEBP'
    original = images.load_image(dfx.post_member(posts[post_id])[1])
    h, w = original.shape[:2]
    scale = min(1.0, 14 / max(h, w))
    assert image.size == (max(1, round(w * scale)), max(1, round(h * scale)))
  # A 16x12 JPEG becomes 14x10.5 -> 14x10 (round half to even), BOX
  # filtered from a flat colour: that colour, within WebP's loss.
  post = next(p for p in posts.values() if p['kind'] == 'jpg' and
              p['id'] in examples)
  pixels = np.asarray(Image.open(io.BytesIO(examples[post['id']][1])))
  reference = images.load_image(dfx.post_member(post)[1])
  assert pixels.shape == (10, 14, 3)
  np.testing.assert_allclose(pixels.mean((0, 1)), reference.mean((0, 1)),
                             atol=4)


def test_tar_layout_errors_name_the_option(tmp_path):
  (tmp_path / 'metadata').mkdir()
  dfx.write_parquet(tmp_path / 'metadata' / 'p.parquet',
                    dfx.metadata_rows(dfx.tar_posts()[:2]))
  with pytest.raises(FileNotFoundError, match='tar_glob'):
    _build(tmp_path, tmp_path / 'tfds', images='tar')
  with pytest.raises(ValueError, match='split_ranges'):
    _build(tmp_path, tmp_path / 'tfds', split_ranges='train=0-899,val=800-999')
