"""f-divergences for score distillation: each f, and its weighting h(r) = r^2 f''(r).

  f = divergences.f_fn('js')                       # f(r), convex, f(1) = 0
  h = divergences.weight_fn('alpha', alpha=0.5)    # h(r) = r^2 f''(r), in closed form
  divergences.check_name('forward_kl')             # ConfigError if unknown
  sorted(divergences.DIVERGENCES)

D_f(p || q) = E_q f(p / q) with r = p / q. The f-distill generator gradient of
D_f(p_t || q_t) is -E[h(r) (s_p - s_q)^T dx_t/dtheta] (ALGORITHMS.md §4), so a
divergence enters training only through h. Reverse KL has h = 1: f-distill with it
is DMD's distribution-matching gradient. Mode-covering divergences (forward KL,
Jeffreys, Pearson) have h growing with r, so regions the student under-covers
(r > 1) pull harder; mode-seeking ones (reverse KL, softened reverse KL, Neyman)
have h flat or decreasing in r.

The alpha divergence uses f = (r^a - a r - (1 - a)) / (a (a - 1)), so h = r^a: a = 1
and a = 0 are its forward- and reverse-KL limits, and both endpoints are excluded.
"""
from typing import Callable

import jax.numpy as jnp

from gensuite.errors import ConfigError

Fn = Callable[[jnp.ndarray], jnp.ndarray]


def _alpha_f(alpha: float) -> Fn:
  return lambda r: (r**alpha - alpha * r - (1.0 - alpha)) / (alpha * (alpha - 1.0))


# name -> (f, h); each takes the alpha parameter (ignored except by 'alpha').
DIVERGENCES: dict[str, tuple[Callable[[float], Fn], Callable[[float], Fn]]] = {
    'reverse_kl': (lambda a: lambda r: -jnp.log(r),
                   lambda a: lambda r: jnp.ones_like(r)),
    'softened_reverse_kl': (lambda a: lambda r: (r + 1.0) * jnp.log((r + 1.0) / (2.0 * r)),
                            lambda a: lambda r: 1.0 / (1.0 + r)),
    'forward_kl': (lambda a: lambda r: r * jnp.log(r),
                   lambda a: lambda r: r),
    'js': (lambda a: lambda r: r * jnp.log(r) - (r + 1.0) * jnp.log((r + 1.0) / 2.0),
           lambda a: lambda r: r / (1.0 + r)),
    'squared_hellinger': (lambda a: lambda r: 1.0 - jnp.sqrt(r),
                          lambda a: lambda r: 0.25 * jnp.sqrt(r)),
    'jeffreys': (lambda a: lambda r: (r - 1.0) * jnp.log(r),
                 lambda a: lambda r: 1.0 + r),
    'pearson': (lambda a: lambda r: (r - 1.0)**2,
                lambda a: lambda r: 2.0 * r**2),
    'neyman': (lambda a: lambda r: (1.0 - r)**2 / r,
               lambda a: lambda r: 2.0 / r),
    'alpha': (_alpha_f, lambda a: lambda r: r**a),
}


def check_name(name: str, alpha: float = 0.5) -> None:
  """ConfigError unless `name` is a known divergence (and alpha is valid for 'alpha')."""
  if name not in DIVERGENCES:
    raise ConfigError(f'unknown method.divergence {name!r}; allowed: '
                      + ', '.join(DIVERGENCES))
  if name == 'alpha' and (alpha in (0.0, 1.0)):
    raise ConfigError(f'method.alpha must not be 0 or 1 (the KL limits: use reverse_kl '
                      f'or forward_kl), got {alpha}')


def f_fn(name: str, alpha: float = 0.5) -> Fn:
  check_name(name, alpha)
  return DIVERGENCES[name][0](float(alpha))


def weight_fn(name: str, alpha: float = 0.5) -> Fn:
  check_name(name, alpha)
  return DIVERGENCES[name][1](float(alpha))
