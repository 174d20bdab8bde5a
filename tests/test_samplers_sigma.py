"""Sigma-space samplers (VE frame): orders, equalities, NFE, SDE moments, names.

  pytest -q tests/test_samplers_sigma.py

Reference facts:
- Orders: on a 1-D Gaussian-mixture target with its exact denoiser (closed form, float64
  here), each ODE sampler's endpoint error against a tight dopri5 solution of
  dx/dsigma = (x - D)/sigma falls by ~2^order per doubling of the steps.
- DDIM with eta = 0 is Euler in sigma, and DPM-Solver++ of order 1 (ALGORITHMS.md §3
  check 2); edm_stochastic with S_churn = 0 is heun.
- Reverse SDE samplers on N(mu, s^2) data with the exact denoiser
  D = mu + s^2/(s^2 + sigma^2)(x - mu) return samples with mean mu and variance s^2,
  up to Monte Carlo error (4 standard errors) and a first-order discretization bias
  (measured: -0.0026 for ddim eta=1, +0.0045 for euler_maruyama at 800 steps, halving
  per doubling) kept below it by the step counts; PC's Langevin corrector instead
  has the closed-form stationary variance s^2 (1 + snr^2) (see SDE_CASES).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensuite import samplers
from gensuite.data import toy
from gensuite.errors import ConfigError
from gensuite.samplers import ode, pf_ode

MEANS = np.array([-2.0, 0.5, 3.0])
STDS = np.array([0.3, 0.6, 0.4])
WEIGHTS = np.array([0.3, 0.5, 0.2])
GMM = toy.get('gaussian_mixture', means=MEANS[:, None], stds=STDS, weights=WEIGHTS)


def gmm_denoiser(x, sigma):
  """E[x_data | x] for the 1-D mixture above on points x [...] (the library's closed
  form, GaussianMixture.noisy_denoiser); in the dtype of x (float64 here)."""
  return GMM.noisy_denoiser(x[..., None], sigma)[..., 0]


def _reference(x, sigma_start, sigma_end):
  velocity = lambda x, s: (x - gmm_denoiser(x, s)) / s
  out, _ = ode.dopri5(velocity, x, sigma_start, sigma_end, rtol=1e-12, atol=1e-12,
                      max_steps=100000)
  return out


ORDER_CASES = {  # name: (minimum error ratio per doubling, nominal order)
    'euler': (1.8, 1),
    'ddim': (1.8, 1),
    'heun': (3.5, 2),
    'dpm_solver_2m': (3.3, 2),
    'dpm_solver_3m': (6.0, 3),
    'rk4': (12.0, 4),
}


@pytest.mark.parametrize('name', sorted(ORDER_CASES))
def test_order_on_gmm(name):
  with jax.enable_x64(True):
    x = jnp.linspace(-3.0, 3.0, 9) * 10.0
    ref = _reference(x, 10.0, 0.05)
    errs = []
    for n in (8, 16, 32, 64):
      sigmas = samplers.karras_sigmas(n + 1, 0.05, 10.0, append_zero=False)
      if name.startswith('dpm_solver'):
        # Multistep start-up steps run at lower order; one order-1 step adds an O(h^2)
        # global error that would mask order 3. Two tiny start-up steps make it vanish.
        sigmas = np.concatenate([[10.0, 10.0 - 1e-6, 10.0 - 2e-6], sigmas[1:]])
      out, info = samplers.sample_sigmas(name, gmm_denoiser, x, sigmas)
      assert out.dtype == jnp.float64
      errs.append(float(jnp.max(jnp.abs(out - ref))))
  ratios = np.array(errs[:-1]) / np.array(errs[1:])
  minimum, order = ORDER_CASES[name]
  # The ratios alone pass for garbage too (a float32 denoiser under the tiny DPM
  # start-up steps: errors ~1e3 that still fall ~8x); at N = 64 every error is < 0.03.
  assert errs[-1] < 0.05, (name, errs)
  assert ratios[-1] > minimum, (name, errs, ratios)
  assert ratios[-1] < 2.0**order * 1.6, (name, errs, ratios)  # not a higher order


def test_ddim_eta0_equals_euler_and_dpm1():
  g = toy.eight_gaussians()
  sigmas = samplers.karras_sigmas(12)
  x = sigmas[0] * jax.random.normal(jax.random.key(0), (64, 2))
  a, _ = samplers.sample_sigmas('ddim', g.noisy_denoiser, x, sigmas, jax.random.key(1))
  b, _ = samplers.sample_sigmas('euler', g.noisy_denoiser, x, sigmas)
  c, _ = pf_ode.dpm_solver_multistep(g.noisy_denoiser, x, sigmas, order=1)
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(a, c, atol=1e-5, rtol=1e-5)


def test_edm_stochastic_without_churn_is_heun():
  g = toy.eight_gaussians()
  sigmas = samplers.karras_sigmas(10)
  x = sigmas[0] * jax.random.normal(jax.random.key(0), (64, 2))
  a, ia = samplers.sample_sigmas('edm_stochastic', g.noisy_denoiser, x, sigmas,
                                 jax.random.key(3), s_churn=0.0, s_noise=1.003)
  b, ib = samplers.sample_sigmas('heun', g.noisy_denoiser, x, sigmas)
  np.testing.assert_array_equal(a, b)
  assert ia['nfe'] == ib['nfe'] == 19
  c, _ = samplers.sample_sigmas('edm_stochastic', g.noisy_denoiser, x, sigmas,
                                jax.random.key(3), s_churn=10.0)
  assert float(jnp.max(jnp.abs(c - b))) > 1e-2  # churn does change the path


class _Counter:
  """Counts denoiser evaluations at run time (jax.debug.callback fires in scans)."""

  def __init__(self, fn):
    self.fn, self.calls = fn, 0

  def _bump(self):
    self.calls += 1

  def __call__(self, x, sigma):
    jax.debug.callback(self._bump)
    return self.fn(x, sigma)


NFE = {  # name: (options, nfe for N = 6 steps ending at 0)
    'euler': ({}, 6), 'heun': ({}, 11), 'rk4': ({}, 21), 'ddim': ({'eta': 0.5}, 6),
    'dpm_solver_2m': ({}, 6), 'dpm_solver_3m': ({}, 6), 'euler_maruyama': ({}, 6),
    'pc': ({'corrector_steps': 2}, 18), 'edm_stochastic': ({'s_churn': 5.0}, 11),
    'annealed_langevin': ({'steps_per_sigma': 3}, 18),
}


@pytest.mark.parametrize('name', sorted(NFE))
def test_nfe(name):
  options, expected = NFE[name]
  counter = _Counter(gmm_denoiser)
  sigmas = samplers.karras_sigmas(6, 0.01, 10.0)
  run = jax.jit(lambda x: samplers.sample_sigmas(name, counter, x, sigmas,
                                                 jax.random.key(0), **options))
  out, info = run(jnp.linspace(-10.0, 10.0, 5))
  jax.block_until_ready(out)
  jax.effects_barrier()
  assert counter.calls == expected == int(info['nfe'])
  assert bool(jnp.all(jnp.isfinite(out)))


MU, S = 1.5, 0.5
SDE_CASES = {  # name: (options, steps, expected variance)
    'euler_maruyama': ({}, 1600, S**2),
    'ddim': ({'eta': 1.0}, 1600, S**2),
    'edm_stochastic': ({'s_churn': 40.0, 's_min': 0.05, 's_max': 50.0}, 800, S**2),
    # The Langevin corrector's step e = 2 (r E|z| / E|s|)^2 uses batch norms; on
    # N(mu, v) with current variance v' it is e = 2 r^2 v^2 / v', and ULA's stationary
    # variance v / (1 - e / (2 v)) then solves to v' = v (1 + r^2): with r = 0.3 and
    # 10 corrections per level the corrector, not the predictor, sets the variance.
    'pc': ({'snr': 0.3, 'corrector_steps': 10}, 200, S**2 * (1 + 0.3**2)),
}


@pytest.mark.parametrize('name', sorted(SDE_CASES))
def test_sde_moments_gaussian(name):
  options, steps, expected_var = SDE_CASES[name]
  n = 20000
  denoiser = lambda x, sigma: MU + S**2 / (S**2 + sigma**2) * (x - MU)
  sigmas = samplers.karras_sigmas(steps, 0.002, 80.0)
  # Start from the exact marginal N(mu, s^2 + sigma_0^2) so only the sampler is tested.
  x = MU + np.sqrt(S**2 + sigmas[0]**2) * jax.random.normal(jax.random.key(0), (n,))
  out, _ = jax.jit(lambda x: samplers.sample_sigmas(name, denoiser, x, sigmas,
                                                    jax.random.key(1), **options))(x)
  mean, var = float(jnp.mean(out)), float(jnp.var(out))
  se_mean = np.sqrt(expected_var / n)
  se_var = expected_var * np.sqrt(2.0 / (n - 1))
  assert abs(mean - MU) < 4 * se_mean, (name, mean)
  assert abs(var - expected_var) < 4 * se_var, (name, var, expected_var)


def test_sample_sigmas_errors():
  sigmas = samplers.karras_sigmas(4)
  with pytest.raises(ConfigError, match='allowed: .*dpm_solver_2m'):
    samplers.sample_sigmas('dpm2m', gmm_denoiser, jnp.zeros(3), sigmas)
  with pytest.raises(ConfigError, match='langevin'):
    samplers.sample_sigmas('mala', gmm_denoiser, jnp.zeros(3), sigmas)
  with pytest.raises(ConfigError, match='decreasing'):
    samplers.sample_sigmas('euler', gmm_denoiser, jnp.zeros(3), sigmas[::-1])
  with pytest.raises(ConfigError, match='needs an rng'):
    samplers.sample_sigmas('pc', gmm_denoiser, jnp.zeros(3), sigmas)
  with pytest.raises(ConfigError, match="'heun'.*unexpected keyword"):
    samplers.sample_sigmas('heun', gmm_denoiser, jnp.zeros(3), sigmas, eta=1.0)
  for name in ('euler', 'heun', 'rk4', 'ddim', 'dpm_solver_2m', 'dpm_solver_3m',
               'euler_maruyama', 'pc', 'edm_stochastic', 'ula', 'mala',
               'annealed_langevin'):
    samplers.check_name(name)
  with pytest.raises(ConfigError, match='allowed: annealed_langevin, ddim'):
    samplers.check_name('ddpm')


def test_grids():
  from gensuite.samplers import frames
  with jax.enable_x64(True):
    vp = samplers.vp_sigmas(10, t_eps=1e-3)
    t = np.linspace(1.0, 1e-3, 10)
    np.testing.assert_allclose(vp[:-1], frames.vp().sigma(jnp.asarray(t)), rtol=1e-10)
    ve = samplers.ve_sigmas(10, 0.01, 50.0)
    t = np.linspace(1.0, 0.0, 10)
    np.testing.assert_allclose(ve[:-1], frames.ve(0.01, 50.0).sigma(jnp.asarray(t)),
                               rtol=1e-10)
  assert vp[-1] == ve[-1] == 0.0 and np.all(np.diff(vp) < 0) and np.all(np.diff(ve) < 0)
  with pytest.raises(ConfigError, match='allowed: karras, ve, vp'):
    samplers.sigma_grid('cosine', 4)
