"""Shared builder modules (images, tag statistics, splits) and the danbooru,
tagged_folder and pixiv_characters builders on generated real-layout folders."""
import collections
import json
import os
import subprocess
import sys

import builder_fixtures as fx
import test_builder
import numpy as np
import pytest
import scipy.sparse
from PIL import Image

from data_builders import images
from data_builders import splits
from data_builders import tag_stats
from jaxtag.data import tag_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- images.py ---------------------------------------------------------------

def test_rgba_is_composited_on_the_pad_colour():
  # alpha 128 of 255: 200 * 128/255 + 255 * 127/255 = 100.39 + 127 = 227.39
  # on white; on black only the first term: 100.39, 50.20, 0.
  data = fx.rgba_png((200, 100, 0, 128))
  white = images.load_image(data)
  black = images.load_image(data, pad_color=(0, 0, 0))
  assert white.dtype == np.uint8 and white.shape == (4, 6, 3)
  np.testing.assert_array_equal(white[0, 0], [227, 177, 127])
  np.testing.assert_array_equal(black[0, 0], [100, 50, 0])
  # LA: gray 60 at alpha 51 (0.2) over (255, 0, 100): 12 + 204, 12, 12 + 80.
  la = fx.encoded(fx.solid((60, 51), (3, 3), 'LA'), 'PNG')
  np.testing.assert_array_equal(
      images.load_image(la, pad_color=(255, 0, 100))[1, 1], [216, 12, 92])


def test_exif_orientation_is_applied():
  stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
  shown = images.load_image(fx.exif_rotated_png(stored, orientation=6))
  # Orientation 6: stored row r is shown as column (H - 1 - r): a 90° turn
  # clockwise, so the 2x3 image is shown 3 high and 2 wide.
  assert shown.shape == (3, 2, 3)
  for r in range(2):
    for c in range(3):
      np.testing.assert_array_equal(shown[c, 1 - r], stored[r, c])


def test_sixteen_bit_png_is_scaled_to_eight_bits():
  values = np.array([[0, 257 * 128], [65535, 1000]], np.uint16)
  out = images.load_image(fx.png16(values))
  # x / 257 rounded: 0, 128, 255, 3.89 -> 4; gray repeated over RGB.
  np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 4]])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_cmyk_and_palette_modes_become_rgb():
  cyan = images.load_image(fx.cmyk_jpeg((255, 0, 0, 0)))
  np.testing.assert_allclose(cyan[8, 8], [0, 255, 255], atol=3)
  gif = images.load_image(fx.animated_gif(((255, 0, 0), (0, 0, 255))))
  np.testing.assert_array_equal(gif[0, 0], [255, 0, 0])  # the first frame
  gray = images.load_image(fx.encoded(fx.solid((77,), (2, 2), 'L'), 'PNG'))
  np.testing.assert_array_equal(gray[0, 0], [77, 77, 77])


@pytest.mark.parametrize('make, reason', [
    (fx.corrupt_jpeg, 'corrupt'), (fx.truncated_jpeg, 'truncated'),
    (lambda: b'<html>not an image</html>', 'not_image'),
    (lambda: b'\xff\xd8\xff\xe0 broken header', 'truncated'),
])
def test_bad_files_raise_image_skipped(make, reason):
  with pytest.raises(images.ImageSkipped) as info:
    images.load_image(make())
  assert info.value.reason == reason


def test_decompression_bombs_are_skipped(monkeypatch, tmp_path):
  data = fx.png(size=(40, 30))
  with pytest.raises(images.ImageSkipped, match='too_large'):
    images.load_image(data, max_pixels=1000)
  # Pillow's own limit warns below twice its value; that warning skips too.
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  with pytest.raises(images.ImageSkipped, match='too_large'):
    images.load_image(data)
  path = tmp_path / 'absent.jpg'
  with pytest.raises(images.ImageSkipped, match='missing_file'):
    images.load_image(str(path))


def test_resize_longest_pads_to_a_square_and_area_averages():
  # 8 wide, 4 high: left half 0, right half 200 -> longest side 4: 4x2,
  # padded with 2 rows, one above and one below.
  left_right = np.zeros((4, 8, 3), np.uint8)
  left_right[:, 4:] = 200
  out = images.load_image(fx.encoded(Image.fromarray(left_right), 'PNG'),
                          resize_longest=4, square=True,
                          pad_color=(1, 2, 3))
  assert out.shape == (4, 4, 3)
  np.testing.assert_array_equal(out[0], [[1, 2, 3]] * 4)
  np.testing.assert_array_equal(out[3], [[1, 2, 3]] * 4)
  np.testing.assert_array_equal(out[1:3, :, 0], [[0, 0, 200, 200]] * 2)
  # Area: a 2x shrink of a 6x4 image is the mean of each 2x2 block.
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (4, 6, 3)).astype(np.uint8)
  small = images.load_image(fx.encoded(Image.fromarray(pixels), 'PNG'),
                            resize_shortest=2, interpolation='area')
  blocks = pixels.reshape(2, 2, 3, 2, 3).astype(float).mean(axis=(1, 3))
  # Pillow works in fixed point: within one level of the exact mean.
  np.testing.assert_allclose(small, blocks, atol=1.0)


def test_stored_image_keeps_plain_files_and_reencodes_the_rest():
  geometry = images.Geometry()
  plain = fx.jpeg()
  data, pixels = images.stored_image(plain, geometry)
  assert data == plain and pixels.shape == (8, 12, 3)
  for other in (fx.cmyk_jpeg(), fx.rgba_png(), fx.exif_rotated_jpeg()):
    data, pixels = images.stored_image(other, geometry)
    assert data != other and data.startswith(b'\x89PNG')
    np.testing.assert_array_equal(images.load_image(data), pixels)
  assert images.stored_image(fx.exif_rotated_jpeg(), geometry)[1].shape == (
      16, 8, 3)
  data, _ = images.stored_image(plain, images.Geometry(resize_longest=6))
  assert Image.open(__import__('io').BytesIO(data)).size == (6, 4)


def test_skip_counter_counts_and_summarises(capsys):
  counter = images.SkipCounter('train')
  for reason in ('corrupt', 'missing_file', 'corrupt'):
    counter.skip(reason, 'x')
  counter.report()
  assert counter.as_dict() == {'corrupt': 2, 'missing_file': 1}
  assert 'skipped 3 (corrupt 2, missing_file 1)' in capsys.readouterr().out


# --- tag_stats.py and jaxtag/data/tag_metadata.py ----------------------------

WD_CSV = '''tag_id,name,category,count
9999999.0,general,9,807691.0
9999998.0,sensitive,9,1246744.0
470575.0,1girl,0,4412843.0
212816.0,solo,0,3629598.0
1281.0,^_^,0,12345.0
3389.0,>_<,0,23456.0
1300281.0,"hatsune_miku_(append)",4,321.0
1304828.0,re:zero_kara_hajimeru_isekai_seikatsu,3,99.0
555.0,":d",0,777.0
'''


def test_wd_selected_tags_are_read_as_written(tmp_path):
  path = tmp_path / 'selected_tags.csv'
  path.write_text(WD_CSV)
  rows = tag_stats.read_selected_tags(path)
  assert [r.name for r in rows] == [
      'general', 'sensitive', '1girl', 'solo', '^_^', '>_<',
      'hatsune_miku_(append)', 're:zero_kara_hajimeru_isekai_seikatsu', ':d']
  assert rows[2] == tag_stats.TagRow(470575, '1girl', 0, 4412843)
  assert [r.tag_id for r in rows][:2] == [9999999, 9999998]
  assert [r.category for r in rows] == [9, 9, 0, 0, 0, 0, 4, 3, 0]
  bad = tmp_path / 'bad.csv'
  bad.write_text('tag_id,name,category,count\n1.5,x,0,1\n')
  with pytest.raises(ValueError, match=r'bad.csv, line 2: tag_id'):
    tag_stats.read_selected_tags(bad)
  with pytest.raises(ValueError, match='lacks the column'):
    tag_metadata.parse_selected_tags('tag,count\nx,1\n')


def test_label_statistics_equal_dense_reference():
  rng = np.random.default_rng(0)
  lists = [rng.choice(30, rng.integers(0, 6), replace=False)
           for _ in range(200)]
  counts, cooc, n = tag_stats.label_statistics(lists, 30)
  hot = np.zeros((200, 30), np.int64)
  for i, labels in enumerate(lists):
    hot[i, labels] = 1
  assert n == 200 and isinstance(cooc, scipy.sparse.csr_array)
  np.testing.assert_array_equal(counts, hot.sum(0))
  np.testing.assert_array_equal(cooc.toarray(), hot.T @ hot)
  assert cooc.nnz == np.count_nonzero(hot.T @ hot)  # only co-occurring pairs
  with pytest.raises(ValueError, match='outside 0..29'):
    tag_stats.label_statistics([[30]], 30)


def test_dataset_metadata_round_trips(tmp_path):
  meta = tag_stats.DatasetMetadata()
  meta.tags = [tag_stats.TagRow(7, 'a', 0, 0), tag_stats.TagRow(8, '^_^', 0, 0),
               tag_stats.TagRow(9, 'rating:general', 9, 0)]
  meta.set_statistics([[0, 1], [1], [1, 2], []])
  meta.report.skipped = {'train': {'corrupt': 1}}
  meta.report.extra = {'mean_pixel': np.array([1.5, 2.0, 3.0])}
  meta.save_metadata(tmp_path)
  loaded = tag_metadata.load_tag_metadata(tmp_path)
  assert loaded.names == ['a', '^_^', 'rating:general']
  np.testing.assert_array_equal(loaded.counts, [1, 3, 1])
  np.testing.assert_array_equal(loaded.cooccurrence.toarray(),
                                [[1, 1, 0], [1, 3, 1], [0, 1, 1]])
  assert loaded.num_images == 4
  assert [r.count for r in tag_stats.read_selected_tags(
      tmp_path / 'selected_tags.csv')] == [1, 3, 1]
  assert loaded.tag_ids.tolist() == [7, 8, 9]
  again = tag_stats.DatasetMetadata()
  again.load_metadata(tmp_path)
  assert again.report.extra['mean_pixel'] == [1.5, 2.0, 3.0]
  assert again.report.skipped == {'train': {'corrupt': 1}}


def test_dense_statistics_of_an_older_build_still_load(tmp_path):
  (tmp_path / 'selected_tags.csv').write_text(
      'tag_id,name,category,count\n0,a,0,2\n1,b,0,1\n')
  np.savez(tmp_path / 'label_stats.npz', counts=np.array([2, 1]),
           cooccurrence=np.array([[2, 1], [1, 1]]), num_images=np.int64(2))
  loaded = tag_metadata.load_tag_metadata(tmp_path)
  np.testing.assert_array_equal(loaded.cooccurrence_dense(),
                                [[2, 1], [1, 1]])
  # Its ids were the rows renumbered: read as none.
  assert loaded.names == ['a', 'b'] and loaded.tag_ids.tolist() == [-1, -1]
  np.savez(tmp_path / 'label_stats.npz', counts=np.array([2, 1, 1]),
           cooccurrence=np.eye(3), num_images=np.int64(2))
  with pytest.raises(ValueError, match='rebuild'):
    tag_metadata.load_tag_metadata(tmp_path)


def test_tag_names_are_normalised():
  assert tag_stats.normalise_tag('  Long Hair ') == 'long_hair'
  assert tag_stats.normalise_tag('^_^') == '^_^'
  assert tag_stats.normalise_tag('hatsune miku (append)') == (
      'hatsune_miku_(append)')


# --- splits.py ---------------------------------------------------------------

def test_split_assignment_matches_an_independent_hash():
  import hashlib
  for key in (1, 123456, 'a/b.png'):
    digest = hashlib.sha256(f'\x00{key}'.encode()).digest()
    u = int.from_bytes(digest[:8], 'big') / 2**64
    expected = 'train' if u < 0.8 else ('validation' if u < 0.9 else 'test')
    assert splits.assign_split(
        key, {'train': 0.8, 'validation': 0.1, 'test': 0.1}) == expected


def test_split_fractions_hold_and_do_not_depend_on_the_process():
  fractions = splits.parse_fractions('train=0.8,validation=0.1,test=0.1')
  here = [splits.assign_split(i, fractions) for i in range(20000)]
  for name, f in fractions.items():
    assert here.count(name) / 20000 == pytest.approx(f, abs=0.01)
  code = ('from data_builders import splits;'
          'f = {"train": 0.8, "validation": 0.1, "test": 0.1};'
          'print("".join(splits.assign_split(i, f)[0] for i in range(300)))')
  other = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                         capture_output=True, text=True,
                         env={**os.environ, 'PYTHONHASHSEED': '123'})
  assert other.stdout.strip() == ''.join(s[0] for s in here[:300])
  with pytest.raises(ValueError, match='split_fractions'):
    splits.parse_fractions('train=0.8,test=0.1')
  with pytest.raises(ValueError, match='split_fractions'):
    splits.parse_fractions('train:0.8')


def test_stratified_splits_divide_each_class():
  fractions = {'train': 0.7, 'validation': 0.15, 'test': 0.15}
  items = [(f'a/{i}.png', 'a') for i in range(10)] + [
      (f'b/{i}.png', 'b') for i in range(7)]
  out = splits.stratified_splits(items, fractions)
  count = lambda cls, s: sum(1 for k, v in out.items()
                             if k.startswith(cls) and v == s)
  # 10: 7, 1.5, 1.5 -> the tie goes to the earlier split: 7/2/1.
  assert [count('a', s) for s in fractions] == [7, 2, 1]
  # 7: 4.9, 1.05, 1.05 -> floors 4/1/1, the remainder to train: 5/1/1.
  assert [count('b', s) for s in fractions] == [5, 1, 1]
  grown = splits.stratified_splits(items + [('a/10.png', 'a')], fractions)
  moved = [k for k in out if out[k] != grown[k]]
  assert len(moved) <= 2


# --- the builders ------------------------------------------------------------

FRACTIONS = 'train=0.6,validation=0.2,test=0.2'
SPLITS = {'train': 0.6, 'validation': 0.2, 'test': 0.2}
RATING_NAMES = {'g': 'general', 's': 'sensitive', 'q': 'questionable',
                'e': 'explicit'}


def _build(name, manual_dir, data_dir, **options):
  from jaxtag.data import build
  builder = build.get_builder(name, str(data_dir),
                              {'split_fractions': FRACTIONS, **options})
  build.ensure_built(builder, str(manual_dir))
  return build.get_builder(name, str(data_dir),
                           {'split_fractions': FRACTIONS, **options})


def _examples(builder, split):
  import tensorflow_datasets as tfds
  source = builder.as_data_source(
      split, decoders={'image': tfds.decode.SkipDecoding()})
  return [source[i] for i in range(len(source))]


def _report(builder):
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    return json.load(f)


def _names(builder, example):
  names = tag_metadata.load_tag_metadata(builder.data_dir).names
  return {names[i] for i in example['tags']}


def _decoded(example):
  return images.load_image(bytes(example['image']))


@pytest.fixture(scope='module')
def danbooru_posts():
  return fx.danbooru_posts()


@pytest.fixture(scope='module')
def danbooru_2021(tmp_path_factory, danbooru_posts):
  root = tmp_path_factory.mktemp('danbooru2021')
  fx.write_danbooru(root, danbooru_posts, schema='2021')
  return root, _build('danbooru', root, tmp_path_factory.mktemp('tfds'))


def _expected_danbooru_labels(posts, train_ids, categories=(0, 4)):
  """Name sets by post id, from the fixture's own description: the rating,
  and every general/character tag that some train post has."""
  vocabulary = {n for p in posts if p['id'] in train_ids
                for c, n in p['tags'] if c in categories}
  return {p['id']: {f'rating:{RATING_NAMES[p["rating"]]}'} |
          ({n for c, n in p['tags'] if c in categories} & vocabulary)
          for p in posts}


def test_danbooru_counts_skips_and_labels(danbooru_2021, danbooru_posts):
  _, builder = danbooru_2021
  report = _report(builder)
  assert report['skipped']['metadata'] == {
      'bad_json': 1, 'banned': 1, 'deleted': 1, 'duplicate_id': 1,
      'missing_file': 1, 'no_id': 1, 'not_image': 1}
  decode_skips = collections.Counter()
  for split in SPLITS:
    decode_skips.update(report['skipped'][split])
  assert decode_skips == {'corrupt': 1, 'truncated': 1}
  by_split = {s: _examples(builder, s) for s in SPLITS}
  assert sum(len(v) for v in by_split.values()) == 50 - 5 - 2
  assert {s: len(v) for s, v in by_split.items()} == report['examples']
  train_ids = {int(e['id']) for e in by_split['train']}
  expected = _expected_danbooru_labels(danbooru_posts, train_ids)
  kinds = {p['id']: p['kind'] for p in danbooru_posts}
  seen_kinds = set()
  for split, examples in by_split.items():
    for example in examples:
      post_id = int(example['id'])
      assert splits.assign_split(post_id, SPLITS) == split
      assert _names(builder, example) == expected[post_id], post_id
      seen_kinds.add(kinds[post_id])
      assert _decoded(example).ndim == 3
  assert {'rgba_png', 'cmyk_jpg', 'png16', 'jpg'} <= seen_kinds


def test_danbooru_vocabulary_is_ratings_then_top_tags(danbooru_2021,
                                                      danbooru_posts):
  _, builder = danbooru_2021
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names[:4] == ['rating:general', 'rating:sensitive',
                            'rating:questionable', 'rating:explicit']
  train_ids = {int(e['id']) for e in _examples(builder, 'train')}
  counts = collections.Counter(
      (c, n) for p in danbooru_posts if p['id'] in train_ids
      for c, n in p['tags'])
  for category, start in ((0, 4), (4, None)):
    ranked = sorted((n for (c, n) in counts if c == category),
                    key=lambda n: (-counts[(category, n)], n))
    got = [n for n, c in zip(meta.names, meta.categories) if c == category]
    assert got == ranked
  # selected_tags.csv counts are the train split's; ids from tags*.json.
  assert meta.num_images == len(train_ids)
  rows = tag_stats.read_selected_tags(os.path.join(builder.data_dir,
                                                   'selected_tags.csv'))
  by_name = {r.name: r for r in rows}
  assert by_name['1girl'].tag_id == 10 and by_name['^_^'].tag_id == 15
  # Every tag of the file has its id; the ratings, no Danbooru tags, none.
  ids = {n: 10 + i for i, (_, n) in enumerate(fx.DANBOORU_TAGS)}
  assert meta.tag_ids.tolist() == [-1] * 4 + [ids[n] for n in meta.names[4:]]


def test_danbooru_options_select_and_name_the_dataset(danbooru_2021,
                                                      tmp_path):
  root, default = danbooru_2021
  builder = _build('danbooru', root, tmp_path, num_general=2,
                   num_character=1, ratings='false', min_count='3')
  assert builder.builder_config.name.startswith('default_')
  assert builder.data_dir != default.data_dir
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  full = tag_metadata.load_tag_metadata(default.data_dir)
  general = [n for n, c in zip(full.names, full.categories) if c == 0]
  character = [n for n, c in zip(full.names, full.categories) if c == 4]
  assert meta.names == general[:2] + character[:1]
  assert min(meta.counts) >= 3
  assert _report(builder)['options']['num_general'] == 2


def test_danbooru_2020_schema_and_512px_tree(danbooru_2021, danbooru_posts,
                                             tmp_path):
  # Every value a string, a `tags` list, images in 512px/ as .jpg.
  root = tmp_path / 'dump'
  fx.write_danbooru(root, danbooru_posts, schema='2020', tree='512px')
  builder = _build('danbooru', root, tmp_path / 'tfds')
  _, newer = danbooru_2021
  assert _report(builder)['extra']['images_tree'] == '512px'
  # The same posts and labels as the 2021 dump ('mp4' has no 512px file
  # and is still skipped by its extension).
  assert _report(builder)['skipped'] == _report(newer)['skipped']
  for split in SPLITS:
    old = {int(e['id']): _names(builder, e) for e in _examples(builder, split)}
    new = {int(e['id']): _names(newer, e) for e in _examples(newer, split)}
    assert old == new


def test_danbooru_resize_pads_to_a_square(danbooru_2021, tmp_path):
  root, _ = danbooru_2021
  builder = _build('danbooru', root, tmp_path, resize=8,
                   pad_color='10,20,30', image_format='png')
  for example in _examples(builder, 'train'):
    pixels = _decoded(example)
    assert pixels.shape == (8, 8, 3)
  # Post 1000 is a 20x10 RGBA image: 8x4 after the resize, padded with
  # two rows of the pad colour above and below.
  example = next(e for s in SPLITS for e in _examples(builder, s)
                 if int(e['id']) == 1000)
  pixels = _decoded(example)
  np.testing.assert_array_equal(pixels[:2].reshape(-1, 3),
                                [[10, 20, 30]] * 16)
  np.testing.assert_array_equal(pixels[6:].reshape(-1, 3),
                                [[10, 20, 30]] * 16)


def test_danbooru_takes_a_wd_vocabulary(danbooru_2021, danbooru_posts,
                                        tmp_path):
  root, _ = danbooru_2021
  # solo's id left out: the metadata's tags file gives it (10 + its index).
  (tmp_path / 'selected_tags.csv').write_text(
      WD_CSV.replace('212816.0,solo', ',solo'))
  builder = _build('danbooru', root, tmp_path / 'tfds',
                   vocabulary=str(tmp_path / 'selected_tags.csv'))
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == [r.name for r in tag_stats.read_selected_tags(
      tmp_path / 'selected_tags.csv')]
  assert meta.tag_ids.tolist() == [9999999, 9999998, 470575, 11, 1281, 3389,
                                   1300281, 1304828, 555]
  wd = set(meta.names)
  for split in SPLITS:
    for example in _examples(builder, split):
      post = next(p for p in danbooru_posts if p['id'] == int(example['id']))
      rating = RATING_NAMES[post['rating']]
      want = ({rating} & {'general', 'sensitive'}) | (
          {n for _, n in post['tags']} & wd)
      assert _names(builder, example) == want
  assert _report(builder)['extra']['tags_outside_vocabulary'] > 0


@pytest.fixture(scope='module')
def tagged_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('tagged')
  fx.write_tagged_folder(root, with_vocabulary=True)
  return root, _build('tagged_folder', root, tmp_path_factory.mktemp('tfds'))


def test_tagged_folder_reads_captions_with_a_root_vocabulary(tagged_folder):
  _, builder = tagged_folder
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == ['general', '1girl', 'solo', '^_^', '>_<',
                        'long_hair', 'hatsune_miku_(append)']
  assert meta.tag_ids.tolist() == [9999999, 470575, 212816, 1281, 3389,
                                   16867, 1300281]
  by_path = {}
  for split in SPLITS:
    for example in _examples(builder, split):
      path = example['path'].decode()
      assert splits.assign_split(path, SPLITS) == split
      assert int(example['id']) == splits.stable_id(path)
      by_path[path] = _names(builder, example)
  assert by_path['a.png'] == {'1girl', 'long_hair'}        # smile dropped
  assert by_path['b.jpg'] == {'1girl', 'solo', '^_^'}      # ',' separated
  assert by_path['sub/c.png'] == {'hatsune_miku_(append)', '1girl'}
  assert by_path['sub/d.jpg'] == {'solo', '>_<', 'long_hair'}
  assert by_path['sub/deep/e.png'] == set()
  assert by_path['h.webp'] == set()                        # empty caption
  assert 'g.png' not in by_path and 'sub/f.jpg' not in by_path
  assert len(by_path) == len(fx.TAGGED_FOLDER) - 2
  report = _report(builder)
  assert report['skipped']['metadata'] == {'no_caption': 1}
  assert sum(report['skipped'][s].get('corrupt', 0) for s in SPLITS) == 1
  # more/NN.jpg has the first 1 + NN % 5 of five tags: smile (third) in
  # 14 of 24, open_mouth (fifth) in 4; smile also in a.png and e.png.
  assert report['extra']['most_dropped_tags'] == {
      'smile': 16, 'open_mouth': 4, 'unknown_tag': 1}
  assert report['extra']['tags_outside_vocabulary'] == 21


def test_tagged_folder_builds_its_own_vocabulary(tmp_path):
  fx.write_tagged_folder(tmp_path / 'raw')
  builder = _build('tagged_folder', tmp_path / 'raw', tmp_path / 'tfds',
                   min_count=2)
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  train = collections.Counter()
  for relative, _, caption in fx.TAGGED_FOLDER:
    if (caption and splits.assign_split(relative, SPLITS) == 'train' and
        relative != 'sub/f.jpg'):
      train.update({t.strip().lower().replace(' ', '_').replace('\\', '')
                    for t in caption.split(',') if t.strip()})
  want = sorted((t for t, n in train.items() if n >= 2),
                key=lambda t: (-train[t], t))
  assert meta.names == want
  np.testing.assert_array_equal(meta.counts, [train[t] for t in want])
  # Tags from captions have no id, and the csv says so rather than
  # numbering them.
  with open(os.path.join(builder.data_dir, 'selected_tags.csv')) as f:
    assert {line.split(',')[0] for line in f.read().splitlines()[1:]} == {
        '-1'}
  assert meta.tag_ids.tolist() == [-1] * len(want)


@pytest.fixture(scope='module')
def pixiv(tmp_path_factory):
  root = tmp_path_factory.mktemp('pixiv')
  fx.write_pixiv(root, fx.pixiv_posts())
  return root, _build('pixiv_characters', root,
                      tmp_path_factory.mktemp('tfds'), num_top=2,
                      min_shared=2)


def test_pixiv_characters_selects_labels_as_the_paper(pixiv):
  # Worked by hand from fx.pixiv_posts: single-image posts with a file,
  # miku 12 images, rin 7 (one corrupt); shared with them: luka 3, len 2,
  # mikuu 2, kaito and hatsune_miku 0 -> top 2 plus luka, len, mikuu.
  _, builder = pixiv
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == ['miku', 'rin', 'luka', 'len', 'mikuu']
  assert set(meta.categories.tolist()) == {4}
  report = _report(builder)
  assert report['skipped']['metadata'] == {
      'missing_file': 1, 'multi_image': 1, 'no_selected_character': 5}
  examples = {int(e['id']): _names(builder, e)
              for s in SPLITS for e in _examples(builder, s)}
  assert len(examples) == 26 - 1 - 1 - 5 - 1 == sum(
      report['examples'].values())
  posts = {p['id']: p for p in fx.pixiv_posts()}
  for post_id, names in examples.items():
    assert names == set(posts[post_id]['characters']) & set(meta.names)
  pairs = {tuple(c['labels']): c['why']
           for c in report['extra']['duplicate_candidates']}
  assert pairs == {('miku', 'luka'): ['overlap'],
                   ('miku', 'mikuu'): ['overlap', 'name'],
                   ('rin', 'len'): ['overlap', 'name']}


def test_pixiv_mean_pixel_is_the_train_images_mean(pixiv):
  _, builder = pixiv
  pixels = np.concatenate([_decoded(e).reshape(-1, 3)
                           for e in _examples(builder, 'train')])
  np.testing.assert_allclose(_report(builder)['extra']['mean_pixel'],
                             pixels.mean(axis=0), atol=1e-3)


def test_pixiv_csv_metadata_aliases_and_resize(tmp_path):
  fx.write_pixiv(tmp_path / 'raw', fx.pixiv_posts(), fmt='csv')
  (tmp_path / 'raw' / 'aliases.csv').write_text('alias,canonical\nmikuu,miku\n')
  builder = _build('pixiv_characters', tmp_path / 'raw', tmp_path / 'tfds',
                   num_top='2', min_shared='2', characters='characters.txt',
                   aliases='aliases.csv', resize_shortest='8')
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == ['miku', 'rin', 'luka', 'len']
  for split in SPLITS:
    for example in _examples(builder, split):
      assert min(_decoded(example).shape[:2]) == 8
  pairs = [c['labels'] for c in
           _report(builder)['extra']['duplicate_candidates']]
  assert pairs == [['miku', 'luka'], ['rin', 'len']]


def test_levenshtein_against_hand_worked_distances():
  from data_builders.pixiv_characters import pixiv_characters
  for a, b, d in (('', '', 0), ('', 'abc', 3), ('kitten', 'sitting', 3),
                  ('miku', 'luka', 3), ('rin', 'len', 2),
                  ('flaw', 'lawn', 2), ('初音ミク', '初音ミク', 0),
                  ('初音ミク', '初音ミラ', 1)):
    assert pixiv_characters.levenshtein(a, b) == d
    assert pixiv_characters.levenshtein(b, a) == d


# --- the build command and the trainer's options ----------------------------

def test_set_options_are_parsed_by_type_and_checked():
  from jaxtag.data import build
  base = build.get_builder('danbooru').builder_config
  config = build.apply_options(base, {
      'resize': '512', 'ratings': 'no', 'pad_color': '0,0,0',
      'categories': 'general,character,artist'})
  assert (config.resize, config.ratings, config.pad_color) == (
      512, False, (0, 0, 0))
  assert config.categories == ('general', 'character', 'artist')
  # Same options in another order: the same name; defaults change nothing.
  again = build.apply_options(base, {
      'categories': ('general', 'character', 'artist'), 'pad_color': [0, 0, 0],
      'ratings': False, 'resize': 512, 'min_count': 1})
  assert again.name == config.name != base.name
  assert build.apply_options(base, {'resize': 0}) is base
  with pytest.raises(ValueError, match=r'Unknown option .*valid: categories'):
    build.apply_options(base, {'resise': 5})
  with pytest.raises(ValueError, match='Option resize='):
    build.apply_options(base, {'resize': 'big'})
  with pytest.raises(ValueError, match='Option ratings='):
    build.apply_options(base, {'ratings': 'maybe'})


def test_a_missing_manual_dir_says_how_to_pass_it(tmp_path):
  from jaxtag.data import build
  builder = build.get_builder('tagged_folder', str(tmp_path / 'tfds'))
  with pytest.raises(Exception, match='manual_dir'):
    build.ensure_built(builder, str(tmp_path / 'absent'))


@pytest.mark.slow
def test_trainer_config_builds_with_manual_dir_and_options(tmp_path):
  import ml_collections
  from jaxtag import config as config_lib
  from jaxtag.data import sources
  fx.write_tagged_folder(tmp_path / 'raw', with_vocabulary=True)
  config = config_lib.defaults()
  config.dataset.name = 'tagged_folder'
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.manual_dir = str(tmp_path / 'raw')
  config.dataset.build_options = ml_collections.ConfigDict(
      {'split_fractions': FRACTIONS, 'resize': 16})
  config.num_train_steps = 1
  config_lib.validate(config)  # build_options keys are the builder's
  source, builder = sources.open_split(config.dataset, 'train')
  assert builder.builder_config.resize == 16
  assert len(source) == _report(builder)['examples']['train'] > 0


@pytest.mark.slow
def test_builds_in_two_processes_give_identical_shards(tmp_path):
  fx.write_danbooru(tmp_path / 'danbooru', fx.danbooru_posts(), '2021')
  fx.write_tagged_folder(tmp_path / 'tagged', with_vocabulary=True)
  fx.write_pixiv(tmp_path / 'pixiv', fx.pixiv_posts())
  jobs = [('danbooru', 'danbooru', ['resize=8']), ('tagged_folder', 'tagged',
          []), ('pixiv_characters', 'pixiv', ['num_top=2', 'min_shared=2'])]
  digests = []
  for run in ('one', 'two'):
    procs = [subprocess.Popen(
        [sys.executable, '-m', 'jaxtag.data.build', name, '--manual_dir',
         str(tmp_path / folder), '--data_dir', str(tmp_path / run),
         f'--set=split_fractions={FRACTIONS}',
         *[f'--set={s}' for s in options]], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, folder, options in jobs]
    for proc in procs:
      out, _ = proc.communicate(timeout=300)
      assert proc.returncode == 0, out[-3000:]
    digests.append(test_builder.shard_digests(str(tmp_path / run)))
  assert len(digests[0]) == 9 and digests[0] == digests[1]


def test_a_split_without_records_is_left_out(tmp_path):
  fx.write_pixiv(tmp_path / 'raw', fx.pixiv_posts()[:3])
  from jaxtag.data import build
  options = {'split_fractions': 'train=0.5,validation=0,test=0.5',
             'num_top': 1}
  build.ensure_built(build.get_builder('pixiv_characters',
                                       str(tmp_path / 'tfds'), options),
                     str(tmp_path / 'raw'))
  builder = build.get_builder('pixiv_characters', str(tmp_path / 'tfds'),
                              options)
  assert sorted(builder.info.splits) == ['test', 'train']
  assert _report(builder)['extra']['empty_splits'] == ['validation']


@pytest.mark.slow
def test_trainer_runs_on_a_built_danbooru_dump(danbooru_2021, tmp_path):
  import ml_collections
  from jaxtag import config as config_lib
  from jaxtag import train
  root, _ = danbooru_2021
  config = config_lib.load_config_file(os.path.join(
      ROOT, 'configs/default.py:tiny'))
  config.dataset.name = 'danbooru'
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.manual_dir = str(root)
  config.dataset.build_options = ml_collections.ConfigDict(
      {'split_fractions': FRACTIONS, 'resize': 32})
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  names = tag_metadata.load_tag_metadata(
      next((tmp_path / 'tfds' / 'danbooru').iterdir()) / '1.0.0').names
  found = [os.path.join(d, f) for d, _, files in os.walk(tmp_path / 'work')
           for f in files if f == 'results_per_tag.csv']
  assert found
  with open(found[0]) as f:
    assert len(f.read().strip().splitlines()) == len(names) + 1


def test_a_split_bigger_than_memory_spills_without_tensorflow(tmp_path,
                                                              monkeypatch):
  from tensorflow_datasets.core import shuffle
  fx.write_tagged_folder(tmp_path / 'raw', with_vocabulary=True)
  in_memory = _build('tagged_folder', tmp_path / 'raw', tmp_path / 'a')
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1000)  # bytes
  spilled = _build('tagged_folder', tmp_path / 'raw', tmp_path / 'b')
  first = test_builder.shard_digests(str(tmp_path / 'a'))
  assert len(first) == 3 and first == test_builder.shard_digests(
      str(tmp_path / 'b'))
  assert not list((tmp_path / 'b').rglob('bucket_*'))  # cleaned up
  assert len(_examples(spilled, 'train')) == len(_examples(in_memory,
                                                           'train'))


@pytest.mark.parametrize('option, value, match', [
    ('interpolation', 'cubic', 'interpolation.*valid: area, bilinear'),
    ('image_format', 'gif', 'image_format.*valid: png, jpeg'),
    ('pad_color', '300,0,0', 'pad_color'),
    ('split_fractions', 'train=0.5', 'split_fractions'),
])
def test_bad_option_values_fail_before_reading(tmp_path, option, value,
                                               match):
  from jaxtag.data import build
  builder = build.get_builder('tagged_folder', str(tmp_path),
                              {option: value})
  with pytest.raises(ValueError, match=match):
    build.ensure_built(builder, str(tmp_path / 'absent'))
