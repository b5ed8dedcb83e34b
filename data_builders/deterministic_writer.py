"""An example writer whose shard bytes depend only on the examples.

TFDS stores an example as a tf.train.Example, whose features are a protobuf
map<string, Feature>. protobuf (upb) writes a map in the order of its hash
table, and that table is seeded per process (PYTHONHASHSEED does not fix it),
so the same example serializes to different bytes in two processes. Writing
every record again with `deterministic=True` sorts the map by key.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2


def canonical_example(serialized: bytes) -> bytes:
  """The same tf.train.Example, its feature map written in key order."""
  example = tf_example_pb2.Example.FromString(serialized)
  return example.SerializeToString(deterministic=True)


class DeterministicExampleWriter(tfds.core.ExampleWriter):
  """tfds' ExampleWriter, writing each record in canonical form.

  Install from a builder's `_example_writer()`, the hook TFDS provides for
  custom writers; TFDS serializes before this point, hence the re-write.
  """

  def write(self, path, examples: Iterable[tuple]):
    def canonical() -> Iterator[tuple]:
      for key, serialized in examples:
        yield key, canonical_example(serialized)
    return super().write(path, canonical())
