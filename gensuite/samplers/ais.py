"""Annealed importance sampling (Neal 2001): log Z of an energy, with its standard error.

  out = ais.log_partition(energy_fn, (8, 8, 1), rng, num_chains=512, num_temps=1000)
  out['log_z'], out['stderr'], out['ess'], out['acceptance']

The path runs from a Gaussian base N(m, S) with energy B(x) = (x - m)^T S^-1 (x - m) / 2
to exp(-U) through the geometric bridge U_b(x) = (1 - b) B(x) + b U(x), b from 0 to 1 on
the sigmoid schedule of Grosse et al. (NeurIPS 2013) (or linear). The base is
N(0, base_std^2 I) unless `base_mean` / `base_chol` (a lower-triangular L, S = L L^T)
are given: a base fitted to the data (`gaussian_fit`) starts the path much nearer a
trained image energy than N(0, I), so far fewer temperatures give effective chains.
Each chain starts as an exact base draw; going from b_{k-1} to b_k adds
-(b_k - b_{k-1}) (U(x) - B(x)) to its log-weight W, then `mala_steps` MALA steps leave
U_{b_k} invariant (exact for any step size, so the estimate stays unbiased in Z). Then

  log Z = log Z_base + log mean_i e^{W_i},  log Z_base = d/2 log(2 pi) + sum_i log L_ii,

and the standard error is the delta-method one, std(e^W) / (sqrt(n) mean(e^W)): it is
honest only when the weights are not degenerate (see `ess`). The MALA step size is
adapted between temperatures towards `target_acceptance` from the previous temperature's
mean acceptance (the kernel at b_k depends on the past only).
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from gensuite.errors import ConfigError
from gensuite.samplers.langevin import energy_and_grad, mala_log_ratio

SCHEDULES = ('sigmoid', 'linear')


def schedule(num_temps: int, kind: str = 'sigmoid', sharpness: float = 4.0) -> jax.Array:
  """num_temps + 1 inverse temperatures from exactly 0 to exactly 1."""
  s = jnp.linspace(0.0, 1.0, num_temps + 1)
  if kind == 'linear':
    return s
  if kind != 'sigmoid':
    raise ConfigError(f'AIS schedule must be one of: {", ".join(SCHEDULES)}; got {kind!r}')
  b = jax.nn.sigmoid(sharpness * (2.0 * s - 1.0))
  return (b - b[0]) / (b[-1] - b[0])


def _check(num_chains, num_temps, mala_steps, step_size, base_std):
  for what, v in (('num_chains', num_chains), ('num_temps', num_temps),
                  ('mala_steps', mala_steps)):
    if isinstance(v, bool) or int(v) != v or v < 1:
      raise ConfigError(f'AIS {what} must be a positive integer, got {v!r}')
  for what, v in (('step_size', step_size), ('base_std', base_std)):
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
      raise ConfigError(f'AIS {what} must be a positive number, got {v!r}')


def gaussian_fit(x, extra_var: float = 0.0, jitter: float = 1e-4):
  """(mean [d], lower Cholesky factor [d, d]) of the sample covariance of x [n, ...] plus
  (extra_var + jitter) I: an AIS base near a density fitted to that data (extra_var: the
  variance of noise the model was trained with on top of the data)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  if x.shape[0] < 2:
    raise ConfigError(f'a Gaussian AIS base needs at least 2 data points, got {x.shape[0]}')
  mean = x.mean(0)
  cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
  cov += (float(extra_var) + float(jitter)) * np.eye(x.shape[1])
  return (jnp.asarray(mean, jnp.float32),
          jnp.asarray(np.linalg.cholesky(cov), jnp.float32))


def log_partition(energy_fn: Callable, shape: tuple[int, ...], rng: jax.Array, *,
                  num_chains: int = 512, num_temps: int = 1000, mala_steps: int = 1,
                  step_size: float = 1e-2, base_std: float = 1.0,
                  base_mean: jax.Array | None = None, base_chol: jax.Array | None = None,
                  schedule_kind: str = 'sigmoid', target_acceptance: float = 0.65,
                  adapt: bool = True) -> dict[str, jax.Array]:
  """AIS estimate of log Z = log int exp(-U(x)) dx for a batched energy U: [B, *shape] -> [B].

  The base is N(base_mean, base_chol base_chol^T) when base_chol is given (base_mean
  defaults to 0; base_std is then unused), else N(0, base_std^2 I).
  Returns log_z, stderr (delta method), ess (of the final weights, in chains),
  acceptance (mean MALA acceptance over the path), log_weights [num_chains], the chains'
  final points (samples; with log_weights, a weighted sample of exp(-U)) and the final
  step size.
  """
  _check(num_chains, num_temps, mala_steps, step_size, base_std)
  d = math.prod(shape)
  betas = schedule(int(num_temps), schedule_kind)
  k_init, k_path = jax.random.split(rng)
  eps = jax.random.normal(k_init, (int(num_chains), d), jnp.float32)
  if base_chol is None:
    if base_mean is not None:
      raise ConfigError('an AIS base_mean needs its base_chol (the covariance factor)')
    inv_var = 1.0 / float(base_std)**2

    def base_parts(x):  # B(x), grad B(x)
      return 0.5 * inv_var * jnp.sum(x.reshape(x.shape[0], -1)**2, axis=1), inv_var * x

    x0 = (float(base_std) * eps).reshape((-1,) + tuple(shape))
    log_z_base = 0.5 * d * math.log(2.0 * math.pi * float(base_std)**2)
  else:
    chol = jnp.asarray(base_chol, jnp.float32)
    mean = jnp.zeros((d,), jnp.float32) if base_mean is None else jnp.asarray(
        base_mean, jnp.float32).reshape(-1)
    if chol.shape != (d, d) or mean.shape != (d,):
      raise ConfigError(f'an AIS base for data of shape {tuple(shape)} needs base_chol '
                        f'[{d}, {d}] and base_mean [{d}]; got {tuple(chol.shape)} and '
                        f'{tuple(mean.shape)}')
    eye = jnp.eye(d, dtype=jnp.float32)
    chol_inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
    precision = chol_inv.T @ chol_inv

    def base_parts(x):
      r = x.reshape(x.shape[0], -1) - mean
      g = r @ precision
      return 0.5 * jnp.sum(r * g, axis=1), g.reshape(x.shape)

    x0 = (mean + eps @ chol.T).reshape((-1,) + tuple(shape))
    log_z_base = 0.5 * d * math.log(2.0 * math.pi) + jnp.sum(jnp.log(jnp.diag(chol)))

  def parts(x):  # U(x), grad U(x), B(x), grad B(x)
    u, g = energy_and_grad(energy_fn, x)
    return (u, g) + base_parts(x)

  def bridge(beta, u, g, b, gb):
    return (1.0 - beta) * b + beta * u, (1.0 - beta) * gb + beta * g

  def temperature(carry, inp):
    x, u, g, b, gb, log_w, h = carry
    beta_prev, beta, key = inp
    log_w = log_w - (beta - beta_prev) * (u - b)

    def mala_step(state, k):
      x, u, g, b, gb = state
      k_z, k_u = jax.random.split(k)
      e_x, ge_x = bridge(beta, u, g, b, gb)
      y = x - h * ge_x + jnp.sqrt(2.0 * h) * jax.random.normal(k_z, x.shape, x.dtype)
      u_y, g_y, b_y, gb_y = parts(y)
      e_y, ge_y = bridge(beta, u_y, g_y, b_y, gb_y)
      log_ratio = mala_log_ratio(x, y, e_x, e_y, ge_x, ge_y, h)
      prob = jnp.exp(jnp.minimum(jnp.nan_to_num(log_ratio, nan=-jnp.inf), 0.0))
      accept = jax.random.uniform(k_u, prob.shape) < prob
      pick = lambda a, c: jnp.where(accept.reshape((-1,) + (1,) * (a.ndim - 1)), a, c)
      new = (pick(y, x), pick(u_y, u), pick(g_y, g), pick(b_y, b), pick(gb_y, gb))
      return new, jnp.mean(prob)

    (x, u, g, b, gb), probs = jax.lax.scan(mala_step, (x, u, g, b, gb),
                                           jax.random.split(key, int(mala_steps)))
    acc = jnp.mean(probs)
    if adapt:
      h = h * jnp.exp(jnp.clip(acc - target_acceptance, -0.5, 0.5))
    return (x, u, g, b, gb, log_w, h), acc

  u0, g0, b0, gb0 = parts(x0)
  carry = (x0, u0, g0, b0, gb0, jnp.zeros((int(num_chains),), jnp.float32),
           jnp.asarray(step_size, jnp.float32))
  keys = jax.random.split(k_path, int(num_temps))
  (x, _, _, _, _, log_w, h), accs = jax.lax.scan(temperature, carry,
                                                 (betas[:-1], betas[1:], keys))
  n = log_w.shape[0]
  log_mean = logsumexp(log_w) - jnp.log(float(n))
  w = jnp.exp(log_w - jnp.max(log_w))
  stderr = jnp.std(w) / (jnp.sqrt(float(n)) * jnp.mean(w))
  ess = jnp.exp(2.0 * logsumexp(log_w) - logsumexp(2.0 * log_w))
  return {'log_z': log_z_base + log_mean, 'stderr': stderr, 'ess': ess,
          'acceptance': jnp.mean(accs), 'log_weights': log_w, 'samples': x, 'step_size': h}
