"""PF-ODE likelihood and bits/dim against closed forms.

  pytest -q tests/test_likelihood.py

Facts (ALGORITHMS.md §1 check 4, §1.3):
- Gaussian data N(mu, s^2 I) with its exact denoiser and the exact marginal
  N(mu, (s^2 + sigma_max^2) I) as prior: the ODE log-likelihood equals
  log N(x; mu, (s^2 + sigma_min^2) I). Likewise for a Gaussian mixture, whose noisy
  log-density is known at every sigma, and for flow matching's exact linear-path
  velocity with prior N(0, I): log N(x; m, s^2).
- Hutchinson's estimate of div F is unbiased, with variance sum_{i != j}(A_ij^2 +
  A_ij A_ji) for Rademacher probes and ||A||_F^2 + tr(A^2) for Gaussian ones, for
  F(x) = A x; its NLL agrees with the exact-trace NLL within its standard error.
- A model uniform on the dequantized support scores exactly 8 bits/dim.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensuite.data import toy
from gensuite.errors import ConfigError
from gensuite.metrics import likelihood

MU = jnp.array([0.7, -1.2])
S = 0.6


def gaussian_denoiser(x, sigma):
  return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def _points(n=6, seed=0):
  return MU + S * jax.random.normal(jax.random.key(seed), (n, 2)) * 1.5


@pytest.mark.parametrize('solver', ['dopri5', 'rk4'])
def test_gaussian_nll_exact_trace(solver):
  x = _points()
  sigma_min, sigma_max = 0.01, 20.0
  prior = lambda z: likelihood.gaussian_log_prob(z, MU, math.sqrt(S**2 + sigma_max**2))
  out = likelihood.nll_from_denoiser(gaussian_denoiser, x, sigma_min=sigma_min,
                                     sigma_max=sigma_max, solver=solver, steps=200,
                                     prior_log_prob=prior)
  true = -likelihood.gaussian_log_prob(x, MU, math.sqrt(S**2 + sigma_min**2))
  np.testing.assert_allclose(out['nll'], true, atol=2e-3)
  assert out['nll'].shape == (6,) and float(out['nll_se']) > 0
  # The default prior N(0, sigma_max^2 I) changes only the prior term at the latent.
  default = likelihood.nll_from_denoiser(gaussian_denoiser, x, sigma_min=sigma_min,
                                         sigma_max=sigma_max, solver=solver, steps=200)
  z = out['latent']
  np.testing.assert_allclose(default['latent'], z, rtol=1e-6)
  shift = prior(z) - likelihood.gaussian_log_prob(z, 0.0, sigma_max)
  np.testing.assert_allclose(default['nll'] - out['nll'], shift, atol=1e-4)


def test_gmm_nll_matches_noisy_log_prob():
  g = toy.GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.5]], [0.3, 0.5, 0.4],
                          [0.2, 0.5, 0.3])
  x = g.sample(jax.random.key(0), 8)
  sigma_min, sigma_max = 0.01, 10.0
  out = likelihood.nll_from_denoiser(g.noisy_denoiser, x, sigma_min=sigma_min,
                                     sigma_max=sigma_max, rtol=1e-6, atol=1e-6,
                                     prior_log_prob=lambda z: g.noisy_log_prob(z, sigma_max))
  np.testing.assert_allclose(out['nll'], -g.noisy_log_prob(x, sigma_min), atol=5e-3)


def test_hutchinson_agrees_with_exact_within_standard_error():
  g = toy.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [[0.3, 0.6], [0.5, 0.2]])
  x = g.sample(jax.random.key(0), 8)
  kw = dict(sigma_min=0.02, sigma_max=10.0, solver='rk4', steps=60)
  exact = likelihood.nll_from_denoiser(g.noisy_denoiser, x, **kw)
  for probe in ('rademacher', 'gaussian'):
    est = likelihood.nll_from_denoiser(g.noisy_denoiser, x, jax.random.key(1),
                                       divergence='hutchinson', probe=probe,
                                       num_probes=16, **kw)
    diff = est['nll'] - exact['nll']
    assert float(jnp.max(est['probe_se'])) > 1e-3          # the estimator is noisy here
    assert np.all(np.abs(diff) < 4 * est['probe_se'] + 1e-4), (probe, diff, est['probe_se'])
    # The batch mean within the standard error of the mean difference.
    se = float(jnp.sqrt(jnp.sum(est['probe_se']**2))) / 8
    assert abs(float(jnp.mean(diff))) < 4 * se


def test_hutchinson_mean_and_variance_for_linear_field():
  a = jnp.array([[1.0, 2.0, 0.0], [-0.5, 0.3, 1.5], [0.7, 0.0, -2.0]])
  fn = lambda x: x @ a.T
  x = jnp.zeros((1, 3))
  n = 200_000
  np.testing.assert_allclose(likelihood.exact_divergence(fn, x), [jnp.trace(a)], rtol=1e-6)
  expected_var = {
      'rademacher': float(jnp.sum(a**2 + a * a.T) - jnp.sum(2 * jnp.diag(a)**2)),
      'gaussian': float(jnp.sum(a**2) + jnp.trace(a @ a)),
  }
  for probe, var in expected_var.items():
    eps = likelihood.probes(jax.random.key(2), x.shape, n, probe)
    _, est = likelihood.hutchinson_divergence(fn, x, eps)
    est = est[:, 0]
    assert abs(float(jnp.mean(est)) - float(jnp.trace(a))) < 4 * math.sqrt(var / n)
    np.testing.assert_allclose(float(jnp.var(est)), var, rtol=0.03)


def test_flow_matching_velocity_nll():
  m, s = 1.5, 0.5
  velocity = lambda x, t: m + (t * s**2 - (1 - t)) / ((1 - t)**2 + t**2 * s**2) * (x - t * m)
  x = m + s * jax.random.normal(jax.random.key(3), (5, 2))
  out = likelihood.nll_from_velocity(velocity, x)
  np.testing.assert_allclose(out['nll'], -likelihood.gaussian_log_prob(x, m, s), atol=2e-3)
  hutch = likelihood.nll_from_velocity(velocity, x, jax.random.key(4),
                                       divergence='hutchinson', num_probes=2)
  # The exact velocity's Jacobian is a multiple of I: Rademacher probes are exact.
  np.testing.assert_allclose(hutch['nll'], out['nll'], atol=1e-4)


@pytest.mark.parametrize('convention', ['score_sde', 'ddpm'])
def test_bits_per_dim_uniform_is_eight(convention):
  pixels = jnp.arange(256, dtype=jnp.int32).reshape(4, 64)
  x, width = likelihood.dequantize(pixels, jax.random.key(0), convention)
  assert float(jnp.min(x)) >= -1.0 and float(jnp.max(x)) < -1.0 + 256 * width
  # Uniform density on the support of volume (256 width)^d.
  d = 64
  nll = d * math.log(256 * width)
  np.testing.assert_allclose(likelihood.bits_per_dim(nll, d, width), 8.0, rtol=1e-6)
  offset = 7.0 if convention == 'score_sde' else math.log2(127.5)
  np.testing.assert_allclose(likelihood.bits_per_dim(0.0, d, width), offset, rtol=1e-6)


def test_bad_options():
  x = jnp.zeros((2, 2))
  with pytest.raises(ConfigError, match='allowed: exact, hutchinson'):
    likelihood.nll_from_denoiser(gaussian_denoiser, x, divergence='skilling')
  with pytest.raises(ConfigError, match='needs an rng'):
    likelihood.nll_from_denoiser(gaussian_denoiser, x, divergence='hutchinson')
  with pytest.raises(ConfigError, match='allowed: rk4, dopri5'):
    likelihood.nll_from_denoiser(gaussian_denoiser, x, solver='euler')
  with pytest.raises(ConfigError, match='allowed: ddpm, score_sde'):
    likelihood.dequantize(x, jax.random.key(0), 'uniform')
