"""The inference bundle: a folder that serves a trained tagger without Orbax.

Files (written by `jaxtag.serving.convert`, read by `load_bundle`):
- `params.safetensors`: the model's variables for inference only (params,
  batch_stats, constants; no optimiser state), keys flattened with '/' as
  'params/backbone/.../kernel'.
- `config.json`: the run's config, from which `jaxtag.models` rebuilds the
  flax Tagger.
- `selected_tags.csv` (`tag_id,name,category,count`) in the WD tagger order:
  the 4 rating tags first (general, sensitive, questionable, explicit), then
  every general tag, then tags of any other category, then every character
  tag: the order of the ONNX export (jaxtag/serving/onnx_export.py), whose
  csv (with a `jaxtag_category` column) may replace this one when
  `convert --format onnx` writes into the bundle. Front ends index the
  outputs by these rows. `tag_id` is the
  dataset's (the Danbooru id, or a WD csv's), -1 where the dataset knows
  none; it is metadata, the row's place is what indexes the outputs.
  Bundles written before ids were kept numbered the rows 0..C-1; such a
  column is read as -1.
- `bundle.json`: for each row, its column in the model's output
  (`index_in_model`, -1 for a rating the model lacks, which scores 0), and
  the step and workdir it came from.
- `thresholds.json`: the run's saved policy (in model order) and per-tag
  thresholds in bundle order (see jaxtag/serving/convert.py).
- `preprocess.json`: image size, eval geometry, pad colour, interpolation,
  mean/std and channel order.
- `label_stats.npz`: only for heads that take the dataset's tag statistics.
- What the run's task adds (jaxtag/tasks/): a captioner's
  `caption_vocab.json` (its "tags" are then the vocabulary's words in id
  order, so the model is rebuilt with the right output width; `predict`
  returns the decoded token ids [B, T] instead of scores, and `captions`
  the sentences).

`Bundle.task` is the run's task (jaxtag/tasks/), built from the bundle's
folder: it turns the model's scores into the bundle's output and the
tagger's results.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from jaxtag import models
from jaxtag import objectives
from jaxtag import tasks
from jaxtag import thresholds as thresholds_lib
from jaxtag import trees
from jaxtag.data import tag_metadata as tag_metadata_lib
from jaxtag.data.normalize import normalize

PARAMS = 'params.safetensors'
CONFIG = 'config.json'
TAGS = 'selected_tags.csv'
INFO = 'bundle.json'
THRESHOLDS = 'thresholds.json'
PREPROCESS = 'preprocess.json'
LABEL_STATS = 'label_stats.npz'
FORMAT_VERSION = 1

COLLECTIONS = ('params', 'batch_stats', 'constants')
# Danbooru category ids (as selected_tags.csv writes them) and the WD order.
RATING, GENERAL, CHARACTER = (tag_metadata_lib.RATING, tag_metadata_lib.GENERAL,
                              tag_metadata_lib.CHARACTER)
WD_RATINGS = ('general', 'sensitive', 'questionable', 'explicit')
TAG_COLUMNS = ('tag_id', 'name', 'category', 'count')
# The ONNX export's csv adds each tag's real category (its `category` says
# 0 for tags of categories WD front ends do not know).
EXPORT_CATEGORY = 'jaxtag_category'


# ---------------------------------------------------------------- tag order ---


def rating_name(name: str) -> str:
  """'rating:general' and 'general' both name the WD rating 'general'."""
  return name.split(':', 1)[1] if name.startswith('rating:') else name


def wd_order(names, categories, counts, tag_ids=None) -> list[dict[str, Any]]:
  """Bundle rows in the WD order, each with its `index_in_model`.

  Ratings the model lacks get index -1 (they score 0). A rating tag whose
  name is none of the four WD ratings is an error: front ends read exactly
  four ratings. `tag_ids` [C] (model order; None: none known) become the
  rows' `tag_id`; a rating the model lacks, or a tag without one, has
  NO_TAG_ID.
  """
  categories = [int(c) for c in categories]
  no_id = tag_metadata_lib.NO_TAG_ID
  ids = ([no_id] * len(names) if tag_ids is None
         else [int(i) for i in tag_ids])
  if len(ids) != len(names):
    raise ValueError(f'{len(ids)} tag ids for {len(names)} tags.')
  ratings = {}
  for i, (name, category) in enumerate(zip(names, categories)):
    if category == RATING:
      wd = rating_name(name)
      if wd not in WD_RATINGS:
        raise ValueError(
            f'Rating tag {name!r} (index {i} of the run\'s selected_tags.csv)'
            f' is none of the WD ratings {", ".join(WD_RATINGS)}; rename it '
            '(optionally with a "rating:" prefix) in the dataset.')
      ratings[wd] = i
  rows = [{'tag_id': ids[ratings[wd]] if wd in ratings else no_id,
           'name': wd, 'category': RATING,
           'index_in_model': ratings.get(wd, -1),
           'count': int(counts[ratings[wd]]) if wd in ratings else 0}
          for wd in WD_RATINGS]
  others = sorted({c for c in categories} - {RATING, GENERAL, CHARACTER})
  # Other categories before the characters, as the ONNX export has them.
  for category in (GENERAL, *others, CHARACTER):
    rows += [{'tag_id': ids[i], 'name': names[i], 'category': category,
              'index_in_model': i, 'count': int(counts[i])}
             for i, c in enumerate(categories) if c == category]
  return rows


def tags_csv(rows) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(TAG_COLUMNS)
  for row in rows:
    writer.writerow([row[k] for k in TAG_COLUMNS])
  return out.getvalue()


# ------------------------------------------------------------ preprocess ---


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How an image becomes the model's input, as the run evaluated it.

  Pixels enter `Bundle.predict` as uint8 RGB; the model normalises them
  as (x / 255 - mean) / std itself and sees them in `channel_order` (BGR
  for imported WD v3 taggers, jaxtag/serving/timm_bundle.py).
  """
  size: int
  geometry: str = 'square'            # square | pad | native (data/geometry.py)
  pad_colour: tuple[int, int, int] = (255, 255, 255)
  interpolation: str = 'bilinear'     # jaxtag.data.ops.INTERPOLATIONS
  mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  std: tuple[float, ...] = (0.5, 0.5, 0.5)
  channel_order: str = 'RGB'
  bucket_aspects: tuple[float, ...] = (1.0, 1.5, 2.0)

  @classmethod
  def from_config(cls, config) -> 'Preprocess':
    return cls(size=int(config.data.image_size),
               geometry=config.eval.geometry,
               interpolation=config.data.interpolation,
               mean=tuple(float(v) for v in config.data.mean),
               std=tuple(float(v) for v in config.data.std),
               channel_order=config.data.get('channel_order', 'RGB'),
               bucket_aspects=tuple(float(a)
                                    for a in config.eval.bucket_aspects))

  @classmethod
  def from_json(cls, record: dict) -> 'Preprocess':
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v
                  for k, v in record.items() if k in known})

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), 'input': 'uint8 NHWC, 0-255'}


# ------------------------------------------------------------------ bundle ---


@dataclasses.dataclass
class Bundle:
  """A loaded bundle. `predict` returns scores [B, len(tags)] in bundle
  order; `model_scores` the same scores in the model's own order. For a
  captioner (`task == 'captioning'`) both return the decoded token ids
  [B, T], and `captions` the sentences. `task`: the run's task
  (jaxtag/tasks/), which shapes the output."""
  directory: str
  config: ml_collections.ConfigDict
  model: Any                       # jaxtag.models.Tagger
  variables: dict[str, Any]
  # Rows: tag_id, name, category, count, index_in_model.
  tags: list[dict[str, Any]]
  thresholds: dict[str, Any]
  preprocess: Preprocess
  info: dict[str, Any]

  def __post_init__(self):
    self.objective = objectives.get_objective(
        self.config.loss, self.config.dataset.label_encoding)
    self.predict_keys, _ = models.declared_features(self.model)
    self.task = tasks.for_bundle(self.objective.task, self.directory)
    self.num_model_classes = int(self.info['num_classes'])
    index = np.array([r['index_in_model'] for r in self.tags], np.int32)
    # A rating the model lacks reads the appended zero column.
    self.gather_index = np.where(index < 0, self.num_model_classes, index)
    self._model_scores = jax.jit(self.model_scores_fn)
    self._predict = jax.jit(self.predict_fn)

  @property
  def names(self) -> list[str]:
    return [r['name'] for r in self.tags]

  @property
  def categories(self) -> np.ndarray:
    return np.array([r['category'] for r in self.tags])

  def model_scores_fn(self, variables, images, image_mask=None, **features):
    """Pure: uint8 images [B, H, W, 3] -> the objective's scores [B, C]."""
    missing = sorted(set(self.predict_keys) - set(features))
    if missing:
      raise ValueError(
          f'The head declares batch features {missing} for prediction; pass '
          'them as keyword arguments to predict().')
    dtype = models.DTYPES[self.config.model.dtype]
    spatial = {} if image_mask is None else {'image_mask': image_mask}
    if self.preprocess.channel_order == 'BGR':
      # The channel order the model was trained with (imported WD v3).
      images = images[..., ::-1]
    outputs = self.model.apply(
        variables, normalize(images, mean=self.preprocess.mean,
                             std=self.preprocess.std, dtype=dtype),
        method='predict', **spatial,
        **{k: features[k] for k in self.predict_keys})
    return self.objective.scores(outputs)

  def predict_fn(self, variables, images, image_mask=None, **features):
    """Pure: uint8 images -> scores [B, len(tags)] in bundle order (a
    captioner's token ids [B, T] as they are)."""
    scores = self.model_scores_fn(variables, images, image_mask, **features)
    return self.task.bundle_output(scores, self.gather_index)

  def model_scores(self, images, image_mask=None, **features) -> np.ndarray:
    return np.asarray(self._model_scores(self.variables, images, image_mask,
                                         **features))

  def predict(self, images, image_mask=None, **features) -> np.ndarray:
    """uint8 images [B, H, W, 3] (as `preprocess` prepares them) ->
    scores [B, len(tags)] in bundle order."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'predict() takes uint8 images [B, H, W, 3]; got '
                       f'{images.dtype} {images.shape}.')
    return np.asarray(self._predict(self.variables, images, image_mask,
                                    **features))

  def captions(self, images, image_mask=None, **features) -> list[str]:
    """A captioner's sentences: uint8 images -> one caption per image
    (words joined by spaces, up to the first END)."""
    return self.decode(self.predict(images, image_mask, **features))

  def decode(self, tokens) -> list[str]:
    """A captioner's token ids [B, T] -> sentences."""
    return self.task.decode(tokens)

  def to_model_order(self, scores) -> np.ndarray:
    """Bundle-order scores [N, T] -> model-order scores [N, C]."""
    scores = np.asarray(scores)
    out = np.zeros((scores.shape[0], self.num_model_classes), scores.dtype)
    present = self.gather_index < self.num_model_classes
    out[:, self.gather_index[present]] = scores[:, present]
    return out

  def threshold_values(self, scores, policy: str = 'run') -> np.ndarray:
    """Thresholds broadcastable against bundle-order scores [N, T].

    policy: 'run' (the run's saved policy, linear included), 'category',
    'f1' or 'precision_recall' (per tag, tuned on the validation split).
    """
    scores = np.asarray(scores, np.float32)
    if policy == 'run':
      record = self.thresholds['run']
      model = thresholds_lib.apply(record, self.to_model_order(scores))
      if model.ndim == 2:   # linear: one threshold per image
        return model.astype(np.float32)
      padded = np.append(model, np.float32(1.0))
      return padded[self.gather_index].astype(np.float32)
    per_tag = self.thresholds['per_tag']
    if policy not in per_tag:
      raise ValueError(f'Unknown threshold policy {policy!r}; valid: run, '
                       f'{", ".join(per_tag)}.')
    return np.asarray(per_tag[policy], np.float32)


def _read_json(directory: str, name: str) -> Any:
  path = os.path.join(directory, name)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} is missing: {directory} is not a complete jaxtag bundle. '
        'Write one with `python -m jaxtag.serving.convert --workdir RUN '
        '--out BUNDLE`.')
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def read_tags(directory: str, info: dict) -> list[dict[str, Any]]:
  path = os.path.join(directory, TAGS)
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f)
    columns = tuple(reader.fieldnames or ())
    if columns not in (TAG_COLUMNS, TAG_COLUMNS + (EXPORT_CATEGORY,)):
      raise ValueError(f'{path} has columns {reader.fieldnames}; expected '
                       f'{",".join(TAG_COLUMNS)} (with {EXPORT_CATEGORY} '
                       'when the ONNX export wrote it).')
    category = EXPORT_CATEGORY if EXPORT_CATEGORY in columns else 'category'
    rows = [{'tag_id': int(r['tag_id']), 'name': r['name'],
             'category': int(r[category]), 'count': int(r['count'])}
            for r in reader]
  # An older bundle's renumbered 0..C-1 says nothing about the tags.
  for row, tag_id in zip(rows, tag_metadata_lib.known_tag_ids(
      [r['tag_id'] for r in rows])):
    row['tag_id'] = int(tag_id)
  index = info['index_in_model']
  if len(index) != len(rows):
    raise ValueError(f'{path} has {len(rows)} tags but {INFO} maps '
                     f'{len(index)}: the bundle files come from different '
                     'conversions.')
  model_tags = info.get('model_tags')
  for row, i in zip(rows, index):
    row['index_in_model'] = int(i)
    # A csv of other rows (an export of an older bundle's order written
    # over this one) would name the outputs wrongly.
    if model_tags and i >= 0 and row['name'] not in (
        model_tags[i], rating_name(model_tags[i])):
      raise ValueError(f'{path} names {row["name"]!r} where {INFO} has '
                       f'{model_tags[i]!r}: the csv is not this bundle\'s. '
                       'Convert the run again.')
  return rows


def read_task(directory: str):
  """The task (jaxtag/tasks/) of the bundle in `directory`, from its
  config alone: what shapes its output, without loading the model."""
  directory = os.fspath(directory)
  config = ml_collections.ConfigDict(_read_json(directory, CONFIG))
  objective = objectives.get_objective(config.loss,
                                       config.dataset.label_encoding)
  return tasks.for_bundle(objective.task, directory)


def load_bundle(directory: str) -> Bundle:
  """Rebuilds the model from config.json and loads its variables."""
  directory = os.fspath(directory)
  info = _read_json(directory, INFO)
  if info.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{os.path.join(directory, INFO)} has format version '
                     f'{info.get("format_version")}; this jaxtag reads '
                     f'{FORMAT_VERSION}. Convert the run again.')
  config = ml_collections.ConfigDict(_read_json(directory, CONFIG))
  tags = read_tags(directory, info)
  metadata = None
  stats_path = os.path.join(directory, LABEL_STATS)
  if os.path.exists(stats_path):
    counts, cooccurrence, num_images = tag_metadata_lib.load_label_stats(
        stats_path)
    metadata = tag_metadata_lib.TagMetadata(
        names=list(info['model_tags']),
        categories=np.asarray(info['model_categories']),
        counts=counts, cooccurrence=cooccurrence, num_images=num_images)
  model = models.build_model(config.model, int(info['num_classes']),
                             tag_metadata=metadata)
  variables = {c: {} for c in COLLECTIONS} | trees.unflatten(
      safetensors.numpy.load_file(os.path.join(directory, PARAMS)))
  variables = jax.tree.map(jnp.asarray, variables)
  return Bundle(directory=directory, config=config, model=model,
                variables=variables, tags=tags,
                thresholds=_read_json(directory, THRESHOLDS),
                preprocess=Preprocess.from_json(
                    _read_json(directory, PREPROCESS)),
                info=info)


def write_bundle(directory: str, *, config, variables, names, categories,
                 counts, thresholds: dict, preprocess: Preprocess,
                 info: dict, label_stats: dict | None = None,
                 tag_ids=None) -> list[dict]:
  """Writes every bundle file; returns the bundle's tag rows.

  `tag_ids`: the tags' source ids in model order (NO_TAG_ID where
  unknown), or None when the dataset has none.

  `thresholds['per_tag']` values are in model order here and are written in
  bundle order (a missing rating gets 1.0: it never fires).
  """
  os.makedirs(directory, exist_ok=True)
  rows = wd_order(names, categories, counts, tag_ids)
  index = [r['index_in_model'] for r in rows]
  flat = trees.flatten({c: variables.get(c, {}) for c in COLLECTIONS})
  safetensors.numpy.save_file(
      {k: np.ascontiguousarray(v) for k, v in flat.items()},
      os.path.join(directory, PARAMS), metadata={'format': 'jaxtag'})
  per_tag = {name: [1.0 if i < 0 else float(values[i]) for i in index]
             for name, values in thresholds.get('per_tag', {}).items()}
  files = {
      CONFIG: json.loads(config.to_json_best_effort()),
      INFO: {'format_version': FORMAT_VERSION, 'num_classes': len(names),
             'index_in_model': index, 'model_tags': list(names),
             'model_categories': [int(c) for c in categories], **info},
      THRESHOLDS: {**thresholds, 'per_tag': per_tag},
      PREPROCESS: preprocess.to_json(),
  }
  for name, record in files.items():
    with open(os.path.join(directory, name), 'w', encoding='utf-8') as f:
      json.dump(record, f, indent=1)
  with open(os.path.join(directory, TAGS), 'w', encoding='utf-8') as f:
    f.write(tags_csv(rows))
  if label_stats is not None:  # the dataset's format: sparse co-occurrence
    with open(os.path.join(directory, LABEL_STATS), 'wb') as f:
      f.write(tag_metadata_lib.label_stats_bytes(**label_stats))
  return rows
