"""Optimizers from `config.optim`.

  tx = optim.build(config.optim, num_steps=config.train.num_steps)

Fields: name ('adam' | 'adamw' | 'sgd'), lr, schedule ('constant' | 'cosine'),
warmup_steps, final_lr_fraction (cosine), grad_clip (global norm; 0 = off),
weight_decay (adamw), b1, b2, eps.
"""
import optax

from gensuite.errors import ConfigError, lookup


def schedule(optim_config, num_steps: int) -> optax.Schedule:
  lr = float(optim_config.lr)
  warmup = int(optim_config.get('warmup_steps', 0))
  kind = optim_config.get('schedule', 'constant')
  if lr <= 0:
    raise ConfigError(f'optim.lr must be > 0, got {lr}')
  if kind == 'constant':
    main = optax.constant_schedule(lr)
  elif kind == 'cosine':
    decay_steps = max(num_steps - warmup, 1)
    main = optax.cosine_decay_schedule(lr, decay_steps,
                                       alpha=float(optim_config.get('final_lr_fraction', 0.0)))
  else:
    raise ConfigError(f"unknown optim.schedule {kind!r}; allowed: constant, cosine")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _adam(c, lr):
  return optax.adam(lr, b1=c.get('b1', 0.9), b2=c.get('b2', 0.999), eps=c.get('eps', 1e-8))


def _adamw(c, lr):
  return optax.adamw(lr, b1=c.get('b1', 0.9), b2=c.get('b2', 0.999), eps=c.get('eps', 1e-8),
                     weight_decay=c.get('weight_decay', 0.0))


def _sgd(c, lr):
  return optax.sgd(lr, momentum=c.get('momentum', None) or None)


OPTIMIZERS = {'adam': _adam, 'adamw': _adamw, 'sgd': _sgd}


def build(optim_config, num_steps: int) -> optax.GradientTransformation:
  make = lookup('optimizer', optim_config.get('name', 'adam'), OPTIMIZERS)
  tx = make(optim_config, schedule(optim_config, num_steps))
  clip = float(optim_config.get('grad_clip', 0.0))
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx
