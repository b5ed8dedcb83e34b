"""The synthetic_anime builder: reproducible shards, true statistics, design."""
import glob
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.synthetic_anime import annotate
from data_builders.synthetic_anime import vocab
from jaxtag.data import build
from jaxtag.data import tag_metadata


def _read(data_dir, split):
  builder = build.get_builder('synthetic_anime/tiny', data_dir)
  source = builder.as_data_source(
      split, decoders={'image': tfds.decode.SkipDecoding()})
  return [source[i] for i in range(len(source))], builder


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shard_digests(data_dir) -> dict[str, str]:
  """sha256 of every array_record shard, by path relative to data_dir."""
  digests = {}
  for path in glob.glob(os.path.join(data_dir, '**', '*.array_record*'),
                        recursive=True):
    with open(path, 'rb') as f:
      digests[os.path.relpath(path, data_dir)] = hashlib.sha256(
          f.read()).hexdigest()
  return digests


@pytest.mark.slow
def test_builds_in_separate_processes_give_identical_shards(tiny_data_dir,
                                                            tmp_path):
  # protobuf orders a map by a hash seeded per process, so only builds in
  # different processes show whether the bytes depend on the process.
  dirs = [str(tmp_path / name) for name in ('first', 'second')]
  builds = [subprocess.Popen(
      [sys.executable, '-m', 'jaxtag.data.build', 'synthetic_anime/tiny',
       '--data_dir', d], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for d in dirs]
  for proc in builds:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
  first, second = (shard_digests(d) for d in dirs)
  assert sorted(first) == [
      f'synthetic_anime/tiny/1.0.0/synthetic_anime-{split}.array_record-'
      '00000-of-00001' for split in ('test', 'train', 'validation')]
  assert first == second
  # And this process's build (the session's data_dir may hold other
  # datasets that other tests built).
  assert {k: v for k, v in shard_digests(tiny_data_dir).items()
          if k.startswith('synthetic_anime/tiny/')} == first


def test_written_statistics_agree_with_examples(tiny_data_dir):
  examples, builder = _read(tiny_data_dir, 'train')
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert len(examples) == 256 == meta.num_images
  multi_hot = np.zeros((len(examples), len(vocab.TAGS)), np.int64)
  for i, ex in enumerate(examples):
    multi_hot[i, np.asarray(ex['tags'], np.int64)] = 1
  np.testing.assert_array_equal(meta.counts, multi_hot.sum(0))
  np.testing.assert_array_equal(meta.cooccurrence.toarray(),
                                multi_hot.T @ multi_hot)
  assert meta.cooccurrence.nnz == np.count_nonzero(multi_hot.T @ multi_hot)
  assert meta.names == list(vocab.TAGS)
  assert set(meta.categories.tolist()) == {0, 4, 9}
  assert 50 <= (meta.categories == 0).sum() <= 80
  assert 15 <= (meta.categories == 4).sum() <= 25


def _conditional(c, given, then):
  i, j = vocab.TAG_ID[given], vocab.TAG_ID[then]
  return c[i, j] / c[i, i]


def test_cooccurrence_is_asymmetric_as_designed():
  # Statistics of 4000 clean scenes (no rendering needed) to keep it fast.
  hot = np.zeros((4000, len(vocab.TAGS)), np.int64)
  for i in range(4000):
    hot[i, annotate.sample_scene(1, 'train', i, 0.0).tags_clean] = 1
  c = hot.T @ hot
  girlish = hot[:, [vocab.TAG_ID['1girl'], vocab.TAG_ID['multiple_girls']]]
  ears = hot[:, vocab.TAG_ID['cat_ears']] > 0
  assert girlish[ears].max(axis=1).min() == 1      # cat ears imply a girl
  assert _conditional(c, '1girl', 'cat_ears') < 0.25  # not the converse
  assert _conditional(c, 'maid', 'apron') > 0.85
  assert _conditional(c, 'maid', 'maid_headdress') > 0.8
  assert _conditional(c, 'serafuku', 'school_uniform') > 0.99
  assert _conditional(c, 'school_uniform', 'serafuku') < 0.8
  assert _conditional(c, 'fang', 'cat_ears') > 0.7
  assert _conditional(c, 'cat_ears', 'fang') < 0.7
  assert _conditional(c, 'swimsuit', 'rating:sensitive') == 1.0


def test_noise_only_drops_general_tags_at_the_configured_rate():
  present = dropped = 0
  for i in range(3000):
    scene = annotate.sample_scene(2, 'train', i, 0.1)
    assert set(scene.tags) <= set(scene.tags_clean)
    lost = set(scene.tags_clean) - set(scene.tags)
    assert all(vocab.CATEGORIES[t] == vocab.GENERAL for t in lost)
    present += sum(vocab.CATEGORIES[t] == vocab.GENERAL
                   for t in scene.tags_clean)
    dropped += len(lost)
  assert dropped / present == pytest.approx(0.1, abs=0.01)


def test_characters_show_their_appearance(tiny_data_dir):
  examples, _ = _read(tiny_data_dir, 'validation')
  seen = 0
  for ex in examples:
    clean = {vocab.TAGS[t] for t in ex['tags_clean']}
    for char_id in ex['characters']:
      _, hair, length, style, eyes, signature = vocab.CHARACTERS[
          vocab.TAGS[char_id]]
      wanted = {hair, length, eyes, *signature} | ({style} if style else set())
      assert wanted <= clean, (vocab.TAGS[char_id], wanted - clean)
      seen += 1
    assert len(ex['faces']) == len(ex['face_characters']) >= 1
    assert sorted(c for c in ex['face_characters'] if c >= 0) == sorted(
        ex['characters'])
    faces = np.asarray(ex['faces'])
    assert ((faces >= 0) & (faces <= 1)).all()
    assert (faces[:, 2] > faces[:, 0]).all() and (faces[:, 3] > faces[:, 1]).all()
    assert ex['caption'].decode() if isinstance(ex['caption'], bytes) else ex['caption']
  assert seen > 5


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ValueError, match='known builders: .*synthetic_anime'):
    build.get_builder('danbooru9999/x')
  with pytest.raises(ValueError, match='valid: tiny, default, large'):
    build.get_builder('synthetic_anime/huge')
