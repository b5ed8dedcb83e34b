"""jaxtag.tag at scale: the onnxruntime backend against JAX, the batch split
over local devices, resuming a killed run, and a two-process launch whose
output equals one process's.

In-process runs on the shared tiny bundle (tests/serving_fixtures.py); the
multi-process run is slow (subprocesses through launch/local.sh).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import serving_fixtures as fx
import subprocess_env
from jaxtag import tag as tag_lib
from jaxtag.serving import backends
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import tagger as tagger_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bundle_dir(monkeypatch, tmp_path_factory):
  """The shared bundle's folder (loaded once per process); ONNX exports go
  to a cache of the tests."""
  directory, _, _, bundle = fx.shared_bundle()
  monkeypatch.setattr(
      bundle_lib, 'load_bundle',
      lambda d: bundle if os.path.samefile(d, directory) else None)
  monkeypatch.setenv('JAXTAG_CACHE', str(tmp_path_factory.getbasetemp()
                                         / 'jaxtag_cache'))
  return directory


def _images(folder, n, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    h, w = rng.integers(16, 48, 2)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
        folder / f'img{i:03d}.png')
  return folder


def _pixels(bundle, n, seed=1):
  size = bundle.preprocess.size
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, 3), np.uint8)


def test_onnxruntime_scores_equal_jax_and_the_export_goes_to_the_cache(
    bundle_dir, tmp_path_factory):
  bundle = bundle_lib.load_bundle(bundle_dir)
  before = sorted(os.listdir(bundle_dir))
  ort = backends.make_predictor(bundle, 'onnxruntime')
  assert isinstance(ort, backends.OrtPredictor)
  assert ort.path.startswith(str(tmp_path_factory.getbasetemp()))
  assert ort.image_size == bundle.preprocess.size
  assert sorted(os.listdir(bundle_dir)) == before  # the bundle untouched
  pixels = _pixels(bundle, 6)
  np.testing.assert_allclose(ort(pixels), bundle.predict(pixels), atol=1e-4)
  # auto picks onnxruntime on CPU and finds the cached graph again.
  again = backends.make_predictor(bundle, 'auto')
  assert isinstance(again, backends.OrtPredictor) and again.path == ort.path


def test_jax_splits_a_batch_over_the_local_devices_and_pads_it(bundle_dir):
  bundle = bundle_lib.load_bundle(bundle_dir)
  predictor = backends.make_predictor(bundle, 'jax')
  assert len(predictor.devices) == jax.local_device_count() == 8
  pixels = _pixels(bundle, 5)   # 5 rows: padded to 8, one per device
  np.testing.assert_allclose(predictor(pixels), bundle.predict(pixels),
                             atol=1e-5)


def test_tags_are_the_same_with_both_backends(bundle_dir, tmp_path):
  folder = _images(tmp_path / 'images', 6)
  scores = {}
  for backend in ('jax', 'onnxruntime'):
    out = tmp_path / f'{backend}.jsonl'
    assert tag_lib.main([str(folder), '--bundle', bundle_dir, '--format',
                         'jsonl', '--all_scores', '--output', str(out),
                         '--backend', backend, '--quiet']) == 0
    scores[backend] = [json.loads(line) for line in out.read_text().split(
        '\n') if line]
  assert len(scores['jax']) == 6
  for a, b in zip(scores['jax'], scores['onnxruntime']):
    assert a['file'] == b['file']
    for group in ('rating', 'general', 'character'):
      assert a[group].keys() == b[group].keys()
      np.testing.assert_allclose(list(a[group].values()),
                                 list(b[group].values()), atol=1e-4)


class Killed(BaseException):
  """Stands for the process being killed between two batches."""


def _kill_after(monkeypatch, batches):
  real = tag_lib._write_batch  # pylint: disable=protected-access
  calls = []

  def write_then_die(*args, **kwargs):
    if len(calls) == batches:
      raise Killed
    calls.append(1)
    return real(*args, **kwargs)
  monkeypatch.setattr(tag_lib, '_write_batch', write_then_die)


def test_a_killed_txt_run_resumes_with_skip_existing(bundle_dir, tmp_path,
                                                     monkeypatch, capsys):
  folder = _images(tmp_path / 'images', 12)
  reference = _images(tmp_path / 'reference', 12)
  args = ['--bundle', bundle_dir, '--batch_size', '4', '--threshold', '0.5',
          '--quiet']
  assert tag_lib.main([str(reference), *args]) == 0
  with monkeypatch.context() as m:
    _kill_after(m, 2)
    with pytest.raises(Killed):
      tag_lib.main([str(folder), *args])
  assert len(list(folder.glob('*.txt'))) == 8
  capsys.readouterr()
  assert tag_lib.main([str(folder), *args, '--skip_existing']) == 0
  assert ('tagged 4 image(s); skipped 8 (caption_exists 8)'
          in capsys.readouterr().err)
  for path in reference.glob('*.txt'):
    assert (folder / path.name).read_text() == path.read_text()


def test_a_killed_jsonl_run_resumes_from_its_part_file(bundle_dir, tmp_path,
                                                       monkeypatch, capsys):
  folder = _images(tmp_path / 'images', 10)
  args = [str(folder), '--bundle', bundle_dir, '--batch_size', '4',
          '--format', 'jsonl', '--quiet']
  whole = tmp_path / 'whole.jsonl'
  assert tag_lib.main([*args, '--output', str(whole)]) == 0
  out = tmp_path / 'resumed.jsonl'
  with monkeypatch.context() as m:
    _kill_after(m, 1)
    with pytest.raises(Killed):
      tag_lib.main([*args, '--output', str(out)])
  part = tmp_path / 'resumed.jsonl.part0-of-1.jsonl'
  assert len(part.read_text().splitlines()) == 4 and not out.exists()
  with open(part, 'a', encoding='utf-8') as f:
    f.write('{"file": "cut by the ki')   # a line the kill cut short
  capsys.readouterr()
  assert tag_lib.main([*args, '--output', str(out), '--skip_existing']) == 0
  assert ('tagged 6 image(s); skipped 4 (already_tagged 4)'
          in capsys.readouterr().err)
  assert out.read_text() == whole.read_text()
  assert not part.exists()
  files = [json.loads(line)['file'] for line in out.read_text().splitlines()]
  assert files == sorted(str(p) for p in folder.glob('*.png'))


def test_skip_existing_refuses_overwrite(tmp_path, capsys):
  assert tag_lib.main([str(tmp_path), '--bundle', str(tmp_path),
                       '--skip_existing', '--overwrite']) == 2
  assert '--skip_existing' in capsys.readouterr().err


def test_progress_shows_the_rate_and_the_eta(capsys):
  progress = tag_lib.Progress(100, enabled=True)
  progress.start -= 10.0   # 10 s ago: 20 images -> 2 img/s, 40 s left
  progress.last -= 1.0
  progress(20)
  err = capsys.readouterr().err
  assert 'tagged 20/100 images, 2.0 img/s, ETA 0m40s' in err


@pytest.mark.slow  # two launches of subprocesses
def test_two_processes_tag_each_image_once_like_one_process(tmp_path):
  directory = fx.shared_bundle()[0]
  folder = _images(tmp_path / 'images', 50)
  outputs = {}
  for n in (1, 2):
    out = tmp_path / f'{n}.jsonl'
    proc = subprocess.run(
        ['bash', 'launch/local.sh', str(n), '--', sys.executable, '-m',
         'jaxtag.tag', str(folder), '--bundle', directory, '--backend',
         'jax', '--batch_size', '8', '--format', 'jsonl', '--all_scores',
         '--output', str(out), '--quiet'],
        cwd=ROOT, env=subprocess_env.env(PYTHONPATH=ROOT,
                                         JAXTAG_LOCAL_DEVICES='2'),
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs[n] = out.read_text()
    if n == 2:   # each process tagged its own half
      assert '[p0] tagged 25 image(s)' in proc.stdout
      assert '[p1] tagged 25 image(s)' in proc.stdout
  files = [json.loads(line)['file'] for line in outputs[2].splitlines()]
  assert files == sorted(str(p) for p in folder.glob('*.png'))
  assert outputs[2] == outputs[1]
  assert not list(tmp_path.glob('*.part*'))
