"""Log-likelihood through the probability-flow ODE, and bits per dimension.

  out = likelihood.nll_from_denoiser(denoiser_fn, x, rng, sigma_min=0.002, sigma_max=80.0,
                                     divergence='hutchinson', num_probes=4)
  out['nll']        # [B] nats per example;  out['nll_mean'], out['nll_se'], out['nfe'],
                    # out['latent'] (x at the noise end), out['probe_se'] (num_probes > 1)
  out = likelihood.nll_from_velocity(velocity_fn, x, rng)   # flow matching, t: 1 -> 0
  x, bin_width = likelihood.dequantize(images_uint8, rng)   # into [-1, 1)
  bpd = likelihood.bits_per_dim(out['nll'], num_dims, bin_width)

Method (ALGORITHMS.md §1.3). Along an ODE dx/ds = F(x, s), d log p_s(x(s))/ds =
-div F, so integrating from the data end s_data to the noise end s_noise,
  log p_data(x) = log p_prior(x(s_noise)) + int_{s_data}^{s_noise} div F(x(s), s) ds.
The state [x, int div] is solved together: fixed-grid RK4 or adaptive dopri5.
- VE frame (`nll_from_denoiser`): s = sigma from sigma_min to sigma_max,
  F = (x - D(x, sigma))/sigma, prior N(0, sigma_max^2 I) (or `prior_log_prob`). The
  result is the density of the data convolved with N(0, sigma_min^2 I).
- Flow matching (`nll_from_velocity`): s = t from t_data = 1 to 0, F = v(x, t), prior
  N(0, I) at t = 0.
Divergence: 'exact' is the trace of the per-example Jacobian (jacfwd, one forward pass
per dimension: low dimension only); 'hutchinson' is v^T J v with v Rademacher or
Gaussian (E[v v^T] = I), one JVP per probe. Probes are drawn once per solve (the ODE
stays smooth for dopri5), each probe integrates its own column, and the per-example
NLL is their mean; 'probe_se' is its standard error over probes.

Bits/dim. Integer pixels k in {0..levels-1} dequantized to a continuous x in model
space, x = (k + u) * bin_width + offset with u ~ U[0, 1)^d, give
  -log2 P(k) <= -log2 p_model(x) - d log2(bin_width)  (Jensen, Theis et al. 2016),
so bpd = (NLL + d ln(1/bin_width)) / (d ln 2). For [-1, 1) with 256 levels,
bin_width = 2/256 and the offset is exactly 7 bits (score_sde's 'offset = 7' for
centered data); the DDPM scaling x = k/127.5 - 1 has bin_width 1/127.5, offset
log2(127.5) = 6.994. Check: a model uniform on the dequantized support scores 8.
"""
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gensuite.errors import ConfigError
from gensuite.samplers import ode

DIVERGENCES = ('exact', 'hutchinson')
PROBES = ('rademacher', 'gaussian')
SOLVERS = ('rk4', 'dopri5')
DEQUANTIZATIONS = {'score_sde': (2.0 / 256.0, -1.0), 'ddpm': (1.0 / 127.5, -1.0)}


def _check(kind, value, allowed):
  if value not in allowed:
    raise ConfigError(f'unknown {kind} {value!r}; allowed: {", ".join(allowed)}')


def probes(rng: jax.Array, shape, num: int, kind: str = 'rademacher', dtype=jnp.float32):
  """[num, *shape] probe vectors with E[v v^T] = I."""
  _check('probe', kind, PROBES)
  if kind == 'rademacher':
    return jax.random.rademacher(rng, (num,) + tuple(shape), dtype)
  return jax.random.normal(rng, (num,) + tuple(shape), dtype)


def exact_divergence(fn: Callable, x: jax.Array) -> jax.Array:
  """tr(d fn / dx) per example, for fn acting on a batch [B, ...] -> [B, ...]."""
  def single(xi):
    flat = lambda v: fn(v.reshape((1,) + xi.shape))[0].reshape(-1)
    return jnp.trace(jax.jacfwd(flat)(xi.reshape(-1)))
  return jax.vmap(single)(x)


def hutchinson_divergence(fn: Callable, x: jax.Array, eps: jax.Array):
  """(fn(x), [K, B] estimates v_k . (J v_k)) for probes eps [K, *x.shape]; one
  linearization, then one JVP per probe."""
  out, jvp = jax.linearize(fn, x)
  axes = tuple(range(2, eps.ndim))
  return out, jnp.sum(eps * jax.vmap(jvp)(eps), axis=axes)


def _solve(velocity_fn, x, s_data, s_noise, grid, rng, divergence, probe, num_probes,
           solver, rtol, atol):
  """Integrates [x, int div] from s_data to s_noise; returns (x_end, [K, B] int div, nfe)."""
  _check('divergence', divergence, DIVERGENCES)
  _check('solver', solver, SOLVERS)
  shape = x.shape
  b = shape[0]
  d = int(np.prod(shape[1:]))
  k = 1 if divergence == 'exact' else int(num_probes)
  if k < 1:
    raise ConfigError(f'num_probes must be >= 1, got {num_probes}')
  eps = None
  if divergence == 'hutchinson':
    if rng is None:
      raise ConfigError("divergence='hutchinson' needs an rng")
    eps = probes(rng, shape, k, probe, x.dtype)

  def augmented(y, s):
    xs = y[:, :d].reshape(shape)
    fn = lambda v: velocity_fn(v, s)
    if divergence == 'exact':
      v = fn(xs)
      div = exact_divergence(fn, xs)[:, None]
    else:
      v, div = hutchinson_divergence(fn, xs, eps)
      div = div.T
    return jnp.concatenate([v.reshape(b, d), div.astype(y.dtype)], axis=1)

  y0 = jnp.concatenate([x.reshape(b, d), jnp.zeros((b, k), x.dtype)], axis=1)
  if solver == 'dopri5':
    y1, nfe = ode.dopri5(augmented, y0, s_data, s_noise, rtol=rtol, atol=atol)
  else:
    y1 = ode.rk4(augmented, y0, jnp.asarray(grid))
    nfe = 4 * (len(grid) - 1)
  return y1[:, :d].reshape(shape), y1[:, d:].T, nfe


def gaussian_log_prob(x: jax.Array, mean=0.0, std=1.0) -> jax.Array:
  """log N(x; mean, std^2 I) summed over all but the batch axis."""
  z = (x - mean) / std
  axes = tuple(range(1, x.ndim))
  d = int(np.prod(x.shape[1:]))
  return -0.5 * jnp.sum(z**2, axis=axes) - d * (jnp.log(std) + 0.5 * math.log(2 * math.pi))


def _summary(x_end, log_prior, integrals, nfe):
  log_p = log_prior[None, :] + integrals          # [K, B]
  nll_probes = -log_p
  nll = jnp.mean(nll_probes, axis=0)
  k, b = nll_probes.shape
  out = {'nll': nll, 'nll_mean': jnp.mean(nll), 'latent': x_end,
         'nll_se': jnp.std(nll, ddof=1) / math.sqrt(b) if b > 1 else jnp.zeros(()),
         'nfe': nfe}
  if k > 1:
    out['probe_se'] = jnp.std(nll_probes, axis=0, ddof=1) / math.sqrt(k)
  return out


def nll_from_denoiser(denoiser_fn: Callable, x: jax.Array, rng: jax.Array | None = None,
                      sigma_min: float = 0.002, sigma_max: float = 80.0,
                      divergence: str = 'exact', probe: str = 'rademacher',
                      num_probes: int = 1, solver: str = 'dopri5', steps: int = 100,
                      rtol: float = 1e-5, atol: float = 1e-5,
                      prior_log_prob: Callable | None = None) -> dict:
  """NLL (nats) of x under the PF-ODE of a VE-frame denoiser (see module docstring).

  steps: RK4 steps, on a geometric sigma grid. prior_log_prob(x_end) -> [B] defaults
  to N(0, sigma_max^2 I).
  """
  if not 0.0 < sigma_min < sigma_max:
    raise ConfigError(f'need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}')
  velocity = lambda xs, sigma: (xs - denoiser_fn(xs, sigma)) / sigma
  grid = np.geomspace(sigma_min, sigma_max, int(steps) + 1)
  x_end, integrals, nfe = _solve(velocity, x, sigma_min, sigma_max, grid, rng, divergence,
                                 probe, num_probes, solver, rtol, atol)
  prior = prior_log_prob or (lambda z: gaussian_log_prob(z, 0.0, sigma_max))
  return _summary(x_end, prior(x_end), integrals, nfe)


def nll_from_velocity(velocity_fn: Callable, x: jax.Array, rng: jax.Array | None = None,
                      t_data: float = 1.0, t_noise: float = 0.0,
                      divergence: str = 'exact', probe: str = 'rademacher',
                      num_probes: int = 1, solver: str = 'dopri5', steps: int = 100,
                      rtol: float = 1e-5, atol: float = 1e-5,
                      prior_log_prob: Callable | None = None) -> dict:
  """NLL (nats) of x under a flow-matching velocity (t = 1 data, t = 0 noise N(0, I))."""
  grid = np.linspace(t_data, t_noise, int(steps) + 1)
  x_end, integrals, nfe = _solve(velocity_fn, x, t_data, t_noise, grid, rng, divergence,
                                 probe, num_probes, solver, rtol, atol)
  prior = prior_log_prob or gaussian_log_prob
  return _summary(x_end, prior(x_end), integrals, nfe)


def dequantize(pixels, rng: jax.Array, convention: str = 'score_sde'):
  """Integer pixels (0..255) -> (continuous x in model space, bin_width).

  'score_sde': x = 2 (k + u)/256 - 1 in [-1, 1), bin_width 2/256.
  'ddpm':      x = (k + u)/127.5 - 1 in [-1, 1 + 1/127.5), bin_width 1/127.5.
  """
  if convention not in DEQUANTIZATIONS:
    raise ConfigError(f'unknown dequantization {convention!r}; allowed: '
                      + ', '.join(sorted(DEQUANTIZATIONS)))
  width, offset = DEQUANTIZATIONS[convention]
  k = jnp.asarray(pixels, jnp.float32)
  u = jax.random.uniform(rng, k.shape, jnp.float32)
  return (k + u) * width + offset, width


def bits_per_dim(nll, num_dims: int, bin_width: float = 2.0 / 256.0):
  """(NLL + d ln(1/bin_width)) / (d ln 2): the dequantized discrete bound in bits/dim."""
  return (jnp.asarray(nll) + num_dims * math.log(1.0 / bin_width)) / (num_dims * math.log(2.0))
