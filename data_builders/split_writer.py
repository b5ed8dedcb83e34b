"""Two steps that the class-folder, VOC, COCO and Flickr8k builders share
around manual.ManualBuilder: fixing the labels and the report before any
image is read, and handing over only the splits that have records.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from absl import logging

from data_builders import images
from data_builders import manual
from data_builders import tag_stats


def begin(builder: manual.ManualBuilder, tags: Iterable[tag_stats.TagRow],
          skipped: Mapping[str, int] | None = None, **extra) -> None:
  """Sets the label rows (train counts come later) and starts the report
  with the records skipped while reading the layout."""
  builder.metadata.tags = list(tags)
  counter = images.SkipCounter('metadata')
  counter.update({reason: n for reason, n in (skipped or {}).items() if n})
  builder.start_report(counter, **extra)


def generators(builder: manual.ManualBuilder,
               records: Mapping[str, list[manual.Record]]) -> dict:
  """{split: builder.generate(...)} of the splits that have records; an
  empty one (a small class-folder set cut in fractions) is left out,
  logged and named in the report, since TFDS cannot write an empty split."""
  empty = sorted(split for split, r in records.items() if not r)
  if empty:
    logging.warning('%s: no records for split(s) %s; left out.',
                    builder.name, ', '.join(empty))
    builder.metadata.report.extra['empty_splits'] = empty
  return {split: builder.generate(split, r) for split, r in records.items()
          if r}
