"""Deterministic samplers of the probability-flow ODE in the VE frame, in sigma.

  sigmas = karras_sigmas(18)                       # decreasing, ends at 0
  x, info = heun(denoiser_fn, sigmas[0] * z, sigmas)          # info['nfe'] == 35
  x, info = dpm_solver_multistep(denoiser_fn, x, sigmas, order=3)

`denoiser_fn(x, sigma) -> E[x_data | x]` for x = x_data + sigma eps, sigma a 0-d
array. The PF-ODE is dx/dsigma = (x - D(x, sigma)) / sigma (ALGORITHMS.md §1.2). The
grid `sigmas` is a concrete decreasing 1-D array. A final step to sigma = 0 is the
limit of every method's update there, x = D(x, sigma_{N-1}) (1 NFE): the ODE's
velocity is undefined at sigma = 0, and Euler, DDIM and DPM-Solver all reduce to that
value on such a step. Each sampler runs its other steps in one `jax.lax.scan`. A
step's evaluations all use `guidance.for_step(denoiser_fn, sigma_i)`, so a guidance
interval is decided per step, at the sigma the step starts from (§11.1).

NFE for N steps (N + 1 grid points) ending at 0: euler N, heun 2N - 1, rk4 4N - 3,
ddim N, dpm_solver_2m/3m N. Not ending at 0: heun 2N, rk4 4N, the rest N.

DDIM in the VE frame (a = 1, b = sigma): eps_hat = (x - D)/sigma and
  x_next = D + sqrt(sigma_next^2 - c^2) eps_hat + c z,
  c = eta sigma_next sqrt(1 - sigma_next^2 / sigma^2).
With eta = 0 this is x + (sigma_next - sigma)(x - D)/sigma, i.e. Euler in sigma.
DPM-Solver++ (data prediction) uses lambda = -log sigma and h = log(sigma/sigma_next).
Its 3M step is x1 + phi_2 D1 - 2 phi_3 D2 with D1, D2, phi_2, phi_3 as in ALGORITHMS.md
§3: the divided difference D2 = (D1_0 - D1_1)/(r0 + r1) estimates h^2 m''/2, while the
Taylor term of the exact solution is -h^2 phi_3 m'' (sigma_next times the integral of
e^lambda (lambda - lambda_s)^2/2), hence the 2. With the 2 the measured global order
is 3 (error ratio ~8.5 per step doubling, tests/test_samplers_sigma.py); without it
the ratio falls to ~4.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gensuite.errors import ConfigError
from gensuite.samplers.guidance import for_step

DenoiserFn = Callable[[jax.Array, jax.Array], jax.Array]


def split_grid(sigmas) -> tuple[np.ndarray, bool]:
  """(the grid the scan runs over, whether a final x = D step to 0 follows)."""
  try:
    grid = np.asarray(sigmas, np.float64)
  except jax.errors.TracerArrayConversionError as e:
    raise ConfigError('sigma samplers need a concrete sigma grid (numpy), not a traced '
                      'array') from e
  if grid.ndim != 1 or grid.shape[0] < 2:
    raise ConfigError(f'sigmas must be a 1-D grid of at least 2 levels, got shape {grid.shape}')
  if np.any(np.diff(grid) >= 0) or grid[-1] < 0:
    raise ConfigError('sigmas must be strictly decreasing and >= 0, got '
                      f'{grid[:3].tolist()} ... {grid[-3:].tolist()}')
  if grid[-1] == 0.0:
    return grid[:-1], True
  return grid, False


def pairs(grid: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
  g = jnp.asarray(grid).astype(dtype)
  return g[:-1], g[1:]


def final_denoise(denoiser_fn: DenoiserFn, x: jax.Array, grid: np.ndarray, to_zero: bool):
  """x = D(x, sigma_last) when the grid ends at zero; (x, nfe added)."""
  if not to_zero:
    return x, 0
  return denoiser_fn(x, jnp.asarray(grid[-1]).astype(x.dtype)).astype(x.dtype), 1


def _velocity(denoiser_fn, x, sigma):
  return (x - denoiser_fn(x, sigma)) / sigma


def _scan_steps(step: Callable, x: jax.Array, grid: np.ndarray, extra=None):
  s0, s1 = pairs(grid, x.dtype)
  xs = (s0, s1) if extra is None else (s0, s1, extra)

  def body(x, inp):
    return step(x, *inp).astype(x.dtype), None

  x, _ = jax.lax.scan(body, x, xs)
  return x


def euler(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng=None) -> tuple[jax.Array, dict]:
  """Euler in sigma (order 1)."""
  del rng
  grid, to_zero = split_grid(sigmas)
  x = _scan_steps(lambda x, s, sn: x + (sn - s) * _velocity(denoiser_fn, x, s), x, grid)
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  return x, {'nfe': len(grid) - 1 + extra}


def heun_step(denoiser_fn, x, s, sn):
  denoiser_fn = for_step(denoiser_fn, s)  # both evaluations: the step's guidance
  d = _velocity(denoiser_fn, x, s)
  x_pred = x + (sn - s) * d
  d_next = _velocity(denoiser_fn, x_pred, sn)
  return x + (sn - s) * 0.5 * (d + d_next)


def heun(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng=None) -> tuple[jax.Array, dict]:
  """EDM's Heun sampler (order 2); the step to sigma = 0 is Euler, i.e. x = D."""
  del rng
  grid, to_zero = split_grid(sigmas)
  x = _scan_steps(lambda x, s, sn: heun_step(denoiser_fn, x, s, sn), x, grid)
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  return x, {'nfe': 2 * (len(grid) - 1) + extra}


def rk4(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng=None) -> tuple[jax.Array, dict]:
  """Classical RK4 in sigma (order 4); the step to sigma = 0 is x = D."""
  del rng

  def step(x, s, sn):
    h = sn - s
    sm = s + 0.5 * h
    fn = for_step(denoiser_fn, s)  # every stage: the step's guidance
    k1 = _velocity(fn, x, s)
    k2 = _velocity(fn, x + 0.5 * h * k1, sm)
    k3 = _velocity(fn, x + 0.5 * h * k2, sm)
    k4 = _velocity(fn, x + h * k3, sn)
    return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

  grid, to_zero = split_grid(sigmas)
  x = _scan_steps(step, x, grid)
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  return x, {'nfe': 4 * (len(grid) - 1) + extra}


def ddim(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng=None,
         eta: float = 0.0) -> tuple[jax.Array, dict]:
  """DDIM (Song, Meng & Ermon) in the VE frame; eta = 0 deterministic, 1 ancestral."""
  eta = float(eta)
  if eta < 0:
    raise ConfigError(f'ddim eta must be >= 0, got {eta}')
  if eta > 0 and rng is None:
    raise ConfigError('ddim with eta > 0 needs an rng')
  grid, to_zero = split_grid(sigmas)

  def step(x, s, sn, key):
    d = denoiser_fn(x, s)
    eps_hat = (x - d) / s
    if eta == 0.0:
      return d + sn * eps_hat
    c = eta * sn * jnp.sqrt(jnp.clip(1.0 - (sn / s)**2, 0.0, None))
    z = jax.random.normal(key, x.shape, x.dtype)
    return d + jnp.sqrt(jnp.clip(sn**2 - c**2, 0.0, None)) * eps_hat + c * z

  keys = jax.random.split(rng if rng is not None else jax.random.key(0), len(grid) - 1)
  x = _scan_steps(step, x, grid, keys)
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  return x, {'nfe': len(grid) - 1 + extra}


def dpm_solver_multistep(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng=None,
                         order: int = 2) -> tuple[jax.Array, dict]:
  """DPM-Solver++ multistep (Lu et al. 2022), data prediction, order 2 or 3.

  Step i uses order min(order, i + 1) (the history warms up); a step to sigma = 0
  is x = D. One NFE per step: the denoiser outputs are reused as the history.
  """
  del rng
  if order not in (1, 2, 3):
    raise ConfigError(f'dpm_solver order must be 1, 2 or 3, got {order}')
  grid, to_zero = split_grid(sigmas)
  dtype = x.dtype
  s0, s1 = pairs(grid, dtype)
  index = jnp.arange(len(grid) - 1)

  def body(carry, inp):
    x, m1, m2, h1, h2 = carry
    s, sn, i = inp
    m0 = denoiser_fn(x, s).astype(dtype)
    h = jnp.log(s / sn)
    phi_1 = jnp.expm1(-h)
    x1 = (sn / s) * x - phi_1 * m0
    r0 = jnp.where(h1 > 0, h1 / h, 1.0)
    r1 = jnp.where(h2 > 0, h2 / h, 1.0)
    d1_0 = (m0 - m1) / r0
    x2 = x1 - 0.5 * phi_1 * d1_0
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    x3 = x1 + phi_2 * d1 - 2.0 * phi_3 * d2
    k = jnp.minimum(order, i + 1)
    x_next = jnp.where(k == 1, x1, jnp.where(k == 2, x2, x3)).astype(dtype)
    return (x_next, m0, m1, h, h1), None

  zero = jnp.zeros((), dtype)
  carry = (x, jnp.zeros_like(x), jnp.zeros_like(x), zero, zero)
  (x, *_), _ = jax.lax.scan(body, carry, (s0, s1, index))
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  return x, {'nfe': len(grid) - 1 + extra}
