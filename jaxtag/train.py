"""The one trainer: config, data, model, state, restore, loop, eval, results.

Methods plug in as a backbone, a head (its outputs, declared features and
prediction path), an objective (loss, scores and the task that judges
them), a label encoder, feature providers and an optimiser, each chosen by
name in the config; nothing here knows which one it runs. What predicting
needs (the model, its eval step, the eval pipeline, results and plots) is
jaxtag/predictor.py; this module adds the optimiser, the train split and
the loop.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from etils import epath

from jaxtag import checkpoint as checkpoint_lib
from jaxtag import objectives
from jaxtag import optim
from jaxtag import predictor as predictor_lib
from jaxtag import reporting
from jaxtag import sharding
from jaxtag import warm_start
from jaxtag.data import batch_augment
from jaxtag.data import device_feed as data_feed
from jaxtag.data import pipeline
from jaxtag.predictor import evaluate_checkpoint  # noqa: F401  (--mode=eval)


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN or inf; the update was not applied."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  # Not trained: label graphs, label orders, frozen sub-models (see heads/
  # and models/tagger.py).
  constants: Any
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


def init_state(rng, *, init_variables, tx) -> TrainState:
  variables = init_variables(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables.params,
                    batch_stats=variables.batch_stats,
                    constants=variables.constants,
                    opt_state=tx.init(variables.params),
                    first_bad_step=jnp.full((), -1, jnp.int32))


def train_step(state: TrainState, batch, rng, *, model, tx, objective,
               schedule, preprocess, feature_keys,
               augment=None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update. A non-finite loss leaves the state as it was, for good.
  `augment(image, batch, key)`: MixUp and cutout (data/batch_augment.py)."""
  rng = jax.random.fold_in(rng, state.step)
  image, inputs = _inputs(batch, feature_keys, preprocess)
  if augment is not None:
    image, batch = augment(image, batch, jax.random.fold_in(rng, 1))

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


class Trainable(predictor_lib.Predictable):
  """A Predictable with its optimiser, train state and jitted train step.

  Needs only the number of classes (and the tag statistics for methods that
  use them), so benchmarks can build it without data. `feature_specs`
  gives {key: (shape, dtype)} of record features a head may declare.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh, *,
               num_classes: int, num_train_steps: int, tag_metadata=None,
               feature_specs=None, encoder=None, providers=None):
    super().__init__(config, mesh, num_classes=num_classes,
                     tag_metadata=tag_metadata, feature_specs=feature_specs,
                     encoder=encoder, providers=providers)
    self.objective = objectives.with_tag_weights(
        self.objective, config.loss,
        None if tag_metadata is None else tag_metadata.names)
    self.tx, self.schedule = optim.build_optimizer(
        config.optim, num_train_steps=num_train_steps)
    init = functools.partial(init_state, init_variables=self.init_variables,
                             tx=self.tx)
    abstract = jax.eval_shape(init, self._init_rng)
    self.state_shardings = sharding.state_shardings(abstract, mesh)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract, self.state_shardings)
    self._init = jax.jit(init, out_shardings=self.state_shardings)
    self.train_step = jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx,
                          objective=self.objective, schedule=self.schedule,
                          preprocess=self.preprocess,
                          feature_keys=self.train_keys,
                          augment=batch_augment.from_config(
                              config.data, config.dataset.label_encoding)),
        in_shardings=(self.state_shardings, sharding.batch_sharding(mesh),
                      sharding.replicated(mesh)),
        out_shardings=(self.state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,))

  def fresh_state(self) -> TrainState:
    return self._init(self._init_rng)


class Run(predictor_lib.Predictor, Trainable):
  """A Trainable on its dataset's train split, with the workdir's
  checkpoints; evaluation and results as the Predictor's."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    kwargs = self._open_data(config, workdir, config.dataset.train_split,
                             training=True)
    sharding.check_batch_size(config.batch_size, self.mesh,
                              'config.batch_size')
    self.train_source = self.source(config.dataset.train_split)
    self.num_train_steps = resolve_num_steps(config, len(self.train_source))
    Trainable.__init__(self, config, self.mesh,
                       num_train_steps=self.num_train_steps, **kwargs)
    self._with_task()

  def train_batches(self) -> data_feed.DeviceFeed:
    config = self.config
    host = pipeline.create_train_iterator(
        self.train_source, data_config=config.data,
        num_classes=self.num_classes,
        label_feature=config.dataset.label_feature,
        global_batch_size=config.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        encoder=self.encoder, features=self.record_features,
        label_overrides=self.encoder.train_labels())
    return data_feed.DeviceFeed(
        host, lambda b: sharding.to_global(b, self.mesh),
        size=config.data.device_prefetch)


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


def starting_state(run: Trainable) -> TrainState:
  """A fresh state with the starting weights of `run.init_sources()`:
  config.init's (another run's, a backbone's) and the feature providers'
  (a frozen sub-model's)."""
  return warm_start.apply_sources(run.fresh_state(), run.init_sources())


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

  # State: the newest readable checkpoint with the iterator's position, else
  # fresh (from config.init's weights when set). A newer step that cannot be
  # read is moved aside to checkpoints/<step>.unreadable.
  restored = run.checkpointer.restore_latest(run.abstract_state, feed)
  if restored is None:
    state = starting_state(run)
    logging.info('Starting %s from scratch: %d steps, %d tags.', workdir,
                 run.num_train_steps, run.num_classes)
  else:
    state, latest = restored
    logging.info('Resumed %s at step %d.', workdir, latest)
  start_step = int(jax.device_get(state.step))

  # Loop: steps are dispatched without reading back; the host syncs only
  # on the steps that log, evaluate or checkpoint. What an earlier attempt
  # logged after start_step is dropped: this run logs those steps again.
  writer = reporting.MetricWriter(workdir, resume_step=start_step)
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
                     run.summary(last_eval))
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
               run.summary(test))
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
