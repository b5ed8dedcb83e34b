"""The danbooru builder on Apache Beam (2 local worker processes) writes the
same files, byte for byte, as its one-process build."""
import hashlib
import os

import apache_beam  # noqa: F401  (the beam extra; the builds below need it)
import danbooru_fixtures as dfx
import pytest

from data_builders import beam_build
from jaxtag.data import build


def _digests(builder) -> dict[str, str]:
  """sha256 of every file of the built dataset, by name."""
  out = {}
  for name in sorted(os.listdir(builder.data_dir)):
    with open(os.path.join(builder.data_dir, name), 'rb') as f:
      out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


def _both(manual_dir, tmp_path, **options):
  one = build.get_builder('danbooru', str(tmp_path / 'one'), options)
  build.ensure_built(one, str(manual_dir))
  beam = build.get_builder('danbooru', str(tmp_path / 'beam'), options)
  build.ensure_built(beam, str(manual_dir),
                     beam_build.pipeline_options(workers=2))
  return one, beam


@pytest.fixture(autouse=True)
def index_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXTAG_CACHE', str(tmp_path / 'cache'))


@pytest.mark.slow
def test_tar_shards_on_beam_equal_the_one_process_build(tmp_path):
  dfx.write_tar_dump(tmp_path / 'dump', dfx.tar_posts(), 'parquet')
  one, beam = _both(tmp_path / 'dump', tmp_path,
                    split_fractions='train=0.6,validation=0.2,test=0.2',
                    max_side='12')
  digests = _digests(one)
  # Three splits' shards, and dataset_info, features, selected_tags,
  # label_stats and build_report (skip counts from the workers included).
  assert len(digests) == 8 and _digests(beam) == digests
  assert not list((tmp_path / 'beam').rglob('_beam_records'))


@pytest.mark.slow
def test_wd_tfrecords_on_beam_equal_the_one_process_build(tmp_path):
  dfx.write_wd_records(tmp_path / 'wd', dfx.wd_records())
  one, beam = _both(tmp_path / 'wd', tmp_path)
  digests = _digests(one)
  assert len(digests) == 7 and _digests(beam) == digests


def test_pipeline_options_name_the_local_runner_unless_given():
  local = beam_build.pipeline_options(3).get_all_options()
  assert local['runner'] == 'FnApiRunner'
  assert local['direct_num_workers'] == 3
  assert local['direct_running_mode'] == 'multi_processing'
  given = beam_build.pipeline_options(
      3, '--runner=DataflowRunner --project=p --region=r').get_all_options()
  assert given['runner'] == 'DataflowRunner' and given['project'] == 'p'
  assert given['direct_num_workers'] == 1   # Beam's default: not ours
