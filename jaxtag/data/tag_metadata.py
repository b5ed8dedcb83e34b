"""The tag list and train-split label statistics written with a dataset."""
from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class TagMetadata:
  names: list[str]
  categories: np.ndarray     # [C] Danbooru category: 0 general, 4 character, 9 rating
  counts: np.ndarray         # [C] train images per tag
  cooccurrence: np.ndarray   # [C, C] train images with both tags; diag == counts
  num_images: int


def load_tag_metadata(data_dir: str) -> TagMetadata:
  csv_path = os.path.join(data_dir, 'selected_tags.csv')
  npz_path = os.path.join(data_dir, 'label_stats.npz')
  for path in (csv_path, npz_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} is missing: the dataset in {data_dir} was not built by a '
          'jaxtag builder or was built incompletely. Rebuild it with '
          '`python -m jaxtag.data.build NAME/CONFIG --data_dir DIR`.')
  with open(csv_path, newline='') as f:
    rows = list(csv.DictReader(f))
  with np.load(npz_path) as stats:
    return TagMetadata(
        names=[r['name'] for r in rows],
        categories=np.array([int(r['category']) for r in rows]),
        counts=stats['counts'], cooccurrence=stats['cooccurrence'],
        num_images=int(stats['num_images']))
