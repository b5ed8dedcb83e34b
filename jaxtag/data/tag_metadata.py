"""The tag list and train-split label statistics written with a dataset."""
from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
from etils import epath


@dataclasses.dataclass
class TagMetadata:
  names: list[str]
  categories: np.ndarray     # [C] Danbooru category: 0 general, 4 character, 9 rating
  counts: np.ndarray         # [C] train images per tag
  cooccurrence: np.ndarray   # [C, C] train images with both tags; diag == counts
  num_images: int


def load_tag_metadata(data_dir: epath.PathLike) -> TagMetadata:
  csv_path = epath.Path(data_dir) / 'selected_tags.csv'
  npz_path = epath.Path(data_dir) / 'label_stats.npz'
  for path in (csv_path, npz_path):
    if not path.exists():
      raise FileNotFoundError(
          f'{path} is missing: the dataset in {data_dir} was not built by a '
          'jaxtag builder or was built incompletely. Rebuild it with '
          '`python -m jaxtag.data.build NAME/CONFIG --data_dir DIR`.')
  rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
  # np.load seeks inside the zip; a bucket file is read whole first.
  with np.load(io.BytesIO(npz_path.read_bytes())) as stats:
    return TagMetadata(
        names=[r['name'] for r in rows],
        categories=np.array([int(r['category']) for r in rows]),
        counts=stats['counts'], cooccurrence=stats['cooccurrence'],
        num_images=int(stats['num_images']))
