"""The sampler library: ODE solvers in t and samplers in sigma, by name.

  x = gensuite.samplers.sample(name, field, z, rng, steps, **options)   # what methods call
  field = gensuite.samplers.Field.velocity(v_fn, path, sigma_grid)     # see dispatch.py

  x1 = gensuite.samplers.solve_ode('heun', velocity_fn, x0, 0.0, 1.0, steps=20)
  sigmas = gensuite.samplers.karras_sigmas(18)
  x, info = gensuite.samplers.sample_sigmas('dpm_solver_2m', denoiser_fn,
                                            sigmas[0] * z, sigmas, rng)  # info['nfe']
  gensuite.samplers.check_name(config.sampler.name)   # ConfigError if unknown

Methods call `sample` (dispatch.py) with their field; below it, two entry points:
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

Guidance (CFG with an interval, autoguidance) is a layer over a denoiser or velocity
field, run by every sampler above: gensuite.samplers.guidance.
"""
from gensuite.samplers import frames, guidance, langevin, pf_ode, sde
from gensuite.samplers.dispatch import (LANGEVIN_SAMPLERS, NFE_PER_STEP, ODE_SAMPLERS,
                                        ODE_SOLVERS, SAMPLER_OPTIONS, SAMPLERS,
                                        SIGMA_SAMPLERS, Field, check, check_field_config,
                                        check_name, options_from_config, resolve, sample,
                                        sample_sigmas, solve_ode)
from gensuite.samplers.langevin import annealed_langevin, mala, ula
from gensuite.samplers.ode import dopri5, euler, heun, rk4, time_grid
from gensuite.samplers.schedules import karras_sigmas, sigma_grid, ve_sigmas, vp_sigmas

__all__ = ['Field', 'LANGEVIN_SAMPLERS', 'NFE_PER_STEP', 'ODE_SAMPLERS', 'ODE_SOLVERS',
           'SAMPLERS', 'SAMPLER_OPTIONS', 'SIGMA_SAMPLERS', 'annealed_langevin', 'check',
           'check_field_config', 'check_name', 'dopri5', 'euler', 'frames', 'guidance', 'heun',
           'karras_sigmas', 'langevin', 'mala', 'options_from_config', 'pf_ode', 'resolve',
           'rk4', 'sample', 'sample_sigmas', 'sde', 'sigma_grid', 'solve_ode', 'time_grid',
           'ula', 've_sigmas', 'vp_sigmas']
