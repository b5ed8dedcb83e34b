"""The one trainer: config, data, model, state, restore, loop, eval, results.

Methods plug in as a backbone, a head (its outputs, declared features and
prediction path), an objective (loss, scores, task) and an optimiser, each
chosen by name in the config; nothing here knows which one it runs.
"""
from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import config as config_lib
from jaxtag import evaluate as evaluate_lib
from jaxtag import models
from jaxtag import objectives
from jaxtag import optim
from jaxtag import plots
from jaxtag import reporting
from jaxtag import sharding
from jaxtag import thresholds as thresholds_lib
from jaxtag import warm_start
from jaxtag.data import captions as captions_lib
from jaxtag.data import device_feed as data_feed
from jaxtag.data import geometry as geometry_lib
from jaxtag.data import labels as labels_lib
from jaxtag.data.normalize import normalize
from jaxtag.data import ops
from jaxtag.data import pipeline
from jaxtag.data import sources
from jaxtag.data import tag_metadata as tag_metadata_lib
from jaxtag.models import semantic as semantic_lib


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN or inf; the update was not applied."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  constants: Any     # not trained: label graphs, label orders (see heads/)
  opt_state: Any
  # The first step whose loss or gradient was not finite, or -1. From it on
  # no update is applied, so the state stays the last good one while the
  # host reads this flag only when it logs, evaluates or checkpoints.
  first_bad_step: jax.Array


# ----------------------------------------------------------------- steps ---


def _variables(state):
  return {'params': state.params, 'batch_stats': state.batch_stats,
          'constants': state.constants}


def _inputs(batch, keys, preprocess):
  """The model's keyword inputs: the image, its mask, declared features."""
  inputs = {k: batch[k] for k in keys}
  if 'image_mask' in batch:
    inputs['image_mask'] = batch['image_mask']
  return preprocess(batch['image']), inputs


def init_state(rng, *, model, tx, input_spec, feature_keys) -> TrainState:
  zeros = {k: jnp.zeros((1, *shape), dtype)
           for k, (shape, dtype) in input_spec.items()}
  variables = model.init({'params': rng, 'dropout': rng},
                         zeros['image'].astype(jnp.float32), train=False,
                         **{k: zeros[k] for k in feature_keys})
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    constants=variables.get('constants', {}),
                    opt_state=tx.init(params),
                    first_bad_step=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch, rng, *, model, tx, objective,
               schedule, preprocess,
               feature_keys) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update. A non-finite loss leaves the state as it was, for good."""
  rng = jax.random.fold_in(rng, state.step)
  image, inputs = _inputs(batch, feature_keys, preprocess)

  def loss_of(params):
    outputs, new_vars = model.apply(
        {**_variables(state), 'params': params}, image, train=True,
        rngs={'dropout': rng}, mutable=['batch_stats'], **inputs)
    loss, logged = objective.loss(outputs, batch)
    return loss, (logged, new_vars.get('batch_stats', {}))

  (loss, (logged, batch_stats)), grads = jax.value_and_grad(
      loss_of, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  good = finite & (state.first_bad_step < 0)
  updated = state.replace(step=state.step + 1,
                          params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, opt_state=opt_state)
  # Selecting the old state keeps the last good parameters in memory, so the
  # checkpoint written before the error is the newest good one.
  new_state = jax.tree.map(lambda new, old: jnp.where(good, new, old),
                           updated, state)
  new_state = new_state.replace(
      step=state.step + 1,
      first_bad_step=jnp.where((state.first_bad_step < 0) & ~finite,
                               state.step + 1, state.first_bad_step))
  return new_state, {'loss': loss, 'grad_norm': grad_norm,
                     'lr': schedule(state.step), **logged}


def run_until_event(state, feed, step_fn, rng, step: int, *, is_event,
                    should_stop):
  """Dispatches steps until `is_event(step)` or a stop request.

  Nothing is read back from the device here, so the host runs ahead of the
  accelerator; only the caller's events (log, eval, checkpoint) sync.
  Returns (state, metrics of the last step, step, stopped).
  """
  while True:
    state, metrics = step_fn(state, next(feed), rng)
    step += 1
    stopped = should_stop(step)
    if stopped or is_event(step):
      return state, metrics, step, stopped


# ------------------------------------------------------------ assembling ---


def resolve_num_steps(config, num_train_records: int) -> int:
  if config.num_train_steps is not None:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * num_train_records
                       / config.batch_size))


class Trainable:
  """Model, objective, optimiser, state shardings and the jitted steps.

  Needs only the number of classes (and the tag statistics for methods that
  use them), so benchmarks can build it without data. `feature_specs`
  gives {key: (shape, dtype)} of record features a head may declare.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh, *,
               num_classes: int, num_train_steps: int, tag_metadata=None,
               feature_specs=None, vocabulary=None):
    self.config, self.mesh = config, mesh
    semantic = semantic_lib.build(config.model.semantic, config.data,
                                  models.BACKBONES)
    if semantic is not None and config.model.semantic.cache:
      raise ValueError('Set one of config.model.semantic.captioner (computed '
                       'in the step) and config.model.semantic.cache, not '
                       'both.')
    self.model = models.build_model(config.model, num_classes,
                                    tag_metadata=tag_metadata,
                                    semantic=semantic)
    self.objective = objectives.get_objective(
        config.loss, config.dataset.label_encoding)
    self.encoder = labels_lib.make_encoder(
        config.dataset, num_classes,
        counts=None if tag_metadata is None else tag_metadata.counts,
        vocabulary=vocabulary)
    optim_config = config.optim
    if semantic is not None:  # the captioner's encoder is frozen
      optim_config = config.optim.copy_and_resolve_references()
      optim_config.param_groups = ((semantic_lib.FROZEN,)
                                   + tuple(config.optim.param_groups))
    self.tx, self.schedule = optim.build_optimizer(
        optim_config, num_train_steps=num_train_steps)

    # What the model receives: declared features, from the label encoder or
    # passed through from the records.
    self.predict_keys, teacher_keys = models.declared_features(self.model)
    self.train_keys = self.predict_keys + teacher_keys
    self.record_features = _record_features(
        self.train_keys, self.encoder.spec, feature_specs or {})
    size = config.data.image_size
    self.input_spec = {'image': ((size, size, 3), jnp.uint8),
                       **self.encoder.spec, **self.record_features}
    preprocess = functools.partial(
        normalize, mean=tuple(config.data.mean), std=tuple(config.data.std),
        dtype=models.DTYPES[config.model.dtype])

    init = functools.partial(init_state, model=self.model, tx=self.tx,
                             input_spec=self.input_spec,
                             feature_keys=self.train_keys)
    init_rng, self.step_rng = jax.random.split(jax.random.key(config.seed))
    abstract = jax.eval_shape(init, init_rng)
    self.state_shardings = sharding.state_shardings(abstract, mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_shardings)
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    self._init_rng = init_rng
    self.train_step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx,
                          objective=self.objective, schedule=self.schedule,
                          preprocess=preprocess, feature_keys=self.train_keys),
        in_shardings=(self.state_shardings, sharding.batch_sharding(mesh),
                      sharding.replicated(mesh)),
        out_shardings=(self.state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,))
    self.eval_step = evaluate_lib.make_eval_step(
        self.model, self.objective, mesh, self.state_shardings,
        preprocess=preprocess, predict_keys=self.predict_keys,
        train_keys=self.train_keys)

  def fresh_state(self) -> TrainState:
    return self._init(self._init_rng)


def _record_features(keys, encoder_spec, feature_specs):
  """Specs of the declared keys that records must supply."""
  out = {}
  for key in keys:
    if key in encoder_spec:
      continue
    if key not in feature_specs:
      hint = (' Caption features come from config.model.semantic.captioner '
              '(a captioner run) or config.model.semantic.cache.'
              if key == 'semantic' else '')
      raise ValueError(
          f'The head ({", ".join(keys)} declared) needs batch feature '
          f'{key!r}, which neither config.dataset.label_encoding nor the '
          f'dataset provides (fixed-shape features: '
          f'{", ".join(sorted(feature_specs)) or "none"}).{hint}')
    out[key] = feature_specs[key]
  return out


class Run(Trainable):
  """A Trainable on its dataset, with the workdir's checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    self.workdir, self.config = workdir, config
    mesh = sharding.create_mesh(config.mesh.model)
    sharding.check_batch_size(config.batch_size, mesh, 'config.batch_size')
    sharding.check_batch_size(config.eval.batch_size, mesh,
                              'config.eval.batch_size')
    geometry_lib.check(config.eval.geometry)
    thresholds_lib.check(config.eval.thresholds)
    self.train_source, builder = self._open(config.dataset.train_split)
    self._sources = {config.dataset.train_split: self.train_source}
    self.tags = tag_metadata_lib.load_tag_metadata(builder.data_dir)
    self.num_classes = len(self.tags.names)
    self.vocabulary = None
    if config.dataset.label_encoding == 'caption':
      # A caption decoder's classes are the words of its train captions.
      self.vocabulary = _caption_vocabulary(config, workdir, self.train_source)
      self.num_classes = len(self.vocabulary)
    self.num_train_steps = resolve_num_steps(config, len(self.train_source))
    super().__init__(config, mesh, num_classes=self.num_classes,
                     num_train_steps=self.num_train_steps,
                     tag_metadata=self.tags,
                     feature_specs=self._feature_specs(builder),
                     vocabulary=self.vocabulary)
    self.checkpointer = checkpoint_lib.Checkpointer(
        workdir, keep=config.keep_checkpoints)

  def _open(self, split: str):
    """(source, builder) of a split, with the cached semantic feature
    added to each record when config.model.semantic.cache is set."""
    source, builder = sources.open_split(self.config.dataset, split)
    cache = self.config.model.semantic.cache
    if cache:
      source = semantic_lib.CachedFeatures(
          source, 'semantic', semantic_lib.open_cache(cache, split),
          f'{cache}/{split}.npy')
    return source, builder

  def _feature_specs(self, builder):
    specs = sources.feature_specs(builder)
    if self.config.model.semantic.cache:
      specs['semantic'] = (self.train_source.values.shape[1:], np.float32)
    return specs

  def train_batches(self) -> data_feed.DeviceFeed:
    config = self.config
    host = pipeline.create_train_iterator(
        self.train_source, data_config=config.data,
        num_classes=self.num_classes,
        label_feature=config.dataset.label_feature,
        global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        encoder=self.encoder, features=self.record_features,
        label_overrides=(captions_lib.load_targets(
            config.dataset.caption_targets)
                         if config.dataset.caption_targets else None))
    return data_feed.DeviceFeed(
        host, lambda b: sharding.to_global(b, self.mesh),
        size=config.data.device_prefetch)

  def eval_batches(self, split: str):
    if split not in self._sources:
      self._sources[split] = self._open(split)[0]
    return pipeline.create_eval_iterator(
        self._sources[split],
        data_config=self.config.data, num_classes=self.num_classes,
        label_feature=self.config.dataset.label_feature,
        global_batch_size=self.config.eval.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        encoder=self.encoder, features=self.record_features,
        geometry=self.config.eval.geometry,
        bucket_aspects=tuple(self.config.eval.bucket_aspects))

  def evaluate(self, state, split: str, thresholds=None):
    """(metrics, predictions, thresholds) of `split` on process 0.

    thresholds: a fitted record to apply; None fits the config's policy on
    this split. Other processes return ({}, None, None).
    """
    pred = evaluate_lib.predict(self.eval_step, state, self.eval_batches(split),
                                self.mesh, self.workdir, split)
    if pred is None:
      return {}, None, None
    if self.config.dataset.label_mask_feature:
      pred['label_mask'] = evaluate_lib.label_mask(
          self._sources[split], pred['index'],
          self.config.dataset.label_mask_feature, self.num_classes)
    return evaluate_lib.score(pred, task=self.objective.task,
                              eval_config=self.config.eval,
                              tag_metadata=self.tags, thresholds=thresholds)

  def write_results(self, name: str, step: int, result: dict, pred: dict,
                    thresholds: dict | None, extra: dict | None = None,
                    constants=None) -> None:
    """The results files and, from `pred` and the model's constants (its
    label graph), the plots."""
    if jax.process_index() != 0:
      return
    evaluate_lib.write_results(
        self.workdir, name, result, pred, tags=self.tags,
        task=self.objective.task, thresholds=thresholds,
        vocabulary=self.vocabulary,
        header={'step': int(step), 'dataset': self.config.dataset.name,
                **(extra or {})})
    if self.config.eval.plots:
      plots.write_run_plots(self.workdir, name, step, pred, self.tags,
                            task=self.objective.task, constants=constants,
                            examples=self._caption_examples(pred, extra))

  def _caption_examples(self, pred, extra, count: int = 8):
    """(images, captions) of the first evaluated images of a captioner."""
    split = (extra or {}).get('split')
    if self.vocabulary is None or split not in self._sources:
      return None
    source = self._sources[split]
    images = [np.asarray(ops.decode_png(source[int(i)]['image']))
              for i in pred['index'][:count]]
    captions = [' '.join(self.vocabulary.decode(t.astype(np.int64)))
                for t in pred['scores'][:count]]
    return images, captions


def _caption_vocabulary(config, workdir: str, train_source):
  """The run's caption vocabulary: built by process 0 from the train split
  into the workdir on the first start, read from there afterwards."""
  vocabulary = functools.partial(
      captions_lib.run_vocabulary, workdir, train_source,
      config.dataset.label_feature, config.dataset.caption_min_count)
  if jax.process_index() == 0:
    vocabulary(is_writer=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('jaxtag_caption_vocabulary')
  return vocabulary(is_writer=False)


def _summary(result: dict) -> str:
  keys = ('mAP', 'CF1', 'OF1', 'CF1_top3', 'OF1_top3', 'top1', 'top5',
          'BLEU-1', 'BLEU-4', 'loss')
  return ' '.join(f'{k}={result[k]:.4f}' for k in keys if k in result)


def _check_finite(run: Run, state: TrainState, metrics) -> None:
  """Reads the device-side flag; raises if any step so far was not finite."""
  bad = int(jax.device_get(state.first_bad_step))
  if bad < 0:
    return
  run.checkpointer.wait()
  raise NonFiniteLossError(
      f'Loss or gradient is not finite at step {bad} (last loss read: '
      f'{float(jax.device_get(metrics["loss"]))}); no update was applied from '
      f'it on. The last good checkpoint (step '
      f'{run.checkpointer.latest_step()}) in {run.checkpointer.directory} is '
      'kept. Lower config.optim.lr or set config.optim.clip_norm, then run '
      'the same command to resume.')


# ------------------------------------------------------------------ train ---


def starting_state(run: Trainable, config) -> TrainState:
  """A fresh state with the starting weights the config names: another
  run's (config.init.path), a backbone's (config.init.backbone) and a
  frozen captioner's (config.model.semantic.captioner)."""
  state = run.fresh_state()
  if config.init.path:
    state = warm_start.apply(state, config.init)
  if config.init.backbone:
    state = warm_start.write(state, warm_start.read(config.init.backbone),
                             '^backbone/', config.init.backbone)
  if config.model.semantic.captioner:
    state = warm_start.apply_renamed(state, config.model.semantic.captioner,
                                     semantic_lib.RENAMES)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the test results
  (on process 0; other processes return {})."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  run = Run(config, workdir)
  if jax.process_index() == 0:
    (epath.Path(workdir) / 'config.json').write_text(
        config.to_json_best_effort(indent=2))

  # Data: global batches on the device, `config.data.device_prefetch` ahead.
  feed = run.train_batches()

  # State: the latest checkpoint with the iterator's position, else fresh
  # (from config.init's weights when set).
  latest = run.checkpointer.latest_step()
  if latest is None:
    state = starting_state(run, config)
    logging.info('Starting %s from scratch: %d steps, %d tags.', workdir,
                 run.num_train_steps, run.num_classes)
  else:
    state = run.checkpointer.restore(latest, run.abstract_state, feed)
    logging.info('Resumed %s at step %d.', workdir, latest)
  start_step = int(jax.device_get(state.step))

  # Loop: steps are dispatched without reading back; the host syncs only
  # on the steps that log, evaluate or checkpoint.
  writer = reporting.MetricWriter(workdir)
  progress = reporting.Progress(run.num_train_steps, config.batch_size,
                                start_step)
  watcher = checkpoint_lib.PreemptionWatcher()
  train_start = time.perf_counter()
  last_eval: dict[str, Any] = {}

  def is_event(step):
    return (step == run.num_train_steps or step % config.log_every_steps == 0
            or step % config.eval_every_steps == 0
            or step % config.checkpoint_every_steps == 0)

  try:
    step = start_step
    while step < run.num_train_steps:
      state, step_metrics, step, preempted = run_until_event(
          state, feed, run.train_step, run.step_rng, step, is_event=is_event,
          should_stop=watcher.should_stop)
      _check_finite(run, state, step_metrics)
      is_last = step == run.num_train_steps
      if step % config.log_every_steps == 0 or is_last:
        m = jax.device_get(step_metrics)
        progress.update(step, float(m['loss']), float(m['lr']))
        writer.write(step, {**m, 'images_per_s': progress.images_per_s},
                     prefix='train/')
      if step % config.eval_every_steps == 0 and not is_last:
        last_eval, _, _ = run.evaluate(state, config.dataset.eval_split)
        logging.info('step %d %s: %s', step, config.dataset.eval_split,
                     _summary(last_eval))
        writer.write(step, last_eval, prefix=f'{config.dataset.eval_split}/')
      if step % config.checkpoint_every_steps == 0 or is_last or preempted:
        run.checkpointer.save(step, state, feed)
      if step % config.eval_every_steps == 0 or (
          step % config.checkpoint_every_steps == 0):
        progress.restart_clock(step)
      if preempted:
        run.checkpointer.wait()
        logging.warning('Saved step %d after a stop signal; run the same '
                        'command to resume.', step)
        return {'preempted_at': step}
    run.checkpointer.wait()
    train_seconds = time.perf_counter() - train_start

    # Final evaluation: thresholds fitted on the validation split are
    # applied to the test split and saved for serving.
    last_eval, _, thresholds = run.evaluate(state, config.dataset.eval_split)
    writer.write(step, last_eval, prefix=f'{config.dataset.eval_split}/')
    test, pred, _ = run.evaluate(state, config.dataset.test_split,
                                 thresholds=thresholds)
    writer.write(step, test, prefix=f'{config.dataset.test_split}/')
  finally:
    watcher.restore_handlers()
    writer.close()
  logging.info('step %d %s: %s', step, config.dataset.test_split,
               _summary(test))
  run.write_results('results', step, test, pred, thresholds, extra={
      'split': config.dataset.test_split,
      'validation': last_eval,
      'train_seconds_this_session': train_seconds,
      'steps_this_session': step - start_step,
      'skipped_train_images_this_process': _skipped(feed),
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count()}, constants=state.constants)
  run.checkpointer.close()
  return test


def _skipped(feed) -> int | None:
  counter = getattr(feed, 'skipped_images', None)
  return None if counter is None else counter.count


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str) -> dict[str, Any]:
  """Eval-only: the latest checkpoint of `workdir` on `split`, with the
  run's saved thresholds when it has them. Results go to eval_<split>.json,
  or eval_<dataset>_<split>.json when config.dataset.name is not the
  dataset the run trained on (a captioner trained on photos, judged on
  illustrations)."""
  run = Run(config, workdir)
  latest = run.checkpointer.latest_step()
  if latest is None:
    raise FileNotFoundError(
        f'No checkpoint in {run.checkpointer.directory}: train first with '
        f'the same --config and --workdir.')
  state = run.checkpointer.restore(latest, run.abstract_state)
  saved = None
  if (epath.Path(workdir) / thresholds_lib.FILENAME).exists():
    saved = thresholds_lib.load(workdir)
  result, pred, thresholds = run.evaluate(state, split, thresholds=saved)
  logging.info('step %d %s: %s', latest, split, _summary(result))
  name = f'eval_{split}'
  trained_on = _trained_dataset(workdir)
  if trained_on and trained_on != config.dataset.name:
    name = f'eval_{config.dataset.name.replace("/", "_")}_{split}'
  run.write_results(name, latest, result, pred, thresholds,
                    {'split': split}, constants=state.constants)
  run.checkpointer.close()
  return result


def _trained_dataset(workdir: str) -> str | None:
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  return json.loads(path.read_text()).get('dataset', {}).get('name')
