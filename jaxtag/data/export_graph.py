r"""Writes ML-GCN's adjacency pickle from a built dataset's train statistics.

  python -m jaxtag.data.export_graph synthetic_anime/default \
      --data_dir DIR --out adj.pkl

The pickle is `{'adj': [C, C] co-occurrence counts (zero diagonal), 'nums':
[C] train images per tag}`, the file ML-GCN's reference code reads
(util.gen_A), in the tag order of the dataset's selected_tags.csv.
"""
from __future__ import annotations

from absl import app
from absl import flags

from jaxtag import label_graph
from jaxtag.data import build
from jaxtag.data import tag_metadata



def _define_flags():
  """Defined only when run as a command (other modules have --out too)."""
  flags.DEFINE_string('data_dir', None,
                      'TFDS data_dir (default: TFDS default).')
  flags.DEFINE_string('out', 'adj.pkl', 'The pickle to write.')


def export(name: str, data_dir: str | None, out: str) -> int:
  """Writes the pickle of dataset `name`; returns its number of tags."""
  builder = build.get_builder(name, data_dir)
  tags = tag_metadata.load_tag_metadata(builder.data_dir)
  label_graph.write_mlgcn_pickle(out, tags.cooccurrence, tags.counts)
  return len(tags.names)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m jaxtag.data.export_graph '
                         'NAME/CONFIG [--data_dir DIR] [--out adj.pkl]')
  num = export(argv[1], flags.FLAGS.data_dir, flags.FLAGS.out)
  print(f'{argv[1]}: {num} tags -> {flags.FLAGS.out}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
