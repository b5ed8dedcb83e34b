"""data_builders/files.py, the one reader of users' text files, and the
tagged_folder builder on captions in other encodings, FIFOs and symlink
loops (none may stop or hang a build)."""
import codecs
import json
import os

import builder_fixtures as fx
import pytest

from data_builders import files
from data_builders import images
from jaxtag.data import tag_metadata

# --- decoding -----------------------------------------------------------------


@pytest.mark.parametrize('data, text, encoding', [
    (b'1girl, solo', '1girl, solo', 'utf-8'),
    ('café'.encode(), 'café', 'utf-8'),
    (codecs.BOM_UTF8 + b'1girl', '1girl', 'utf-8-sig'),
    (codecs.BOM_UTF16_LE + '1girl, café'.encode('utf-16-le'), '1girl, café',
     'utf-16-le'),
    (codecs.BOM_UTF16_BE + '1girl'.encode('utf-16-be'), '1girl', 'utf-16-be'),
    (b'', '', 'utf-8'),
])
def test_utf8_with_or_without_bom_and_utf16_with_bom_decode(data, text,
                                                            encoding):
  decoded = files.decode(data, 'x.txt')
  assert decoded == files.Text(text, encoding)
  assert files.encode(decoded.text, decoded.encoding) == data


@pytest.mark.parametrize('data, says', [
    ('café'.encode('latin-1'), "not UTF-8 (at byte 3: b'\\xe9')"),
    ('1girl'.encode('utf-16-le'), 'holds NUL characters'),   # no BOM
    (codecs.BOM_UTF32_LE + 'ab'.encode('utf-32-le'), 'holds NUL characters'),
    (codecs.BOM_UTF16_LE + b'\x00\xd8', 'not UTF-16-LE'),    # lone surrogate
    (b'\x89PNG\r\n\x1a\n\x00\x00', "not UTF-8 (at byte 0: b'\\x89PNG')"),
    (b'GIF89a\x01\x00', 'holds NUL characters'),
])
def test_anything_else_is_bad_encoding_naming_the_file(data, says):
  with pytest.raises(files.FileSkipped) as info:
    files.decode(data, 'caps/a.txt')
  assert info.value.reason == 'bad_encoding'
  assert str(info.value).startswith('caps/a.txt: ') and says in str(info.value)
  assert 'save it as UTF-8' in str(info.value)


# --- which files are opened ---------------------------------------------------


def test_a_fifo_is_skipped_without_being_opened(tmp_path):
  fifo = tmp_path / 'a.txt'
  os.mkfifo(fifo)
  # Opening it for reading would block for ever: no writer ever comes.
  with pytest.raises(files.FileSkipped) as info:
    files.read_text(fifo)
  assert (info.value.reason, info.value.detail) == (
      'not_regular_file', 'a FIFO, not opened')


def test_loops_dangling_links_and_folders(tmp_path):
  loop = tmp_path / 'loop.txt'
  os.symlink('loop.txt', loop)
  dangling = tmp_path / 'gone.txt'
  os.symlink('nowhere.txt', dangling)
  (tmp_path / 'dir.txt').mkdir()
  for path, reason, detail in [
      (loop, 'unreadable', 'Too many levels of symbolic links'),
      (dangling, 'unreadable', 'a dangling symlink'),
      (tmp_path / 'missing.txt', 'unreadable', 'no such file'),
      (tmp_path / 'dir.txt', 'not_regular_file', 'a folder, not opened')]:
    with pytest.raises(files.FileSkipped) as info:
      files.read_text(path)
    assert (info.value.reason, info.value.detail) == (reason, detail), path


def test_read_or_skip_counts_and_keeps_the_first_paths(tmp_path):
  counter = images.SkipCounter('files', log_first=2)
  for i in range(3):
    (tmp_path / f'{i}.txt').write_bytes(b'\xff\xfe\x00')
  (tmp_path / 'ok.txt').write_text('tag')
  os.mkfifo(tmp_path / 'f.txt')
  texts = [files.read_or_skip(tmp_path / f'{n}.txt', counter, n)
           for n in ('0', '1', 'ok', '2', 'f')]
  assert texts == [None, None, 'tag', None, None]
  assert counter.as_dict() == {'bad_encoding': 3, 'not_regular_file': 1}
  assert counter.first_as_dict() == {'bad_encoding': ['0', '1'],
                                     'not_regular_file': ['f']}


def test_an_image_fifo_or_loop_is_skipped_not_read(tmp_path):
  os.mkfifo(tmp_path / 'x.png')
  os.symlink('y.png', tmp_path / 'y.png')
  with pytest.raises(images.ImageSkipped) as info:
    images.load_image(str(tmp_path / 'x.png'))
  assert info.value.reason == 'not_regular_file'
  with pytest.raises(images.ImageSkipped) as info:
    images.load_image(str(tmp_path / 'y.png'))
  assert info.value.reason == 'unreadable'
  with pytest.raises(images.ImageSkipped) as info:
    images.load_image(str(tmp_path / 'z.png'))
  assert info.value.reason == 'missing_file'


# --- the tagged_folder builder ------------------------------------------------

FRACTIONS = 'train=1.0'   # one split: every record in it
VOCABULARY = ('tag_id,name,category,count\n0,1girl,0,0\n1,solo,0,0\n'
              '2,long_hair,0,0\n3,café,0,0\n')


@pytest.fixture(scope='module')
def odd_folder(tmp_path_factory):
  """Captions in every encoding and kind of file, worked by hand below."""
  root = tmp_path_factory.mktemp('odd')
  captions = {
      'latin1.txt': 'café, 1girl'.encode('latin-1'),
      'bom.txt': codecs.BOM_UTF8 + '1girl, solo'.encode(),
      'utf16.txt': codecs.BOM_UTF16_LE + '1girl, long hair'.encode(
          'utf-16-le'),
      'utf16_no_bom.txt': 'solo'.encode('utf-16-le'),
      'plain.txt': 'café, solo'.encode(),
      'image_fifo.txt': b'1girl',
      'image_loop.txt': b'1girl',
  }
  for i, (name, data) in enumerate(captions.items()):
    (root / name).write_bytes(data)
    (root / name.replace('.txt', '.png')).write_bytes(
        fx.png((40 * i, 10, 10)))
  for stem in ('fifo', 'loop'):
    (root / f'{stem}.png').write_bytes(fx.png())
  os.mkfifo(root / 'fifo.txt')                   # a caption that is a FIFO
  os.symlink('loop.txt', root / 'loop.txt')      # a caption that loops
  (root / 'image_fifo.png').unlink()
  os.mkfifo(root / 'image_fifo.png')             # an image that is a FIFO
  (root / 'image_loop.png').unlink()
  os.symlink('image_loop.png', root / 'image_loop.png')
  (root / 'selected_tags.csv').write_text(VOCABULARY)
  from jaxtag.data import build
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  options = {'split_fractions': FRACTIONS}
  build.ensure_built(build.get_builder('tagged_folder', data_dir, options),
                     str(root))
  return build.get_builder('tagged_folder', data_dir, options)


def test_tagged_folder_skips_and_counts_what_it_cannot_read(odd_folder):
  with open(os.path.join(odd_folder.data_dir, 'build_report.json')) as f:
    report = json.load(f)
  assert report['skipped']['metadata'] == {
      'bad_encoding': 2, 'not_regular_file': 1, 'unreadable': 1}
  assert report['first_skipped']['metadata'] == {
      'bad_encoding': ['latin1.txt', 'utf16_no_bom.txt'],
      'not_regular_file': ['fifo.txt'], 'unreadable': ['loop.txt']}
  image_skips = {}
  for split, counts in report['skipped'].items():
    if split != 'metadata':
      for reason, n in counts.items():
        image_skips[reason] = image_skips.get(reason, 0) + n
  assert image_skips == {'not_regular_file': 1, 'unreadable': 1}


def test_tagged_folder_reads_bom_and_utf16_captions_as_text(odd_folder):
  import tensorflow_datasets as tfds
  names = tag_metadata.load_tag_metadata(odd_folder.data_dir).names
  assert names == ['1girl', 'solo', 'long_hair', 'café']
  tags = {}
  for split in odd_folder.info.splits:
    source = odd_folder.as_data_source(
        split, decoders={'image': tfds.decode.SkipDecoding()})
    for i in range(len(source)):
      example = source[i]
      tags[example['path'].decode()] = {names[t] for t in example['tags']}
  assert tags == {'bom.png': {'1girl', 'solo'},
                  'utf16.png': {'1girl', 'long_hair'},
                  'plain.png': {'café', 'solo'}}


def test_danbooru_metadata_lines_are_read_one_by_one(tmp_path):
  from etils import epath
  from data_builders.danbooru import metadata
  (tmp_path / 'posts0.json').write_bytes(
      codecs.BOM_UTF8 + b'{"id": 1}\n' + '{"id": 2, "t": "café"}\n'.encode(
          'latin-1') + b'not json\n\n{"id": 3}\n')
  os.mkfifo(tmp_path / 'posts1.json')
  os.symlink('posts2.json', tmp_path / 'posts2.json')
  counter = images.SkipCounter('metadata')
  paths = [epath.Path(tmp_path / f'posts{i}.json') for i in range(3)]
  rows = list(metadata.read_rows(paths, counter))
  assert rows == [{'id': 1}, {'id': 3}]
  assert counter.as_dict() == {'bad_encoding': 1, 'bad_json': 1,
                               'not_regular_file': 1, 'unreadable': 1}
  assert counter.first_as_dict()['bad_encoding'] == ['posts0.json:2']


def test_a_vocabulary_in_utf16_is_read_and_one_in_latin1_named(tmp_path):
  from data_builders import tag_stats
  good = tmp_path / 'selected_tags.csv'
  good.write_bytes(codecs.BOM_UTF16_LE + VOCABULARY.encode('utf-16-le'))
  assert [r.name for r in tag_stats.read_vocabulary(good)] == [
      '1girl', 'solo', 'long_hair', 'café']
  bad = tmp_path / 'tags.txt'
  bad.write_bytes('1girl\ncafé\n'.encode('latin-1'))
  with pytest.raises(ValueError, match=f'^{bad}: not UTF-8 .*save it as '
                     'UTF-8'):
    tag_stats.read_vocabulary(bad)
