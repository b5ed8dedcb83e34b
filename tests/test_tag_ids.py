"""Danbooru tag ids from a dataset's metadata to the WD csv of a converted
run: tag_id is metadata that follows its tag, never the label index."""
import csv
import os

import danbooru_fixtures as dfx
import numpy as np
import pytest

from jaxtag.data import tag_metadata


def _rows(path):
  with open(path, encoding='utf-8', newline='') as f:
    return list(csv.DictReader(f))


def test_ids_follow_their_tags_and_unknown_ones_are_minus_one():
  text = ('tag_id,name,category,count\n'
          '470575.0,1girl,0,5\n,solo,0,3\n9999999,general,9,8\n')
  rows = tag_metadata.parse_selected_tags(text)
  assert [(r.tag_id, r.name) for r in rows] == [
      (470575, '1girl'), (-1, 'solo'), (9999999, 'general')]
  # A jaxtag file of an older build numbered its rows: no ids, not those.
  old = 'tag_id,name,category,count\n0,a,0,1\n1,b,0,1\n2,c,9,1\n'
  assert [r.tag_id for r in tag_metadata.parse_selected_tags(old)] == [-1] * 3
  # Written back, -1 stays -1 and a real id as it was.
  assert tag_metadata.parse_selected_tags(tag_metadata.selected_tags_bytes(
      rows).decode()) == rows
  np.testing.assert_array_equal(tag_metadata.known_tag_ids([5, 3, 9]),
                                [5, 3, 9])


@pytest.mark.slow
def test_danbooru_ids_reach_the_bundle_and_the_onnx_csv(tmp_path,
                                                        monkeypatch):
  """A run on a Danbooru dump whose tags table has ids: the dataset's csv,
  the bundle's and the ONNX export's list each tag with that id, and the
  export's rows are its outputs in order."""
  import onnxruntime as ort
  import serving_fixtures
  from jaxtag import train
  from jaxtag.serving import bundle as bundle_lib
  from jaxtag.serving import convert
  monkeypatch.setenv('JAXTAG_CACHE', str(tmp_path / 'cache'))
  dfx.write_tar_dump(tmp_path / 'dump', dfx.tar_posts(), 'parquet')
  config = serving_fixtures.tiny_config(**{
      'dataset.name': 'danbooru', 'dataset.data_dir': str(tmp_path / 'tfds'),
      'dataset.manual_dir': str(tmp_path / 'dump'), 'num_train_steps': 2,
      'eval_every_steps': 2, 'checkpoint_every_steps': 2})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  out = str(tmp_path / 'bundle')
  convert.convert(workdir, out, fmt='onnx')

  from jaxtag.data import build
  data_dir = build.get_builder('danbooru', str(tmp_path / 'tfds')).data_dir
  dataset = tag_metadata.read_selected_tags(
      os.path.join(data_dir, 'selected_tags.csv'))
  want = {r.name: r.tag_id for r in dataset}
  # The dataset: the tags table's ids; ratings and a tag it lacks, -1.
  assert [r.tag_id for r in dataset] == [
      dfx.TAG_IDS.get(r.name, -1) for r in dataset]
  assert 'kagamine_rin' in want and want['1girl'] == 470575

  bundle = bundle_lib.load_bundle(out)
  bundle_rows = _rows(os.path.join(out, 'selected_tags.csv'))
  for row, tag in zip(bundle_rows, bundle.tags):
    name = tag['name']
    expected = want[name if row['category'] != '9' else f'rating:{name}']
    assert int(row['tag_id']) == expected, name
    # The row's model output is that of the dataset's label of this name.
    if tag['index_in_model'] >= 0:
      assert dataset[tag['index_in_model']].tag_id == expected

  # The ONNX csv names the graph's outputs in order, each with its id.
  onnx_rows = _rows(os.path.join(out, 'selected_tags.csv'))
  session = ort.InferenceSession(os.path.join(out, 'model.onnx'),
                                 providers=['CPUExecutionProvider'])
  size = bundle.preprocess.size
  pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3),
                                             np.uint8)
  graph = session.run(None, {'input': pixels[..., ::-1].astype(np.float32)})[0]
  assert graph.shape[1] == len(onnx_rows)
  scores = bundle.model_scores(pixels)
  by_name = {}
  for i, row in enumerate(onnx_rows):
    name = row['name']
    key = name if row['jaxtag_category'] != '9' else f'rating:{name}'
    assert int(row['tag_id']) == want.get(key, -1), name
    by_name[key] = i
  for label, tag in enumerate(dataset):
    np.testing.assert_allclose(graph[:, by_name[tag.name]],
                               scores[:, label], atol=1e-4)
