"""optax from `config.optim`: optimisers by name, schedules, groups, clipping.

Order of the chain: clip the raw gradients, run the optimiser at the base
learning rate (with weight decay on kernels only), then scale each parameter
group's update by its multiplier, so a group's learning rate is exactly
base_lr(step) * multiplier (and, as in torch, its decoupled decay scales too).
"""
from __future__ import annotations

import re
from typing import Callable

import jax
import optax


def _path(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def kernel_mask(params):
  """True for conv/dense kernels; BatchNorm scales and biases are not decayed."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _path(path).endswith('kernel'), params)


SCHEDULE_KEYS = {
    'constant': {'name', 'warmup_steps'},
    'step': {'name', 'warmup_steps', 'boundaries', 'decay_factor'},
    'cosine': {'name', 'warmup_steps', 'end_lr_factor'},
}


def build_schedule(optim_config, num_train_steps: int) -> Callable:
  sched = optim_config.schedule
  name = sched.get('name', 'constant')
  if name in SCHEDULE_KEYS and set(sched) - SCHEDULE_KEYS[name]:
    raise ValueError(
        f'Unknown key(s) {sorted(set(sched) - SCHEDULE_KEYS[name])} in '
        f'config.optim.schedule for {name!r}; valid: '
        f'{", ".join(sorted(SCHEDULE_KEYS[name]))}.')
  lr = float(optim_config.lr)
  warmup = int(sched.get('warmup_steps', 0))
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'step':
    boundaries = [int(b * num_train_steps) if 0 < b < 1 else int(b)
                  for b in sched.get('boundaries', ())]
    factor = float(sched.get('decay_factor', 0.1))
    main = optax.piecewise_constant_schedule(
        lr, {b - warmup: factor for b in boundaries if b > warmup})
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(
        lr, max(num_train_steps - warmup, 1),
        alpha=float(sched.get('end_lr_factor', 0.0)))
  else:
    raise ValueError(f'Unknown schedule {name!r} (config.optim.schedule.name);'
                     ' valid: constant, cosine, step.')
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _adam(c, lr):
  return optax.chain(optax.scale_by_adam(b1=c.b1, b2=c.b2),
                     optax.add_decayed_weights(c.weight_decay, kernel_mask),
                     optax.scale_by_learning_rate(lr))


def _adam_l2(c, lr):
  # Adam with classic L2: the decay enters the gradient before the moments.
  return optax.chain(optax.add_decayed_weights(c.weight_decay, kernel_mask),
                     optax.scale_by_adam(b1=c.b1, b2=c.b2),
                     optax.scale_by_learning_rate(lr))


def _sgd(c, lr):
  # torch-style: L2 decay is added to the gradient before momentum.
  return optax.chain(optax.add_decayed_weights(c.weight_decay, kernel_mask),
                     optax.sgd(lr, momentum=c.momentum or None,
                               nesterov=c.nesterov))


OPTIMIZERS = {'adam': _adam_l2, 'adamw': _adam, 'sgd': _sgd}


def scale_by_param_group(groups) -> optax.GradientTransformation:
  """Multiplies each update by the lr multiplier of its first matching regex."""
  try:
    compiled = [(re.compile(pattern), float(mult)) for pattern, mult in groups]
  except (re.error, TypeError, ValueError) as e:
    raise ValueError(f'config.optim.param_groups must be ((regex, lr_mult), '
                     f'...): {e}') from None

  def multiplier(path, _):
    name = _path(path)
    return next((m for p, m in compiled if p.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    mults = jax.tree_util.tree_map_with_path(multiplier, updates)
    return jax.tree.map(lambda u, m: u * m, updates, mults), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def build_optimizer(optim_config, *, num_train_steps: int):
  """Returns (GradientTransformation, schedule)."""
  if optim_config.name not in OPTIMIZERS:
    raise ValueError(f'Unknown optimiser {optim_config.name!r} '
                     f'(config.optim.name); valid: '
                     f'{", ".join(sorted(OPTIMIZERS))}.')
  schedule = build_schedule(optim_config, num_train_steps)
  parts = []
  if optim_config.clip_norm is not None:
    parts.append(optax.clip_by_global_norm(float(optim_config.clip_norm)))
  parts.append(OPTIMIZERS[optim_config.name](optim_config, schedule))
  if optim_config.param_groups:
    parts.append(scale_by_param_group(optim_config.param_groups))
  return optax.chain(*parts), schedule
