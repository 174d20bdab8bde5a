"""The sampler library: ODE solvers in t and samplers in sigma, by name.

  x1 = gensuite.samplers.solve_ode('heun', velocity_fn, x0, 0.0, 1.0, steps=20)
  sigmas = gensuite.samplers.karras_sigmas(18)
  x, info = gensuite.samplers.sample_sigmas('dpm_solver_2m', denoiser_fn,
                                            sigmas[0] * z, sigmas, rng)  # info['nfe']
  gensuite.samplers.check_name(config.sampler.name)   # ConfigError if unknown

Two entry points:
- `solve_ode(name, velocity_fn, x0, t0, t1, steps)` integrates dx/dt = v(x, t) in any
  time variable (euler, heun, rk4, dopri5). `velocity_fn(x, t)` receives a scalar t;
  the caller broadcasts it to the [B] vector a network wants. 'dopri5' is adaptive:
  it ignores `steps` and integrates to rtol = atol = 1e-5.
- `sample_sigmas(name, denoiser_fn, x, sigmas, rng, **options)` runs a sampler in the
  VE/EDM frame: `denoiser_fn(x, sigma) -> E[x_data | x]` for x = x_data + sigma eps,
  sigma 0-d, on a decreasing concrete grid `sigmas` (ending at 0 where the sampler
  allows), x already at sigmas[0]. Returns (x_final, info) with info['nfe'].
  Other paths reach it through `frames` (sigma = b/a, x_ve = x_t/a).
  Names and options:
    euler, heun, rk4, dpm_solver_2m, dpm_solver_3m      (pf_ode; deterministic)
    ddim                eta (0: deterministic, 1: ancestral)
    euler_maruyama      (sde; reverse SDE, step in sigma^2)
    pc                  snr, corrector_steps
    edm_stochastic      s_churn, s_min, s_max, s_noise
    annealed_langevin   steps_per_sigma, step_scale (langevin; grid's zeros dropped)
  ula and mala sample an energy, not a noise ladder: call gensuite.samplers.langevin.
"""
import functools
from typing import Callable

import jax
import numpy as np

from gensuite.errors import ConfigError, lookup
from gensuite.samplers import frames, pf_ode, sde
from gensuite.samplers.langevin import annealed_langevin, mala, ula
from gensuite.samplers.ode import dopri5, euler, heun, rk4, time_grid
from gensuite.samplers.schedules import karras_sigmas, sigma_grid, ve_sigmas, vp_sigmas

__all__ = ['ODE_SAMPLERS', 'NFE_PER_STEP', 'SAMPLERS', 'SIGMA_SAMPLERS', 'check_name',
           'dopri5', 'euler', 'frames', 'options_from_config', 'heun', 'karras_sigmas', 'rk4', 'sample_sigmas',
           'sigma_grid', 'solve_ode', 'time_grid', 've_sigmas', 'vp_sigmas']

ODE_SAMPLERS = {'euler': euler, 'heun': heun, 'rk4': rk4}
NFE_PER_STEP = {'euler': 1, 'heun': 2, 'rk4': 4}
# Every name solve_ode accepts.
ODE_SOLVERS = {**ODE_SAMPLERS, 'dopri5': dopri5}
# Langevin samplers (energy / score based; called directly, not through solve_ode).
LANGEVIN_SAMPLERS = {'ula': ula, 'mala': mala, 'annealed_langevin': annealed_langevin}


def _annealed_langevin(denoiser_fn, x, sigmas, rng, **options):
  grid = np.asarray(sigmas, np.float64)
  grid = grid[grid > 0]
  return annealed_langevin(frames.score_from_denoiser(denoiser_fn), x, grid, rng, **options)


# name -> fn(denoiser_fn, x, sigmas, rng, **options) -> (x, info)
SIGMA_SAMPLERS = {
    'euler': pf_ode.euler,
    'heun': pf_ode.heun,
    'rk4': pf_ode.rk4,
    'ddim': pf_ode.ddim,
    'dpm_solver_2m': functools.partial(pf_ode.dpm_solver_multistep, order=2),
    'dpm_solver_3m': functools.partial(pf_ode.dpm_solver_multistep, order=3),
    'euler_maruyama': sde.euler_maruyama,
    'pc': sde.pc,
    'edm_stochastic': sde.edm_stochastic,
    'annealed_langevin': _annealed_langevin,
}
# The options each sigma sampler takes (config.sampler.<option> supplies defaults).
SAMPLER_OPTIONS = {
    'ddim': ('eta',),
    'pc': ('snr', 'corrector_steps'),
    'edm_stochastic': ('s_churn', 's_min', 's_max', 's_noise'),
    'annealed_langevin': ('steps_per_sigma', 'step_scale'),
}
# Every sampler name a config may hold.
SAMPLERS = {**ODE_SOLVERS, **SIGMA_SAMPLERS, **LANGEVIN_SAMPLERS}


def check_name(name: str, allowed=None) -> None:
  """Raises ConfigError unless `name` is a known sampler (or in `allowed`)."""
  lookup('sampler', name, SAMPLERS if allowed is None else allowed)


def options_from_config(name: str, sampler_config, **overrides) -> dict:
  """The options of sampler `name` found in sampler_config (a ConfigDict or dict),
  updated with `overrides`."""
  found = {k: sampler_config[k] for k in SAMPLER_OPTIONS.get(name, ())
           if k in sampler_config}
  return {**found, **overrides}


def sample_sigmas(name: str, denoiser_fn: Callable, x: jax.Array, sigmas, rng=None,
                  **options) -> tuple[jax.Array, dict]:
  """Runs sampler `name` down the noise ladder `sigmas`; returns (x, info)."""
  if name in ('ula', 'mala'):
    raise ConfigError(f'sampler {name!r} samples an energy at one noise level; call '
                      'gensuite.samplers.langevin directly. Noise-ladder samplers: '
                      + ', '.join(sorted(SIGMA_SAMPLERS)))
  fn = lookup('sigma sampler', name, SIGMA_SAMPLERS)
  try:
    return fn(denoiser_fn, x, sigmas, rng, **options)
  except TypeError as e:
    if 'unexpected keyword' in str(e):
      raise ConfigError(f'sampler {name!r}: {e}') from e
    raise


def solve_ode(name: str, velocity_fn: Callable, x: jax.Array, t0: float, t1: float,
              steps: int, return_trajectory: bool = False,
              grid: str = 'uniform') -> jax.Array:
  """Integrates dx/dt = velocity_fn(x, t) from t0 to t1 with the named sampler.

  Fixed-grid samplers take `steps` steps on `time_grid(steps, t0, t1, grid)`;
  return_trajectory stacks the steps + 1 states. 'dopri5' ignores steps and grid and
  returns only the final state (its nfe is dropped; call `dopri5` for it).
  """
  solver = lookup('ODE solver', name, ODE_SOLVERS)
  if name == 'dopri5':
    if return_trajectory:
      raise ConfigError("sampler 'dopri5' cannot return a trajectory; use a fixed-grid "
                        f"sampler ({', '.join(sorted(ODE_SAMPLERS))})")
    x1, _ = solver(velocity_fn, x, t0, t1)
    return x1
  ts = time_grid(int(steps), t0, t1, kind=grid)
  return solver(velocity_fn, x, ts, return_trajectory=return_trajectory)
