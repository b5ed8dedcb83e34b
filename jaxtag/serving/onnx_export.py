r"""A bundle -> `model.onnx` and `selected_tags.csv`, laid out like WD taggers.

  python -m jaxtag.serving.onnx_export --bundle BUNDLE [--out DIR] [--image_size S]

(or `python -m jaxtag.serving.convert ... --format onnx`). Front ends of the
WD taggers load the result unchanged:
- input `input`: float32 NHWC [batch, S, S, 3], BGR, pixel values 0-255;
  the caller pads the image to a square with white and resizes it to S.
  S is the model's training size (preprocess.json `size`) unless
  `--image_size` says otherwise. With another S the graph first resizes
  the input to the training size with the bundle's filter, antialiased as
  Pillow does (two matrix products with Pillow's filter weights: opset 17
  has no antialiased Resize), so a client feeding S-pixel images gives the
  model the input it expects, up to the resize filter. SmilingWolf's
  wd-tagger demo app and ComfyUI-WD14-Tagger read S from the graph's input
  shape; kohya-ss/sd-scripts' tag_images_by_wd14_tagger.py feeds 448 pixels
  whatever the graph says, so a model for it is exported with
  `--image_size 448`.
  Everything else happens in the graph: BGR -> RGB, x / 255, (x - mean) /
  std with the run's config.data.mean/std, the model in float32.
- output `output`: the objective's scores [batch, tags] (sigmoid
  probabilities for every sigmoid objective) in the bundle's WD order: the
  4 ratings first (a rating the model lacks scores 0), then general, then
  character tags; the batch dimension is dynamic.
- `selected_tags.csv` (tag_id,name,category,count,jaxtag_category) in the
  same order. WD front ends know three categories: rating (9), general (0)
  and character (4), and take every row between the ratings and the first
  character for a general tag. Tags of any other category (copyright,
  artist, meta) are therefore placed at the end of the general block with
  category 0; `jaxtag_category` keeps every tag's real category. `tag_id`
  is the bundle's: the Danbooru id where the dataset recorded it, else -1
  (the clients read only name and category).

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
from jaxtag.data import tag_metadata as tag_metadata_lib
from jaxtag.data.normalize import normalize
from jaxtag.serving.onnx import UnsupportedError
from jaxtag.serving.onnx import to_onnx

MODEL_FILE = 'model.onnx'
TAGS_FILE = 'selected_tags.csv'
INPUT, OUTPUT = 'input', 'output'
TAG_COLUMNS = ('tag_id', 'name', 'category', 'count', 'jaxtag_category')
RATING, GENERAL, CHARACTER = (tag_metadata_lib.RATING, tag_metadata_lib.GENERAL,
                              tag_metadata_lib.CHARACTER)


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


# Pillow's resampling filters (src/libImaging/Resample.c's definitions):
# (support at scale 1, weight of a distance x).
def _bicubic(x, a=-0.5):
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _lanczos(x):
  return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


FILTERS = {
    'area': (0.5, lambda x: ((x >= -0.5) & (x < 0.5)).astype(np.float64)),
    'bilinear': (1.0, lambda x: np.maximum(1.0 - np.abs(x), 0.0)),
    'bicubic': (2.0, _bicubic),
    'lanczos': (3.0, _lanczos),
}


def resize_matrix(source: int, target: int, interpolation: str) -> np.ndarray:
  """[target, source] weights of Pillow's resize of one axis: the filter
  widened by the shrink factor (antialiasing), each row normalised."""
  support, kernel = FILTERS[interpolation]
  scale = source / target
  widen = max(scale, 1.0)
  centres = (np.arange(target) + 0.5) * scale
  matrix = np.zeros((target, source))
  for i, centre in enumerate(centres):
    low = max(int(centre - support * widen + 0.5), 0)
    high = min(int(centre + support * widen + 0.5), source)
    x = np.arange(low, high)
    weights = kernel((x - centre + 0.5) / widen)
    matrix[i, low:high] = weights / weights.sum()
  return matrix.astype(np.float32)


def serving_fn(model, variables, scores_fn, *, mean: Sequence[float],
               std: Sequence[float], channel_order: str = 'RGB',
               resize=None):
  """BGR 0-255 float32 [B, S, S, 3] -> the objective's scores [B, C] in
  model order, plus a zero column (the score of a missing rating).
  `resize` [N, S] resizes the input to N x N first."""
  model = _float32(model)

  def fn(image):
    if resize is not None:
      image = jnp.einsum('hH,bHWc->bhWc', resize, image)
      image = jnp.einsum('wW,bhWc->bhwc', resize, image)
    # In the model's channel order (BGR as it comes for imported WD v3
    # taggers), with mean and std given in that order.
    x = image if channel_order == 'BGR' else jnp.flip(image, axis=-1)
    x = normalize(x, mean=mean, std=std, dtype=jnp.float32)
    scores = scores_fn(model.apply(variables, x, method='predict'))
    scores = scores.astype(jnp.float32)
    return jnp.concatenate([scores, jnp.zeros((scores.shape[0], 1), jnp.float32)], axis=1)
  return fn


def model_to_onnx(model, variables, scores_fn, *, gather_index, mean, std,
                  image_size: int, head_name: str, doc: str = '',
                  channel_order: str = 'RGB',
                  model_size: int | None = None,
                  interpolation: str = 'bicubic') -> onnx.ModelProto:
  """The ONNX graph of `model.predict` + `scores_fn`, with outputs in the
  order `gather_index` (model columns; the model's class count is the
  zero column). With a `model_size` other than `image_size`, the graph
  resizes its input to it with `interpolation`'s filter."""
  check_exportable(model, head_name)
  resize = None
  if model_size and model_size != image_size:
    resize = resize_matrix(image_size, model_size, interpolation)
  fn = serving_fn(model, variables, scores_fn, mean=mean, std=std,
                  channel_order=channel_order, resize=resize)
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


def wd_rows(tags: Sequence[dict[str, Any]]) -> list[int]:
  """Row order for WD front ends: ratings, general tags, tags of other
  categories (which those front ends would take for characters or index
  out of range), characters. Indices into `tags`."""
  def block(row):
    category = int(row['category'])
    return {RATING: 0, GENERAL: 1, CHARACTER: 3}.get(category, 2)
  return sorted(range(len(tags)), key=lambda i: (block(tags[i]), i))


def wd_tags(tags: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """The csv rows in `wd_rows` order: other categories as general (0),
  every row's real category in `jaxtag_category`."""
  rows = []
  for i in wd_rows(tags):
    category = int(tags[i]['category'])
    rows.append({**tags[i], 'jaxtag_category': category,
                 'category': category if category in (
                     RATING, GENERAL, CHARACTER) else GENERAL})
  return rows


def export_onnx(bundle, out_dir: str, *, image_size: int | None = None) -> str:
  """Writes `model.onnx` and `selected_tags.csv` into `out_dir`; returns
  the model's path. `bundle` is a jaxtag.serving.bundle.Bundle. The input
  side is `image_size`, by default the model's training size."""
  model_size = int(bundle.preprocess.size)
  image_size = model_size if image_size is None else int(image_size)
  if image_size < 1:
    raise ValueError(f'image_size {image_size} (--image_size) must be '
                     'positive.')
  refusal = bundle.task.onnx_refusal()
  if refusal:
    _refuse(bundle.config.model.head, refusal)
  preprocess = bundle.preprocess
  proto = model_to_onnx(
      bundle.model, bundle.variables, bundle.objective.scores,
      gather_index=np.asarray(bundle.gather_index)[wd_rows(bundle.tags)],
      mean=preprocess.mean, std=preprocess.std, image_size=image_size,
      model_size=model_size, interpolation=preprocess.interpolation,
      channel_order=preprocess.channel_order,
      head_name=bundle.config.model.head,
      doc='jaxtag tagger: BGR 0-255 NHWC in, tag scores in '
          'selected_tags.csv order out.')
  meta = {'image_size': str(image_size), 'model_image_size': str(model_size),
          'interpolation': preprocess.interpolation,
          'geometry': preprocess.geometry, 'channel_order': 'BGR',
          'pixel_range': '0-255', 'pad_colour': 'white',
          'backbone': bundle.config.model.backbone,
          'head': bundle.config.model.head,
          'loss': bundle.config.loss.name}
  for key, value in meta.items():
    proto.metadata_props.add(key=key, value=value)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, MODEL_FILE)
  onnx.save(proto, path)
  write_tags_csv(os.path.join(out_dir, TAGS_FILE), wd_tags(bundle.tags))
  return path


def _define_flags():
  global _BUNDLE, _OUT, _IMAGE_SIZE
  _BUNDLE = flags.DEFINE_string('bundle', None, 'The bundle folder to export.')
  _OUT = flags.DEFINE_string('out', None, 'Output folder (default: the bundle).')
  _IMAGE_SIZE = flags.DEFINE_integer(
      'image_size', None, 'Input side S (default: the training size); '
      "kohya's WD tagger script needs 448.")


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
