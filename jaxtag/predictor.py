"""Prediction without training: a model, its variables and the eval pipeline.

  predictor = Predictor(config, workdir)
  variables, step = predictor.restore()     # params, batch statistics, constants
  metrics, pred, thresholds = predictor.evaluate(variables, 'test')

`Predictable` is what predicting needs without data: the model (with the
feature providers the config declares), the objective, the label encoder,
the declared features and the compiled eval step; benchmarks and tests
build it from a class count. `Predictor` puts it on the config's dataset
and the run's workdir: the label encoder is prepared from the workdir (a
caption vocabulary), splits are opened for evaluation only, and a
checkpoint is read without its optimiser state. It opens no train split
and builds no optimiser. `--mode=eval` (`evaluate_checkpoint`),
jaxtag/serving/convert.py and jaxtag/projects/semantic_cache.py use it; the
trainer's Run (jaxtag/train.py) is a Predictor with the train split, the
optimiser and the loop.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import config as config_lib
from jaxtag import evaluate as evaluate_lib
from jaxtag import models
from jaxtag import objectives
from jaxtag import plots
from jaxtag import sharding
from jaxtag import tasks
from jaxtag import thresholds as thresholds_lib
from jaxtag import warm_start
from jaxtag.data import encoders
from jaxtag.data import geometry as geometry_lib
from jaxtag.data.normalize import normalize
from jaxtag.data import ops
from jaxtag.data import pipeline
from jaxtag.data import sources
from jaxtag.data import tag_metadata as tag_metadata_lib
from jaxtag.models import features as features_lib


@flax.struct.dataclass
class Variables:
  """What prediction reads: no step, no optimiser state."""
  params: Any
  batch_stats: Any
  constants: Any   # not trained: label graphs, frozen sub-models (heads/)


def variables_of(state) -> Variables:
  """The Variables of a TrainState (or of Variables): the same arrays."""
  return Variables(params=state.params, batch_stats=state.batch_stats,
                   constants=state.constants)


def init_variables(rng, *, model, input_spec, feature_keys) -> Variables:
  """The model's fresh variables, from zeros of `input_spec`."""
  zeros = {k: jnp.zeros((1, *shape), dtype)
           for k, (shape, dtype) in input_spec.items()}
  variables = model.init({'params': rng, 'dropout': rng},
                         zeros['image'].astype(jnp.float32), train=False,
                         **{k: zeros[k] for k in feature_keys})
  return Variables(params=variables['params'],
                   batch_stats=variables.get('batch_stats', {}),
                   constants=variables.get('constants', {}))


def record_features(keys, encoder_spec, feature_specs):
  """Specs of the declared keys that records must supply."""
  out = {}
  for key in keys:
    if key in encoder_spec:
      continue
    if key not in feature_specs:
      raise ValueError(
          f'The head ({", ".join(keys)} declared) needs batch feature '
          f'{key!r}, which neither config.dataset.label_encoding nor the '
          f'dataset provides (fixed-shape features: '
          f'{", ".join(sorted(feature_specs)) or "none"}). A provider in '
          f'config.model.features.{key} can (jaxtag/models/features.py).')
    out[key] = feature_specs[key]
  return out


class Predictable:
  """Model, objective, label encoder, declared features and the compiled
  eval step.

  Needs only the number of classes (and the tag statistics for methods that
  use them), so benchmarks can build it without data. `feature_specs`
  gives {key: (shape, dtype)} of record features a head may declare;
  `encoder`: the run's prepared label encoder (default: config.dataset's,
  for `num_classes` tags); `providers`: the feature providers (default:
  config.model.features').
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh, *,
               num_classes: int, tag_metadata=None, feature_specs=None,
               encoder=None, providers=None):
    self.config, self.mesh = config, mesh
    if providers is None:
      providers = models.build_providers(config.model, config.data)
    self.providers = providers
    self.model = models.build_model(config.model, num_classes,
                                    tag_metadata=tag_metadata,
                                    providers=providers)
    self.objective = objectives.get_objective(
        config.loss, config.dataset.label_encoding)
    if encoder is None:
      encoder = encoders.make_encoder(
          config.dataset, num_tags=num_classes,
          counts=None if tag_metadata is None else tag_metadata.counts)
    self.encoder = encoder

    # What the model receives: declared features, from the label encoder or
    # passed through from the records.
    self.predict_keys, teacher_keys = models.declared_features(self.model)
    self.train_keys = self.predict_keys + teacher_keys
    self.record_features = record_features(
        self.train_keys, self.encoder.spec, feature_specs or {})
    size = config.data.image_size
    self.input_spec = {'image': ((size, size, 3), jnp.uint8),
                       **self.encoder.spec, **self.record_features}
    self.preprocess = functools.partial(
        normalize, mean=tuple(config.data.mean), std=tuple(config.data.std),
        dtype=models.DTYPES[config.model.dtype],
        channel_order=config.data.get('channel_order', 'RGB'))
    self.init_variables = functools.partial(
        init_variables, model=self.model, input_spec=self.input_spec,
        feature_keys=self.train_keys)
    self._init_rng, self.step_rng = jax.random.split(
        jax.random.key(config.seed))
    abstract = jax.eval_shape(self.init_variables, self._init_rng)
    self.variable_shardings = sharding.state_shardings(abstract, mesh)
    self.abstract_variables = _with_shardings(abstract,
                                              self.variable_shardings)
    self.eval_step = evaluate_lib.make_eval_step(
        self.model, self.objective, mesh, preprocess=self.preprocess,
        predict_keys=self.predict_keys, train_keys=self.train_keys)

  def init_sources(self) -> list[warm_start.Source]:
    """Starting weights: config.init's, then the feature providers'."""
    return (warm_start.sources(self.config.init, self.tags.names)
            + features_lib.init_sources(self.providers))

  def fresh_variables(self) -> Variables:
    """The initial variables, without the starting weights."""
    init = jax.jit(self.init_variables, out_shardings=self.variable_shardings)
    return init(self._init_rng)


def _with_shardings(abstract, shardings):
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)


class Predictor(Predictable):
  """A Predictable on the config's dataset, with the workdir's checkpoints.

  workdir: the run's; None for a model that was never trained (its
  starting weights alone, as the semantic cache needs). `split`: the split
  whose builder gives the tags (default: the eval split).
  """

  def __init__(self, config: ml_collections.ConfigDict,
               workdir: str | None = None, *, split: str | None = None):
    kwargs = self._open_data(config, workdir,
                             split or config.dataset.eval_split)
    super().__init__(config, self.mesh, **kwargs)
    self._with_task()

  # ------------------------------------------------------------- assembly ---

  def _open_data(self, config, workdir, split: str, training: bool = False):
    """Checks the config, opens `split` and prepares the label encoder
    (from `split`, the train split, when `training`); returns
    Predictable's kwargs."""
    config_lib.validate(config)
    self.workdir, self.config = workdir, config
    self.mesh = sharding.create_mesh(config.mesh.model)
    sharding.check_batch_size(config.eval.batch_size, self.mesh,
                              'config.eval.batch_size')
    geometry_lib.check(config.eval.geometry)
    thresholds_lib.check(config.eval.thresholds)
    self.providers = models.build_providers(config.model, config.data)
    source, builder = self._open(split)
    self._sources = {split: source}
    self.tags = tag_metadata_lib.load_tag_metadata(builder.data_dir)
    encoder = encoders.make_encoder(config.dataset,
                                    num_tags=len(self.tags.names),
                                    counts=self.tags.counts)
    encoder.prepare(workdir, source if training else None)
    self.num_classes = encoder.num_classes
    self.checkpointer = None
    if workdir is not None:
      self.checkpointer = checkpoint_lib.Checkpointer(
          workdir, keep=config.keep_checkpoints)
    return dict(num_classes=self.num_classes, tag_metadata=self.tags,
                feature_specs={**sources.feature_specs(builder),
                               **getattr(source, 'feature_specs', {})},
                encoder=encoder, providers=self.providers)

  def _with_task(self):
    self.task = tasks.for_objective(self.objective, tags=self.tags,
                                    encoder=self.encoder)

  def _open(self, split: str):
    """(source, builder) of a split, with the features that providers read
    per record (a cache) added to each record."""
    source, builder = sources.open_split(self.config.dataset, split)
    return features_lib.open_split(self.providers, source, split), builder

  def source(self, split: str):
    if split not in self._sources:
      self._sources[split] = self._open(split)[0]
    return self._sources[split]

  # ------------------------------------------------------------ variables ---

  def restore(self, step: int | None = None) -> tuple[Variables, int]:
    """(variables, step) of the checkpoint `step` (default: the latest),
    read without the optimiser state."""
    if self.checkpointer is None:
      raise ValueError('This predictor has no workdir to restore from.')
    def read(step):
      return self.checkpointer.restore_variables(step, self.abstract_variables)

    if step is not None:
      return read(step), step
    # The newest readable step; an unreadable one is named but left in
    # place, since the workdir belongs to the training run.
    restored = self.checkpointer.newest_readable(read, set_aside=False)
    if restored is None:
      raise FileNotFoundError(
          f'No checkpoint in {self.checkpointer.directory}: train first '
          'with the same --config and --workdir.')
    return restored

  def starting_variables(self) -> Variables:
    """Fresh variables with the starting weights (`init_sources`)."""
    return warm_start.apply_sources(self.fresh_variables(),
                                    self.init_sources())

  # ----------------------------------------------------------- evaluation ---

  def eval_batches(self, split: str, geometry: str | None = None):
    return pipeline.create_eval_iterator(
        self.source(split),
        data_config=self.config.data, num_classes=self.num_classes,
        label_feature=self.config.dataset.label_feature,
        global_batch_size=self.config.eval.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        encoder=self.encoder, features=self.record_features,
        geometry=geometry or self.config.eval.geometry,
        bucket_aspects=tuple(self.config.eval.bucket_aspects))

  def predict(self, variables, split: str, tag: str = ''):
    """The eval rows of `split` on process 0 (None on the others):
    scores, labels and index in record order, and the mean loss."""
    return evaluate_lib.predict(self.eval_step, variables_of(variables),
                                self.eval_batches(split), self.mesh,
                                self.workdir or '', tag or split)

  def evaluate(self, variables, split: str, thresholds=None):
    """(metrics, predictions, thresholds) of `split` on process 0.

    thresholds: a fitted record to apply; None fits the config's policy on
    this split. Other processes return ({}, None, None).
    """
    pred = self.predict(variables, split)
    if pred is None:
      return {}, None, None
    if self.config.dataset.label_mask_feature:
      pred['label_mask'] = evaluate_lib.label_mask(
          self.source(split), pred['index'],
          self.config.dataset.label_mask_feature, self.num_classes)
    return evaluate_lib.score(pred, task=self.task,
                              eval_config=self.config.eval,
                              thresholds=thresholds)

  def summary(self, result: dict) -> str:
    """The log line of a result: the task's main metrics."""
    return ' '.join(f'{k}={result[k]:.4f}' for k in self.task.summary_keys
                    if k in result)

  def write_results(self, name: str, step: int, result: dict, pred: dict,
                    thresholds: dict | None, extra: dict | None = None,
                    constants=None) -> None:
    """The results files and, from `pred` and the model's constants (its
    label graph), the plots. extra['split']: the split `pred` is of."""
    if jax.process_index() != 0:
      return
    evaluate_lib.write_results(
        self.workdir, name, result, pred, task=self.task,
        thresholds=thresholds,
        header={'step': int(step), 'dataset': self.config.dataset.name,
                **(extra or {})})
    if self.config.eval.plots:
      # The label graphs the head declares (jaxtag/models/heads/).
      graphs = plots.label_graphs(
          (constants or {}).get('head'), len(self.tags.names),
          getattr(self.model.head, 'label_graphs', ()))
      plots.write_run_plots(self.workdir, name, step, pred, task=self.task,
                            graphs=graphs,
                            images=self._images((extra or {}).get('split')))

  def _images(self, split) -> Callable | None:
    """Decoded images of a split's records, by index."""
    if split not in self._sources:
      return None
    source = self._sources[split]
    return lambda index: [np.asarray(ops.decode_png(source[int(i)]['image']))
                          for i in index]

  def close(self) -> None:
    if self.checkpointer is not None:
      self.checkpointer.close()


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str) -> dict[str, Any]:
  """Eval-only: the latest checkpoint of `workdir` on `split`, with the
  run's saved thresholds when it has them. Results go to eval_<split>.json,
  or eval_<dataset>_<split>.json when config.dataset.name is not the
  dataset the run trained on (a captioner trained on photos, judged on
  illustrations)."""
  predictor = Predictor(config, workdir, split=split)
  variables, latest = predictor.restore()
  saved = None
  if (epath.Path(workdir) / thresholds_lib.FILENAME).exists():
    saved = thresholds_lib.load(workdir)
  result, pred, thresholds = predictor.evaluate(variables, split,
                                                thresholds=saved)
  logging.info('step %d %s: %s', latest, split, predictor.summary(result))
  name = f'eval_{split}'
  trained_on = _trained_dataset(workdir)
  if trained_on and trained_on != config.dataset.name:
    name = f'eval_{config.dataset.name.replace("/", "_")}_{split}'
  predictor.write_results(name, latest, result, pred, thresholds,
                          {'split': split}, constants=variables.constants)
  predictor.close()
  return result


def _trained_dataset(workdir: str) -> str | None:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  return json.loads(path.read_text()).get('dataset', {}).get('name')
