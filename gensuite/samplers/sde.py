"""Stochastic samplers of the reverse diffusion in the VE frame, in sigma.

  x, info = euler_maruyama(denoiser_fn, sigmas[0] * z, sigmas, rng)
  x, info = pc(denoiser_fn, x, sigmas, rng, snr=0.16, corrector_steps=1)
  x, info = edm_stochastic(denoiser_fn, x, sigmas, rng, s_churn=40.0, s_noise=1.003)

`denoiser_fn(x, sigma)` as in `pf_ode`; score = (D - x) / sigma^2. The VE forward SDE
dx = g dW has g^2 dt = d(sigma^2), so Euler–Maruyama on the reverse SDE
dx = -g^2 s dt + g dW_bar, with the step measured in sigma^2, is
  x_next = x + (sigma^2 - sigma_next^2) s(x, sigma) + sqrt(sigma^2 - sigma_next^2) z
(score_sde's "reverse diffusion" predictor, ALGORITHMS.md §3). A step to sigma = 0
is taken without noise, which gives x = D(x, sigma) (the noise-free mean).

NFE for N steps: euler_maruyama N; pc N (1 + corrector_steps); edm_stochastic like
heun, 2N - 1 when the grid ends at 0.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from gensuite.errors import ConfigError
from gensuite.samplers.guidance import for_step
from gensuite.samplers.pf_ode import final_denoise, heun_step, pairs, split_grid

DenoiserFn = Callable[[jax.Array, jax.Array], jax.Array]


def _per_example_norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def _need_rng(name, rng):
  if rng is None:
    raise ConfigError(f'sampler {name!r} is stochastic and needs an rng')


def _scan_keys(step: Callable, x: jax.Array, grid, rng):
  s0, s1 = pairs(grid, x.dtype)
  keys = jax.random.split(rng, len(grid) - 1)

  def body(x, inp):
    return step(x, *inp).astype(x.dtype), None

  x, _ = jax.lax.scan(body, x, (s0, s1, keys))
  return x


def reverse_diffusion_step(denoiser_fn, x, s, sn, key):
  d = denoiser_fn(x, s)
  var = s**2 - sn**2
  z = jax.random.normal(key, x.shape, x.dtype)
  return x + var * (d - x) / s**2 + jnp.sqrt(var) * z


def euler_maruyama(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng) -> tuple[jax.Array, dict]:
  """Euler–Maruyama on the VE reverse SDE (1 NFE per step)."""
  _need_rng('euler_maruyama', rng)
  grid, to_zero = split_grid(sigmas)
  x = _scan_keys(lambda x, s, sn, k: reverse_diffusion_step(denoiser_fn, x, s, sn, k),
                 x, grid, rng)
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  return x, {'nfe': len(grid) - 1 + extra}


def langevin_correct(denoiser_fn, x, sigma, key, snr: float, steps: int):
  """score_sde's Langevin corrector at fixed sigma (VE: alpha = 1).

  step e = 2 (snr ||z|| / ||s||)^2 with both norms per example, averaged over the
  batch; x <- x + e s(x) + sqrt(2 e) z.
  """
  def body(x, k):
    score = (denoiser_fn(x, sigma) - x) / sigma**2
    z = jax.random.normal(k, x.shape, x.dtype)
    ratio = jnp.mean(_per_example_norm(z)) / jnp.mean(_per_example_norm(score))
    e = 2.0 * (snr * ratio)**2
    return (x + e * score + jnp.sqrt(2.0 * e) * z).astype(x.dtype), None

  x, _ = jax.lax.scan(body, x, jax.random.split(key, steps))
  return x


def pc(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng, snr: float = 0.16,
       corrector_steps: int = 1) -> tuple[jax.Array, dict]:
  """Predictor-corrector (Song et al.): at each level, corrector_steps Langevin
  corrections at sigma_i, then a reverse-diffusion prediction to sigma_{i+1}."""
  _need_rng('pc', rng)
  m = int(corrector_steps)
  if m < 0 or snr <= 0:
    raise ConfigError(f'pc needs corrector_steps >= 0 and snr > 0, got {m}, {snr}')
  grid, to_zero = split_grid(sigmas)
  k_steps, k_last = jax.random.split(rng)

  def correct(x, s, key):
    return langevin_correct(denoiser_fn, x, s, key, snr, m) if m else x

  def step(x, s, sn, key):
    k_c, k_p = jax.random.split(key)
    return reverse_diffusion_step(denoiser_fn, correct(x, s, k_c), s, sn, k_p)

  x = _scan_keys(step, x, grid, k_steps)
  if to_zero:
    x = correct(x, jnp.asarray(grid[-1]).astype(x.dtype), k_last)
  x, extra = final_denoise(denoiser_fn, x, grid, to_zero)
  levels = len(grid) - 1 + extra
  return x, {'nfe': levels * (1 + m)}


def edm_stochastic(denoiser_fn: DenoiserFn, x: jax.Array, sigmas, rng, s_churn: float = 0.0,
                   s_min: float = 0.0, s_max: float = float('inf'),
                   s_noise: float = 1.0) -> tuple[jax.Array, dict]:
  """EDM's stochastic sampler (Karras et al. Alg. 2): churn, then a Heun step.

  gamma_i = min(s_churn / N, sqrt(2) - 1) for s_min <= sigma_i <= s_max, else 0;
  sigma_hat = sigma_i (1 + gamma_i); x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z;
  Heun from sigma_hat to sigma_{i+1}, Euler (x = D) on a step to 0. s_churn = 0 is heun.
  """
  _need_rng('edm_stochastic', rng)
  if s_churn < 0 or s_noise < 0:
    raise ConfigError(f'edm_stochastic needs s_churn, s_noise >= 0, got {s_churn}, {s_noise}')
  grid, to_zero = split_grid(sigmas)
  n = len(grid) - 1 + int(to_zero)
  gamma_max = min(s_churn / n, 2**0.5 - 1)

  def churn(x, s, key):
    gamma = jnp.where((s >= s_min) & (s <= s_max), gamma_max, 0.0).astype(x.dtype)
    s_hat = s * (1.0 + gamma)
    z = jax.random.normal(key, x.shape, x.dtype)
    # sqrt(s_hat^2 - s^2) written so that gamma = 0 gives exactly 0 (a fused
    # s_hat * s_hat - s * s can round below 0 and its sqrt to NaN).
    return x + s * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z, s_hat

  def step(x, s, sn, key):
    x_hat, s_hat = churn(x, s, key)
    # The guidance interval is decided at sigma_i, not at the churned sigma_hat.
    return heun_step(for_step(denoiser_fn, s), x_hat, s_hat, sn)

  k_steps, k_last = jax.random.split(rng)
  x = _scan_keys(step, x, grid, k_steps)
  if to_zero:
    s_last = jnp.asarray(grid[-1]).astype(x.dtype)
    x, s_hat = churn(x, s_last, k_last)
    x = for_step(denoiser_fn, s_last)(x, s_hat).astype(x.dtype)
  return x, {'nfe': 2 * (len(grid) - 1) + int(to_zero)}
