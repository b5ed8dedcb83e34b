"""optax from `config.optim`: optimisers by name, schedules, groups, clipping.

Order of the chain: clip the raw gradients, run the optimiser at the base
learning rate (with weight decay on kernels only), then scale each parameter
group's update by its multiplier, so a group's learning rate is exactly
base_lr(step) * multiplier (and, as in torch, its decoupled decay scales too).
'lamb' decays `decay_mask` (kernels, not position-bias MLPs); the others
decay `kernel_mask`.
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtag import trees


def kernel_mask(params):
  """True for conv/dense kernels; BatchNorm scales and biases are not decayed."""
  return trees.map_with_names(lambda name, _: name.endswith('kernel'), params)


# Kernels that are not weights of the image's features: SwinV2's continuous
# relative position bias MLP is a position embedding (timm leaves it out of
# weight decay too).
_POSITION_KERNELS = re.compile(r'(^|/)cpb_mlp_[0-9]+/')


def decay_mask(params):
  """True for the weights a transformer recipe decays: conv/dense kernels,
  except the position-bias MLP. Biases, norm scales, layer scales (gamma),
  position embeddings, class and register tokens are not kernels, so they
  are never decayed."""
  return trees.map_with_names(
      lambda name, _: (name.endswith('kernel')
                       and not _POSITION_KERNELS.search(name)), params)


# Every schedule warms up linearly over `warmup_steps` from
# `init_lr_factor` x lr (default 0) to lr.
SCHEDULE_KEYS = {
    'constant': {'name', 'warmup_steps', 'init_lr_factor'},
    'step': {'name', 'warmup_steps', 'init_lr_factor', 'boundaries',
             'decay_factor'},
    'cosine': {'name', 'warmup_steps', 'init_lr_factor', 'end_lr_factor'},
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
  start = lr * float(sched.get('init_lr_factor', 0.0))
  return optax.join_schedules(
      [optax.linear_schedule(start, lr, warmup), main], [warmup])


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


def _lamb(c, lr):
  # LAMB (You et al. 2020), the WD v3 taggers' optimiser: Adam's direction
  # plus decoupled decay on `decay_mask`, each parameter's update rescaled
  # to ||param|| / ||update|| (layer-wise trust ratio), then the lr.
  return optax.lamb(lr, b1=c.b1, b2=c.b2, eps=1e-6,
                    weight_decay=c.weight_decay, mask=decay_mask)


class ValletRMSPropState(NamedTuple):
  count: jax.Array
  msq: optax.Updates


def vallet_rmsprop(alpha0: optax.ScalarOrSchedule = 0.01,
                   alpha_max: float = 0.01,
                   decay: float = 0.9) -> optax.GradientTransformation:
  """Vallet & Sakamoto's RMSprop variant (their Sec. 2.5), per weight:

    msq_0 = 1,  msq_t = decay msq_{t-1} + (1 - decay) g_t^2,
    update_t = -min(alpha_max, alpha0 / sqrt(msq_t)) g_t.

  The cap alpha_max makes it plain SGD at alpha_max wherever the running
  gradient magnitude is below alpha0 / alpha_max, and divides by that
  magnitude above it. alpha0 may be a schedule of the step (the paper
  keeps it constant).
  """

  def init(params):
    return ValletRMSPropState(
        count=jnp.zeros((), jnp.int32),
        msq=jax.tree.map(lambda p: jnp.ones_like(p, jnp.float32), params))

  def update(updates, state, params=None):
    del params
    lr = alpha0(state.count) if callable(alpha0) else alpha0
    msq = jax.tree.map(
        lambda m, g: decay * m + (1 - decay) * jnp.square(g.astype(m.dtype)),
        state.msq, updates)
    new = jax.tree.map(
        lambda g, m: (-jnp.minimum(alpha_max, lr / jnp.sqrt(m)) * g).astype(
            g.dtype), updates, msq)
    return new, ValletRMSPropState(count=optax.safe_increment(state.count),
                                   msq=msq)

  return optax.GradientTransformation(init, update)


def _vallet_rmsprop(c, lr):
  # alpha0 is config.optim.lr (through the schedule), alpha_max
  # config.optim.max_lr (None: the same as lr); decay as L2 on kernels.
  alpha_max = float(c.lr if c.max_lr is None else c.max_lr)
  return optax.chain(optax.add_decayed_weights(c.weight_decay, kernel_mask),
                     vallet_rmsprop(lr, alpha_max))


OPTIMIZERS = {'adam': _adam_l2, 'adamw': _adam, 'lamb': _lamb, 'sgd': _sgd,
              'vallet_rmsprop': _vallet_rmsprop}


def scale_by_param_group(groups) -> optax.GradientTransformation:
  """Multiplies each update by the lr multiplier of its first matching regex."""
  try:
    compiled = [(re.compile(pattern), float(mult)) for pattern, mult in groups]
  except (re.error, TypeError, ValueError) as e:
    raise ValueError(f'config.optim.param_groups must be ((regex, lr_mult), '
                     f'...): {e}') from None

  def multiplier(name, _):
    return next((m for p, m in compiled if p.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    mults = trees.map_with_names(multiplier, updates)
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
