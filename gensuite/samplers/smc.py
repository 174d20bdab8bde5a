"""Sequential Monte Carlo bookkeeping: log-weights, ESS, resampling, Jarzynski moves.

  p = normalized_weights(log_weights)             # softmax, never exp of raw log-weights
  n_eff = ess(log_weights)                        # (sum w)^2 / sum w^2, in [1, N]
  idx = resample('systematic', rng, log_weights)  # or 'multinomial'; then log_weights = 0
  log_z_ratio = log_mean_weight(log_weights)      # log mean_i exp(A_i) ~ log Z_k / Z_0
  x1, delta = jarzynski_ula_move(energy_old, energy_new, x, rng, step_size)

The Jarzynski move (Carbone et al., arXiv 2305.19414; ALGORITHMS.md §6) takes one ULA
step under the old energy U_k and returns the exact log-weight increment for the
switch to U_{k+1}:
  delta = -a_{k+1}(x', x) + a_k(x, x'),  a(x, y) = U(x) + (y - x).grad U(x)/2 + h |grad U(x)|^2/4,
which is log[e^{-U_{k+1}(x')} L_{k+1}(x' -> x)] - log[e^{-U_k(x)} P_k(x -> x')] with P, L the
ULA Gaussian kernels. When U_{k+1} = U_k it is the log Metropolis-Hastings ratio of
the ULA proposal.
"""
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gensuite.errors import lookup
from gensuite.samplers.langevin import energy_and_grad


def normalized_weights(log_weights: jax.Array) -> jax.Array:
  return jax.nn.softmax(log_weights)


def ess(log_weights: jax.Array) -> jax.Array:
  """Effective sample size (sum e^A)^2 / sum e^{2A}, computed in log space."""
  return jnp.exp(2.0 * logsumexp(log_weights) - logsumexp(2.0 * log_weights))


def log_mean_weight(log_weights: jax.Array) -> jax.Array:
  """log (1/N) sum_i e^{A_i}: the running estimate of log Z_k / Z_0."""
  return logsumexp(log_weights) - jnp.log(jnp.asarray(log_weights.shape[0],
                                                       log_weights.dtype))


def weighted_mean(log_weights: jax.Array, values: jax.Array) -> jax.Array:
  """sum_i p_i values_i over the leading axis."""
  p = normalized_weights(log_weights).astype(values.dtype)
  return jnp.tensordot(p, values, axes=1)


def systematic_resample(rng: jax.Array, log_weights: jax.Array) -> jax.Array:
  """Indices [N]: one uniform offset, N evenly spaced points through the weight CDF.

  Index i is copied between floor(N p_i) and ceil(N p_i) times.
  """
  n = log_weights.shape[0]
  p = normalized_weights(log_weights)
  cdf = jnp.cumsum(p)
  cdf = cdf.at[-1].set(1.0)  # guard the last bin against round-off
  u = (jax.random.uniform(rng, (), p.dtype) + jnp.arange(n, dtype=p.dtype)) / n
  return jnp.minimum(jnp.searchsorted(cdf, u, side='right'), n - 1).astype(jnp.int32)


def multinomial_resample(rng: jax.Array, log_weights: jax.Array) -> jax.Array:
  """Indices [N]: N independent draws from the normalized weights."""
  n = log_weights.shape[0]
  return jax.random.categorical(rng, log_weights, shape=(n,)).astype(jnp.int32)


RESAMPLERS = {'systematic': systematic_resample, 'multinomial': multinomial_resample}


def resample(name: str, rng: jax.Array, log_weights: jax.Array) -> jax.Array:
  return lookup('resampler', name, RESAMPLERS)(rng, log_weights)


def _a(u, g, x, y, h):
  """a(x, y) = U(x) + (y - x).grad U(x) / 2 + h |grad U(x)|^2 / 4, per walker."""
  flat = lambda v: v.reshape(v.shape[0], -1)
  return u + 0.5 * jnp.sum(flat(y - x) * flat(g), 1) + 0.25 * h * jnp.sum(flat(g)**2, 1)


def jarzynski_increment(u_old_x, g_old_x, u_new_y, g_new_y, x, y, h) -> jax.Array:
  """-a_{k+1}(y, x) + a_k(x, y) from energies and gradients already evaluated."""
  return _a(u_old_x, g_old_x, x, y, h) - _a(u_new_y, g_new_y, y, x, h)


def jarzynski_ula_move(energy_old: Callable, energy_new: Callable, x: jax.Array,
                       rng: jax.Array, step_size: float) -> tuple[jax.Array, jax.Array, dict]:
  """One ULA step under energy_old, and the log-weight increment for energy_new.

  Returns (x', delta [N], aux) with aux['energy'] = U_new(x') and aux['energy_old'] =
  U_old(x) per walker.
  """
  h = jnp.asarray(step_size, x.dtype)
  u_x, g_x = energy_and_grad(energy_old, x)
  y = x - h * g_x + jnp.sqrt(2.0 * h) * jax.random.normal(rng, x.shape, x.dtype)
  u_y, g_y = energy_and_grad(energy_new, y)
  delta = jarzynski_increment(u_x, g_x, u_y, g_y, x, y, h)
  return y, delta, {'energy': u_y, 'energy_old': u_x}
