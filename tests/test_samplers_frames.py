"""Frames: t <-> sigma inverses, velocity <-> denoiser conversions, flow matching
sampled with sigma samplers.

  pytest -q tests/test_samplers_frames.py

Facts used: for x1 ~ N(m, s^2) on flow matching's linear path (x0 ~ N(0, 1) at
t = 0), the exact velocity is v* = m + (t s^2 - (1 - t))/((1 - t)^2 + t^2 s^2)(x - t m)
and the exact VE-frame denoiser is D = m + s^2/(s^2 + sigma^2)(x - m); the VP
probability-flow drift is -beta(t)/2 (x + score) with score = (a D - x)/b^2; the VE
PF-ODE solution is x(sigma) = m + sqrt((s^2 + sigma^2)/(s^2 + sigma_0^2))(x(sigma_0) - m).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flow_matching import toy2d
from gensuite import data as data_lib
from gensuite import samplers
from gensuite.errors import ConfigError
from gensuite.methods import flow_matching as fm
from gensuite.samplers import frames

M, S = 1.5, 0.5


def fm_velocity(x, t):
  return M + (t * S**2 - (1 - t)) / ((1 - t)**2 + t**2 * S**2) * (x - t * M)


def gaussian_denoiser(x, sigma):
  return M + S**2 / (S**2 + sigma**2) * (x - M)


PATHS = {
    'vp': frames.vp(),
    've': frames.ve(0.01, 50.0),
    'edm': frames.edm(),
    'fm_linear': frames.fm_path('linear'),
    'fm_linear_smin': frames.fm_path('linear', sigma_min=0.1),
    'fm_cosine': frames.fm_path('cosine'),
    'fm_vp': frames.fm_path('vp'),
    'fm_linear_gamma': frames.fm_path('linear', gamma=lambda t: jnp.sqrt(0.5 * t * (1 - t))),
}


@pytest.mark.parametrize('name', sorted(PATHS))
def test_t_of_sigma_inverts_sigma(name):
  path = PATHS[name]
  with jax.enable_x64(True):
    t = jnp.linspace(0.05, 0.95, 7) * (20.0 if name == 'edm' else 1.0)
    sigma = path.sigma(t)
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    np.testing.assert_allclose(path.t_of_sigma(sigma), t, rtol=1e-9, atol=1e-12)
    x = jnp.linspace(-2.0, 2.0, 5)
    np.testing.assert_allclose(path.from_ve(path.to_ve(x, 0.3), 0.3), x, rtol=1e-12)


def _fm_closed_forms(kind, sigma_min, t):
  """(alpha, beta) of flow matching's paths, written out in float64 numpy."""
  if kind == 'linear':
    return 1.0 - (1.0 - sigma_min) * t, t
  if kind == 'cosine':
    return np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)
  s = 1.0 - t  # VP: a(s) = exp(-(s beta_min + s^2 (beta_max - beta_min)/2)/2)
  signal = np.exp(-0.5 * (s * 0.1 + 0.5 * s**2 * (20.0 - 0.1)))
  return np.sqrt(1.0 - signal**2), signal


def test_fm_paths_are_the_one_definition():
  """frames.FM_PATHS against the closed forms, the frame built on them, and the method
  reading the same functions. In float32 too: the VP path's alpha, computed as
  sqrt(-expm1(2 log a)), stays accurate up to t = 1, where sqrt(1 - a^2) cancels (8%
  off at t = 1 - 1e-6); the two agree to round-off on [0, 0.9]."""
  t32 = jnp.asarray(np.concatenate([np.linspace(0.0, 1.0, 11), [1 - 1e-4, 1 - 1e-6]]),
                    jnp.float32)
  t64 = np.asarray(t32, np.float64)
  for kind in ('linear', 'vp', 'cosine'):
    for sigma_min in (0.0, 0.1):
      alpha, beta = frames.FM_PATHS[kind](sigma_min)
      want = _fm_closed_forms(kind, sigma_min if kind == 'linear' else 0.0, t64)
      for got, ref in zip((alpha, beta), want):
        with jax.enable_x64(True):  # (1 - a^2 cancels in float64 too: ~1e-16 / alpha^2)
          np.testing.assert_allclose(got(jnp.asarray(t64)), ref, rtol=1e-8, atol=1e-15)
        np.testing.assert_allclose(got(t32), ref, rtol=2e-6, atol=1e-7)
      path = frames.fm_path(kind, sigma_min)
      np.testing.assert_allclose(path.a(t32), beta(t32), rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(path.b(t32), alpha(t32), rtol=1e-6, atol=1e-7)
      config = toy2d.get_config('8gaussians,smoke')
      config.method.update(path=kind, sigma_min=sigma_min)
      method = fm.FlowMatching(config, data_lib.DataSpec('toy', 'toy', (2,)))
      np.testing.assert_array_equal(method.alpha(t32), alpha(t32))
      np.testing.assert_array_equal(method.beta(t32), beta(t32))
  # Closed forms named in the module docstring.
  np.testing.assert_allclose(frames.fm_path('linear').t_of_sigma(3.0), 0.25)
  np.testing.assert_allclose(frames.fm_path('cosine').t_of_sigma(1.0), 0.5)
  assert float(frames.fm_path('linear').t_of_sigma(0.0)) == 1.0
  with pytest.raises(ConfigError, match='allowed: cosine, linear, vp'):
    frames.fm_path('sigmoid')


def test_denoiser_from_exact_fm_velocity_is_the_wiener_filter():
  with jax.enable_x64(True):
    denoiser = frames.denoiser_from_velocity(fm_velocity, frames.fm_path('linear'))
    x = jnp.linspace(-4.0, 4.0, 9)
    for sigma in (0.05, 0.7, 3.0, 40.0):
      np.testing.assert_allclose(denoiser(x, sigma), gaussian_denoiser(x, sigma),
                                 rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('name', ['vp', 've', 'fm_cosine', 'fm_vp', 'fm_linear_gamma'])
def test_velocity_denoiser_round_trip(name):
  path = PATHS[name]
  with jax.enable_x64(True):
    velocity = frames.velocity_from_denoiser(gaussian_denoiser, path)
    back = frames.denoiser_from_velocity(velocity, path)
    x = jnp.linspace(-3.0, 3.0, 7)
    for t in (0.2, 0.5, 0.8):
      sigma = path.sigma(t)
      np.testing.assert_allclose(back(x, sigma), gaussian_denoiser(x, sigma), rtol=1e-8,
                                 atol=1e-8)


def test_vp_velocity_is_the_probability_flow_drift():
  path = frames.vp()
  with jax.enable_x64(True):
    velocity = frames.velocity_from_denoiser(gaussian_denoiser, path)
    x = jnp.linspace(-3.0, 3.0, 7)
    for t in (0.1, 0.5, 0.9):
      a, b = path.a(t), path.b(t)
      beta = 0.1 + t * (20.0 - 0.1)
      score = (a * gaussian_denoiser(x / a, b / a) - x) / b**2
      np.testing.assert_allclose(velocity(x, t), -0.5 * beta * (x + score), rtol=1e-10)


def test_heun_on_converted_fm_velocity_follows_the_exact_flow():
  with jax.enable_x64(True):
    denoiser = frames.denoiser_from_velocity(fm_velocity, frames.fm_path('linear'))
    sigmas = samplers.karras_sigmas(64, 0.002, 80.0)
    x = sigmas[0] * jnp.linspace(-2.0, 2.0, 9)
    out, info = samplers.sample_sigmas('heun', denoiser, x, sigmas)
    direct, _ = samplers.sample_sigmas('heun', gaussian_denoiser, x, sigmas)
    np.testing.assert_allclose(out, direct, rtol=1e-9, atol=1e-9)
    # Heun's own error at N = 64 from sigma = 80 is ~2e-3 (ALGORITHMS.md §1 check 2).
    exact = M + math.sqrt(S**2 / (S**2 + 80.0**2)) * (x - M)
    np.testing.assert_allclose(out, exact, atol=5e-3)
    assert info['nfe'] == 127


def _method():
  config = toy2d.get_config('8gaussians,smoke')
  spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
  method = fm.FlowMatching(config, spec)
  # Swap the network for the exact velocity of N(M, S^2) data (per coordinate).
  method.velocity_fn = lambda params, label=None, cfg_scale=1.0: fm_velocity
  return method, method.init(jax.random.key(0), {'x': jnp.zeros((8, 2))})


@pytest.mark.parametrize('sampler', ['ddim', 'dpm_solver_2m', 'dpm_solver_3m', 'rk4'])
def test_flow_matching_sample_with_sigma_samplers(sampler):
  """FlowMatching.sample with a sigma sampler = that sampler on the exact VE denoiser,
  started at sigma_0 z with the z that sample draws; rk4 stays on solve_ode in t."""
  method, state = _method()
  rng = jax.random.key(1)
  z = jax.random.normal(jax.random.split(rng, 3)[0], (256, 2))
  out = method.sample(state, rng, 256, sampler=sampler, steps=40)
  if sampler == 'rk4':  # an ODE solver: integrates the velocity in t from x0 = z
    np.testing.assert_allclose(out, M + S * z, atol=1e-4)
    return
  sigmas = method.sigma_grid(40)
  direct, _ = samplers.sample_sigmas(sampler, gaussian_denoiser, sigmas[0] * z, sigmas)
  np.testing.assert_allclose(out, direct, atol=2e-4)
  if sampler != 'ddim':  # the higher-order ones also land on the exact flow's image of
    # x_ve = 80 z (80 z instead of 80 z + data at the start moves it by ~M S / 80).
    exact = M + S * 80.0 / math.sqrt(S**2 + 80.0**2) * (z - M / 80.0)
    np.testing.assert_allclose(out, exact, atol=0.03)


@pytest.mark.parametrize('sampler,options', [('euler_maruyama', {}),
                                             ('edm_stochastic', {'s_churn': 20.0}),
                                             ('pc', {'snr': 0.05})])
def test_flow_matching_sample_with_sde_samplers(sampler, options):
  method, state = _method()
  out = method.sample(state, jax.random.key(2), 4000, sampler=sampler, steps=200, **options)
  se_mean, se_var = S / math.sqrt(8000), S**2 * math.sqrt(2.0 / 8000)
  assert abs(float(jnp.mean(out)) - M) < 4 * se_mean
  assert abs(float(jnp.var(out)) - S**2) < 4 * se_var + 0.01   # + first-order bias


def _gaussian_interpolant_velocity(alpha, beta):
  """Exact velocity for x0 ~ N(0, 1), x1 ~ N(M, S^2) on x_t = alpha x0 + beta x1."""
  def velocity(x, t):
    a, da = jax.jvp(alpha, (t,), (jnp.ones_like(t),))
    b, db = jax.jvp(beta, (t,), (jnp.ones_like(t),))
    var = b**2 * S**2 + a**2
    x0_mean = a / var * (x - b * M)
    x1_mean = M + b * S**2 / var * (x - b * M)
    return da * x0_mean + db * x1_mean
  return velocity


@pytest.mark.parametrize('path,sigma_min', [('linear', 0.1), ('cosine', 0.0), ('vp', 0.0)])
def test_flow_matching_paths_sampled_in_sigma(path, sigma_min):
  """On every path the sigma sampler lands on the exact VE flow from x_ve = 80 z to the
  path's sigma at t = 1, mapped back to x_t: M + sqrt((S^2 + s_end^2)/(S^2 + 80^2))
  (80 z - M), with s_end = sigma_min for the linear path, else 0."""
  config = toy2d.get_config('8gaussians,smoke')
  config.method.update(path=path, sigma_min=sigma_min)
  spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
  method = fm.FlowMatching(config, spec)
  velocity = _gaussian_interpolant_velocity(*frames.FM_PATHS[path](sigma_min))
  method.velocity_fn = lambda params, label=None, cfg_scale=1.0: velocity
  state = method.init(jax.random.key(0), {'x': jnp.zeros((8, 2))})
  rng = jax.random.key(1)
  z = jax.random.normal(jax.random.split(rng, 3)[0], (256, 2))
  out = method.sample(state, rng, 256, sampler='dpm_solver_3m', steps=60)
  s_end = sigma_min if path == 'linear' else 0.0
  exact = M + math.sqrt((S**2 + s_end**2) / (S**2 + 80.0**2)) * (80.0 * z - M)
  np.testing.assert_allclose(out, exact, atol=0.02)


def test_flow_matching_rejects_energy_samplers():
  method, state = _method()
  with pytest.raises(ConfigError, match='allowed: annealed_langevin, ddim'):
    method.sample(state, jax.random.key(0), 4, sampler='mala')
