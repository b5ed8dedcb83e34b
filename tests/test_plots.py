"""Plots: each figure on a small fixture, its numbers against references,
and the set a run writes (slow)."""
import glob
import os
import struct

import numpy as np
import pytest
from PIL import Image

from jaxtag import plots
from jaxtag import tasks
from jaxtag.data import tag_metadata as tag_metadata_lib

NAMES = ['general', 'sensitive', '1girl', 'long_hair', 'smile', 'hat',
         'blue_eyes', 'red_eyes', 'aoi_(synthetic)', 'akane_(synthetic)']
CATEGORIES = np.array([9, 9, 0, 0, 0, 0, 0, 0, 4, 4])
COUNTS = np.array([50, 30, 70, 20, 9, 3, 40, 1, 12, 5])


def _fixture(n=40, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.random((n, len(NAMES))) < 0.3
  scores = np.clip(0.5 * labels + 0.6 * rng.random(labels.shape), 0, 1)
  return scores.astype(np.float32), labels


def _tags():
  return tag_metadata_lib.TagMetadata(
      names=NAMES, categories=CATEGORIES, counts=COUNTS,
      cooccurrence=np.eye(len(NAMES)), num_images=100)


def _check_png(path):
  """A PNG with something drawn on it."""
  with Image.open(path) as image:
    assert image.format == 'PNG'
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.std() > 10, f'{path} is blank'


def _save(fig, tmp_path, name='f.png'):
  path = str(tmp_path / name)
  plots.save_png(fig, path)
  _check_png(path)


def test_micro_pr_curve_matches_sklearn():
  from sklearn import metrics as sk
  scores, labels = _fixture()
  precision, recall, ap = plots.micro_pr_curve(scores, labels)
  assert ap == pytest.approx(sk.average_precision_score(labels.ravel(),
                                                        scores.ravel()))
  sk_p, sk_r, _ = sk.precision_recall_curve(labels.ravel(), scores.ravel())
  # sklearn lists the distinct thresholds from the lowest; ours every rank.
  assert precision[-1] == pytest.approx(sk_p[0])
  assert recall[-1] == 1.0
  ours = {(round(r, 9), round(p, 9)) for p, r in zip(precision, recall)}
  assert {(round(r, 9), round(p, 9)) for p, r in zip(sk_p[:-1], sk_r[:-1])
          } <= ours


def test_operating_point_by_hand():
  scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
  labels = np.array([[1, 0], [0, 1], [1, 1]])
  # thresholds 0.5 and 0.3: predicted (0,0) (1,0) (1,1) (2,1); 3 of them
  # true, of 4 true tags.
  assert plots._operating_point(scores, labels, np.array([0.5, 0.3])) == (
      pytest.approx(3 / 4), pytest.approx(3 / 4))
  # one threshold per image ([N, 1]): 0.95 predicts nothing in row 0.
  p, r = plots._operating_point(scores, labels, np.array([[0.95], [0.5],
                                                          [0.05]]))
  assert (p, r) == (pytest.approx(3 / 4), pytest.approx(3 / 4))


def test_pr_figure(tmp_path):
  scores, labels = _fixture()
  fig = plots.pr_figure(scores, labels, np.full(len(NAMES), 0.5), CATEGORIES)
  _save(fig, tmp_path)
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ['Micro-averaged, all tags', 'Micro-averaged, per category']
  assert all(ax.get_xlabel() for ax in fig.axes) and fig.axes[0].get_ylabel()
  legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
  assert [s.split(':')[0] for s in legend] == ['rating', 'general',
                                               'character']


def test_ap_bar_figure_picks_weakest_and_strongest(tmp_path):
  ap = np.array([0.9, np.nan, 0.1, 0.5, 0.7, 0.3, 0.2, 0.95, 0.6, 0.4])
  fig = plots.ap_bar_figure(ap, NAMES, COUNTS, CATEGORIES, top=3)
  _save(fig, tmp_path)
  weak, strong = fig.axes[:2]
  # Each bar is the AP (%) of the tag it names.
  assert [b.get_width() for b in weak.patches] == pytest.approx([10, 20, 30])
  assert [b.get_width() for b in strong.patches] == pytest.approx(
      [95, 90, 70])
  assert [t.get_text() for t in weak.get_yticklabels()] == [
      '1girl (70)', 'blue_eyes (40)', 'hat (3)']
  assert [t.get_text() for t in strong.get_yticklabels()] == [
      'red_eyes (1)', 'general (50)', 'smile (9)']
  assert 'left out' in fig.get_suptitle()


def test_ap_vs_count_figure(tmp_path):
  ap = np.linspace(0.1, 0.9, len(NAMES))
  fig = plots.ap_vs_count_figure(ap, COUNTS, CATEGORIES, NAMES)
  _save(fig, tmp_path)
  ax = fig.axes[0]
  assert ax.get_xscale() == 'log' and 'log' in ax.get_xlabel()
  median = [line for line in ax.get_lines()
            if line.get_label() == 'median per count decade'][0]
  # Count decades [1, 10): counts 9, 3, 1, 5 -> AP of tags 4, 5, 7, 9;
  # [10, 100): the other six.
  decade_1 = np.median(ap[[4, 5, 7, 9]])
  decade_2 = np.median(ap[[0, 1, 2, 3, 6, 8]])
  np.testing.assert_allclose(median.get_ydata(),
                             [100 * decade_1, 100 * decade_2])
  # ... at the decades' median counts: 1, 3, 5, 9 and 12, 20, ..., 70.
  np.testing.assert_allclose(median.get_xdata(), [4, 35])


def test_strongest_edges_by_hand():
  a = np.array([[1.0, 0.2, 0.0],
                [0.2, 1.0, 0.7],
                [0.0, 0.7, 1.0]])
  assert plots.strongest_edges(a, 5) == [(1, 2, 0.7), (0, 1, 0.2)]
  directed = np.array([[0.0, 0.5, 0.1],
                       [0.3, 0.0, 0.5],
                       [0.0, 0.0, 0.0]])
  # Ties by (i, j); each direction is its own edge.
  assert plots.strongest_edges(directed, 3) == [(0, 1, 0.5), (1, 2, 0.5),
                                                (1, 0, 0.3)]


def test_label_graph_figure(tmp_path):
  rng = np.random.default_rng(1)
  a = rng.random((len(NAMES), len(NAMES)))
  fig = plots.label_graph_figure(a, NAMES, top=6, drawn_edges=4)
  _save(fig, tmp_path)
  bars = fig.axes[1]
  best = plots.strongest_edges(a, 6)
  assert [t.get_text() for t in bars.get_yticklabels()] == [
      f'{NAMES[i]} \u2192 {NAMES[j]}' for i, j, _ in best]
  with pytest.raises(ValueError, match=r'\[C, C\] with C = 10'):
    plots.label_graph_figure(a[:3], NAMES)


def test_label_graphs_from_constants_dense_and_sparse():
  c = 4
  dense = np.arange(16.0).reshape(4, 4)
  rows, cols = np.array([0, 1, 3]), np.array([1, 2, 0])
  constants = {'head': {
      'adjacency': dense, 'embeddings': np.ones((c, c)),
      'graph_values': np.array([0.5, 0.25, 2.0]),
      'graph_indices': np.stack([rows, cols], 1)}}
  graphs = plots.label_graphs(constants, c)
  assert sorted(graphs) == ['head/adjacency', 'head/graph']
  np.testing.assert_array_equal(graphs['head/adjacency'], dense)
  expected = np.zeros((c, c))
  expected[rows, cols] = [0.5, 0.25, 2.0]
  np.testing.assert_array_equal(graphs['head/graph'], expected)


def test_confusion_figure_shows_the_most_confused_classes(tmp_path):
  names = [f'class_{i}' for i in range(6)]
  confusion = np.diag([10, 10, 10, 10, 10, 10])
  confusion[2, 4] = 7
  confusion[4, 2] = 3
  confusion[0, 5] = 5
  assert plots.confused_classes(confusion, 3) == [2, 4, 0]
  fig = plots.confusion_figure(confusion, names, top=4)
  _save(fig, tmp_path)
  ax = fig.axes[0]
  shown = np.asarray(ax.get_images()[0].get_array())
  # Row class_2: 7 of its 17 images went to class_4.
  assert shown[0, 1] == pytest.approx(100 * 7 / 17)
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      'class_2', 'class_4', 'class_0', 'class_5']


def test_caption_figure(tmp_path):
  images = [np.full((32, 48, 3), v, np.uint8) for v in (0, 128, 255)]
  captions = ['1girl, solo, long hair, smile'] * 3
  fig = plots.caption_figure(images, captions, columns=2)
  _save(fig, tmp_path)
  assert fig.axes[0].get_xlabel() == '1girl, solo, long hair, smile'
  with pytest.raises(ValueError, match='3 images but 2 captions'):
    plots.caption_figure(images, captions[:2])


def test_compare_figure(tmp_path):
  results = {'baseline': {'mAP': 0.5, 'CF1': 0.4, 'loss': 1.7},
             'mlgcn': {'mAP': 0.6, 'CF1': 0.45}}
  fig = plots.compare_figure(results)
  _save(fig, tmp_path)
  axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
  assert axes['mAP'].get_xlabel() == '%'
  assert axes['loss'].get_xlabel() == 'value'
  np.testing.assert_allclose(
      [p.get_width() for p in axes['mAP'].patches], [50, 60])
  np.testing.assert_allclose(
      [p.get_width() for p in axes['loss'].patches], [1.7, 0])


def _event_image_tags(logdir):
  """Image summary tags in tensorboardX event files, read by hand."""
  from tensorboardX.proto import event_pb2
  tags = []
  for path in glob.glob(os.path.join(logdir, 'events.*')):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      tags += [v.tag for v in event.summary.value if v.HasField('image')]
  return sorted(tags)


@pytest.mark.slow  # four figures and an event file: seconds
def test_write_run_plots_multi_label(tmp_path):
  scores, labels = _fixture()
  from jaxtag import metrics
  pred = {'scores': scores, 'labels': labels,
          'threshold': np.full(len(NAMES), 0.5),
          'ap': metrics.average_precision(scores, labels)}
  constants = {'head': {'adjacency': np.eye(len(NAMES)) + 0.1}}
  paths = plots.write_run_plots(str(tmp_path), 'results', 7, pred,
                                task=tasks.MultiLabel(_tags()),
                                constants=constants)
  names = sorted(os.path.basename(str(p)) for p in paths)
  assert names == ['results_ap_bars.png', 'results_ap_vs_count.png',
                   'results_graph_head_adjacency.png', 'results_pr.png']
  for path in paths:
    _check_png(path)
  assert _event_image_tags(str(tmp_path / 'tensorboard')) == [
      'plots/' + n[:-4] for n in names]


def test_write_run_plots_single_label_and_without_matplotlib(tmp_path,
                                                            monkeypatch):
  rng = np.random.default_rng(0)
  pred = {'scores': rng.random((30, len(NAMES))),
          'labels': rng.integers(0, len(NAMES), 30)}
  paths = plots.write_run_plots(str(tmp_path), 'eval_test', 3, pred,
                                task=tasks.SingleLabel(_tags()))
  assert [os.path.basename(str(p)) for p in paths] == [
      'eval_test_confusion.png']
  monkeypatch.setattr(plots, 'available', lambda: False)
  assert plots.write_run_plots(str(tmp_path / 'none'), 'x', 0, pred,
                               task=tasks.SingleLabel(_tags())) == []
  assert not (tmp_path / 'none').exists()


@pytest.mark.slow
def test_a_run_and_its_eval_write_the_plots(tiny_config, tmp_path):
  from jaxtag import train
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config, workdir)
  train.evaluate_checkpoint(tiny_config, workdir, 'test')
  found = sorted(os.path.basename(p) for p in
                 glob.glob(os.path.join(workdir, 'plots', '*.png')))
  kinds = ['ap_bars', 'ap_vs_count', 'pr']
  assert found == sorted([f'eval_test_{k}.png' for k in kinds]
                         + [f'results_{k}.png' for k in kinds])
  for name in found:
    _check_png(os.path.join(workdir, 'plots', name))
  tags = _event_image_tags(os.path.join(workdir, 'tensorboard'))
  assert tags == sorted('plots/' + f[:-4] for f in found)
