"""ODE samplers by name.

  x1 = gensuite.samplers.solve_ode('heun', velocity_fn, x0, 0.0, 1.0, steps=20)
  gensuite.samplers.check_name(config.sampler.name)   # ConfigError if unknown
  cost = NFE_PER_STEP['heun'] * steps

`velocity_fn(x, t)` receives a scalar t (see `ode`); the caller broadcasts it to the
[B] vector a network wants. 'dopri5' is adaptive: it ignores `steps` and integrates to
rtol = atol = 1e-5.
"""
from typing import Callable

import jax

from gensuite.errors import ConfigError, lookup
from gensuite.samplers.langevin import annealed_langevin, mala, ula
from gensuite.samplers.ode import dopri5, euler, heun, rk4, time_grid
from gensuite.samplers.schedules import karras_sigmas

__all__ = ['ODE_SAMPLERS', 'NFE_PER_STEP', 'SAMPLERS', 'check_name', 'dopri5', 'euler',
           'heun', 'karras_sigmas', 'rk4', 'solve_ode', 'time_grid']

ODE_SAMPLERS = {'euler': euler, 'heun': heun, 'rk4': rk4}
NFE_PER_STEP = {'euler': 1, 'heun': 2, 'rk4': 4}
# Every name solve_ode accepts.
SAMPLERS = {**ODE_SAMPLERS, 'dopri5': dopri5}
# Langevin samplers (energy / score based; called directly, not through solve_ode).
LANGEVIN_SAMPLERS = {'ula': ula, 'mala': mala, 'annealed_langevin': annealed_langevin}
SAMPLERS.update(LANGEVIN_SAMPLERS)


def check_name(name: str) -> None:
  """Raises ConfigError unless solve_ode knows `name` (for config validation)."""
  lookup('sampler', name, SAMPLERS)


def solve_ode(name: str, velocity_fn: Callable, x: jax.Array, t0: float, t1: float,
              steps: int, return_trajectory: bool = False,
              grid: str = 'uniform') -> jax.Array:
  """Integrates dx/dt = velocity_fn(x, t) from t0 to t1 with the named sampler.

  Fixed-grid samplers take `steps` steps on `time_grid(steps, t0, t1, grid)`;
  return_trajectory stacks the steps + 1 states. 'dopri5' ignores steps and grid and
  returns only the final state (its nfe is dropped; call `dopri5` for it).
  """
  solver = lookup('sampler', name, SAMPLERS)
  if name == 'dopri5':
    if return_trajectory:
      raise ConfigError("sampler 'dopri5' cannot return a trajectory; use a fixed-grid "
                        f"sampler ({', '.join(sorted(ODE_SAMPLERS))})")
    x1, _ = solver(velocity_fn, x, t0, t1)
    return x1
  ts = time_grid(int(steps), t0, t1, kind=grid)
  return solver(velocity_fn, x, ts, return_trajectory=return_trajectory)
