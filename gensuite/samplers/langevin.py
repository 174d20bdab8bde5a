"""Langevin samplers: ULA, MALA and annealed Langevin, each one `lax.scan`.

  x, info = ula(score_fn, x, rng, step_size=0.1, num_steps=100)            # info['nfe']
  x, info = ula(None, x, rng, 0.1, 100, energy_fn=energy_fn)               # score = -grad U
  x, info = mala(energy_fn, x, rng, step_size=0.1, num_steps=100)          # info['acceptance']
  x, info = annealed_langevin(score_fn, x, sigmas, rng, steps_per_sigma=100,
                              step_scale=2e-5)                              # score_fn(x, sigma)

Conventions (ALGORITHMS.md §3): `energy_fn(x)` maps a batch [B, ...] to energies [B]
(U = -log density up to a constant); `score_fn(x)` returns grad log density, shaped
like x. ULA moves x <- x - h grad U(x) + sqrt(2h) z. MALA proposes the same move and
accepts with probability min(1, exp(U(x) - U(y) + log q(x|y) - log q(y|x))),
log q(y|x) = -|y - x + h grad U(x)|^2 / (4h), so its stationary law is exactly
exp(-U)/Z. Annealed Langevin (Song & Ermon's NCSN sampler) runs `steps_per_sigma`
steps at each sigma_i of a decreasing ladder with step a_i = step_scale
sigma_i^2 / sigma_L^2: x <- x + (a_i / 2) score(x, sigma_i) + sqrt(a_i) z.

`nfe` counts score / gradient evaluations (MALA's energy comes with its gradient).
"""
from typing import Callable

import jax
import jax.numpy as jnp


def _sum_over_features(v: jax.Array) -> jax.Array:
  return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def score_from_energy(energy_fn: Callable) -> Callable:
  """score(x) = -grad_x U(x) for a batched energy U: [B, ...] -> [B]."""
  return lambda x: -jax.grad(lambda y: jnp.sum(energy_fn(y)))(x)


def energy_and_grad(energy_fn: Callable, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(U(x) [B], grad_x U(x) [B, ...]) in one forward/backward pass."""
  u, vjp = jax.vjp(energy_fn, x)
  (g,) = vjp(jnp.ones_like(u))
  return u, g


def ula(score_fn: Callable | None, x: jax.Array, rng: jax.Array, step_size: float,
        num_steps: int, *, energy_fn: Callable | None = None,
        return_trajectory: bool = False) -> tuple[jax.Array, dict]:
  """Unadjusted Langevin: num_steps of x <- x + h score(x) + sqrt(2h) z.

  Give either score_fn (grad log density) or energy_fn (score = -grad U). With
  return_trajectory the states after each step are stacked in info['trajectory'].
  """
  if score_fn is None:
    if energy_fn is None:
      raise ValueError('ula needs score_fn or energy_fn')
    score_fn = score_from_energy(energy_fn)
  h = jnp.asarray(step_size, x.dtype)
  noise_scale = jnp.sqrt(2.0 * h)

  def step(x, key):
    x = x + h * score_fn(x) + noise_scale * jax.random.normal(key, x.shape, x.dtype)
    return x, (x if return_trajectory else None)

  x, traj = jax.lax.scan(step, x, jax.random.split(rng, int(num_steps)))
  info = {'nfe': jnp.asarray(int(num_steps), jnp.int32)}
  if return_trajectory:
    info['trajectory'] = traj
  return x, info


def mala_log_ratio(x, y, u_x, u_y, g_x, g_y, h) -> jax.Array:
  """log of the MH ratio pi(y) q(x|y) / (pi(x) q(y|x)) for the ULA proposal, [B]."""
  fwd = _sum_over_features((y - x + h * g_x)**2) / (4.0 * h)
  bwd = _sum_over_features((x - y + h * g_y)**2) / (4.0 * h)
  return u_x - u_y + fwd - bwd


def mala(energy_fn: Callable, x: jax.Array, rng: jax.Array, step_size: float,
         num_steps: int) -> tuple[jax.Array, dict]:
  """Metropolis-adjusted Langevin; info['acceptance'] is the mean acceptance probability.

  Each step costs one energy-and-gradient evaluation (at the proposal); one more is
  spent at the start, so nfe = num_steps + 1.
  """
  h = jnp.asarray(step_size, x.dtype)
  noise_scale = jnp.sqrt(2.0 * h)
  u0, g0 = energy_and_grad(energy_fn, x)

  def step(carry, key):
    x, u_x, g_x = carry
    k_z, k_u = jax.random.split(key)
    y = x - h * g_x + noise_scale * jax.random.normal(k_z, x.shape, x.dtype)
    u_y, g_y = energy_and_grad(energy_fn, y)
    log_ratio = mala_log_ratio(x, y, u_x, u_y, g_x, g_y, h)
    prob = jnp.exp(jnp.minimum(log_ratio, 0.0))
    accept = jax.random.uniform(k_u, prob.shape, prob.dtype) < prob
    pick = lambda a, b: jnp.where(accept.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    return (pick(y, x), jnp.where(accept, u_y, u_x), pick(g_y, g_x)), jnp.mean(prob)

  (x, _, _), probs = jax.lax.scan(step, (x, u0, g0), jax.random.split(rng, int(num_steps)))
  return x, {'nfe': jnp.asarray(int(num_steps) + 1, jnp.int32),
             'acceptance': jnp.mean(probs)}


def annealed_langevin(score_fn: Callable, x: jax.Array, sigmas: jax.Array, rng: jax.Array,
                      steps_per_sigma: int = 100, step_scale: float = 2e-5,
                      return_trajectory: bool = False) -> tuple[jax.Array, dict]:
  """Annealed Langevin dynamics over a decreasing sigma ladder (NCSN).

  score_fn(x, sigma) is the score of the data smoothed by N(0, sigma^2 I); sigma is a
  scalar. Step a_i = step_scale * sigma_i^2 / sigma_L^2 with sigma_L = sigmas[-1].
  return_trajectory stacks the state after each sigma level in info['trajectory'].
  """
  sigmas = jnp.asarray(sigmas, x.dtype)
  steps = int(steps_per_sigma)
  eps = jnp.asarray(step_scale, x.dtype)

  def level(x, inp):
    sigma, key = inp
    a = eps * (sigma / sigmas[-1])**2

    def step(x, k):
      z = jax.random.normal(k, x.shape, x.dtype)
      return x + 0.5 * a * score_fn(x, sigma) + jnp.sqrt(a) * z, None

    x, _ = jax.lax.scan(step, x, jax.random.split(key, steps))
    return x, (x if return_trajectory else None)

  keys = jax.random.split(rng, sigmas.shape[0])
  x, traj = jax.lax.scan(level, x, (sigmas, keys))
  info = {'nfe': jnp.asarray(sigmas.shape[0] * steps, jnp.int32)}
  if return_trajectory:
    info['trajectory'] = traj
  return x, info
