"""The grain input pipeline: each process reads its share of every batch.

Global order: global position g of the training stream is record
perm_e[g % N] of epoch e = g // N, where perm_e is drawn from (seed, e) on
every process alike. Global batch k holds positions [kB, (k+1)B); process p
of P owns the positions with g % P == p, so its stream is the global one
strided [p::P]. Augmentation draws from (seed, g). Hence the global batches,
pixels included, do not depend on the number of processes or workers, and
a run on 2 processes equals a run on 1.

Eval: positions 0 .. ceil(N/B)*B - 1 in record order, the same striding;
positions >= N are padding rows with mask 0, so every process runs the same
number of batches and every record is counted exactly once.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Any

import grain
import numpy as np
from PIL import Image
from absl import flags
from absl import logging

from jaxtag.data import cartoonize
from jaxtag.data import geometry as geometry_lib
from jaxtag.data import labels as labels_lib
from jaxtag.data import ops

# A stream long enough never to end (grain needs a finite length).
_ENDLESS = 1 << 50


class SkipCounter:
  """Counts undecodable images; warns with the running count."""

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0

  def add(self, record: int, error: Exception) -> None:
    with self._lock:
      self.count += 1
      count = self.count
    logging.warning('Skipped %d undecodable image(s) so far (latest: record '
                    '%d: %s).', count, record, error)


def epoch_permutation(seed: int, epoch: int, num_records: int) -> np.ndarray:
  """The record order of one epoch, the same on every process."""
  return np.random.default_rng([seed, epoch]).permutation(num_records)


class _GlobalOrder:
  """Position g -> (g, record index): a fresh permutation every epoch.

  Reader threads near an epoch boundary read two epochs at once, so the cache
  keeps the last few epochs, and a lock makes the threads that miss compute
  each permutation once (it is O(N): 0.2 s at 5M records) instead of each
  computing its own.
  """

  _CACHED_EPOCHS = 3

  def __init__(self, num_records: int, seed: int):
    self.num_records, self.seed = num_records, seed
    self._lock = threading.Lock()
    self._permutations: dict[int, np.ndarray] = {}

  def __getstate__(self):  # worker processes start with their own cache
    return {'num_records': self.num_records, 'seed': self.seed}

  def __setstate__(self, state):
    self.__init__(state['num_records'], state['seed'])

  def __len__(self):
    return _ENDLESS

  def permutation(self, epoch: int) -> np.ndarray:
    perm = self._permutations.get(epoch)
    if perm is None:
      with self._lock:
        perm = self._permutations.get(epoch)  # another thread may have won
        if perm is None:
          perm = epoch_permutation(self.seed, epoch, self.num_records)
          self._permutations[epoch] = perm
          if len(self._permutations) > self._CACHED_EPOCHS:
            del self._permutations[min(self._permutations)]
    return perm

  def __getitem__(self, g: int):
    epoch, i = divmod(g, self.num_records)
    return g, int(self.permutation(epoch)[i])


class _EvalOrder:
  """Position g -> (g, record index or -1 for padding)."""

  def __init__(self, num_records: int, length: int):
    self.num_records, self.length = num_records, length

  def __len__(self):
    return self.length

  def __getitem__(self, g: int):
    return g, (g if g < self.num_records else -1)


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f'The global batch {global_batch} must be divisible by '
                     f'the {process_count} processes.')
  return global_batch // process_count


class _Loader:
  """Reads, decodes, augments one record; picklable for worker processes.

  Images leave as uint8: a quarter of the bytes of float32, and the train
  step normalises on the device. Labels are encoded by `encoder`
  (jaxtag.data.labels); `features` are record keys passed through as arrays
  because the model declared them.
  """

  def __init__(self, source, data_config, encoder, label_feature, seed,
               train: bool, *, features=(), geometry='square', shapes=None,
               label_overrides=None):
    self.source, self.encoder = source, encoder
    # {record: label value} used instead of the record's own label feature
    # (a teacher's captions of the train split).
    self.label_overrides = label_overrides
    self.cartoonize = ({'method': data_config.cartoonize,
                        **dict(data_config.cartoonize_options)}
                       if data_config.cartoonize else {})
    if self.cartoonize:
      cartoonize.make_cartoonizer(**self.cartoonize)  # bad options fail now
    self._cartoonizer = None
    self.skipped = SkipCounter()
    self.label_feature, self.seed, self.train = label_feature, seed, train
    self.feature_specs = dict(features)  # key -> (shape, dtype)
    self.size = int(data_config.image_size)
    self.crop = data_config.crop
    self.scale = tuple(data_config.crop_scale)
    self.flip = bool(data_config.flip)
    self.interpolation = data_config.interpolation
    self.resample = ops.resample(self.interpolation)
    self.train_interpolations = tuple(
        data_config.get('train_interpolations', ()))
    for name in self.train_interpolations:   # an unknown name fails now
      ops.resample(name, key='config.data.train_interpolations')
    self.geometry, self.shapes = geometry, shapes
    if self.crop not in ('random_resized', 'random', 'none'):
      raise ValueError(f'Unknown config.data.crop {self.crop!r}; valid: '
                       'random_resized, random, none.')
    geometry_lib.check(geometry)
    # A JPEG larger than this record needs is decoded at reduced size
    # (_plan); off, every image decodes at full size (the benchmark's
    # "before").
    self.reduced_decode = True

  def _plan(self, width: int, height: int, g: int):
    """(crop box in the stored image's pixels or None, flip, DCT scale,
    resize filter).

    The crop, the flip and then the training resize filter are drawn from
    (seed, g) and the stored size alone, so they do not depend on the
    scale, and adding a filter draw leaves the crop and flip as they were.
    The filter is drawn from config.data.train_interpolations when set;
    otherwise, and in evaluation, it is config.data.interpolation. The
    scale asked for is the largest (1, 2, 4, 8) at which what is resized
    still has `size` pixels on the side that matters: the crop's shorter
    side in training, the image's shorter side for the square and native
    eval geometries, its longer side for pad. The decode says which scale
    it applied (only JPEGs reduce). Cartoonisation works on the pixels as
    decoded, so it keeps the full size.
    """
    box, flip, interpolation = None, False, self.interpolation
    if self.train:
      rng = np.random.default_rng([self.seed, g])
      if self.crop == 'random_resized':
        box = ops.random_resized_crop_box(height, width, rng, self.scale)
      elif self.crop == 'random':
        box = ops.random_crop_box(height, width, rng, self.scale)
      else:
        box = (0, 0, width, height)
      flip = self.flip and rng.random() < 0.5
      if self.train_interpolations:
        interpolation = self.train_interpolations[
            int(rng.integers(len(self.train_interpolations)))]
    scale = 1
    if self.reduced_decode and not self.cartoonize:
      if box is not None:
        scale = ops.reduction(box[2] - box[0], box[3] - box[1],
                              shortest=self.size)
      elif self.geometry == 'pad':
        scale = ops.reduction(width, height, longest=self.size)
      else:
        scale = ops.reduction(width, height, shortest=self.size)
    return box, flip, scale, interpolation

  def _pixels(self, image, box, flip: bool, scale: int, bucket: int,
              interpolation: str) -> dict[str, np.ndarray]:
    if not self.train:
      if self.geometry == 'pad':
        return {'image': geometry_lib.pad(image, self.size, self.resample)}
      if self.geometry == 'native':
        pixels, mask = geometry_lib.native(image, self.shapes[bucket],
                                           self.resample)
        return {'image': pixels, 'image_mask': mask}
      return {'image': geometry_lib.square(image, self.size, self.resample)}
    if scale > 1:  # the same region of the image decoded `scale` times smaller
      box = tuple(v / scale for v in box)
    return {'image': ops.crop_resize(image, box, self.size, flip,
                                     interpolation)}

  def __getstate__(self):  # worker processes count on their own
    state = dict(self.__dict__)
    state['skipped'] = None
    state['_cartoonizer'] = None  # rebuilt in the worker
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.skipped = SkipCounter()

  def __call__(self, position):
    g, record, bucket = (*position, 0)[:3]
    if record < 0:
      return self._padding(record, bucket)
    example = self.source[record]
    value = (example[self.label_feature] if self.label_overrides is None
             else self.label_overrides.get(record, ()))
    try:
      out = self.encoder.encode(value, self.seed, g)
    except labels_lib.SkipExample as e:
      return self._skip(record, bucket, e)
    try:
      image = ops.open_image(example['image'])  # the header only
      box, flip, scale, interpolation = self._plan(*image.size, g)
      # The pad geometry's contract turns images by their EXIF orientation;
      # the others keep the stored orientation their shape buckets assume.
      # The scale the decode applied: a WebP or PNG decodes in full, and
      # its crop box stays in full-size pixels.
      image, scale = ops.decode_scaled(
          image, scale, upright=not self.train and self.geometry == 'pad')
    except Exception as e:  # pylint: disable=broad-except
      # Pillow raises several types for corrupt or truncated data. (A tag id
      # outside the vocabulary raised above: the dataset is wrong, not one
      # image, so it is never skipped.)
      return self._skip(record, bucket, e)
    if self.cartoonize:
      image = self._cartoon(image)
    out.update(self._pixels(image, box, flip, scale, bucket, interpolation))
    for key, (shape, dtype) in self.feature_specs.items():
      out[key] = np.asarray(example[key], dtype).reshape(shape)
    if not self.train:
      out['mask'] = np.float32(1.0)
      out['index'] = np.int32(record)
    return out

  def _cartoon(self, image):
    """The decoded image cartoonised (config.data.cartoonize), before any
    crop or resize, as Lan et al. (2022) cartoonise their photos."""
    if self._cartoonizer is None:
      self._cartoonizer = cartoonize.make_cartoonizer(**self.cartoonize)
    return Image.fromarray(self._cartoonizer(np.asarray(image)))

  def _skip(self, record: int, bucket: int, error: Exception):
    self.skipped.add(record, error)
    return None if self.train else self._padding(-1, bucket)

  def _padding(self, record: int, bucket: int):
    if self.geometry == 'native':
      h, w = self.shapes[bucket]
      out = {'image': np.zeros((h, w, 3), np.uint8),
             'image_mask': np.zeros((h, w), np.uint8)}
    else:
      out = {'image': np.zeros((self.size, self.size, 3), np.uint8)}
    out.update(self.encoder.padding())
    for key, (shape, dtype) in self.feature_specs.items():
      out[key] = np.zeros(shape, dtype)
    out['mask'] = np.float32(0.0)
    out['index'] = np.int32(record)
    return out


# Cores that 'auto' leaves to the training process on an accelerator host:
# its Python loop and the runtime's threads that feed the devices.
_TRAINER_CORES = 2
# Each worker is a whole Python process with its own buffers: past this many,
# host memory rather than cores becomes the limit.
_MAX_AUTO_WORKERS = 32
_MAX_AUTO_THREADS = 16


def host_cores() -> int:
  """The cores this process may run on (taskset, cgroups and SLURM limit it)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity
    return os.cpu_count() or 1


def _count(value, key: str, minimum: int):
  if value == 'auto' or (isinstance(value, int) and not isinstance(value, bool)
                         and value >= minimum):
    return value
  raise ValueError(f'config.data.{key} must be \'auto\' or an integer >= '
                   f'{minimum}, got {value!r}.')


def read_parallelism(workers, read_threads, *, cores: int,
                     accelerator: bool) -> tuple[int, int]:
  """(worker processes, reader threads in each reading process).

  `workers` and `read_threads` are config.data.workers and .read_threads:
  an integer, or 'auto' to size them from the host's `cores`. One process per
  host drives all of its accelerators, so 'auto' gives the decoding to worker
  processes on every core but _TRAINER_CORES. Without an accelerator the
  train step itself runs on every core, and worker processes would only
  compete with it: 'auto' then decodes in the training process's threads.
  """
  workers = _count(workers, 'workers', 0)
  read_threads = _count(read_threads, 'read_threads', 1)
  if workers == 'auto':
    workers = (min(_MAX_AUTO_WORKERS, max(0, cores - _TRAINER_CORES))
               if accelerator else 0)
  if read_threads == 'auto':
    # PIL decodes without the GIL, so threads scale up to the cores a process
    # has; two at least, so that one reads while another decodes.
    share = cores // workers if workers else cores
    read_threads = min(_MAX_AUTO_THREADS, max(2, share))
  return workers, read_threads


def host_read_parallelism(data_config) -> tuple[int, int]:
  """read_parallelism of config.data on this host."""
  # Imported here: worker processes import this module to unpickle the
  # loader, and need not load jax for it.
  import jax
  return read_parallelism(data_config.workers, data_config.read_threads,
                          cores=host_cores(),
                          accelerator=jax.default_backend() != 'cpu')


def _finish(ds: grain.MapDataset, local_batch: int, data_config,
            drop_remainder: bool) -> grain.IterDataset:
  workers, threads = host_read_parallelism(data_config)
  logging.log_first_n(logging.INFO, 'Input: %d worker process(es), %d reader '
                      'thread(s) each, on %d cores.', 1, workers, threads,
                      host_cores())
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=threads,
      prefetch_buffer_size=max(1, int(data_config.prefetch)) * local_batch))
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags when it starts workers; parsing them is
      # the program's entry point's business, not this library's.
      raise RuntimeError(
          f'config.data.workers gives {workers} grain worker process(es), and '
          'grain reads absl flags, which this program has not parsed: run '
          'it under absl.app.run, call absl.flags.FLAGS.mark_as_parsed() '
          'first (a notebook), or set config.data.workers=0.')
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers,
        per_worker_buffer_size=max(1, int(data_config.prefetch))))
  return ds


def _with_counter(ds: grain.IterDataset, loader: _Loader):
  """The iterator, with `.skipped_images` counting undecodable images.

  With worker processes each worker counts (and warns) on its own.
  """
  iterator = iter(ds)
  iterator.skipped_images = loader.skipped
  return iterator


def _encoder(encoder, num_classes):
  return encoder if encoder is not None else labels_lib.MultiHot(num_classes)


def create_train_iterator(source, *, data_config, num_classes: int,
                          label_feature: str, global_batch_size: int,
                          seed: int, process_index: int, process_count: int,
                          encoder=None, features=None,
                          label_overrides=None) -> Any:
  """An endless, checkpointable iterator of this process's train batches.

  encoder: a jaxtag.data.labels encoder (default multi-hot); features:
  {record key: (shape, dtype)} passed through for the model;
  label_overrides: {record: label value} replacing the records' own labels.
  """
  local = _local_batch(global_batch_size, process_count)
  if len(source) == 0:
    raise ValueError('The training split is empty.')
  ds = grain.MapDataset.source(_GlobalOrder(len(source), seed))
  loader = _Loader(source, data_config, _encoder(encoder, num_classes),
                   label_feature, seed, True, features=features or {},
                   label_overrides=label_overrides)
  ds = ds[process_index::process_count].map(loader)
  return _with_counter(_finish(ds, local, data_config, True), loader)


def num_eval_batches(num_records: int, global_batch_size: int) -> int:
  return math.ceil(num_records / global_batch_size)


class _BucketedEvalOrder:
  """Position g -> (g, record or -1, bucket): buckets one after another.

  Each bucket's records are in record order and padded to a whole number of
  global batches, so every batch has one shape and every process runs the
  same number of batches.
  """

  def __init__(self, buckets: list[list[int]], global_batch: int):
    self._entries = []
    for b, records in enumerate(buckets):
      padded = num_eval_batches(len(records), global_batch) * global_batch
      self._entries += [(r, b) for r in records]
      self._entries += [(-1, b)] * (padded - len(records))

  def __len__(self):
    return len(self._entries)

  def __getitem__(self, g: int):
    return (g, *self._entries[g])


def native_buckets(source, shapes) -> list[list[int]]:
  """Record indices per bucket, from every image's header (a read pass)."""
  buckets = [[] for _ in shapes]
  for record in range(len(source)):
    hw = geometry_lib.image_size(source[record]['image'])
    # An unreadable image goes to the first bucket; the loader counts it.
    b = geometry_lib.bucket_of(*hw, shapes) if hw else 0
    buckets[b].append(record)
  return buckets


def create_eval_iterator(source, *, data_config, num_classes: int,
                         label_feature: str, global_batch_size: int,
                         process_index: int, process_count: int,
                         encoder=None, features=None, geometry='square',
                         bucket_aspects=(1.0,)) -> Any:
  """This process's eval batches, in record order, padded and masked.

  With geometry='native' the batches come bucket by bucket (each with its
  own image shape) and each batch carries an `image_mask`.
  """
  local = _local_batch(global_batch_size, process_count)
  geometry_lib.check(geometry)
  shapes = None
  if geometry == 'native':
    shapes = geometry_lib.bucket_shapes(int(data_config.image_size),
                                        bucket_aspects)
    order = _BucketedEvalOrder(native_buckets(source, shapes),
                               global_batch_size)
  else:
    length = num_eval_batches(len(source),
                              global_batch_size) * global_batch_size
    order = _EvalOrder(len(source), length)
  ds = grain.MapDataset.source(order)
  loader = _Loader(source, data_config, _encoder(encoder, num_classes),
                   label_feature, 0, False, features=features or {},
                   geometry=geometry, shapes=shapes)
  ds = ds[process_index::process_count].map(loader)
  return _with_counter(_finish(ds, local, data_config, False), loader)
