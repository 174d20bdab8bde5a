"""ODE samplers: convergence orders on closed-form flows, NFE counts, dopri5, names.

  pytest -q tests/test_samplers_ode.py

Reference flows (ALGORITHMS.md §2 check 1 and §1 check 2):
- Flow matching, x0 ~ N(0,1) to x1 ~ N(m, s^2) on the linear path. The exact flow
  map is x(t) = t m + sig(t) x(0) with sig(t)^2 = (1-t)^2 + t^2 s^2: differentiating,
  dx/dt = m + sig'/sig (x - t m), and sig'/sig = (t s^2 - (1-t)) / sig^2, which is
  the exact velocity v*. So x(1) = m + s x(0).
- EDM PF-ODE in sigma for N(0, s^2) data: dx/dsigma = (x - D)/sigma = x sigma/(s^2 +
  sigma^2), solved by x(sigma) = sqrt((s^2 + sigma^2)/(s^2 + sigma_0^2)) x(sigma_0).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensuite import samplers
from gensuite.errors import ConfigError
from gensuite.samplers import ode

# m = 3, s = 2 keeps every solver in its asymptotic regime from N = 8 on (for small s
# the velocity's time scale shrinks and low-N Heun ratios dip below 4).
M, S = 3.0, 2.0


def fm_velocity(x, t):
  return M + (t * S**2 - (1 - t)) / ((1 - t)**2 + t**2 * S**2) * (x - t * M)


def fm_exact(x0):
  return M + S * x0


def _orders(name):
  with jax.enable_x64(True):  # rk4's error at N = 64 (~1e-8) is below float32 round-off
    x0 = jnp.linspace(-2.0, 2.0, 7)
    errs = [float(jnp.max(jnp.abs(samplers.solve_ode(name, fm_velocity, x0, 0.0, 1.0, n)
                                  - fm_exact(x0))))
            for n in (8, 16, 32, 64)]
  errs = np.array(errs)
  return errs, errs[:-1] / errs[1:]


@pytest.mark.parametrize('name,min_ratio,max_ratio', [
    ('euler', 1.8, 2.3), ('heun', 3.5, 4.8), ('rk4', 12.0, 30.0)])
def test_order_of_convergence(name, min_ratio, max_ratio):
  errs, ratios = _orders(name)
  print(f'{name}: errors {errs}, ratios per doubling {ratios}')
  assert np.all(ratios > min_ratio), (errs, ratios)
  # An upper bound too: a ratio far above 2^order means the "error" is something else.
  assert np.all(ratios < max_ratio), (errs, ratios)


def test_backward_grid_and_trajectory():
  x0 = jnp.linspace(-2.0, 2.0, 5)
  ts = ode.time_grid(32, 1.0, 0.0)  # data -> noise: the inverse flow map
  traj = ode.rk4(fm_velocity, fm_exact(x0), ts, return_trajectory=True)
  assert traj.shape == (33, 5)
  np.testing.assert_allclose(traj[0], fm_exact(x0), rtol=0, atol=0)
  np.testing.assert_allclose(traj[-1], x0, atol=1e-4)
  for name in ('euler', 'heun'):
    traj = samplers.solve_ode(name, fm_velocity, x0, 0.0, 1.0, 4, return_trajectory=True)
    assert traj.shape == (5, 5)
    np.testing.assert_allclose(traj[-1], samplers.solve_ode(name, fm_velocity, x0, 0.0,
                                                            1.0, 4), rtol=1e-6)


@pytest.mark.parametrize('kind', ode.GRID_KINDS)
def test_time_grid(kind):
  ts = np.asarray(ode.time_grid(10, 0.0, 1.0, kind))
  assert ts.shape == (11,) and ts[0] == 0.0 and ts[-1] == 1.0
  dt = np.diff(ts)
  assert np.all(dt > 0)
  if kind != 'uniform':  # clustered toward t1
    assert dt[-1] < dt[0]
  with pytest.raises(ConfigError):
    ode.time_grid(4, kind='nope')


def test_edm_heun_order():
  """§1 check 2: Heun on the rho = 7 grid falls ~4.5x per doubling, Euler ~2x."""
  s, sigma0 = 0.5, 80.0

  def velocity(x, sigma):
    return x * sigma / (s**2 + sigma**2)

  exact = np.sqrt(s**2 / (s**2 + sigma0**2)) * sigma0
  x = jnp.full((1,), sigma0)
  ns = (16, 32, 64)
  heun_err = np.array([abs(float(ode.heun(velocity, x, samplers.karras_sigmas(n),
                                          final_euler=True)[0]) - exact) for n in ns])
  euler_err = np.array([abs(float(ode.euler(velocity, x, samplers.karras_sigmas(n))[0])
                            - exact) for n in ns])
  print('EDM heun errors', heun_err, 'euler errors', euler_err)
  np.testing.assert_allclose(heun_err, [0.036, 0.0078, 0.0018], rtol=0.05)
  assert np.all(heun_err[:-1] / heun_err[1:] > 3.5)
  ratios = euler_err[:-1] / euler_err[1:]
  assert np.all((ratios > 1.8) & (ratios < 2.2))


def test_karras_sigmas():
  sig = samplers.karras_sigmas(18)
  assert sig.shape == (19,) and sig.dtype == np.float64
  np.testing.assert_allclose([sig[0], sig[-2], sig[-1]], [80.0, 0.002, 0.0])
  assert np.all(np.diff(sig) < 0)


class _Counter:
  """Counts velocity evaluations as they run, not as they are traced.

  A Python side effect would fire once per trace (so once for a whole scan body);
  jax.debug.callback fires on every execution, inside scan and while_loop as well.
  """

  def __init__(self, fn):
    self.fn, self.calls = fn, 0

  def _bump(self):
    self.calls += 1

  def __call__(self, x, t):
    jax.debug.callback(self._bump)
    return self.fn(x, t)


@pytest.mark.parametrize('name', ['euler', 'heun', 'rk4'])
def test_nfe_per_step(name):
  steps = 7
  counter = _Counter(fm_velocity)
  out = jax.jit(lambda x: samplers.solve_ode(name, counter, x, 0.0, 1.0, steps))(
      jnp.zeros(3))
  jax.block_until_ready(out)
  jax.effects_barrier()
  assert counter.calls == samplers.NFE_PER_STEP[name] * steps


def test_nfe_edm_heun_final_euler():
  """EDM Heun with N = 18 costs 35 NFE (ALGORITHMS.md §3 check 4)."""
  counter = _Counter(lambda x, sigma: x * sigma / (0.25 + sigma**2))
  out = ode.heun(counter, jnp.full((2,), 80.0), samplers.karras_sigmas(18),
                 final_euler=True)
  jax.block_until_ready(out)
  jax.effects_barrier()
  assert counter.calls == 35
  traj = ode.heun(lambda x, t: -x, jnp.ones(2), ode.time_grid(5), final_euler=True,
                  return_trajectory=True)
  assert traj.shape == (6, 2)


def test_dopri5_accuracy_and_nfe():
  with jax.enable_x64(True):
    x0 = jnp.linspace(-2.0, 2.0, 7)
    counter = _Counter(fm_velocity)
    x1, nfe = jax.jit(lambda x: ode.dopri5(counter, x, 0.0, 1.0, rtol=1e-6, atol=1e-6))(x0)
    jax.effects_barrier()
    err = float(jnp.max(jnp.abs(x1 - fm_exact(x0))))
    print(f'dopri5 rtol=atol=1e-6: error {err:.2e}, nfe {int(nfe)}')
    assert err < 1e-5
    assert int(nfe) == counter.calls and 8 <= int(nfe) < 200
    # Default tolerances, backwards in time (data -> noise).
    xb, nfe_b = ode.dopri5(fm_velocity, fm_exact(x0), 1.0, 0.0)
    assert float(jnp.max(jnp.abs(xb - x0))) < 1e-4 and int(nfe_b) > 8
  x0 = jnp.linspace(-2.0, 2.0, 7)
  x1 = samplers.solve_ode('dopri5', fm_velocity, x0, 0.0, 1.0, 1)
  assert x1.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(x1 - fm_exact(x0)))) < 1e-4


def test_unknown_sampler_name():
  with pytest.raises(ConfigError, match='euler'):
    samplers.solve_ode('eulr', fm_velocity, jnp.zeros(2), 0.0, 1.0, 4)
  with pytest.raises(ConfigError, match='dopri5'):
    samplers.check_name('rk45')
  samplers.check_name('dopri5')
  assert set(samplers.ODE_SAMPLERS) == set(samplers.NFE_PER_STEP)
