"""The one trainer: config, data, model, state, restore, loop, eval, results.

Methods plug in as a backbone, head, loss or optimiser chosen by name in the
config; nothing here knows which one it runs.
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
from jaxtag import config as config_lib
from jaxtag import evaluate as evaluate_lib
from jaxtag import losses
from jaxtag import models
from jaxtag import optim
from jaxtag import reporting
from jaxtag import sharding
from jaxtag import storage
from jaxtag.data import pipeline
from jaxtag.data import sources
from jaxtag.data import tag_metadata as tag_metadata_lib


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient became NaN or inf; the update was not applied."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


# ----------------------------------------------------------------- steps ---


def init_state(rng, *, model, tx, image_shape) -> TrainState:
  variables = model.init({'params': rng, 'dropout': rng},
                         jnp.zeros(image_shape, jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


def train_step(state: TrainState, batch, rng, *, model, tx, loss_fn,
               schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update. A non-finite loss leaves the state as it was."""
  rng = jax.random.fold_in(rng, state.step)

  def loss_of(params):
    logits, new_vars = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        train=True, rngs={'dropout': rng}, mutable=['batch_stats'],
        **evaluate_lib.model_extras(batch))
    loss = loss_fn(logits=logits.astype(jnp.float32), labels=batch['labels'])
    return loss, new_vars.get('batch_stats', {})

  (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updated = TrainState(step=state.step + 1,
                       params=optax.apply_updates(state.params, updates),
                       batch_stats=batch_stats, opt_state=opt_state)
  # Selecting the old state keeps the last good parameters in memory, so the
  # checkpoint written before the error is the newest good one.
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           updated, state)
  return new_state, {'loss': loss, 'grad_norm': grad_norm, 'finite': finite,
                     'lr': schedule(state.step)}


# ------------------------------------------------------------ assembling ---


def resolve_num_steps(config, num_train_records: int) -> int:
  if config.num_train_steps is not None:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * num_train_records
                       / config.batch_size))


class Trainable:
  """Model, loss, optimiser, state shardings and the jitted steps.

  Needs only the number of classes, so benchmarks can build it without data.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh, *,
               num_classes: int, num_train_steps: int, tag_metadata=None):
    self.mesh = mesh
    self.model = models.build_model(config.model, num_classes,
                                    tag_metadata=tag_metadata)
    self.loss_fn = losses.get_loss(config.loss.name, **config.loss.kwargs)
    self.tx, self.schedule = optim.build_optimizer(
        config.optim, num_train_steps=num_train_steps)

    size = config.data.image_size
    init = functools.partial(init_state, model=self.model, tx=self.tx,
                             image_shape=(1, size, size, 3))
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
                          loss_fn=self.loss_fn, schedule=self.schedule),
        in_shardings=(self.state_shardings, sharding.batch_sharding(mesh),
                      sharding.replicated(mesh)),
        out_shardings=(self.state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,))
    self.eval_step = evaluate_lib.make_eval_step(
        self.model, self.loss_fn, mesh, self.state_shardings)

  def fresh_state(self) -> TrainState:
    return self._init(self._init_rng)


class Run(Trainable):
  """A Trainable on its dataset, with the workdir's checkpoints."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    config_lib.validate(config)
    self.config, self.workdir = config, workdir
    mesh = sharding.create_mesh(config.mesh.model)
    sharding.check_batch_size(config.batch_size, mesh, 'config.batch_size')
    sharding.check_batch_size(config.eval.batch_size, mesh,
                              'config.eval.batch_size')
    self.train_source, builder = sources.open_split(
        config.dataset, config.dataset.train_split)
    self._sources = {config.dataset.train_split: self.train_source}
    self.tags = tag_metadata_lib.load_tag_metadata(builder.data_dir)
    self.num_classes = len(self.tags.names)
    self.num_train_steps = resolve_num_steps(config, len(self.train_source))
    super().__init__(config, mesh, num_classes=self.num_classes,
                     num_train_steps=self.num_train_steps,
                     tag_metadata=self.tags)
    self.checkpointer = checkpoint_lib.Checkpointer(
        workdir, keep=config.keep_checkpoints)

  def eval_batches(self, split: str):
    if split not in self._sources:
      self._sources[split] = sources.open_split(self.config.dataset, split)[0]
    return pipeline.create_eval_iterator(
        self._sources[split],
        data_config=self.config.data, num_classes=self.num_classes,
        label_feature=self.config.dataset.label_feature,
        global_batch_size=self.config.eval.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())

  def evaluate(self, state, split: str):
    return evaluate_lib.evaluate(
        self.eval_step, state, self.eval_batches(split), self.mesh,
        threshold=self.config.eval.threshold, top_k=self.config.eval.top_k)

  def write_results(self, name: str, step: int, result: dict,
                    pred: dict, extra: dict | None = None) -> None:
    if jax.process_index() != 0:
      return
    path = epath.Path(self.workdir) / f'{name}.json'
    storage.write_json(path, {
        'step': int(step), 'dataset': self.config.dataset.name,
        'metrics': result, **(extra or {})})
    evaluate_lib.write_per_tag_csv(
        epath.Path(self.workdir) / f'{name}_per_tag.csv', pred, self.tags,
        self.config.eval.threshold)
    logging.info('Wrote %s', path)


def _summary(result: dict) -> str:
  keys = ('mAP', 'CF1', 'OF1', 'CF1_top3', 'OF1_top3', 'loss')
  return ' '.join(f'{k}={result[k]:.4f}' for k in keys if k in result)


# ------------------------------------------------------------------ train ---


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the test results."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  run = Run(config, workdir)
  if jax.process_index() == 0:
    storage.write_text(epath.Path(workdir) / 'config.json',
                       config.to_json_best_effort(indent=2))

  # Data.
  train_iter = pipeline.create_train_iterator(
      run.train_source, data_config=config.data, num_classes=run.num_classes,
      label_feature=config.dataset.label_feature,
      global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())

  # State, or the latest checkpoint with the iterator's position.
  latest = run.checkpointer.latest_step()
  if latest is None:
    state = run.fresh_state()
    logging.info('Starting %s from scratch: %d steps, %d tags.', workdir,
                 run.num_train_steps, run.num_classes)
  else:
    state = run.checkpointer.restore(latest, run.abstract_state, train_iter)
    logging.info('Resumed %s at step %d.', workdir, latest)
  start_step = int(jax.device_get(state.step))

  # Loop.
  writer = reporting.MetricWriter(workdir)
  progress = reporting.Progress(run.num_train_steps, config.batch_size,
                                start_step)
  watcher = checkpoint_lib.PreemptionWatcher()
  train_start = time.perf_counter()
  last_eval: dict[str, Any] = {}
  pending = None  # metrics of the previous step, read one step late

  def check_finite(step_metrics, step):
    if not bool(jax.device_get(step_metrics['finite'])):
      run.checkpointer.wait()
      raise NonFiniteLossError(
          f'Loss is {float(jax.device_get(step_metrics["loss"]))} at step '
          f'{step}; the update was not applied. The last good checkpoint '
          f'(step {run.checkpointer.latest_step()}) in '
          f'{run.checkpointer.directory} is kept. Lower config.optim.lr or '
          'set config.optim.clip_norm, then run the same command to resume.')

  try:
    step = start_step
    while step < run.num_train_steps:
      batch = sharding.to_global(next(train_iter), run.mesh)
      state, step_metrics = run.train_step(state, batch, run.step_rng)
      if pending is not None:
        check_finite(*pending)
      step += 1
      pending = (step_metrics, step)

      is_last = step == run.num_train_steps
      if step % config.log_every_steps == 0 or is_last:
        check_finite(step_metrics, step)
        m = jax.device_get(step_metrics)
        progress.update(step, float(m['loss']), float(m['lr']))
        writer.write(step, {'loss': m['loss'], 'grad_norm': m['grad_norm'],
                            'lr': m['lr'],
                            'images_per_s': progress.images_per_s},
                     prefix='train/')
      if step % config.eval_every_steps == 0 and not is_last:
        check_finite(step_metrics, step)
        last_eval, _ = run.evaluate(state, config.dataset.eval_split)
        logging.info('step %d %s: %s', step, config.dataset.eval_split,
                     _summary(last_eval))
        writer.write(step, last_eval, prefix=f'{config.dataset.eval_split}/')
      preempted = watcher.should_stop(step)
      if step % config.checkpoint_every_steps == 0 or is_last or preempted:
        check_finite(step_metrics, step)
        run.checkpointer.save(step, state, train_iter)
      if step % config.eval_every_steps == 0 or (
          step % config.checkpoint_every_steps == 0):
        progress.restart_clock(step)
      if preempted:
        run.checkpointer.wait()
        logging.warning('Saved step %d after a stop signal; run the same '
                        'command to resume.', step)
        return {'preempted_at': step}
    if pending is not None:
      check_finite(*pending)
    run.checkpointer.wait()
    train_seconds = time.perf_counter() - train_start

    # Final evaluation on the validation and test splits.
    last_eval, _ = run.evaluate(state, config.dataset.eval_split)
    writer.write(step, last_eval, prefix=f'{config.dataset.eval_split}/')
    test, pred = run.evaluate(state, config.dataset.test_split)
    writer.write(step, test, prefix=f'{config.dataset.test_split}/')
  finally:
    watcher.restore_handlers()
    writer.close()
  logging.info('step %d %s: %s', step, config.dataset.test_split,
               _summary(test))
  run.write_results('results', step, test, pred, extra={
      'split': config.dataset.test_split,
      'validation': last_eval,
      'train_seconds_this_session': train_seconds,
      'steps_this_session': step - start_step,
      'num_devices': jax.device_count(),
      'num_processes': jax.process_count()})
  run.checkpointer.close()
  return test


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        split: str) -> dict[str, Any]:
  """Eval-only: the latest checkpoint of `workdir` on `split`."""
  run = Run(config, workdir)
  latest = run.checkpointer.latest_step()
  if latest is None:
    raise FileNotFoundError(
        f'No checkpoint in {run.checkpointer.directory}: train first with '
        f'the same --config and --workdir.')
  state = run.checkpointer.restore(latest, run.abstract_state)
  result, pred = run.evaluate(state, split)
  logging.info('step %d %s: %s', latest, split, _summary(result))
  run.write_results(f'eval_{split}', latest, result, pred, {'split': split})
  run.checkpointer.close()
  return result
