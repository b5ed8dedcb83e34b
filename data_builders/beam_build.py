r"""Builds a manual builder's splits on Apache Beam (TFDS's Beam support).

  python -m jaxtag.data.build danbooru --manual_dir DIR --data_dir DIR \
      --beam --workers 8
  python -m jaxtag.data.build danbooru --manual_dir gs://B/danbooru2023 \
      --data_dir gs://B/tfds --beam --beam_options="--runner=DataflowRunner \
      --project=P --region=R --temp_location=gs://B/tmp \
      --setup_file=./pyproject.toml --experiments=use_runner_v2"

`--beam --workers N` runs on Beam's DirectRunner with N local worker
processes; `--beam_options` is passed to Beam as it is (a `--runner` in it
replaces the DirectRunner): the same pipeline runs on Dataflow, Spark or
Flink (data_builders/danbooru/README.md lists the options of each).

What runs where:
- the launching process reads the metadata and the layout (tar indexes,
  TFRecord indexes) and works out every split's records (image source,
  labels) exactly as a one-process build does; it writes them in chunks
  (64 records, more for splits over 262,144 records) into `_beam_records/`
  of the dataset's temporary folder;
- the workers read a chunk each, decode and store every image with the
  same code as a one-process build (data_builders/images.py), and hand the
  (key, example) pairs to TFDS's BeamWriter, which sorts them by the hashed
  key and writes the array_record shards; the images they skip come back
  as a short list per split;
- the launching process then writes the skip counts and the train split's
  label statistics (selected_tags.csv counts, label_stats.npz) from the
  records less those skipped, and removes `_beam_records/`.

So the examples equal a one-process build's: the same keys, the same bytes
per example, in the same order (TFDS's BeamWriter may cut a split into
shards at other places than its one-process writer: the records' order and
bytes are the same).
"""
from __future__ import annotations

import json
import math
import pickle
import shlex
from collections.abc import Sequence

from etils import epath

from data_builders import images
from data_builders import manual

# Records per chunk file: at least CHUNK_RECORDS, and no more than
# MAX_CHUNKS files per split (each is one write from the launching process).
CHUNK_RECORDS = 64
MAX_CHUNKS = 4096
_RECORDS_FOLDER = '_beam_records'


def pipeline_options(workers: int | None, options: str = ''):
  """Beam PipelineOptions: the DirectRunner with `workers` processes unless
  `options` (command-line style) name a runner; then `options` alone."""
  from apache_beam.options import pipeline_options as beam_options  # pylint: disable=g-import-not-at-top
  args = shlex.split(options or '')
  if not any(a.startswith('--runner') for a in args):
    args = ['--runner=FnApiRunner',
            f'--direct_num_workers={workers or 0}',
            '--direct_running_mode=multi_processing'] + args
  return beam_options.PipelineOptions(args)


def _store_chunk(path: str, geometry: images.Geometry, fmt: str):
  """(key, example) of each record of a chunk whose image can be read; the
  others as ('skipped', (position, reason, what, detail)); the pixel sums
  of the stored images as ('pixels', (sums, count))."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  chunk = pickle.loads(epath.Path(path).read_bytes())
  for position, record in chunk:
    stored = images._store_one((record.source, geometry, fmt))  # pylint: disable=protected-access
    if isinstance(stored, images.ImageSkipped):
      yield beam.pvalue.TaggedOutput('skipped', (
          position, stored.reason, str(manual.skipped_what(record)),
          stored.detail))
      continue
    yield beam.pvalue.TaggedOutput('pixels', (
        stored.channel_sums, stored.height * stored.width))
    yield record.key, manual.example_of(record, stored)


def _add_pixels(values):
  sums, count = [0.0, 0.0, 0.0], 0
  for channel_sums, pixels in values:
    sums = [a + b for a, b in zip(sums, channel_sums)]
    count += pixels
  return sums, count


def _write_json(value, path: str) -> None:
  epath.Path(path).write_text(json.dumps(value))


class BeamBuilder:
  """Mixin of a manual.ManualBuilder that builds on Beam when TFDS is given
  Beam options (jaxtag.data.build --beam); see the module doc."""

  def _download_and_prepare(self, dl_manager, download_config):
    self._beam_splits = {}
    self._on_beam = bool(download_config.beam_options or
                         download_config.beam_runner)
    return super()._download_and_prepare(dl_manager, download_config)

  def generate(self, split: str, records: Sequence[manual.Record]):
    if not getattr(self, '_on_beam', False):
      return super().generate(split, records)
    folder = epath.Path(self.data_dir) / _RECORDS_FOLDER / split
    folder.mkdir(parents=True, exist_ok=True)
    chunks = []
    numbered = list(enumerate(records))
    size = max(CHUNK_RECORDS, math.ceil(len(numbered) / MAX_CHUNKS))
    for i in range(math.ceil(len(numbered) / size)):
      path = folder / f'chunk-{i:06d}.pkl'
      path.write_bytes(pickle.dumps(numbered[i * size:(i + 1) * size]))
      chunks.append(str(path))
    self._beam_splits[split] = (records, folder)
    return _split_transform(chunks, self.geometry(), self.image_format(),
                            str(folder))

  def _process_pipeline_result(self, pipeline_result):
    """The skip counts and train statistics of every split, from what the
    workers skipped (run once the pipeline has finished)."""
    super()._process_pipeline_result(pipeline_result)
    for split, (records, folder) in self._beam_splits.items():
      counter = images.SkipCounter(split)
      skipped = set()
      for position, reason, what, detail in sorted(json.loads(
          (folder / 'skipped.json').read_text())):
        counter.skip(reason, what, detail)
        skipped.add(position)
      sums, pixels = json.loads((folder / 'pixels.json').read_text())
      train_labels = [r.labels for i, r in enumerate(records)
                      if i not in skipped] if split == 'train' else []
      self.finish_split(split, len(records), counter, train_labels, sums,
                        pixels)
    folder = epath.Path(self.data_dir) / _RECORDS_FOLDER
    if folder.exists():
      folder.rmtree()


def _split_transform(chunks, geometry, fmt, folder):
  """The PTransform TFDS runs for one split: chunk paths -> examples."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  @beam.ptransform_fn
  def split_examples(pipeline):
    stored = (pipeline
              | 'Chunks' >> beam.Create(chunks)
              # One chunk per worker at a time, not all on the first.
              | 'Spread' >> beam.Reshuffle()
              | 'Store' >> beam.FlatMap(_store_chunk, geometry=geometry,
                                        fmt=fmt).with_outputs(
                                            'skipped', 'pixels',
                                            main='examples'))
    _ = (stored.skipped
         | 'SkippedList' >> beam.combiners.ToList()
         | 'WriteSkipped' >> beam.Map(_write_json,
                                      path=f'{folder}/skipped.json'))
    _ = (stored.pixels
         | 'PixelSums' >> beam.CombineGlobally(_add_pixels)
         | 'WritePixels' >> beam.Map(_write_json,
                                     path=f'{folder}/pixels.json'))
    return stored.examples

  return split_examples()  # pylint: disable=no-value-for-parameter
