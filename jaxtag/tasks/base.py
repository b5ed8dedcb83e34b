"""The Task interface: what a method's predictions are judged by and served as.

A Task is built for a run (`for_run`: the dataset's tags and the run's
label encoder) or for a bundle (`for_bundle`: the bundle's folder), and
then answers every question whose answer depends on the task, so that the
trainer, the evaluation, the plots, the converter and the serving code ask
it instead of comparing names. The methods fall in four groups:

- evaluation: `score` (the metric suite on the eval rows), `summary_keys`
  (the metrics of the log line), `write_files` (the results CSV beside
  `<name>.json`), `figures` (the plots of one evaluation);
- conversion (jaxtag/serving/convert.py): `bundle_labels` (the rows of the
  bundle's selected_tags.csv) and `bundle_tag_ids` (their tag_id column),
  `bundle_thresholds` (its thresholds.json),
  `write_bundle_files` (what else the bundle needs), `onnx_refusal`;
- a loaded bundle (jaxtag/serving/bundle.py): `bundle_output` (the model's
  scores in bundle order), `decode`;
- tag and serve (jaxtag/serving/tagger.py, jaxtag/tag.py, jaxtag/serve.py):
  `empty_scores`, `thresholds`, `results` (one dict per image),
  `ignored_tag_options`, `text_file` (a .txt caption), `csv_header` and
  `csv_row`, `serve_records` (the server's JSON records).

A Task compares equal to its name, so `task == 'captioning'` reads as it
did when tasks were strings.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import numpy as np


class Task:
  name: ClassVar[str] = ''
  # Metrics of the one-line summary that the trainer logs, in order.
  summary_keys: ClassVar[tuple[str, ...]] = ()

  def __init__(self, tags=None):
    self.tags = tags   # jaxtag.data.tag_metadata.TagMetadata, or None

  @classmethod
  def for_run(cls, *, tags, encoder) -> 'Task':
    """The task of a run on a dataset with `tags`, labels from `encoder`
    (prepared: its vocabulary, if any, is read)."""
    del encoder
    return cls(tags)

  @classmethod
  def for_bundle(cls, directory: str) -> 'Task':
    """The task of the bundle in `directory`: reads what it needs there."""
    del directory
    return cls()

  def __eq__(self, other) -> bool:
    if isinstance(other, str):
      return other == self.name
    return type(other) is type(self) and other.tags is self.tags

  def __hash__(self) -> int:
    return hash(self.name)

  def __str__(self) -> str:
    return self.name

  def __repr__(self) -> str:
    return f'{type(self).__name__}()'

  # ---------------------------------------------------------- evaluation ---

  def score(self, pred: dict[str, np.ndarray], *, eval_config,
            thresholds=None) -> tuple[dict, dict, dict | None]:
    """(metrics, pred, thresholds) of the eval rows `pred` (scores, labels,
    index, loss). `thresholds`: a fitted record to apply; None fits the
    config's policy on these rows, for tasks that have one."""
    raise NotImplementedError

  def write_files(self, folder, name: str, pred: dict) -> None:
    """The task's files beside `<name>.json` (a per-tag CSV, say)."""
    del folder, name, pred

  def figures(self, pred: dict, *, title: str = '', constants: Any = None,
              images: Callable[[Sequence[int]], list] | None = None
              ) -> dict[str, Any]:
    """{kind: matplotlib Figure} of one evaluation. `constants`: the
    model's; `images(indices)`: the decoded images of records."""
    del pred, title, constants, images
    return {}

  # ---------------------------------------------------------- conversion ---

  def bundle_labels(self) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, categories, counts): the model's outputs, as the bundle's
    selected_tags.csv lists them (before its WD ordering)."""
    raise NotImplementedError

  def bundle_tag_ids(self) -> np.ndarray | None:
    """The source's ids of `bundle_labels`' rows (tag_metadata.NO_TAG_ID
    where unknown), or None: no row has one."""
    return None

  def bundle_thresholds(self, eval_config, workdir: str,
                        predict: Callable[[], dict]) -> dict:
    """thresholds.json of the bundle, `per_tag` in model order.
    `predict()` gives the eval rows of the validation split (only called
    by tasks that tune on them)."""
    raise NotImplementedError

  def write_bundle_files(self, directory: str) -> None:
    """Files the bundle needs besides the common ones."""
    del directory

  def onnx_refusal(self) -> str | None:
    """Why this task's models cannot be exported to ONNX, or None."""
    return None

  # -------------------------------------------------------------- bundle ---

  def bundle_output(self, scores, gather_index):
    """The model's scores [B, C] as the bundle returns them (traced)."""
    raise NotImplementedError

  def decode(self, tokens) -> list[str]:
    """A captioner's token ids [B, T] -> sentences."""
    raise ValueError(f'This is a {self.name} model, not a captioner: use '
                     'predict() for its scores.')

  # ------------------------------------------------------- tag and serve ---

  def empty_scores(self, num_tags: int) -> np.ndarray:
    """What `Tagger.scores` returns for no images."""
    raise NotImplementedError

  def thresholds(self, tagger, scores) -> np.ndarray:
    """[N, tags]: each score's threshold, after the tagger's overrides."""
    raise NotImplementedError

  def results(self, tagger, scores) -> list[dict[str, Any]]:
    """One result dict per image (what `jaxtag.tag` writes as json)."""
    raise NotImplementedError

  def ignored_tag_options(self, changed: Sequence[str]) -> list[str]:
    """Of the tag-shaping options of `jaxtag.tag` the user `changed`, those
    this task ignores."""
    del changed
    return []

  def text_file(self, result: dict, existing: str | None,
                tags_text: Callable[[dict, str | None], str]) -> str:
    """The .txt caption of one image: `existing` is the current file's
    text with --append-existing (else None); `tags_text(result, existing)`
    is the tag command's own rendering of tags."""
    raise NotImplementedError

  def csv_header(self) -> list[str]:
    raise NotImplementedError

  def csv_row(self, record: dict) -> list[Any]:
    """One row of `jaxtag.tag --format csv` for a record {'file', **result}."""
    raise NotImplementedError

  def serve_records(self, tagger, scores, requests,
                    page_extras: Callable | None = None) -> list[dict]:
    """The server's JSON records: one per row of `scores` [N, tags] and
    (filename, with_scores) of `requests`, {'file', **result} with the
    `tagger`'s results (and thresholds); with
    `with_scores`, what `page_extras(row scores, row thresholds)` returns
    as 'scores' and 'thresholds' (for tasks that have them)."""
    raise NotImplementedError
