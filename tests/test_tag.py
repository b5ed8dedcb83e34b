"""The tagging command: files, folders, globs, unreadable files, captions,
output formats, thresholds and the exit status.

In-process runs of `jaxtag.tag.main` on a bundle of a randomly initialised
tiny model (tests/serving_fixtures.py); one subprocess run is slow.
"""
import csv
import io
import json
import os
import shutil
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
def bundle_dir(loaded, monkeypatch):
  """The bundle's folder; in this process it loads (and compiles) once."""
  directory, bundle = loaded
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
  assert 'skipped ' + str(folder / 'corrupt.png') in err
  assert 'notes.txt' not in err   # a folder gives its images only
  assert 'tagged 4 image(s), 1 unreadable' in err
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
  assert 'missing.png: no such file' in err


def test_existing_captions_are_kept_appended_to_or_overwritten(bundle_dir,
                                                               folder, capsys):
  image = folder / 'a.png'
  caption = folder / 'a.txt'
  caption.write_text('my_tag, 1girl')
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0') == 0
  assert caption.read_text() == 'my_tag, 1girl'
  assert 'already have a caption' in capsys.readouterr().err
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0',
              '--append-existing') == 0
  tags = caption.read_text().split(', ')
  assert tags[:2] == ['my_tag', '1girl'] and len(tags) == len(set(tags)) == 9
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0',
              '--append-existing') == 0
  assert caption.read_text().split(', ') == tags   # nothing added twice
  assert _tag(image, '--bundle', bundle_dir, '--threshold', '0',
              '--overwrite') == 0
  assert 'my_tag' not in caption.read_text()


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
              '--general-threshold', '0.5', '--character-threshold',
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
              '--threshold', '1.5', '--all-scores') == 0
  record = json.loads(capsys.readouterr().out)
  assert len(record['general']) == 6 and len(record['character']) == 2


@pytest.mark.slow  # a subprocess
def test_command_line(loaded, folder, tmp_path):
  bundle_dir = loaded[0]
  env = {**os.environ, 'PYTHONPATH': os.getcwd(), 'JAX_PLATFORMS': 'cpu'}
  shutil.copy(folder / 'a.png', tmp_path / 'x.png')
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.tag', str(tmp_path), '--bundle',
       bundle_dir, '--replace-underscores', '--threshold', '0'],
      capture_output=True, text=True, env=env, check=False)
  assert done.returncode == 0, done.stderr
  assert 'tagged 1/1 images' in done.stderr
  assert 'long hair' in (tmp_path / 'x.txt').read_text()
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.tag', str(tmp_path / 'none*.png'),
       '--bundle', bundle_dir], capture_output=True, text=True, env=env,
      check=False)
  assert done.returncode == 1
