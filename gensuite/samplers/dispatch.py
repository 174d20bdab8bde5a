"""The one entry point from a method to the sampler library.

  field = samplers.Field.velocity(v_fn, path, sigma_grid)       # or .denoiser(...), .energy(...)
  name, steps, options = samplers.resolve(config.sampler, sampler, steps, options)
  x = samplers.sample(name, field, z, rng, steps, **options)

A method hands over its *field* and, where it has one, its noise grid; it never
chooses or checks a sampler itself. What each kind of field can be sampled with:

  velocity  v(x_t, t), t = 0 noise, t = 1 data, on a Gaussian path (frames.GaussianPath).
            ODE solvers (euler, heun, rk4, dopri5) integrate it in t from z at t = 0.
            Every noise-ladder sampler runs on the VE-frame denoiser converted by
            `frames.denoiser_from_velocity`, over `field.sigma_grid(steps)`, from
            x = sigma_0 z, and the result is mapped back to x_t at the grid's last sigma
            (unchanged when that sigma is 0).
  denoiser  D(x, sigma) = E[x_data | x_data + sigma eps = x] (VE frame): the noise-ladder
            samplers over `field.sigma_grid(steps)`, from x = sigma_0 z.
  energy    U(x) with p ∝ exp(-U): ula and mala for `steps` steps from z (the walkers),
            with options step_size.

A guided field (gensuite.samplers.guidance: CFG with an interval, autoguidance) is
a field like the others: its fn combines two models, and every sampler here runs it,
deciding the guidance interval per step on the grid (guidance.for_step / restrict).

A field whose noise is coupled to its data (minibatch-OT flow matching:
`independent_noise=False`) has no valid score (D - x)/sigma^2, so the samplers that
use one (euler_maruyama, pc, edm_stochastic, annealed_langevin, ddim with eta > 0) are
refused for it; the deterministic ones integrate its velocity and stay.
"""
import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from gensuite.errors import ConfigError, lookup
from gensuite.samplers import frames, guidance, pf_ode, sde
from gensuite.samplers.langevin import annealed_langevin, mala, ula
from gensuite.samplers.ode import dopri5, euler, heun, rk4, time_grid

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
# Every sampler name a config may hold.
SAMPLERS = {**ODE_SOLVERS, **SIGMA_SAMPLERS, **LANGEVIN_SAMPLERS}


def check_name(name: str, allowed=None) -> None:
  """Raises ConfigError unless `name` is a known sampler (or in `allowed`)."""
  lookup('sampler', name, SAMPLERS if allowed is None else allowed)


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


VELOCITY, DENOISER, ENERGY = 'velocity', 'denoiser', 'energy'
# Samplers that read a score from the denoiser (or add fresh noise assuming one).
SCORE_SAMPLERS = ('euler_maruyama', 'pc', 'edm_stochastic', 'annealed_langevin')


@dataclasses.dataclass(frozen=True)
class Field:
  """What a method hands the samplers (see the module docstring).

  kind: 'velocity', 'denoiser' or 'energy'; fn: v(x, t), D(x, sigma) or U(x), each
    with a scalar time/noise level. path: for a velocity, the path its t lives on.
  sigma_grid: steps -> a decreasing float64 noise ladder (for the noise-ladder
    samplers). independent_noise: False where the noise is coupled to the data.
  step_size: an energy's default Langevin step (sampler option step_size overrides).
  """
  kind: str
  fn: Callable
  path: frames.GaussianPath | None = None
  sigma_grid: Callable[[int], np.ndarray] | None = None
  independent_noise: bool = True
  step_size: float | None = None

  @classmethod
  def velocity(cls, fn, path, sigma_grid=None, independent_noise=True) -> 'Field':
    return cls(VELOCITY, fn, path=path, sigma_grid=sigma_grid,
               independent_noise=independent_noise)

  @classmethod
  def denoiser(cls, fn, sigma_grid, independent_noise=True) -> 'Field':
    return cls(DENOISER, fn, sigma_grid=sigma_grid, independent_noise=independent_noise)

  @classmethod
  def energy(cls, fn, step_size: float) -> 'Field':
    return cls(ENERGY, fn, step_size=step_size)


def allowed(kind: str) -> dict:
  """{sampler name: fn} for a field kind."""
  if kind == VELOCITY:
    return {**ODE_SOLVERS, **SIGMA_SAMPLERS}
  if kind == DENOISER:
    return dict(SIGMA_SAMPLERS)
  if kind == ENERGY:
    return {k: LANGEVIN_SAMPLERS[k] for k in ('ula', 'mala')}
  raise ConfigError(f'unknown field kind {kind!r}; allowed: {VELOCITY}, {DENOISER}, {ENERGY}')


def check(name: str, kind: str, independent_noise: bool = True, options=None) -> None:
  """ConfigError (one line) unless sampler `name` can sample a field of this kind."""
  table = allowed(kind)
  if name not in table:
    raise ConfigError(f'sampler {name!r} cannot sample a {kind} field; allowed: '
                      + ', '.join(sorted(table)))
  if not independent_noise:
    eta = float((options or {}).get('eta', 0.0) or 0.0)
    if name in SCORE_SAMPLERS or (name == 'ddim' and eta > 0):
      deterministic = sorted(k for k in table if k not in SCORE_SAMPLERS)
      raise ConfigError(
          f'sampler {name!r}{" with eta > 0" if name == "ddim" else ""} needs the score '
          '(D - x)/sigma^2, which is wrong when the noise is coupled to the data '
          "(method.coupling='ot'); use a deterministic one: " + ', '.join(deterministic)
          + ' (ddim with eta=0)')


def check_field_config(sampler_config, kind: str, independent_noise: bool = True) -> None:
  """Checks config.sampler.name (and its options) for a method's field kind."""
  name = sampler_config['name']
  check(name, kind, independent_noise, options_from_config(name, sampler_config))


# The options each sampler takes from config.sampler (and as keyword overrides).
SAMPLER_OPTIONS = {
    'ddim': ('eta',),
    'pc': ('snr', 'corrector_steps'),
    'edm_stochastic': ('s_churn', 's_min', 's_max', 's_noise'),
    'annealed_langevin': ('steps_per_sigma', 'step_scale'),
    'ula': ('step_size',),
    'mala': ('step_size',),
}


def options_from_config(name: str, sampler_config, **overrides) -> dict:
  """The options of sampler `name` found in sampler_config, updated with `overrides`."""
  found = {k: sampler_config[k] for k in SAMPLER_OPTIONS.get(name, ())
           if k in sampler_config}
  return {**found, **overrides}


def resolve(sampler_config, name: str | None = None, steps: int | None = None,
            options: dict | None = None) -> tuple[str, int, dict]:
  """(name, steps, options): the call's values over config.sampler's defaults."""
  name = name or sampler_config['name']
  steps = int(steps if steps is not None else sampler_config['steps'])
  if steps <= 0:
    raise ConfigError(f'sampler steps must be a positive integer, got {steps}')
  return name, steps, options_from_config(name, sampler_config, **(options or {}))


def sample(name: str, field: Field, z, rng, steps: int, *, sigmas=None,
           return_trajectory: bool = False, **options):
  """Samples `field` with sampler `name` from the standard normal draw (or walkers) z."""
  check(name, field.kind, field.independent_noise, options)
  if field.kind == ENERGY:
    if return_trajectory:
      raise ConfigError(f'sampler {name!r} does not return a trajectory')
    h = float(options.pop('step_size', None) or field.step_size)
    if options:
      raise ConfigError(f'sampler {name!r}: unknown option(s) {", ".join(sorted(options))}; '
                        'allowed: step_size')
    if name == 'mala':
      x, _ = mala(field.fn, z, rng, h, steps)
    else:
      x, _ = ula(None, z, rng, h, steps, energy_fn=field.fn)
    return x
  if field.kind == VELOCITY and name in ODE_SOLVERS:
    if options:
      raise ConfigError(f'ODE solver {name!r} takes no options; got '
                        + ', '.join(sorted(options)))
    velocity = field.fn
    if name != 'dopri5':  # a guidance interval decided on the grid's step starts
      with jax.ensure_compile_time_eval():
        ts = np.asarray(time_grid(int(steps), 0.0, 1.0), np.float64)
      velocity = guidance.restrict(velocity, ts[:-1])
    return solve_ode(name, velocity, z, 0.0, 1.0, steps,
                     return_trajectory=return_trajectory)
  if return_trajectory:
    raise ConfigError(f'sampler {name!r} cannot return a trajectory; use one of '
                      + ', '.join(sorted(ODE_SAMPLERS)))
  if sigmas is None:
    if field.sigma_grid is None:
      raise ConfigError(f'sampler {name!r} needs a noise grid, and this {field.kind} field '
                        'has none')
    sigmas = field.sigma_grid(steps)
  sigmas = np.asarray(sigmas, np.float64)
  denoiser = field.fn
  if field.kind == VELOCITY:  # guidance carries over: D is affine in v at fixed (x, t)
    denoiser = guidance.convert(field.fn,
                                lambda v: frames.denoiser_from_velocity(v, field.path))
  # The steps start at every level but the last (annealed Langevin: at every level).
  starts = sigmas[sigmas > 0] if name == 'annealed_langevin' else sigmas[:-1]
  denoiser = guidance.restrict(denoiser, starts)
  x, _ = sample_sigmas(name, denoiser, float(sigmas[0]) * z, sigmas, rng, **options)
  if field.kind == VELOCITY and sigmas[-1] > 0.0:
    return field.path.from_ve(x, field.path.t_of_sigma(sigmas[-1]))
  return x
