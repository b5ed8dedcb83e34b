"""The grain pipeline on an in-memory source of small PNGs."""
import collections
import concurrent.futures
import io
import threading
import time

import numpy as np
import PIL
import pytest
from absl import flags
from PIL import Image

from jaxtag import config as config_lib
from jaxtag.data import geometry
from jaxtag.data import labels
from jaxtag.data import ops
from jaxtag.data import pipeline

NUM_CLASSES = 6


def _png(seed: int, size: int = 16) -> bytes:
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
      buf, format='PNG')
  return buf.getvalue()


def _source(n: int, corrupt=()):
  """Like a TFDS data source: record i has a unique first pixel row."""
  out = []
  for i in range(n):
    image = _png(i)
    if i in corrupt:
      image = image[:40]  # truncated PNG
    out.append({'image': image, 'tags': [i % NUM_CLASSES,
                                         (i + 1) % NUM_CLASSES]})
  return out


def _data_config(**overrides):
  c = config_lib.defaults().data  # the schema's types, as a run has them
  c.update(dict(
      image_size=8, crop='random_resized', crop_scale=(0.3, 1.0), flip=True,
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), workers=0, prefetch=2))
  c.update(overrides)
  return c


def _train(source, process_index=0, process_count=1, batch=8, **overrides):
  return pipeline.create_train_iterator(
      source, data_config=_data_config(**overrides), num_classes=NUM_CLASSES,
      label_feature='tags', global_batch_size=batch, seed=7,
      process_index=process_index, process_count=process_count)


def test_two_processes_split_each_global_batch_exactly():
  source = _source(32)
  single = _train(source)
  halves = [_train(source, p, 2) for p in range(2)]
  seen = [collections.Counter(), collections.Counter()]
  everything = collections.Counter()
  for _ in range(8):  # two epochs of 4 global batches
    whole = next(single)
    everything.update(map(bytes, whole['image'].reshape(8, -1)))
    parts = [next(h) for h in halves]
    assert parts[0]['image'].shape == (4, 8, 8, 3)
    # Same global batch: identical rows (pixels and labels), other order.
    rows_whole = sorted(map(bytes, np.concatenate(
        [whole['image'].reshape(8, -1), whole['labels']], 1)))
    rows_parts = sorted(map(bytes, np.concatenate(
        [np.concatenate([p['image'] for p in parts]).reshape(8, -1),
         np.concatenate([p['labels'] for p in parts])], 1)))
    assert rows_whole == rows_parts
    for p in range(2):
      seen[p].update(map(bytes, parts[p]['image'].reshape(4, -1)))
  # Each position has its own crop, so 64 distinct rows: one per position.
  assert len(everything) == 64
  # Disjoint shares whose union is everything, over an epoch pair.
  assert not set(seen[0]) & set(seen[1])
  assert seen[0] + seen[1] == everything


def test_each_epoch_covers_the_split_once_and_reshuffles():
  source = _source(16)
  order = pipeline._GlobalOrder(16, seed=3)  # pylint: disable=protected-access
  epoch0 = [order[g][1] for g in range(16)]
  epoch1 = [order[g][1] for g in range(16, 32)]
  assert sorted(epoch0) == sorted(epoch1) == list(range(16))
  assert epoch0 != epoch1
  shares = [[order[g][1] for g in range(p, 16, 2)] for p in range(2)]
  assert sorted(shares[0] + shares[1]) == list(range(16))
  del source


def test_each_epoch_permutation_is_computed_once_by_concurrent_readers(
    monkeypatch):
  n, seed, num_threads = 50, 11, 16
  computed = collections.Counter()
  original = pipeline.epoch_permutation

  def counting(seed_, epoch, num_records):
    computed[epoch] += 1
    time.sleep(0.02)  # hold the miss open so that other threads collide
    return original(seed_, epoch, num_records)

  monkeypatch.setattr(pipeline, 'epoch_permutation', counting)
  order = pipeline._GlobalOrder(n, seed)  # pylint: disable=protected-access
  # The tail of epoch 0, all of epoch 1, the head of epoch 2, each thread in
  # its own order, all starting at once.
  positions = np.arange(n - 20, 2 * n + 20)
  start = threading.Barrier(num_threads)

  def read(t):
    start.wait()
    return [order[int(g)] for g in np.random.default_rng(t).permutation(
        positions)]

  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    reads = list(pool.map(read, range(num_threads)))
  assert computed == {0: 1, 1: 1, 2: 1}
  want = [np.random.default_rng([seed, e]).permutation(n) for e in range(3)]
  for got in reads:
    assert [r for _, r in got] == [want[g // n][g % n] for g, _ in got]

  # The real pipeline: 8 reader threads over 4 epochs of 10 records.
  computed.clear()
  it = _train(_source(10), batch=4, read_threads=8)
  for _ in range(10):
    next(it)
  assert {0, 1, 2, 3} <= set(computed)
  assert set(computed.values()) == {1}, computed


@pytest.mark.parametrize('workers,read_threads,cores,accelerator,want', [
    ('auto', 'auto', 2, False, (0, 2)),     # this project's CPU machine
    ('auto', 'auto', 64, False, (0, 16)),   # the step uses the cores
    ('auto', 'auto', 2, True, (0, 2)),      # no core to spare
    ('auto', 'auto', 8, True, (6, 2)),      # 2 cores kept for training
    ('auto', 'auto', 96, True, (32, 3)),    # capped; 96 // 32 threads each
    (4, 'auto', 64, True, (4, 16)),
    (0, 3, 64, True, (0, 3)),
    ('auto', 5, 16, True, (14, 5)),
])
def test_read_parallelism_from_config_and_cores(workers, read_threads, cores,
                                                accelerator, want):
  assert pipeline.read_parallelism(workers, read_threads, cores=cores,
                                   accelerator=accelerator) == want


def test_read_parallelism_rejects_other_values():
  with pytest.raises(ValueError, match=r"config.data.workers must be 'auto' "
                     r"or an integer >= 0, got 'four'"):
    pipeline.read_parallelism('four', 'auto', cores=4, accelerator=True)
  with pytest.raises(ValueError, match=r'config.data.workers .* got -1'):
    pipeline.read_parallelism(-1, 'auto', cores=4, accelerator=True)
  with pytest.raises(ValueError, match=r'config.data.read_threads .* >= 1, '
                     'got 0'):
    pipeline.read_parallelism(0, 0, cores=4, accelerator=True)
  with pytest.raises(ValueError, match=r'config.data.read_threads .* got True'):
    pipeline.read_parallelism(0, True, cores=4, accelerator=True)


@pytest.mark.parametrize('n,batch,processes', [(23, 8, 1), (23, 8, 2),
                                               (10, 6, 3), (5, 8, 2)])
def test_eval_padding_counts_every_example_once(n, batch, processes):
  source = _source(n)
  seen, lengths = [], []
  for p in range(processes):
    batches = list(pipeline.create_eval_iterator(
        source, data_config=_data_config(), num_classes=NUM_CLASSES,
        label_feature='tags', global_batch_size=batch, process_index=p,
        process_count=processes))
    lengths.append(len(batches))
    for b in batches:
      assert b['image'].shape[0] == batch // processes
      seen.extend(b['index'][b['mask'] > 0].tolist())
      assert (b['index'][b['mask'] == 0] == -1).all()
  assert lengths == [pipeline.num_eval_batches(n, batch)] * processes
  assert sorted(seen) == list(range(n))


def test_restored_iterator_continues_identically():
  source = _source(20)
  it = _train(source)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  restored = _train(source)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['labels'], want['labels'])


@pytest.mark.slow  # starts a grain worker process
def test_restored_iterator_with_a_worker_process():
  source = _source(20)
  it = _train(source, workers=1)
  next(it)
  state = it.get_state()
  want = next(it)
  restored = _train(source, workers=1)
  restored.set_state(state)
  np.testing.assert_array_equal(next(restored)['image'], want['image'])
  # Workers do not change the stream: it equals the in-process one.
  plain = _train(source)
  next(plain)
  np.testing.assert_array_equal(next(plain)['image'], want['image'])


def test_worker_processes_need_the_entry_point_to_have_parsed_flags():
  """grain reads absl flags when it starts workers; the library leaves
  parsing them to the program (conftest.py parses them for the tests)."""
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(RuntimeError, match='config.data.workers=0'):
      _train(_source(8), workers=1)
  finally:
    flags.FLAGS.mark_as_parsed()


def test_corrupt_png_is_skipped_and_counted_in_training():
  source = _source(12, corrupt={2, 5})
  it = _train(source, batch=4)
  rows = [next(it) for _ in range(5)]  # 10 good records an epoch
  assert it.skipped_images.count >= 2
  assert all(r['image'].shape == (4, 8, 8, 3) for r in rows)


def test_corrupt_png_is_masked_and_counted_in_eval():
  source = _source(12, corrupt={2, 5})
  it = pipeline.create_eval_iterator(
      source, data_config=_data_config(), num_classes=NUM_CLASSES,
      label_feature='tags', global_batch_size=4, process_index=0,
      process_count=1)
  batches = list(it)
  assert it.skipped_images.count == 2
  mask = np.concatenate([b['mask'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  assert len(mask) == 12 and mask.sum() == 10
  assert sorted(index[mask > 0]) == sorted(set(range(12)) - {2, 5})


def test_ops_against_numpy():
  rng = np.random.default_rng(0)
  for _ in range(50):
    left, top, right, bottom = ops.random_resized_crop_box(30, 20, rng,
                                                           (0.1, 1.0))
    assert 0 <= left < right <= 20 and 0 <= top < bottom <= 30
  image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
  same = ops.crop_resize(image, (0, 0, 4, 4), 4, flip=False)
  np.testing.assert_array_equal(same, np.asarray(image))
  flipped = ops.crop_resize(image, (0, 0, 4, 4), 4, flip=True)
  np.testing.assert_array_equal(flipped, np.asarray(image)[:, ::-1])
  np.testing.assert_array_equal(labels.multi_hot([0, 3], 5), [1, 0, 0, 1, 0])
  with pytest.raises(ValueError, match='outside the vocabulary'):
    labels.multi_hot([7], 5)
  with pytest.raises(PIL.UnidentifiedImageError,
                     match='cannot identify image file'):
    ops.decode_png(b'\x89PNG\r\n\x1a\nbroken')


def test_device_feed_checkpoints_the_first_unconsumed_batch():
  from jaxtag.data import device_feed
  source = _source(24)
  sent = []

  def to_device(batch):
    sent.append(batch['image'])
    return batch

  feed = device_feed.DeviceFeed(_train(source, batch=4), to_device, size=2)
  consumed = [next(feed) for _ in range(3)]
  # Two batches beyond the consumed ones are already on their way...
  assert len(sent) == 5
  state = feed.get_state()
  expected = [next(feed)['image'] for _ in range(3)]
  # ...yet a restore resumes right after the last consumed batch.
  restored = device_feed.DeviceFeed(_train(source, batch=4), lambda b: b,
                                    size=2)
  restored.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(restored)['image'], want)
  plain = _train(source, batch=4)
  for got in consumed:
    np.testing.assert_array_equal(got['image'], next(plain)['image'])


def test_area_interpolation_is_the_block_mean():
  """'area' shrinks by averaging each output pixel's footprint, like OpenCV's
  INTER_AREA: an integer factor gives exact block means (worked in numpy)."""
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  blocks = pixels.reshape(4, 3, 6, 3, 3).astype(np.float64).mean(axis=(1, 3))
  crop = ops.crop_resize(image, (0, 0, 18, 12), 6, flip=False,
                         interpolation='area')
  np.testing.assert_allclose(crop, pixels.reshape(6, 2, 6, 3, 3).astype(
      np.float64).mean(axis=(1, 3)), atol=1)
  bilinear = ops.crop_resize(image, (0, 0, 18, 12), 6, flip=False)
  assert np.abs(bilinear - crop.astype(float)).max() > 1
  shortest = geometry.native(image, (4, 6), ops.resample('area'))[0]
  np.testing.assert_allclose(shortest, np.round(blocks), atol=1)
  with pytest.raises(ValueError, match='valid: bilinear, area, bicubic, lanczos'):
    ops.resample('nearest')


def test_train_interpolations_draw_a_filter_per_image_and_keep_the_crop():
  """With config.data.train_interpolations, training example g is exactly
  what a run with interpolation=<the name drawn for g> gives (same crop,
  same flip); evaluation keeps config.data.interpolation."""
  source = [{'image': _png(i, size=40), 'tags': [1]} for i in range(24)]
  names = ('area', 'bilinear', 'bicubic')

  def loader(train, **data):
    return pipeline._Loader(  # pylint: disable=protected-access
        source, _data_config(**data), labels.MultiHot(NUM_CLASSES), 'tags',
        7, train)

  drawn = loader(True, train_interpolations=names)
  fixed = {name: loader(True, interpolation=name) for name in names}
  seen = collections.Counter()
  for g in range(24):
    # Drawn after the crop and the flip, from the same (seed, g) stream.
    rng = np.random.default_rng([7, g])
    ops.random_resized_crop_box(40, 40, rng, (0.3, 1.0))
    rng.random()
    name = names[int(rng.integers(3))]
    seen[name] += 1
    np.testing.assert_array_equal(drawn((g, g))['image'],
                                  fixed[name]((g, g))['image'])
  assert set(seen) == set(names)
  # The filters differ on these pictures, so the draw is what decided.
  a, b = fixed['area']((0, 0))['image'], fixed['bicubic']((0, 0))['image']
  assert np.abs(a.astype(int) - b).max() > 0
  plain = loader(False)
  evaluated = loader(False, train_interpolations=names)
  for g in range(3):
    np.testing.assert_array_equal(evaluated((g, g))['image'],
                                  plain((g, g))['image'])
  with pytest.raises(ValueError, match="config.data.train_interpolations "
                     "'nearest'; valid: bilinear, area, bicubic"):
    loader(True, train_interpolations=('area', 'nearest'))
