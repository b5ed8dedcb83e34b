"""The tagging command: files, folders, globs, unreadable files, captions,
output formats, thresholds and the exit status.

In-process runs of `jaxtag.tag.main` on a bundle of a randomly initialised
tiny model (tests/serving_fixtures.py); one subprocess run is slow.
"""
import codecs
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

import serving_fixtures as fx
from jaxtag import tag as tag_lib
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import tagger as tagger_lib


@pytest.fixture
def loaded():
  directory, _, _, bundle = fx.shared_bundle()
  return directory, bundle


@pytest.fixture
def bundle_dir(loaded, monkeypatch, tmp_path_factory):
  """The bundle's folder; in this process it loads (and compiles) once.
  Its ONNX export (--backend auto on CPU) goes to a cache of the tests."""
  directory, bundle = loaded
  monkeypatch.setenv('JAXTAG_CACHE', str(tmp_path_factory.getbasetemp()
                                         / 'jaxtag_cache'))
  monkeypatch.setattr(
      bundle_lib, 'load_bundle',
      lambda d: bundle if os.path.samefile(d, directory) else None)
  return directory


def _save(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
  """good images, a corrupt one, a text file, RGBA, grayscale, nested."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'images'
  _save(str(root / 'a.png'), rng.integers(0, 256, (40, 60, 3), np.uint8))
  _save(str(root / 'b.jpg'), rng.integers(0, 256, (30, 30, 3), np.uint8))
  _save(str(root / 'rgba.png'), rng.integers(0, 256, (50, 30, 4), np.uint8))
  _save(str(root / 'nested' / 'deeper' / 'gray.png'),
        rng.integers(0, 256, (20, 50), np.uint8))
  (root / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
  (root / 'notes.txt').write_text('not an image')
  return root


def _tag(*argv):
  return tag_lib.main([str(a) for a in argv] + ['--quiet'])


def _caption(path):
  return open(os.path.splitext(path)[0] + '.txt').read()


def test_folder_with_good_bad_rgba_gray_and_nested_images(bundle_dir, folder,
                                                          capsys):
  assert _tag(folder, '--bundle', bundle_dir, '--recursive',
              '--threshold', '0') == 0
  err = capsys.readouterr().err
  for name in ('a.png', 'b.jpg', 'rgba.png', 'nested/deeper/gray.png'):
    tags = _caption(str(folder / name)).split(', ')
    assert len(tags) == 8 and 'general' not in tags, name   # no ratings
  assert f'skipped {folder / "corrupt.png"}: corrupt (' in err
  assert 'notes.txt' not in err   # a folder gives its images only
  assert err.endswith('tagged 4 image(s); skipped 1 (corrupt 1); '
                      'failed 0.\n')
  # The caption of notes.txt's own name was not touched.
  assert (folder / 'notes.txt').read_text() == 'not an image'


def test_without_recursive_subfolders_are_left_out(bundle_dir, folder):
  assert _tag(folder, '--bundle', bundle_dir) == 0
  assert os.path.exists(folder / 'a.txt')
  assert not os.path.exists(folder / 'nested' / 'deeper' / 'gray.txt')


def test_globs_and_explicit_files(bundle_dir, folder, capsys):
  assert _tag(str(folder / '**' / '*.png'), '--bundle', bundle_dir,
              '--format', 'jsonl') == 0
  out = capsys.readouterr().out.splitlines()
  files = [json.loads(line)['file'] for line in out]
  assert sorted(os.path.basename(f) for f in files) == ['a.png', 'gray.png',
                                                        'rgba.png']
  assert _tag(folder / 'notes.txt', '--bundle', bundle_dir) == 1
  assert 'skipped' in capsys.readouterr().err


def test_exit_status_is_non_zero_only_when_nothing_was_tagged(bundle_dir,
                                                              folder, capsys):
  assert _tag(folder / 'corrupt.png', folder / 'a.png', '--bundle',
              bundle_dir, '--format', 'json') == 0
  assert _tag(folder / 'corrupt.png', folder / 'missing.png', '--bundle',
              bundle_dir, '--format', 'json') == 1
  err = capsys.readouterr().err
  assert (f'skipped {folder / "missing.png"}: not_found (no such file, '
          'folder or glob match)') in err


def test_existing_captions_are_kept_appended_to_or_overwritten(bundle_dir,
                                                               folder, capsys):
  image = folder / 'a.png'
  caption = folder / 'a.txt'
  caption.write_text('my_tag, 1girl')
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0') == 0
  assert caption.read_text() == 'my_tag, 1girl'
  assert '1 image(s) already have a tag file' in capsys.readouterr().err
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0',
              '--append_existing') == 0
  tags = caption.read_text().split(', ')
  assert tags[:2] == ['my_tag', '1girl'] and len(tags) == len(set(tags)) == 9
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0',
              '--append_existing') == 0
  assert caption.read_text().split(', ') == tags   # nothing added twice
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0',
              '--overwrite') == 0
  assert 'my_tag' not in caption.read_text()


# ------------------------------------------ tag files touch only tag files ---


def _sha(path):
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.mark.parametrize('extension, says', [
    ('.png', 'is an image extension'), ('.PNG', 'is an image extension'),
    ('.tags.webp', 'is an image extension'), ('txt', 'must start with a dot'),
    ('.', 'must start with a dot'), ('./x', 'not a path')])
def test_a_bad_extension_is_refused_before_any_work(folder, capsys, extension,
                                                    says):
  before = {p: _sha(p) for p in folder.rglob('*') if p.is_file()}
  # The bundle does not exist: the refusal comes before it would be read.
  assert _tag(folder, '--bundle', folder / 'no_bundle', '--recursive',
              '--overwrite', '--caption_extension', extension) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"Error: --caption_extension {extension!r} ")
  assert says in err
  assert {p: _sha(p) for p in folder.rglob('*') if p.is_file()} == before


def test_the_old_hyphenated_flags_are_unknown(folder, capsys):
  assert _tag(folder, '--bundle', 'B', '--caption-extension', '.txt') == 2
  assert "Unknown command line flag 'caption-extension'" in (
      capsys.readouterr().err)


def test_an_image_named_like_its_tag_file_is_never_written(bundle_dir, folder,
                                                           capsys):
  photo = folder / 'photo.txt'
  shutil.copy(folder / 'a.png', photo)
  digest = _sha(photo)
  assert _tag(photo, '--bundle', bundle_dir, '--overwrite') == 1
  err = capsys.readouterr().err
  assert (f'failed {photo}: tag_file_is_input ({photo}: it is one of the '
          'images being tagged)') in err
  assert err.endswith('tagged 0 image(s); skipped 0; failed 1 '
                      '(tag_file_is_input 1).\n')
  assert _sha(photo) == digest


def test_overwrite_never_writes_through_a_symlink(bundle_dir, folder, capsys):
  (folder / 'elsewhere.md').write_text('keep me')
  os.symlink('elsewhere.md', folder / 'a.txt')
  os.symlink('missing.md', folder / 'b.txt')   # dangling
  assert _tag(folder, '--bundle', bundle_dir, '--overwrite') == 1
  err = capsys.readouterr().err
  assert (f'failed {folder / "a.png"}: tag_file_is_symlink ('
          f'{folder / "a.txt"}: a symlink to elsewhere.md; never written '
          'through)') in err
  assert f'failed {folder / "b.jpg"}: tag_file_is_symlink' in err
  assert (folder / 'elsewhere.md').read_text() == 'keep me'
  assert os.readlink(folder / 'a.txt') == 'elsewhere.md'
  assert os.readlink(folder / 'b.txt') == 'missing.md'
  assert not os.path.exists(folder / 'missing.md')
  assert os.path.isfile(folder / 'rgba.txt')   # the run went on
  assert err.endswith('tagged 1 image(s); skipped 1 (corrupt 1); failed 2 '
                      '(tag_file_is_symlink 2).\n')


def test_images_with_one_stem_give_the_tag_file_to_the_first_name(
    bundle_dir, tmp_path, capsys):
  rng = np.random.default_rng(1)
  for name in ('a.webp', 'a.png', 'a.jpg'):
    _save(str(tmp_path / name), rng.integers(0, 256, (32, 32, 3), np.uint8))
  want = {}
  for name in ('a.jpg', 'a.png'):
    assert _tag(tmp_path / name, '--bundle', bundle_dir, '--format', 'json',
                '--threshold', '0.5') == 0
    record = json.loads(capsys.readouterr().out)[0]
    want[name] = ', '.join([*record['general'], *record['character']])
  assert want['a.jpg'] != want['a.png']
  for order in (['a.png', 'a.webp', 'a.jpg'], ['a.webp', 'a.jpg', 'a.png']):
    assert _tag(*[tmp_path / n for n in order], '--bundle', bundle_dir,
                '--threshold', '0.5', '--overwrite') == 0
    err = capsys.readouterr().err
    assert (tmp_path / 'a.txt').read_text() == want['a.jpg']
    for loser in ('a.png', 'a.webp'):
      assert (f'skipped {tmp_path / loser}: same_stem ({tmp_path / "a.txt"} '
              f'is the tag file of {tmp_path / "a.jpg"}, which sorts '
              'first)') in err
    assert err.endswith('tagged 1 image(s); skipped 2 (same_stem 2); '
                        'failed 0.\n')


def test_a_folder_or_fifo_where_a_tag_file_goes_and_dangling_images(
    bundle_dir, folder, capsys):
  (folder / 'a.txt').mkdir()
  os.mkfifo(folder / 'rgba.txt')
  os.symlink('gone.png', folder / 'c.png')
  assert _tag(folder, '--bundle', bundle_dir) == 1
  err = capsys.readouterr().err
  assert (f'failed {folder / "a.png"}: tag_file_not_regular ('
          f'{folder / "a.txt"}: a folder)') in err
  assert (f'failed {folder / "rgba.png"}: tag_file_not_regular ('
          f'{folder / "rgba.txt"}: a FIFO)') in err
  assert (f'skipped {folder / "c.png"}: unreadable (a dangling symlink)'
          in err)
  assert os.path.isfile(folder / 'b.txt')   # the run went on
  assert err.endswith('tagged 1 image(s); skipped 2 (corrupt 1, '
                      'unreadable 1); failed 2 (tag_file_not_regular 2).\n')


def test_a_fifo_named_as_an_image_is_skipped_unopened(bundle_dir, folder,
                                                     capsys):
  os.mkfifo(folder / 'x.png')
  # Opening the FIFO would block for ever: fail the test instead of hanging.
  signal.signal(signal.SIGALRM, lambda *_: pytest.fail('the run hung'))
  signal.alarm(120)
  try:
    assert _tag(folder, '--bundle', bundle_dir) == 0
  finally:
    signal.alarm(0)
  err = capsys.readouterr().err
  assert (f'skipped {folder / "x.png"}: not_regular_file (a FIFO, not '
          'opened)') in err
  assert not os.path.lexists(folder / 'x.txt')
  assert err.endswith('tagged 3 image(s); skipped 2 (corrupt 1, '
                      'not_regular_file 1); failed 0.\n')


def test_existing_tag_files_in_utf8_bom_utf16_and_latin1(bundle_dir, folder,
                                                        capsys):
  (folder / 'a.txt').write_bytes(codecs.BOM_UTF8 + b'my_tag, 1girl')
  (folder / 'b.txt').write_bytes(codecs.BOM_UTF16_LE +
                                 'my_tag, café'.encode('utf-16-le'))
  latin1 = 'my_tag, café'.encode('latin-1')
  (folder / 'rgba.txt').write_bytes(latin1)
  assert _tag(folder, '--bundle', bundle_dir, '--threshold', '0',
              '--append_existing') == 1
  err = capsys.readouterr().err
  assert (f'failed {folder / "rgba.png"}: existing_bad_encoding ('
          f'{folder / "rgba.txt"}: not UTF-8 (at byte 11: ') in err
  assert (folder / 'rgba.txt').read_bytes() == latin1   # left untouched
  assert err.endswith('tagged 2 image(s); skipped 1 (corrupt 1); failed 1 '
                      '(existing_bad_encoding 1).\n')
  a = (folder / 'a.txt').read_bytes()
  assert a.startswith(codecs.BOM_UTF8)   # written back as it was
  tags = a[3:].decode('utf-8').split(', ')
  assert tags[:2] == ['my_tag', '1girl'] and len(tags) == len(set(tags)) == 9
  b = (folder / 'b.txt').read_bytes()
  assert b.startswith(codecs.BOM_UTF16_LE)
  tags = b[2:].decode('utf-16-le').split(', ')
  assert tags[:2] == ['my_tag', 'café'] and len(tags) == 10


def test_the_summary_counts_each_reason_and_the_exit_status(bundle_dir,
                                                            folder, capsys):
  shutil.copy(folder / 'a.png', folder / 'a.webp')          # same_stem
  (folder / 'b.txt').write_text('kept')                     # caption_exists
  os.symlink('a.png', folder / 'rgba.txt')                  # failed
  assert _tag(folder, folder / 'missing.png', '--bundle', bundle_dir) == 1
  err = capsys.readouterr().err
  assert err.endswith(
      '1 image(s) already have a tag file; use --overwrite or '
      '--append_existing to tag them again.\ntagged 1 image(s); skipped 4 '
      '(caption_exists 1, corrupt 1, not_found 1, same_stem 1); failed 1 '
      '(tag_file_is_symlink 1).\n')
  os.unlink(folder / 'rgba.txt')
  (folder / 'rgba.txt').write_text('kept')
  # Only skips: tagged 0 is no failure when every image was skipped by
  # choice (an existing tag file, a shared stem)...
  assert _tag(folder / 'a.webp', folder / 'b.jpg', folder / 'rgba.png',
              folder / 'a.png', '--bundle', bundle_dir) == 0
  # ... but is when nothing usable was found.
  assert _tag(folder / 'corrupt.png', '--bundle', bundle_dir) == 1


# ----------------------------------------------------------- atomic writes ---


def test_write_atomic_replaces_whole_and_keeps_the_permission_bits(tmp_path):
  path = tmp_path / 'a.txt'
  path.write_text('old')
  os.chmod(path, 0o640)
  tag_lib.write_atomic(str(path), b'new', os.stat(path).st_mode)
  assert path.read_text() == 'new'
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
  umask = os.umask(0o022)
  try:
    tag_lib.write_atomic(str(tmp_path / 'b.txt'), b'fresh')
  finally:
    os.umask(umask)
  assert stat.S_IMODE(os.stat(tmp_path / 'b.txt').st_mode) == 0o644
  assert sorted(os.listdir(tmp_path)) == ['a.txt', 'b.txt']


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / 'a.txt'
  path.write_text('old')

  def killed(src, dst):
    raise OSError(5, 'Input/output error')

  monkeypatch.setattr(os, 'replace', killed)
  with pytest.raises(OSError, match='Input/output error'):
    tag_lib.write_atomic(str(path), b'new')
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['a.txt']   # no temporary file left


def test_a_failed_write_is_reported_and_the_run_goes_on(bundle_dir, folder,
                                                       capsys, monkeypatch):
  replace = os.replace

  def full_disk_for_a(src, dst):
    if os.path.basename(dst) == 'a.txt':
      raise OSError(28, 'No space left on device')
    replace(src, dst)

  monkeypatch.setattr(os, 'replace', full_disk_for_a)
  assert _tag(folder, '--bundle', bundle_dir) == 1
  err = capsys.readouterr().err
  assert (f'failed {folder / "a.png"}: write_error ({folder / "a.txt"}: No '
          'space left on device)') in err
  assert not os.path.exists(folder / 'a.txt')
  assert os.path.isfile(folder / 'b.txt') and os.path.isfile(
      folder / 'rgba.txt')
  assert sorted(n for n in os.listdir(folder) if n.startswith('.')) == []


# --------------------------------------------------------- caption options ---


RESULT = {'rating': {'general': 0.9}, 'general': {
    'long_hair': 0.9, '^_^': 0.8, 'smile_(happy)': 0.7, 'o_o': 0.6},
          'character': {'hakurei_reimu': 0.95}}


def _args(**kw):
  base = dict(character_first=False, exclude='', prepend='',
              replace_underscores=False, escape_parentheses=False)
  return types.SimpleNamespace(**{**base, **kw})


def test_caption_options_one_by_one():
  assert tag_lib.caption_tags(RESULT, _args()) == [
      'long_hair', '^_^', 'smile_(happy)', 'o_o', 'hakurei_reimu']
  assert tag_lib.caption_tags(RESULT, _args(character_first=True))[0] == (
      'hakurei_reimu')
  assert tag_lib.caption_tags(RESULT, _args(replace_underscores=True)) == [
      'long hair', '^_^', 'smile (happy)', 'o_o', 'hakurei reimu']
  assert tag_lib.caption_tags(RESULT, _args(escape_parentheses=True))[2] == (
      r'smile_\(happy\)')
  assert tag_lib.caption_tags(RESULT, _args(exclude='^_^,o_o')) == [
      'long_hair', 'smile_(happy)', 'hakurei_reimu']
  assert tag_lib.caption_tags(RESULT, _args(prepend='masterpiece, solo'))[:3] \
      == ['masterpiece', 'solo', 'long_hair']
  assert tag_lib.caption_tags(
      RESULT, _args(replace_underscores=True),
      existing='long hair, other') == ['long hair', 'other', '^_^',
                                       'smile (happy)', 'o_o', 'hakurei reimu']


@pytest.mark.parametrize('kaomoji', ['^_^', '>_<', 'o_o', '0_0', '(o)_(o)',
                                     '+_+', 'x_x', '=_='])
def test_kaomoji_keep_their_underscores(kaomoji):
  assert tag_lib.format_tag(kaomoji, replace_underscores=True,
                            escape_parentheses=False) == kaomoji


# ------------------------------------------------------ formats, thresholds ---


def _scores_and_thresholds(bundle_dir, paths):
  tagger = tagger_lib.Tagger(bundle_dir)
  scores = tagger.scores(paths)
  return tagger, scores


def test_json_keeps_rating_general_and_character_apart(bundle_dir, folder,
                                                       capsys):
  paths = [str(folder / 'a.png'), str(folder / 'rgba.png')]
  assert _tag(*paths, '--bundle', bundle_dir, '--format', 'json',
              '--general_threshold', '0.5', '--character_threshold',
              '0.45') == 0
  records = json.loads(capsys.readouterr().out)
  tagger, scores = _scores_and_thresholds(bundle_dir, paths)
  names = tagger.names
  for record, row in zip(records, scores):
    assert set(record) == {'file', 'rating', 'general', 'character'}
    assert list(record['rating']) == ['general', 'sensitive',
                                      'questionable', 'explicit']
    want_general = {names[i] for i in range(4, 10) if row[i] >= 0.5}
    want_character = {names[i] for i in range(10, 12) if row[i] >= 0.45}
    assert set(record['general']) == want_general
    assert set(record['character']) == want_character
    for name, value in record['general'].items():
      assert value == pytest.approx(row[names.index(name)])


def test_bundle_thresholds_apply_when_not_overridden(bundle_dir, folder,
                                                     capsys):
  path = str(folder / 'a.png')
  assert _tag(path, '--bundle', bundle_dir, '--format', 'jsonl', '--policy',
              'f1') == 0
  record = json.loads(capsys.readouterr().out)
  tagger, scores = _scores_and_thresholds(bundle_dir, [path])
  limit = tagger.bundle.threshold_values(scores, 'f1')
  want = {tagger.names[i] for i in range(4, 10) if scores[0, i] >= limit[i]}
  assert set(record['general']) == want


def test_csv_and_all_scores(bundle_dir, folder, capsys, tmp_path):
  out = tmp_path / 'tags.csv'
  assert _tag(folder / 'a.png', '--bundle', bundle_dir, '--format', 'csv',
              '--output', out, '--threshold', '0') == 0
  rows = list(csv.DictReader(io.StringIO(out.read_text())))
  assert list(rows[0]) == ['file', 'rating', 'general', 'character']
  assert rows[0]['rating'] in ('general', 'explicit')
  assert len(rows[0]['general'].split(', ')) == 6
  assert _tag(folder / 'a.png', '--bundle', bundle_dir, '--format', 'jsonl',
              '--threshold', '1.5', '--all_scores') == 0
  record = json.loads(capsys.readouterr().out)
  assert len(record['general']) == 6 and len(record['character']) == 2


@pytest.mark.slow  # a subprocess
def test_command_line(loaded, folder, tmp_path):
  bundle_dir = loaded[0]
  env = {**os.environ, 'PYTHONPATH': os.getcwd(), 'JAX_PLATFORMS': 'cpu'}
  shutil.copy(folder / 'a.png', tmp_path / 'x.png')
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.tag', str(tmp_path), '--bundle',
       bundle_dir, '--replace_underscores', '--threshold', '0'],
      capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert 'tagged 1/1 images' in done.stderr
  assert 'long hair' in (tmp_path / 'x.txt').read_text()
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.tag', str(tmp_path / 'none*.png'),
       '--bundle', bundle_dir], capture_output=True, text=True, env=env,
      check=False)
  assert done.returncode == 1
