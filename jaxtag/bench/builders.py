r"""Build speed of the real-dataset builders.

  python -m jaxtag.bench.builders --work DIR [--posts 20000] [--resize 448]
  python -m jaxtag.bench.builders --work DIR --posts 2000 \
      --beam_workers 1,2 [--rounds 2]

Writes a Danbooru dump of `--posts` posts (2021+ metadata, 512x512 JPEGs in
512px/, tags drawn from a Zipf vocabulary) and builds it with the resize
off and on; then builds each builder's test fixture (tests/
builder_fixtures.py). Prints build time and images/s per core, and appends
the figures to --out as JSON.

With --beam_workers, writes the same posts as the downloaded layout
(original/*.tar shards of 1000 members, metadata/posts.parquet) and builds
it in one process and on Beam with each number of local workers, in turn,
--rounds times (needs the beam extra).
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import sys
import time

import numpy as np
from absl import app
from absl import flags
from PIL import Image

FLAGS = flags.FLAGS


def _define_flags():
  """Defined only when run as a command, not when imported."""
  flags.DEFINE_string('work', None, 'Scratch folder (dumps, datasets).')
  flags.DEFINE_integer('posts', 20000, 'Posts in the generated dump.')
  flags.DEFINE_integer('resize', 448, 'Longest side of the resized build.')
  flags.DEFINE_integer(
      'distinct_images', 512, 'Different JPEGs written (files reuse them in '
      'turn; decoding time does not depend on which).')
  flags.DEFINE_string('out', 'runs/bench/builders.json',
                      'JSON file the figures are appended to.')
  flags.DEFINE_list(
      'beam_workers', None, 'Build the tar layout on Beam with these numbers '
      'of local workers (and in one process), instead of the default runs.')
  flags.DEFINE_integer('rounds', 2, '--beam_workers: rounds of builds, the '
                       'variants in turn.')


def _jpeg(rng: np.random.Generator, side: int = 512) -> bytes:
  """A smooth illustration-like picture with grain: about 60-100 KB."""
  y, x = np.mgrid[0:side, 0:side]
  freq = rng.uniform(10, 60, 4)
  colors = rng.uniform(-90, 90, (2, 3))
  base = (np.sin(x / freq[0] + y / freq[1])[..., None] * colors[0] +
          np.cos(y / freq[2] - x / freq[3])[..., None] * colors[1] + 128)
  pixels = (base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def write_danbooru_dump(root: str, posts: int, distinct: int,
                        seed: int = 0) -> None:
  """A 2021+ dump: metadata/posts000000000000.json and 512px/ JPEGs."""
  rng = np.random.default_rng(seed)
  pictures = [_jpeg(rng) for _ in range(distinct)]
  general = [f'general_{i}' for i in range(2000)]
  character = [f'character_{i}' for i in range(300)]
  zipf_g = 1 / np.arange(1, len(general) + 1)
  zipf_c = 1 / np.arange(1, len(character) + 1)
  os.makedirs(os.path.join(root, 'metadata'), exist_ok=True)
  with open(os.path.join(root, 'metadata', 'posts000000000000.json'),
            'w') as f:
    for i in range(posts):
      post_id = 100_000 + i
      tags_g = rng.choice(general, rng.integers(5, 30), replace=False,
                          p=zipf_g / zipf_g.sum())
      tags_c = rng.choice(character, rng.integers(0, 3), replace=False,
                          p=zipf_c / zipf_c.sum())
      f.write(json.dumps({
          'id': post_id, 'rating': 'gsqe'[i % 4], 'file_ext': 'jpg',
          'tag_string_general': ' '.join(tags_g),
          'tag_string_character': ' '.join(tags_c),
          'is_deleted': False, 'is_banned': False}) + '\n')
      folder = os.path.join(root, '512px', f'{post_id % 1000:04d}')
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, f'{post_id}.jpg'), 'wb') as image:
        image.write(pictures[i % distinct])


def write_tar_dump(root: str, posts: int, distinct: int, seed: int = 0,
                   per_shard: int = 1000) -> None:
  """The downloaded layout of the same posts as write_danbooru_dump:
  original/data-NNNN.tar with members <id>.jpg, metadata/posts.parquet."""
  import tarfile  # pylint: disable=g-import-not-at-top
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, 'folder')
  write_danbooru_dump(folder, posts, distinct, seed)
  with open(os.path.join(folder, 'metadata', 'posts000000000000.json')) as f:
    rows = [json.loads(line) for line in f]
  os.makedirs(os.path.join(root, 'metadata'), exist_ok=True)
  os.makedirs(os.path.join(root, 'original'), exist_ok=True)
  pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), os.path.join(
      root, 'metadata', 'posts.parquet'))
  for start in range(0, len(rows), per_shard):
    path = os.path.join(root, 'original', f'data-{start // per_shard:04d}.tar')
    with tarfile.open(path, 'w') as tar:
      for row in rows[start:start + per_shard]:
        post_id = row['id']
        tar.add(os.path.join(folder, '512px', f'{post_id % 1000:04d}',
                             f'{post_id}.jpg'), arcname=f'{post_id}.jpg')
  shutil.rmtree(folder)


def beam_builds(work: str, posts: int, workers: list[int],
                rounds: int) -> list[dict]:
  """One-process and Beam builds of the tar layout, in turn."""
  from data_builders import beam_build  # pylint: disable=g-import-not-at-top
  dump = os.path.join(work, f'danbooru_tar_{posts}')
  if not os.path.exists(os.path.join(dump, 'metadata')):
    write_tar_dump(dump, posts, FLAGS.distinct_images)
  results = []
  for _ in range(rounds):
    for n in [None] + workers:
      options = beam_build.pipeline_options(n) if n else None
      result = timed_build('danbooru', dump, os.path.join(work, 'tar_data'),
                           {}, beam_options=options)
      result['beam_workers'] = n
      result['load_average'] = [round(v, 2) for v in os.getloadavg()]
      print(json.dumps(result), flush=True)
      results.append(result)
  return results


def _cpu_seconds() -> float:
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return (own.ru_utime + own.ru_stime + children.ru_utime +
          children.ru_stime)


def timed_build(name: str, manual_dir: str, data_dir: str,
                options: dict, beam_options=None) -> dict:
  """Builds once into a fresh data_dir; wall time and images/s."""
  from data_builders import images  # pylint: disable=g-import-not-at-top
  from jaxtag.data import build  # pylint: disable=g-import-not-at-top
  shutil.rmtree(data_dir, ignore_errors=True)
  builder = build.get_builder(name, data_dir, options)
  cpu_before = _cpu_seconds()
  start = time.perf_counter()
  build.ensure_built(builder, manual_dir, beam_options)
  seconds = time.perf_counter() - start
  cpu = _cpu_seconds() - cpu_before
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    examples = sum(json.load(f)['examples'].values())
  workers = (os.cpu_count() or 1) if examples >= images.PARALLEL_MIN_IMAGES \
      else 1
  if beam_options is not None:
    workers = beam_options.get_all_options()['direct_num_workers'] or (
        os.cpu_count() or 1)
  size = sum(os.path.getsize(os.path.join(d, n))
             for d, _, files in os.walk(builder.data_dir) for n in files)
  return {'builder': name, 'options': options, 'examples': examples,
          'seconds': round(seconds, 2), 'workers': workers,
          'images_per_s': round(examples / seconds, 1),
          'images_per_s_per_core': round(examples / seconds / workers, 1),
          # CPU time of this process and its (finished) workers: what the
          # build costs, less distorted by other jobs on a shared machine.
          'cpu_seconds': round(cpu, 2),
          'images_per_cpu_s': round(examples / cpu, 1),
          'dataset_mb': round(size / 2**20, 1)}


def fixture_builds(work: str) -> list[dict]:
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..',
                                  'tests'))
  import builder_fixtures as fx  # pylint: disable=g-import-not-at-top
  fx.write_danbooru(os.path.join(work, 'fx_danbooru'), fx.danbooru_posts())
  fx.write_tagged_folder(os.path.join(work, 'fx_tagged'), True)
  fx.write_pixiv(os.path.join(work, 'fx_pixiv'), fx.pixiv_posts())
  splits = {'split_fractions': 'train=0.6,validation=0.2,test=0.2'}
  return [
      timed_build('danbooru', os.path.join(work, 'fx_danbooru'),
                  os.path.join(work, 'fx_data'), splits),
      timed_build('tagged_folder', os.path.join(work, 'fx_tagged'),
                  os.path.join(work, 'fx_data'), splits),
      timed_build('pixiv_characters', os.path.join(work, 'fx_pixiv'),
                  os.path.join(work, 'fx_data'),
                  {**splits, 'num_top': 2, 'min_shared': 2}),
  ] + [timed_build(name, folder, os.path.join(work, 'fx_data'), {})
       for name, folder in part_b_fixtures(work)]


def part_b_fixtures(work: str) -> list[tuple[str, str]]:
  """(builder, folder) of the tests/builder_fixtures_b.py fixtures."""
  import builder_fixtures_b as fb  # pylint: disable=g-import-not-at-top
  out = []
  for name, write in (('image_folder', fb.image_folder),
                      ('animeface_character', fb.animeface),
                      ('voc2007', fb.voc2007), ('coco2014', fb.coco2014),
                      ('flickr8k', fb.flickr8k)):
    folder = os.path.join(work, f'fx_{name}')
    write(folder)
    out.append((name, folder))
  return out


def main(argv):
  del argv
  if not FLAGS.work:
    raise app.UsageError('--work DIR is required (scratch space).')
  work = FLAGS.work
  if FLAGS.beam_workers:
    results = beam_builds(work, FLAGS.posts,
                          [int(n) for n in FLAGS.beam_workers], FLAGS.rounds)
    _append(FLAGS.out, results)
    return
  results = fixture_builds(work)
  dump = os.path.join(work, f'danbooru_{FLAGS.posts}')
  if not os.path.exists(os.path.join(dump, 'metadata')):
    start = time.perf_counter()
    write_danbooru_dump(dump, FLAGS.posts, FLAGS.distinct_images)
    print(f'wrote the dump in {time.perf_counter() - start:.0f} s')
  for options in ({}, {'resize': FLAGS.resize}):
    results.append(timed_build('danbooru', dump,
                               os.path.join(work, 'dump_data'), options))
    shutil.rmtree(os.path.join(work, 'dump_data'), ignore_errors=True)
  for r in results:
    print(json.dumps(r))
  _append(FLAGS.out, results)


def _append(path: str, results: list[dict]) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  records = []
  if os.path.exists(path):
    with open(path) as f:
      records = json.load(f)
  with open(path, 'w') as f:
    json.dump(records + results, f, indent=1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
