"""The single-label task: one class per image (character faces).

Metrics: top-1, top-5, mean per-class accuracy and the most confused
pairs; `<name>_per_class.csv`; the confusion figure. No threshold policy is
fitted; a bundle serves the class scores as a multi-label one does, with
the category thresholds of config.eval.
"""
from __future__ import annotations

import csv
import io
from typing import ClassVar

import numpy as np
from etils import epath

from jaxtag import metrics as metrics_lib
from jaxtag.tasks import multi_label


class SingleLabel(multi_label.MultiLabel):
  name: ClassVar[str] = 'single_label'
  summary_keys: ClassVar[tuple[str, ...]] = ('top1', 'top5', 'loss')
  tunes_on_validation: ClassVar[bool] = False

  def score(self, pred, *, eval_config, thresholds=None):
    del eval_config, thresholds
    result = metrics_lib.single_label_metrics(pred['scores'], pred['labels'])
    names = self.tags.names
    result['most_confused'] = [
        [names[t], names[p], n] for t, p, n in
        metrics_lib.most_confused_pairs(pred['scores'], pred['labels'])]
    return result, pred, None

  def write_files(self, folder, name, pred):
    write_per_class_csv(epath.Path(folder) / f'{name}_per_class.csv', pred,
                        self.tags)

  def figures(self, pred, *, title='', graphs=None, images=None):
    from jaxtag import plots  # pylint: disable=g-import-not-at-top
    del images
    prefix = f'{title}: ' if title else ''
    names = list(self.tags.names)
    return {'confusion': plots.confusion_figure(
                metrics_lib.confusion_matrix(pred['scores'], pred['labels']),
                names, title=f'{prefix}most-confused classes'),
            **plots.graph_figures(graphs, names, prefix)}


def write_per_class_csv(path, pred: dict[str, np.ndarray],
                        tag_metadata) -> None:
  """class, test count, top-1 accuracy, and the class it is most often
  mistaken for, with how often."""
  scores, labels = pred['scores'], pred['labels'].astype(np.int64)
  accuracy = metrics_lib.per_class_accuracy(scores, labels)
  confusion = metrics_lib.confusion_matrix(scores, labels)
  np.fill_diagonal(confusion, 0)
  count = np.bincount(labels, minlength=scores.shape[1])
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['class', 'test_count', 'accuracy', 'most_confused_with',
                   'times'])
  for c, name in enumerate(tag_metadata.names):
    if count[c] == 0:
      continue
    worst = int(np.argmax(confusion[c]))
    times = int(confusion[c, worst])
    writer.writerow([name, int(count[c]), f'{accuracy[c]:.4f}',
                     tag_metadata.names[worst] if times else '', times])
  epath.Path(path).write_text(out.getvalue())
