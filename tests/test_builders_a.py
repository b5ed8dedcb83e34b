"""Shared builder modules (images, tag statistics, splits) and the danbooru,
tagged_folder and pixiv_characters builders on generated real-layout folders."""
import json
import os
import subprocess
import sys

import builder_fixtures as fx
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
