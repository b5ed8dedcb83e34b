r"""A bundle -> `model.onnx` and `selected_tags.csv`, laid out like WD taggers.

  python -m jaxtag.serving.onnx_export --bundle BUNDLE [--out DIR] [--image_size 448]

(or `python -m jaxtag.serving.convert ... --format onnx`). Front ends of the
WD taggers load the result unchanged:
- input `input`: float32 NHWC [batch, S, S, 3], BGR, pixel values 0-255;
  the caller pads the image to a square with white and resizes it to S.
  Everything else happens in the graph: BGR -> RGB, x / 255, (x - mean) /
  std with the run's config.data.mean/std, the model in float32.
- output `output`: the objective's scores [batch, tags] (sigmoid
  probabilities for every sigmoid objective) in the bundle's WD order: the
  4 ratings first (a rating the model lacks scores 0), then general, then
  character tags; the batch dimension is dynamic.
- `selected_tags.csv` (tag_id,name,category,count) in the same order.

The graph is the jaxpr of that serving function translated one primitive
at a time (jaxtag/serving/onnx/translate.py says why), so every backbone
and feed-forward head exports, present or future, as long as its
prediction path uses primitives with a rule. Heads that cannot go to ONNX
are refused with the head's name: a prediction path with loops (the
lstm_decoder's beam search), random test crops (heads whose `test_crops`
is above 0: the crops depend on a random key), or extra batch features.
`--format stablehlo` exports all of them.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from absl import app
from absl import flags

from jaxtag import models
from jaxtag.data.normalize import normalize
from jaxtag.serving.onnx import UnsupportedError
from jaxtag.serving.onnx import to_onnx

MODEL_FILE = 'model.onnx'
TAGS_FILE = 'selected_tags.csv'
INPUT, OUTPUT = 'input', 'output'
TAG_COLUMNS = ('tag_id', 'name', 'category', 'count')


class NotExportableError(UnsupportedError):
  """The bundle's head has no ONNX form; StableHLO covers it."""


def _float32(module):
  """A module and its submodules computing in float32 (ONNX Runtime runs
  convolutions in float32 only; parameters are float32 anyway)."""
  overrides = {}
  for name in ('backbone', 'head'):
    sub = getattr(module, name, None)
    if sub is not None and hasattr(sub, 'dtype'):
      overrides[name] = sub.clone(dtype=jnp.float32)
  return module.clone(**overrides)


def _refuse(head: str, reason: str):
  raise NotExportableError(
      f'Head {head!r} (config.model.head) cannot be exported to ONNX: '
      f'{reason.rstrip(".")}. Export it with `python -m jaxtag.serving.convert ... '
      '--format stablehlo` instead.')


def check_exportable(model, head_name: str) -> None:
  """Refuses, naming the head, what ONNX cannot express before tracing."""
  head = model.head
  declared = models.declared_features(model)[0]
  if declared:
    _refuse(head_name, f'its prediction takes batch features {declared} '
                       'beside the image, and WD front ends feed the image '
                       'only')
  if int(getattr(head, 'test_crops', 0) or 0):
    _refuse(head_name, f'it predicts on {head.test_crops} random crops per '
                       'image (test_crops), which depend on a random key')


def serving_fn(model, variables, scores_fn, *, mean: Sequence[float],
               std: Sequence[float]):
  """BGR 0-255 float32 [B, S, S, 3] -> the objective's scores [B, C] in
  model order, plus a zero column (the score of a missing rating)."""
  model = _float32(model)

  def fn(image):
    x = normalize(jnp.flip(image, axis=-1), mean=mean, std=std,
                  dtype=jnp.float32)
    scores = scores_fn(model.apply(variables, x, method='predict'))
    scores = scores.astype(jnp.float32)
    return jnp.concatenate([scores, jnp.zeros((scores.shape[0], 1), jnp.float32)], axis=1)
  return fn


def model_to_onnx(model, variables, scores_fn, *, gather_index, mean, std,
                  image_size: int, head_name: str,
                  doc: str = '') -> onnx.ModelProto:
  """The ONNX graph of `model.predict` + `scores_fn`, with outputs in the
  order `gather_index` (model columns; the model's class count is the
  zero column)."""
  check_exportable(model, head_name)
  fn = serving_fn(model, variables, scores_fn, mean=mean, std=std)
  (batch,) = jax.export.symbolic_shape('batch')
  index = np.asarray(gather_index, np.int64)

  def reorder(graph, results, avals):
    (scores,) = results
    out = graph.node('Gather', [scores, index], axis=1)
    return [out], [jax.ShapeDtypeStruct((batch, len(index)), np.float32)]

  try:
    return to_onnx(fn, {INPUT: jax.ShapeDtypeStruct(
        (batch, image_size, image_size, 3), jnp.float32)}, [OUTPUT],
                   name='jaxtag', post=reorder, doc=doc)
  except UnsupportedError as e:
    _refuse(head_name, str(e))


def write_tags_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  with open(path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(TAG_COLUMNS)
    for row in rows:
      writer.writerow([row[k] for k in TAG_COLUMNS])


def export_onnx(bundle, out_dir: str, *, image_size: int = 448) -> str:
  """Writes `model.onnx` and `selected_tags.csv` into `out_dir`; returns
  the model's path. `bundle` is a jaxtag.serving.bundle.Bundle."""
  if image_size < 1:
    raise ValueError(f'image_size {image_size} (--image_size) must be '
                     'positive.')
  if bundle.task == 'captioning':
    _refuse(bundle.config.model.head, 'it decodes captions with a beam '
            'search, a loop over words whose length depends on the image')
  preprocess = bundle.preprocess
  proto = model_to_onnx(
      bundle.model, bundle.variables, bundle.objective.scores,
      gather_index=bundle.gather_index, mean=preprocess.mean,
      std=preprocess.std, image_size=image_size,
      head_name=bundle.config.model.head,
      doc='jaxtag tagger: BGR 0-255 NHWC in, tag scores in '
          'selected_tags.csv order out.')
  meta = {'image_size': str(image_size), 'channel_order': 'BGR',
          'pixel_range': '0-255', 'pad_colour': 'white',
          'backbone': bundle.config.model.backbone,
          'head': bundle.config.model.head,
          'loss': bundle.config.loss.name}
  for key, value in meta.items():
    proto.metadata_props.add(key=key, value=value)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, MODEL_FILE)
  onnx.save(proto, path)
  write_tags_csv(os.path.join(out_dir, TAGS_FILE), bundle.tags)
  return path


def _define_flags():
  global _BUNDLE, _OUT, _IMAGE_SIZE
  _BUNDLE = flags.DEFINE_string('bundle', None, 'The bundle folder to export.')
  _OUT = flags.DEFINE_string('out', None, 'Output folder (default: the bundle).')
  _IMAGE_SIZE = flags.DEFINE_integer('image_size', 448, 'Input side S.')


def main(argv):
  del argv
  if not _BUNDLE.value:
    raise app.UsageError('--bundle BUNDLE is required.')
  from jaxtag.serving import bundle as bundle_lib  # pylint: disable=import-outside-toplevel
  bundle = bundle_lib.load_bundle(_BUNDLE.value)
  print(export_onnx(bundle, _OUT.value or _BUNDLE.value,
                    image_size=_IMAGE_SIZE.value))


if __name__ == '__main__':
  # Defined here, not at import: jaxtag.serving.convert imports this module
  # and has flags of the same names.
  _define_flags()
  app.run(main)
