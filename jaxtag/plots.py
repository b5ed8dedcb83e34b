"""Figures of a run: what the numbers in results.json look like.

Each `*_figure` function takes plain arrays and returns a matplotlib
`Figure` drawn on the Agg canvas (no pyplot, no display, no global backend
switch, so importing this module leaves a notebook's backend alone).
`write_run_plots` draws the set that a run's task picks (jaxtag/tasks/:
`Task.figures`) into
`workdir/plots/<name>_<kind>.png` and mirrors them to TensorBoard; the
trainer calls it after writing `results.json` and `--mode=eval` after
`eval_<split>.json`.

matplotlib is the `plots` extra: without it, runs log one line and write
no figures.
"""
from __future__ import annotations

import io
import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

from jaxtag.data import tag_metadata as tag_metadata_lib

DPI = 100
# Constants whose name holds one of these are drawn as label graphs.
_GRAPH_WORDS = ('adjacency', 'graph', 'correlation')
# Colours per Danbooru category, stable across figures.
_CATEGORY_COLOURS = {'general': '#1f77b4', 'character': '#d62728',
                     'rating': '#2ca02c', 'copyright': '#9467bd',
                     'artist': '#ff7f0e', 'meta': '#7f7f7f'}
_FONT = {'font.size': 10, 'axes.titlesize': 12, 'axes.labelsize': 10,
         'xtick.labelsize': 9, 'ytick.labelsize': 9, 'legend.fontsize': 9,
         'figure.titlesize': 13}


def available() -> bool:
  try:
    import matplotlib  # noqa: F401
  except ImportError:
    return False
  return True


def _figure(width: float, height: float):
  """A Figure of width x height inches at DPI, on its own Agg canvas."""
  import matplotlib
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  with matplotlib.rc_context(_FONT):
    fig = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _subplots(fig, *args, **kwargs):
  import matplotlib
  with matplotlib.rc_context(_FONT):
    return fig.subplots(*args, **kwargs)


def to_rgb(fig) -> np.ndarray:
  """[H, W, 3] uint8 of the drawn figure."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(fig_or_rgb, path: epath.PathLike) -> np.ndarray:
  """Writes a Figure (drawn here) or its `to_rgb` pixels as a PNG; returns
  the pixels, so a figure drawn once serves the file and TensorBoard."""
  from PIL import Image
  rgb = (fig_or_rgb if isinstance(fig_or_rgb, np.ndarray)
         else to_rgb(fig_or_rgb))
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format='PNG')
  epath.Path(path).write_bytes(buffer.getvalue())
  return rgb


def category_names(categories: Sequence[int]) -> list[str]:
  return [tag_metadata_lib.CATEGORIES.get(int(c), str(int(c)))
          for c in categories]


def _colour(category: str) -> str:
  return _CATEGORY_COLOURS.get(category, '#8c564b')


# -------------------------------------------------------- multi-label ---


def micro_pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, float]:
  """(precision, recall, AP) of all (image, tag) pairs pooled, ranked by
  score; AP is the mean precision at each positive (ties kept in order)."""
  scores = np.asarray(scores, np.float64).ravel()
  positive = (np.asarray(labels) > 0.5).ravel()
  order = np.argsort(-scores, kind='stable')
  hits = np.cumsum(positive[order])
  ranks = np.arange(1, len(order) + 1)
  precision = hits / ranks
  total = max(int(positive.sum()), 1)
  recall = hits / total
  ap = float(precision[positive[order]].sum() / total)
  return precision, recall, ap


def _operating_point(scores, labels, threshold) -> tuple[float, float]:
  """Pooled (precision, recall) of the predictions scores >= threshold."""
  scores = np.asarray(scores)
  positive = np.asarray(labels) > 0.5
  predicted = scores >= np.broadcast_to(threshold, scores.shape)
  tp = float((predicted & positive).sum())
  return (tp / max(float(predicted.sum()), 1.0),
          tp / max(float(positive.sum()), 1.0))


def _thin(*arrays, points: int = 800):
  """Every k-th point (and the last) so a curve of millions stays light."""
  n = len(arrays[0])
  keep = np.unique(np.r_[np.linspace(0, n - 1, min(n, points)).astype(int)])
  return [a[keep] for a in arrays]


def _iso_f1(ax) -> None:
  recall = np.linspace(0.01, 1, 200)
  for f1 in (0.2, 0.4, 0.6, 0.8):
    precision = f1 * recall / (2 * recall - f1)
    ok = (precision > 0) & (precision <= 1.0)
    ax.plot(recall[ok], precision[ok], color='0.85', lw=0.8, zorder=0)
    ax.annotate(f'F1={f1}', (recall[ok][-1], precision[ok][-1]),
                fontsize=8, color='0.55', xytext=(-30, 2),
                textcoords='offset points')


def pr_figure(scores, labels, threshold, categories: Sequence[int], *,
              title: str = 'Precision-recall'):
  """Micro-averaged precision-recall of all tags (left) and of each
  category (right), with the operating point of `threshold` ([C] or
  [N, 1], as thresholds.apply returns) marked on every curve."""
  scores = np.asarray(scores, np.float32)
  labels = np.asarray(labels) > 0.5
  threshold = np.broadcast_to(np.asarray(threshold, np.float32), scores.shape)
  names = np.asarray(category_names(categories))
  fig = _figure(12, 5.5)
  left, right = _subplots(fig, 1, 2, sharey=True)
  groups = [('all tags', np.ones(len(names), bool), left, 'black')]
  groups += [(c, names == c, right, _colour(c)) for c in dict.fromkeys(names)]
  for label, columns, ax, colour in groups:
    if not labels[:, columns].any():
      continue
    s, y, t = scores[:, columns], labels[:, columns], threshold[:, columns]
    precision, recall, ap = micro_pr_curve(s, y)
    precision, recall = _thin(precision, recall)
    op_p, op_r = _operating_point(s, y, t)
    ax.plot(recall, precision, color=colour, lw=1.8,
            label=f'{label}: AP {100 * ap:.1f}%, {int(columns.sum())} tags')
    ax.plot([op_r], [op_p], 'o', color=colour, ms=8, mec='white', mew=1.5)
    # Keep the label inside the axes.
    near_right, near_top = op_r > 0.85, op_p > 0.95
    ax.annotate(f'P {100 * op_p:.0f}% R {100 * op_r:.0f}%', (op_r, op_p),
                xytext=(-8 if near_right else 6, -14 if near_top else 6),
                textcoords='offset points', color=colour, fontsize=9,
                ha='right' if near_right else 'left')
  left.set_title('Micro-averaged, all tags')
  right.set_title('Micro-averaged, per category')
  for ax in (left, right):
    _iso_f1(ax)
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('recall (fraction of true tags found)')
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left')
  left.set_ylabel('precision (fraction of predicted tags that are right)')
  fig.suptitle(f'{title} (dot: operating threshold)')
  return fig


def ap_bar_figure(ap, names: Sequence[str], train_counts, categories, *,
                  top: int = 30, title: str = 'Per-tag AP'):
  """The `top` weakest and `top` strongest tags by AP, as sorted bars
  labelled with train counts; tags without test positives (AP NaN) are
  left out and counted in the title."""
  ap = np.asarray(ap, np.float64)
  valid = np.flatnonzero(~np.isnan(ap))
  order = valid[np.argsort(ap[valid], kind='stable')]
  n_weak = min(top, math.ceil(len(order) / 2))
  weak, strong = order[:n_weak], order[n_weak:][-top:][::-1]
  cats = category_names(categories)
  rows = max(len(weak), len(strong), 1)
  fig = _figure(13, 1.6 + 0.22 * rows)
  panels = _subplots(fig, 1, 2)
  for ax, picked, label in ((panels[0], weak, f'{len(weak)} weakest'),
                            (panels[1], strong, f'{len(strong)} strongest')):
    y = np.arange(len(picked))
    ax.barh(y, 100 * ap[picked], color=[_colour(cats[i]) for i in picked])
    ax.set_yticks(y, [f'{names[i]} ({int(train_counts[i]):,})'
                      for i in picked])
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.set_xlabel('test AP (%)')
    ax.set_title(label)
    ax.grid(axis='x', alpha=0.3)
    for yi, i in zip(y, picked):
      _bar_value(ax, yi, 100 * ap[i], 100, f'{100 * ap[i]:.1f}')
  panels[0].set_ylabel('tag (train images)')
  _category_legend(fig, {cats[i] for i in np.r_[weak, strong]})
  missing = len(ap) - len(valid)
  fig.suptitle(f'{title}: {len(valid)} tags ranked'
               + (f', {missing} without test positives left out'
                  if missing else ''))
  return fig


def _bar_value(ax, y, value: float, scale: float, text: str) -> None:
  """`text` inside the end of a long bar (white), after a short one."""
  inside = value > 0.15 * scale
  ax.text(value - 0.01 * scale if inside else max(value, 0) + 0.01 * scale,
          y, text, va='center', ha='right' if inside else 'left', fontsize=8,
          color='white' if inside else 'black')


def _category_legend(fig, present) -> None:
  from matplotlib.patches import Patch
  handles = [Patch(color=_colour(c), label=c) for c in sorted(present)]
  if handles:
    fig.legend(handles=handles, loc='outside lower center', title='category',
               ncols=len(handles))


def ap_vs_count_figure(ap, train_counts, categories, names=None, *,
                       label_worst: int = 5,
                       title: str = 'Per-tag AP against train count'):
  """Each tag's AP against its train count (log scale) by category, with
  the median AP (at the median count) of each count decade: the long
  tail."""
  ap = np.asarray(ap, np.float64)
  counts = np.maximum(np.asarray(train_counts, np.float64), 1)
  cats = np.asarray(category_names(categories))
  valid = ~np.isnan(ap)
  fig = _figure(10, 6)
  ax = _subplots(fig)
  for c in dict.fromkeys(cats[valid]):
    keep = valid & (cats == c)
    ax.scatter(counts[keep], 100 * ap[keep], s=18, alpha=0.6,
               color=_colour(c), label=f'{c} ({int(keep.sum())} tags)')
  if valid.any():
    edges = 10.0 ** np.arange(0, math.ceil(np.log10(counts[valid].max())) + 1)
    centres, medians = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
      inside = valid & (counts >= lo) & (counts < hi)
      if inside.any():
        centres.append(float(np.median(counts[inside])))
        medians.append(100 * np.median(ap[inside]))
    ax.plot(centres, medians, 'k-o', lw=2, ms=5,
            label='median per count decade')
    if names is not None and label_worst:
      for i in np.flatnonzero(valid)[np.argsort(ap[valid])][:label_worst]:
        ax.annotate(names[i], (counts[i], 100 * ap[i]), fontsize=8,
                    xytext=(4, -10), textcoords='offset points')
  ax.set_xscale('log')
  ax.set_ylim(-2, 102)
  ax.set_xlabel('train images with the tag (log scale)')
  ax.set_ylabel('test AP (%)')
  ax.grid(alpha=0.3, which='both')
  ax.legend(loc='lower right')
  ax.set_title(title)
  return fig


# ------------------------------------------------------------- graphs ---


def strongest_edges(adjacency, top: int) -> list[tuple[int, int, float]]:
  """[(i, j, weight)] of the `top` largest off-diagonal entries; a
  symmetric matrix lists each pair once (i < j). Ties by (i, j)."""
  a = np.asarray(adjacency, np.float64)
  symmetric = a.shape[0] == a.shape[1] and np.allclose(a, a.T)
  mask = np.triu(np.ones_like(a, bool), 1) if symmetric else ~np.eye(
      a.shape[0], dtype=bool)
  i, j = np.nonzero(mask & (a != 0))
  weights = a[i, j]
  order = np.lexsort((j, i, -weights))[:top]
  return [(int(i[k]), int(j[k]), float(weights[k])) for k in order]


def label_graph_figure(adjacency, names: Sequence[str], *, top: int = 25,
                       drawn_edges: int = 12,
                       title: str = 'Label graph: strongest edges'):
  """The `top` heaviest edges of a [C, C] label graph, listed with their
  weights (right); the `drawn_edges` heaviest drawn on a circle (left,
  width by weight). Self
  loops are left out; an asymmetric graph's edges are arrows i -> j."""
  a = np.asarray(adjacency, np.float64)
  if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] != len(names):
    raise ValueError(f'The label graph must be [C, C] with C = {len(names)} '
                     f'names; got shape {a.shape}.')
  edges = strongest_edges(a, top)
  symmetric = np.allclose(a, a.T)
  fig = _figure(14, max(7.0, 1.6 + 0.24 * len(edges)))
  ax_graph, ax_bars = _subplots(fig, 1, 2, width_ratios=(1.3, 1))
  # The drawing keeps the heaviest edges so that its labels stay legible.
  drawn = edges[:drawn_edges]
  nodes = list(dict.fromkeys(n for i, j, _ in drawn for n in (i, j)))
  angle = 2 * np.pi * np.arange(len(nodes)) / max(len(nodes), 1)
  where = {n: (np.cos(t), np.sin(t)) for n, t in zip(nodes, angle)}
  biggest = max((abs(w) for *_, w in drawn), default=1.0) or 1.0
  for i, j, w in drawn:
    ax_graph.annotate(
        '', xy=where[j], xytext=where[i],
        arrowprops=dict(arrowstyle='-' if symmetric else '-|>',
                        lw=0.5 + 5 * abs(w) / biggest, alpha=0.6,
                        color='#1f77b4', shrinkA=6, shrinkB=6))
  for n, (x, y) in where.items():
    ax_graph.plot([x], [y], 'o', color='#d62728', ms=7)
    ax_graph.text(1.08 * x, 1.08 * y, names[n], fontsize=9,
                  ha='left' if x >= 0 else 'right', va='center')
  ax_graph.set_xlim(-1.75, 1.75)
  ax_graph.set_ylim(-1.2, 1.2)
  ax_graph.set_aspect('equal')
  ax_graph.axis('off')
  ax_graph.set_title(f'top {len(drawn)} edges; line width: edge weight')
  arrow = ' \u2014 ' if symmetric else ' \u2192 '
  y = np.arange(len(edges))
  ax_bars.barh(y, [w for *_, w in edges], color='#1f77b4')
  ax_bars.set_yticks(y, [names[i] + arrow + names[j] for i, j, _ in edges])
  ax_bars.set_ylim(len(edges) - 0.5, -0.5)
  ax_bars.set_xlabel('edge weight (adjacency entry, unitless)')
  ax_bars.grid(axis='x', alpha=0.3)
  ax_bars.set_title(f'top {len(edges)} edges')
  fig.suptitle(f'{title} ({len(names)} tags, self loops left out)')
  return fig


def label_graphs(constants: Any, num_classes: int) -> dict[str, np.ndarray]:
  """{name: dense [C, C]} of the label graphs in a model's constants: a
  [C, C] array, or a sparse `<x>_values` [E] + `<x>_indices` [E, 2] pair
  (densified under `<x>`), whose name says graph, adjacency or correlation
  (so that [C, C] label embeddings, when D == C, are not taken for one)."""
  from jaxtag import trees
  out: dict[str, np.ndarray] = {}
  flat = trees.flatten(constants)
  for name, leaf in flat.items():
    if not any(w in name.rsplit('/', 1)[-1] for w in _GRAPH_WORDS):
      continue
    if not getattr(leaf, 'is_fully_addressable', True):
      continue  # spread over processes: process 0 cannot read it alone
    shape = tuple(np.shape(leaf))
    if shape == (num_classes, num_classes):
      out[name] = np.asarray(leaf, np.float64)
    elif name.endswith('_values') and len(shape) == 1:
      indices = flat.get(name[:-len('_values')] + '_indices')
      if indices is not None and np.shape(indices) == (shape[0], 2):
        dense = np.zeros((num_classes, num_classes))
        rows, cols = np.asarray(indices).T
        np.add.at(dense, (rows, cols), np.asarray(leaf, np.float64))
        out[name[:-len('_values')]] = dense
  return out


# ------------------------------------------------------- single label ---


def confused_classes(confusion, top: int) -> list[int]:
  """Up to `top` classes, in order of first appearance in the largest
  off-diagonal counts (the most-confused pairs)."""
  off = np.array(confusion, np.int64)
  np.fill_diagonal(off, 0)
  true, pred = np.nonzero(off)
  order = np.lexsort((pred, true, -off[true, pred]))
  picked: list[int] = []
  for k in order:
    for c in (int(true[k]), int(pred[k])):
      if c not in picked and len(picked) < top:
        picked.append(c)
  return picked


def confusion_figure(confusion, names: Sequence[str], *, top: int = 12,
                     title: str = 'Most-confused classes'):
  """Rows: true class; columns: top-1 prediction; cells: % of the true
  class's test images (with counts), over the `top` most-confused classes."""
  confusion = np.asarray(confusion, np.int64)
  picked = confused_classes(confusion, top) or list(
      range(min(top, len(names))))
  sub = confusion[np.ix_(picked, picked)]
  totals = np.maximum(confusion[picked].sum(1, keepdims=True), 1)
  percent = 100 * sub / totals
  size = 2.5 + 0.55 * len(picked)
  fig = _figure(size + 2.5, size)
  ax = _subplots(fig)
  image = ax.imshow(percent, cmap='Blues', vmin=0, vmax=100)
  labels = [names[c] for c in picked]
  ax.set_xticks(range(len(picked)), labels, rotation=45, ha='right')
  ax.set_yticks(range(len(picked)), labels)
  for r in range(len(picked)):
    for c in range(len(picked)):
      if sub[r, c]:
        ax.text(c, r, f'{percent[r, c]:.0f}%\n({sub[r, c]})', ha='center',
                va='center', fontsize=8,
                color='white' if percent[r, c] > 60 else 'black')
  ax.set_xlabel('predicted class (top-1)')
  ax.set_ylabel('true class')
  fig.colorbar(image, ax=ax, label="% of the true class's test images")
  ax.set_title(f'{title} ({len(picked)} of {len(names)} classes)')
  return fig


# ----------------------------------------------------------- captions ---


def caption_figure(images: Sequence[Any], captions: Sequence[str], *,
                   columns: int = 4, title: str = 'Generated captions'):
  """Images ([H, W, 3] uint8 arrays or PIL images) with their captions
  wrapped beneath, `columns` per row."""
  if len(images) != len(captions):
    raise ValueError(f'{len(images)} images but {len(captions)} captions.')
  if not images:
    raise ValueError('caption_figure needs at least one image.')
  columns = min(columns, len(images))
  rows = math.ceil(len(images) / columns)
  fig = _figure(3.2 * columns, 4.2 * rows)
  axes = np.atleast_1d(_subplots(fig, rows, columns, squeeze=False)).ravel()
  for ax, image, caption in zip(axes, images, captions):
    ax.imshow(np.asarray(image))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(textwrap.fill(caption, 38), fontsize=9, loc='left')
  for ax in axes[len(images):]:
    ax.axis('off')
  fig.suptitle(f'{title} ({len(images)} images)')
  return fig


# ------------------------------------------------------------ compare ---


def _is_fraction_metric(name: str, values) -> bool:
  lowered = name.lower()
  return (not any(w in lowered for w in ('loss', 'second', 'step'))
          and all(0.0 <= v <= 1.0 for v in values))


def compare_figure(results: Mapping[str, Mapping[str, float]], *,
                   metrics: Sequence[str] | None = None,
                   title: str = 'Compared runs',
                   errors: Mapping[str, Mapping[str, float]] | None = None):
  """One panel per metric, one bar per run: {run: {metric: value}}.
  Fractions in [0, 1] are shown as %; other metrics in their own units.
  errors, in the same units as results (a std, say), are drawn as error
  bars."""
  runs = list(results)
  if not runs:
    raise ValueError('compare_figure needs at least one run.')
  if metrics is None:
    metrics = list(dict.fromkeys(m for r in runs for m in results[r]))
  columns = min(4, max(len(metrics), 1))
  rows = math.ceil(len(metrics) / columns)
  fig = _figure(3.6 * columns, 0.8 + rows * (0.9 + 0.35 * len(runs)))
  axes = np.atleast_1d(_subplots(fig, rows, columns, squeeze=False,
                                 sharey=True)).ravel()
  colours = [f'C{i % 10}' for i in range(len(runs))]
  for ax, metric in zip(axes, metrics):
    values = [results[r].get(metric, float('nan')) for r in runs]
    finite = [v for v in values if v == v]
    percent = _is_fraction_metric(metric, finite)
    shown = [100 * v if percent else v for v in values]
    y = np.arange(len(runs))
    xerr = None
    if errors is not None:
      xerr = [(100 if percent else 1) * errors.get(r, {}).get(metric, 0.0)
              for r in runs]
      xerr = np.nan_to_num(xerr)
    ax.barh(y, np.nan_to_num(shown), color=colours, xerr=xerr,
            ecolor='black', capsize=3)
    ax.set_yticks(y, runs)
    ax.set_ylim(len(runs) - 0.5, -0.5)
    top = max([abs(v) for v in shown if v == v] or [1.0])
    ax.set_xlim(0, 100 if percent else 1.25 * top)
    for yi, v in zip(y, shown):
      ax.text(0.01 * (100 if percent else top), yi,
              '—' if v != v else f'{v:.1f}' if percent else f'{v:.4g}',
              va='center', fontsize=8, color='white' if v == v else 'black',
              fontweight='bold')
    ax.set_title(metric)
    ax.set_xlabel('%' if percent else 'value')
    ax.grid(axis='x', alpha=0.3)
  for ax in axes[len(metrics):]:
    ax.axis('off')
  fig.suptitle(f'{title}: {len(runs)} runs, {len(metrics)} metrics')
  return fig


# ------------------------------------------------------------- a run ---


def graph_figures(constants: Any, names: Sequence[str],
                  prefix: str = '') -> dict[str, Any]:
  """{'graph_<name>': Figure} of the label graphs in a model's constants."""
  if constants is None:
    return {}
  return {'graph_' + name.replace('/', '_'): label_graph_figure(
              graph, names, title=f'{prefix}label graph {name}')
          for name, graph in label_graphs(constants, len(names)).items()}


def write_run_plots(workdir: epath.PathLike, name: str, step: int,
                    pred: Mapping[str, np.ndarray], *, task,
                    constants: Any = None, images=None) -> list[epath.Path]:
  """Draws the figures of `task` (a jaxtag.tasks.Task: `task.figures`) for
  the evaluation `pred` (as the task's `score` returns it) into
  workdir/plots/<name>_<kind>.png and as TensorBoard images
  `plots/<name>_<kind>` at `step`; returns the paths. `constants`: the
  model's (its label graphs are drawn); `images(indices)`: decoded images
  of records (a captioner's figure shows some). Without matplotlib, logs
  once and returns []."""
  if not available():
    logging.info('matplotlib is not installed: no plots (pip install '
                 "'jaxtag[plots]').")
    return []
  from jaxtag import reporting
  folder = epath.Path(workdir) / 'plots'
  folder.mkdir(parents=True, exist_ok=True)
  figures = task.figures(pred, title=name, constants=constants,
                         images=images)
  paths, images = [], {}
  for kind, fig in figures.items():
    path = folder / f'{name}_{kind}.png'
    images[f'plots/{name}_{kind}'] = save_png(fig, path)
    paths.append(path)
  reporting.write_images(workdir, step, images)
  logging.info('Wrote %d plots to %s', len(paths), folder)
  return paths
