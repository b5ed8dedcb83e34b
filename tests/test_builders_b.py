"""image_folder, animeface_character, voc2007, coco2014 and flickr8k, each
built for real from a generated folder in the dataset's own layout."""
import hashlib
import json
import os
import subprocess
import sys

import builder_fixtures_b as fb
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders import class_folders
from data_builders import splits
from data_builders.animeface_character import animeface_character as animeface
from data_builders.flickr8k import flickr8k
from data_builders.voc2007 import voc2007
from jaxtag.data import build as jaxtag_build
from jaxtag.data import tag_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The feature that names an example in each builder's tests.
NAME_FEATURE = {'image_folder': 'path', 'animeface_character': 'path',
                'voc2007': 'name', 'coco2014': 'id', 'flickr8k': 'file_name'}


def build(name, manual_dir, data_dir, **options):
  """Built through the build command's code (options as --set strings)."""
  builder = jaxtag_build.get_builder(
      name, str(data_dir), {k: str(v) for k, v in options.items()})
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def examples(builder, split):
  """{name: example} of a split (see NAME_FEATURE), names as str."""
  key = NAME_FEATURE[builder.name]
  out = {}
  for e in builder.as_data_source(split):
    name = e[key].decode() if isinstance(e[key], bytes) else int(e[key])
    out[name] = e
  return out


def report(builder):
  with open(os.path.join(builder.data_dir, 'build_report.json')) as f:
    return json.load(f)


def ids(example, key='tags'):
  return sorted(int(t) for t in example[key])


def assert_statistics_match(builder, split='train', key='tags'):
  """label_stats.npz against a dense numpy count of the written split."""
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  num_classes = len(meta.names)
  hot = np.zeros((0, num_classes), np.int64)
  rows = [ids(e, key) for e in examples(builder, split).values()]
  if rows:
    hot = np.zeros((len(rows), num_classes), np.int64)
    for i, r in enumerate(rows):
      hot[i, r] = 1
  np.testing.assert_array_equal(meta.counts, hot.sum(0))
  np.testing.assert_array_equal(meta.cooccurrence_dense(), hot.T @ hot)
  assert meta.num_images == len(rows)
  return meta


# --- alias maps --------------------------------------------------------------

def test_alias_map_reads_inline_pairs_files_and_chains(tmp_path):
  assert class_folders.parse_aliases('') == {}
  assert class_folders.parse_aliases(
      'saber_arutoria_pendoragon=saber, mato_sakura = matou_sakura') == {
          'saber_arutoria_pendoragon': 'saber', 'mato_sakura': 'matou_sakura'}
  text = tmp_path / 'aliases.txt'
  text.write_text('# merged names\nmato_sakura=matou_sakura\n'
                  'sakura_matou,mato_sakura\n')
  # A chain resolves to its end.
  assert class_folders.parse_aliases(str(text)) == {
      'mato_sakura': 'matou_sakura', 'sakura_matou': 'matou_sakura'}
  as_json = tmp_path / 'aliases.json'
  as_json.write_text('{"a": "b"}')
  assert class_folders.parse_aliases(str(as_json)) == {'a': 'b'}
  assert class_folders.parse_aliases({'x': 'y'}) == {'x': 'y'}
  with pytest.raises(ValueError, match='loop'):
    class_folders.parse_aliases('a=b,b=a')
  with pytest.raises(ValueError, match='neither a file'):
    class_folders.parse_aliases(str(tmp_path / 'missing.txt'))
  with pytest.raises(ValueError, match='alias=canonical'):
    class_folders.parse_aliases('a=b,c')


def test_class_splits_are_stratified_and_move_little_when_files_are_added():
  def items(n_a, n_b):
    return ([class_folders.Item('', f'a/{i}.png', 'a') for i in range(n_a)] +
            [class_folders.Item('', f'b/{i}.png', 'b') for i in range(n_b)])

  fractions = 'train=0.7,validation=0.15,test=0.15'
  before = class_folders.assign_splits(items(40, 20), fractions)
  assert {s: len(v) for s, v in before.items()} == {
      'train': 28 + 14, 'validation': 6 + 3, 'test': 6 + 3}
  for split, members in before.items():
    assert [i.key for i in members] == sorted(i.key for i in members)
  where = {i.key: s for s, v in before.items() for i in v}
  # More files in class a: b's files stay put, and an a file moves only
  # at a cut point (at most one per added file and boundary).
  after = class_folders.assign_splits(items(43, 20), fractions)
  moved = [i.key for s, v in after.items() for i in v
           if i.key in where and where[i.key] != s]
  assert not [k for k in moved if k.startswith('b/')]
  assert len(moved) <= 3 * 2


# --- image_folder ------------------------------------------------------------

ALIASES = 'saber_arutoria_pendoragon=saber,mato_sakura=matou_sakura'


@pytest.fixture(scope='module')
def folder_build(tmp_path_factory):
  root = tmp_path_factory.mktemp('folders')
  fb.image_folder(str(root))
  builder = build('image_folder', root, tmp_path_factory.mktemp('data'),
                  aliases=ALIASES, split_fractions='train=1.0')
  return builder


def test_image_folder_merges_aliases_and_skips_bad_files(folder_build):
  train = examples(folder_build, 'train')
  meta = assert_statistics_match(folder_build)
  # Classes sorted after the aliases merged them: 3, not 5.
  assert meta.names == ['matou_sakura', 'rin', 'saber']
  assert list(meta.categories) == [4, 4, 4]
  assert sorted(train) == [
      'mato_sakura/d.jpg', 'matou_sakura/e.png', 'matou_sakura/nested/f.png',
      'rin/g.png', 'saber/a.png', 'saber/b.jpg',
      'saber_arutoria_pendoragon/c.png']
  assert int(train['saber_arutoria_pendoragon/c.png']['label']) == 2
  assert ids(train['mato_sakura/d.jpg']) == [0]
  assert ids(train['rin/g.png']) == [1]
  np.testing.assert_array_equal(meta.counts, [3, 1, 3])
  # Decoded from the shards: RGBA composited on white, 16-bit scaled,
  # CMYK converted; all RGB.
  rgba = train['saber_arutoria_pendoragon/c.png']['image']
  assert rgba.shape == (4, 6, 3)
  np.testing.assert_array_equal(rgba[0, 0], [227, 177, 127])
  np.testing.assert_array_equal(train['matou_sakura/e.png']['image'][0, 0],
                                [255, 255, 255])
  np.testing.assert_allclose(train['mato_sakura/d.jpg']['image'][8, 8],
                             [0, 255, 255], atol=3)
  got = report(folder_build)
  assert got['skipped']['train'] == {'corrupt': 1}
  assert got['examples'] == {'train': 7}
  assert got['options']['aliases'] == ALIASES


def test_image_folder_min_images_drops_small_classes(tmp_path):
  fb.image_folder(str(tmp_path / 'in'))
  builder = build('image_folder', tmp_path / 'in', tmp_path / 'data',
                  aliases=ALIASES, split_fractions='train=1.0', min_images=3)
  # rin has 1 file; after the merge saber has 3 and matou_sakura 4 (one
  # of them corrupt: counted at build time, after the class is kept).
  assert tag_metadata.load_tag_metadata(builder.data_dir).names == [
      'matou_sakura', 'saber']
  got = report(builder)
  assert got['skipped']['metadata'] == {'class_below_min_images': 1}
  assert got['extra']['classes'] == 2


def test_image_folder_options_have_clear_errors(tmp_path):
  # TFDS checks the folder first; its message carries the instructions.
  with pytest.raises(AssertionError, match='image_folder/README.md'):
    build('image_folder', tmp_path / 'nothing', tmp_path / 'data')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'readme.txt').write_text('no class folders here')
  with pytest.raises(ValueError, match='no images found'):
    build('image_folder', tmp_path / 'empty', tmp_path / 'data2')


def test_image_folder_splits_stay_put_when_files_are_added(tmp_path):
  fb.image_folder(str(tmp_path / 'in'), extra=60)
  before = build('image_folder', tmp_path / 'in', tmp_path / 'd1')
  where = {k: s for s in before.info.splits for k in examples(before, s)}
  assert set(before.info.splits) == {'train', 'validation', 'test'}
  # A new class, and two more files in one existing class.
  fb.write(str(tmp_path / 'in/new_class/x.jpg'), fb.noise(1000, 16))
  fb.write(str(tmp_path / 'in/new_class/y.jpg'), fb.noise(1001, 16))
  fb.write(str(tmp_path / 'in/extra_0/more_1.jpg'), fb.noise(1002, 16))
  fb.write(str(tmp_path / 'in/extra_0/more_2.jpg'), fb.noise(1003, 16))
  after = build('image_folder', tmp_path / 'in', tmp_path / 'd2')
  now = {k: s for s in after.info.splits for k in examples(after, s)}
  moved = [k for k in where if now[k] != where[k]]
  assert all(k.startswith('extra_0/') for k in moved) and len(moved) <= 4
  # Each class is cut 70/15/15: extra_1 has 12 files -> 8 / 2 / 2.
  extra_1 = [s for k, s in now.items() if k.startswith('extra_1/')]
  assert [extra_1.count(s) for s in ('train', 'validation', 'test')] == [
      8, 2, 2]


# --- animeface_character -----------------------------------------------------

@pytest.mark.parametrize('layout', ['thumb', 'moeimouto'])
def test_animeface_honours_ignore_files_colors_and_aliases(tmp_path, layout):
  fb.animeface(str(tmp_path / 'in'), layout)
  builder = build('animeface_character', tmp_path / 'in', tmp_path / 'data',
                  aliases='mato_sakura=matou_sakura',
                  split_fractions='train=1.0')
  train = examples(builder, 'train')
  meta = assert_statistics_match(builder)
  assert meta.names == ['hatsune_miku', 'matou_sakura']  # prefix stripped
  assert sorted(train) == ['000_hatsune_miku/face_1_2_3.png',
                           '000_hatsune_miku/face_4_5_6.png',
                           '001_mato_sakura/face_10_11_12.png',
                           '002_matou_sakura/face_13_14_15.png']
  miku = train['000_hatsune_miku/face_1_2_3.png']
  assert ids(miku) == [0] and int(miku['label']) == 0
  np.testing.assert_array_equal(miku['hair_color'], [0, 200, 200])
  np.testing.assert_array_equal(miku['eye_color'], [10, 20, 30])
  np.testing.assert_array_equal(
      train['000_hatsune_miku/face_4_5_6.png']['hair_color'], [-1, -1, -1])
  assert int(train['001_mato_sakura/face_10_11_12.png']['label']) == 1
  got = report(builder)
  assert got['skipped']['metadata'] == {'ignored': 1}
  assert got['skipped']['train'] == {'corrupt': 1}
  assert got['extra']['images_without_color'] == 4


def test_animeface_color_file_errors_name_the_line(tmp_path):
  path = tmp_path / 'color.csv'
  path.write_text('a.png,1,2,3,4,5,6\nb.png,1,2,300,4,5,6\n')
  with pytest.raises(ValueError, match='line 2'):
    animeface.read_colors(str(path))
  with pytest.raises(FileNotFoundError, match='moeimouto-faces'):
    animeface.find_class_root(str(tmp_path))


# --- voc2007 -----------------------------------------------------------------

def test_voc2007_keeps_difficult_labels_apart(tmp_path):
  sets = fb.voc2007(str(tmp_path / 'in'))
  builder = build('voc2007', tmp_path / 'in', tmp_path / 'data')
  assert set(builder.info.splits) == {'train', 'test'}
  train, test = examples(builder, 'train'), examples(builder, 'test')
  assert sorted(train) == sorted(sets['trainval'])
  meta = assert_statistics_match(builder)
  assert meta.names == list(fb.VOC_CLASSES)
  c = fb.VOC_CLASSES.index
  assert ids(train['000005']) == sorted([c('person'), c('dog')])
  assert ids(train['000005'], 'tags_difficult') == [c('cat')]
  assert ids(train['000009']) == []
  assert ids(train['000009'], 'tags_difficult') == [c('person')]
  assert ids(test['000001'], 'tags_difficult') == [c('person')]
  assert sorted(test) == ['000001']   # 000002 is a corrupt JPEG
  # Every label vector equals the set files' 1 / 0 entries.
  for image_id, e in train.items():
    row = sets['trainval'][image_id]
    assert ids(e) == np.flatnonzero(row == 1).tolist()
    assert ids(e, 'tags_difficult') == np.flatnonzero(row == 0).tolist()
  got = report(builder)
  assert got['skipped']['test'] == {'corrupt': 1}
  assert got['extra']['train_difficult_labels'] == 2


def test_voc2007_train_set_option_adds_the_val_split(tmp_path):
  sets = fb.voc2007(str(tmp_path / 'in'))
  builder = build('voc2007', tmp_path / 'in', tmp_path / 'data',
                  train_set='train')
  assert sorted(examples(builder, 'train')) == sorted(sets['train'])
  assert sorted(examples(builder, 'validation')) == ['000012']
  ml_gcn = build('voc2007', tmp_path / 'in', tmp_path / 'data3',
                 difficult_as_positive=True)
  c = fb.VOC_CLASSES.index
  train = examples(ml_gcn, 'train')
  assert ids(train['000005']) == sorted([c('person'), c('dog'), c('cat')])
  assert ids(train['000005'], 'tags_difficult') == [c('cat')]
  with pytest.raises(ValueError, match='train_set.*valid: trainval, train'):
    build('voc2007', tmp_path / 'in', tmp_path / 'data2', train_set='val')
  os.remove(tmp_path / 'in/VOCdevkit/VOC2007/ImageSets/Main/cat_test.txt')
  with pytest.raises(FileNotFoundError, match='cat_test.txt'):
    voc2007.read_set_labels(str(tmp_path / 'in/VOCdevkit/VOC2007'), 'test')


# --- coco2014 ----------------------------------------------------------------

def test_coco2014_labels_in_category_id_order(tmp_path):
  fb.coco2014(str(tmp_path / 'in'))
  builder = build('coco2014', tmp_path / 'in', tmp_path / 'data')
  meta = assert_statistics_match(builder)
  assert meta.names == ['person', 'car', 'traffic light', 'dog']
  train, test = examples(builder, 'train'), examples(builder, 'test')
  assert sorted(train) == [9, 25]       # 30 unlabelled, 42 has no file
  assert ids(train[9]) == [0, 3]        # person (1) and dog (18)
  assert ids(train[25]) == [1]
  assert ids(test[74]) == [0, 2]
  assert train[9]['file_name'] == b'COCO_train2014_000000000009.jpg'
  got = report(builder)
  assert got['skipped']['metadata'] == {'no_labels': 1}
  assert got['skipped']['train'] == {'missing_file': 1}


def test_coco2014_validation_is_a_stable_part_of_train(tmp_path):
  truth = fb.coco2014(str(tmp_path / 'in'), extra=30)
  builder = build('coco2014', tmp_path / 'in', tmp_path / 'data',
                  validation_fraction=0.3, keep_unlabelled=True)
  train, val = examples(builder, 'train'), examples(builder, 'validation')
  fractions = {'train': 0.7, 'validation': 0.3}
  for image_id in set(truth['train']) - {42}:
    expected = splits.assign_split(image_id, fractions, salt='coco2014')
    assert image_id in (train if expected == 'train' else val)
  assert ids(train[30] if 30 in train else val[30]) == []


# --- flickr8k ----------------------------------------------------------------

def test_flickr8k_original_layout_keeps_its_split_files(tmp_path):
  captions = fb.flickr8k(str(tmp_path / 'in'), 'original')
  builder = build('flickr8k', tmp_path / 'in', tmp_path / 'data')
  train = examples(builder, 'train')
  assert sorted(train) == ['1000_abc.jpg', '1001_abc.jpg']
  assert sorted(examples(builder, 'validation')) == ['1002_abc.jpg']
  assert sorted(examples(builder, 'test')) == ['1004_abc.jpg']
  assert [c.decode() for c in train['1001_abc.jpg']['captions']] == (
      captions['1001_abc.jpg'])
  got = report(builder)
  assert got['skipped']['metadata'] == {'not_in_a_split': 1}
  assert got['skipped']['test'] == {'truncated': 1}
  meta = tag_metadata.load_tag_metadata(builder.data_dir)
  assert meta.names == [] and meta.num_images == 2
  assert meta.cooccurrence.shape == (0, 0)


def test_flickr8k_repackaged_layout_splits_by_a_stable_hash(tmp_path):
  captions = fb.flickr8k(str(tmp_path / 'in'), 'repackaged')
  builder = build('flickr8k', tmp_path / 'in', tmp_path / 'data',
                  split_sizes='3,1')
  got = {s: examples(builder, s) for s in ('train', 'validation', 'test')}
  order = sorted(captions, key=lambda n: (splits.stable_unit(n, 'flickr8k'),
                                          n))
  expected = {'train': order[:3], 'validation': order[3:4], 'test': order[4:]}
  for split, names in expected.items():
    assert sorted(got[split]) == sorted(n for n in names if n != '1003_abc.jpg')
  everything = {**got['train'], **got['validation'], **got['test']}
  # The quoted caption and the unquoted one with a comma read back whole.
  assert everything['1002_abc.jpg']['captions'][0].decode() == (
      'two words, then "quoted"')
  assert everything['1001_abc.jpg']['captions'][2].decode() == 'a dog, running'


def test_flickr8k_files_errors(tmp_path):
  path = tmp_path / 'Flickr8k.token.txt'
  path.write_text('a.jpg#0\tfine\na.jpg caption without a tab\n')
  with pytest.raises(ValueError, match='line 2'):
    flickr8k.read_tokens(str(path))
  with pytest.raises(FileNotFoundError, match='captions.txt'):
    flickr8k.read_layout(str(tmp_path / 'nowhere'), '6000,1000')
  # Two images more: the counts hold, and an existing image moves only
  # across a cut point (at most one per added image and cut).
  names = [f'{i}_x.jpg' for i in range(50)]
  before = flickr8k.hash_splits(names, '30,10')
  after = flickr8k.hash_splits(names + ['new_1.jpg', 'new_2.jpg'], '30,10')
  assert [len(after[s]) for s in ('train', 'validation', 'test')] == [
      30, 10, 12]
  where = {n: s for s, members in before.items() for n in members}
  now = {n: s for s, members in after.items() for n in members}
  assert len([n for n in names if where[n] != now[n]]) <= 2 * 2
  with pytest.raises(ValueError, match='split_sizes'):
    flickr8k.hash_splits(names, '6000')


# --- determinism -------------------------------------------------------------

_BUILD_ALL = '''
import sys, os
sys.path.insert(0, os.path.join({root!r}, 'tests'))
import builder_fixtures_b as fb
import test_builders_b as t
src, out = sys.argv[1], sys.argv[2]
fb.image_folder(os.path.join(src, 'f'))
fb.animeface(os.path.join(src, 'a'))
fb.voc2007(os.path.join(src, 'v'))
fb.coco2014(os.path.join(src, 'c'))
fb.flickr8k(os.path.join(src, 'k'))
for name, folder in (('image_folder', 'f'), ('animeface_character', 'a'),
                     ('voc2007', 'v'), ('coco2014', 'c'), ('flickr8k', 'k')):
  t.build(name, os.path.join(src, folder), os.path.join(out, name))
'''


def _shard_digests(data_dir):
  out = {}
  for dirpath, _, files in os.walk(data_dir):
    for f in files:
      if 'array_record' in f or f == 'selected_tags.csv' or (
          f == 'label_stats.npz'):
        with open(os.path.join(dirpath, f), 'rb') as fh:
          out[os.path.relpath(os.path.join(dirpath, f), data_dir)] = (
              hashlib.sha256(fh.read()).hexdigest())
  return out


@pytest.mark.slow
def test_two_processes_write_byte_identical_shards(tmp_path):
  digests = []
  for run, seed in (('one', '1'), ('two', '2')):
    subprocess.run(
        [sys.executable, '-c', _BUILD_ALL.format(root=ROOT),
         str(tmp_path / run / 'src'), str(tmp_path / run / 'out')],
        cwd=ROOT, check=True, capture_output=True,
        env={**os.environ, 'PYTHONHASHSEED': seed,
             'PYTHONPATH': ROOT + os.pathsep + os.path.join(ROOT, 'tests')})
    digests.append(_shard_digests(tmp_path / run / 'out'))
  # image_folder and animeface: train only at this size; voc2007 and
  # coco2014: train, test; flickr8k: three splits.
  assert len([k for k in digests[0] if 'array_record' in k]) == 9
  assert digests[0] == digests[1]


# --- difficult labels in the metrics -----------------------------------------

def test_difficult_labels_are_masked_out_of_the_metrics(tmp_path):
  from sklearn.metrics import average_precision_score
  from jaxtag import config as config_lib
  from jaxtag import evaluate
  from jaxtag import tasks
  sets = fb.voc2007(str(tmp_path / 'in'), extra=40)
  builder = build('voc2007', tmp_path / 'in', tmp_path / 'data')
  source = builder.as_data_source(
      'train', decoders={'image': tfds.decode.SkipDecoding()})
  n = len(source)
  index = np.arange(n)[::-1]           # any order of records
  mask = evaluate.label_mask(source, index, 'tags_difficult', 20)
  labels = np.zeros((n, 20), np.float32)
  for row, record in enumerate(index):
    truth = sets['trainval'][source[int(record)]['name'].decode()]
    np.testing.assert_array_equal(mask[row], (truth != 0).astype(np.float32))
    labels[row] = truth == 1
  assert (mask == 0).sum() >= 8
  scores = np.random.default_rng(0).random((n, 20)).astype(np.float32)
  # A difficult pair scored above everything would cost AP if counted.
  scores[mask == 0] = 2.0
  eval_config = config_lib.defaults().eval
  eval_config.thresholds = 'global'
  pred = {'scores': scores, 'labels': labels, 'label_mask': mask,
          'index': index, 'loss': 0.0}
  task = tasks.MultiLabel(tag_metadata.load_tag_metadata(builder.data_dir))
  result, pred, _ = evaluate.score(pred, task=task, eval_config=eval_config)
  expected = []
  for c in range(20):
    keep = mask[:, c] > 0
    if labels[keep, c].any():
      expected.append(average_precision_score(labels[keep, c],
                                              scores[keep, c]))
  assert result['mAP'] == pytest.approx(np.mean(expected), rel=1e-6)
  with pytest.raises(ValueError, match='label_mask_feature'):
    evaluate.label_mask(source, index[:1], 'tags_hard', 20)


@pytest.mark.slow
def test_training_on_voc2007_masks_difficult_labels(tmp_path):
  from jaxtag import config as config_lib
  from jaxtag import train
  sets = fb.voc2007(str(tmp_path / 'in'), extra=30)
  build('voc2007', tmp_path / 'in', tmp_path / 'data')
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.name = 'voc2007'
  config.dataset.data_dir = str(tmp_path / 'data')
  config.dataset.eval_split = config.dataset.test_split = 'test'
  config.dataset.label_mask_feature = 'tags_difficult'
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  assert result['num_examples'] == len(sets['test']) - 1   # 000002 corrupt
  rows = open(os.path.join(workdir, 'results_per_tag.csv')).read().split()
  test_counts = [int(r.split(',')[3]) for r in rows[1:]]
  readable = {k: v for k, v in sets['test'].items() if k != '000002'}
  np.testing.assert_array_equal(
      test_counts, (np.stack(list(readable.values())) == 1).sum(0))


@pytest.mark.slow
def test_training_on_animeface_faces_as_single_label(tmp_path,
                                                    checkpoint_test_scores):
  from jaxtag import config as config_lib
  from jaxtag import train
  fb.animeface(str(tmp_path / 'in'), extra=60, size=24)
  build('animeface_character', tmp_path / 'in', tmp_path / 'data')
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.name = 'animeface_character'
  config.dataset.data_dir = str(tmp_path / 'data')
  config.dataset.label_encoding = 'class_id'
  config.loss.name = 'softmax_ce'
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  # 8 classes: hatsune_miku, mato_sakura, matou_sakura and extra_0..4 (12
  # files each: 2 test). The small classes have no test file.
  assert result['num_examples'] == 5 * 2
  # top-1 as the checkpoint gives it on the test faces, by numpy.
  scores, ids = checkpoint_test_scores(config, workdir)
  assert all(len(i) == 1 for i in ids)
  assert result['top1'] == pytest.approx(
      np.mean(np.argmax(scores, 1) == np.concatenate(ids)))
