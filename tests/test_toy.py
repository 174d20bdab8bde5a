"""Toy distributions: exact densities, scores and moments; deterministic sampling."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensuite.data import toy
from gensuite.errors import ConfigError

KEY = jax.random.PRNGKey(0)
KEY1 = jax.random.PRNGKey(1)
KEYS8 = jax.random.split(KEY, 8)

GMM5 = dict(means=[[0.0, 1.0, -1.0, 2.0, 0.5], [2.0, -1.0, 0.0, 0.0, 1.0],
                   [-2.0, 0.0, 1.0, -1.0, 0.0]],
            stds=[[0.5, 1.0, 0.8, 0.3, 1.2], [1.0, 1.0, 1.0, 1.0, 1.0],
                  [0.7, 0.4, 0.9, 1.1, 0.6]],
            weights=[0.5, 0.3, 0.2])


def _build(name):
  if name == 'gaussian_mixture':
    return toy.get(name, **GMM5)
  return toy.get(name)


def test_names_are_registered():
  assert set(toy.NAMES) == {'gaussian_mixture', '8gaussians', 'grid', 'moons',
                            'checkerboard', 'rings', 'swissroll'}
  assert isinstance(toy.get('8gaussians'), toy.GaussianMixture)
  assert isinstance(toy.get('grid'), toy.GaussianMixture)
  assert toy.get('grid').num_components == 25


@pytest.mark.parametrize('name', toy.NAMES)
def test_sampling_is_deterministic_with_the_right_shape(name):
  dist = _build(name)
  x = np.asarray(dist.sample(KEY, 64))
  assert x.shape == (64, dist.dim) and x.dtype == np.float32 and np.all(np.isfinite(x))
  np.testing.assert_array_equal(x, dist.sample(KEY, 64))
  assert not np.array_equal(x, dist.sample(KEY1, 64))
  # The training loop draws one example per key.
  one_each = np.asarray(jax.jit(jax.vmap(lambda k: dist.sample(k, 1)[0]))(KEYS8))
  assert one_each.shape == (8, dist.dim)
  assert np.all(np.isfinite(one_each)) and len(np.unique(one_each[:, 0])) == 8
  assert isinstance(dist.has_log_prob, bool)
  assert hasattr(dist, 'log_prob') == dist.has_log_prob
  assert dist.has_log_prob == (name not in ('moons', 'swissroll'))


@pytest.mark.parametrize('params', [
    dict(radius=2.0, std=0.15),  # 8gaussians' defaults
    GMM5,
])
def test_noisy_score_is_the_gradient_of_noisy_log_prob(params):
  dist = toy.get('8gaussians', **params) if 'radius' in params else toy.get(
      'gaussian_mixture', **params)
  # Convolving with N(0, s^2 I) is the mixture whose variances grow by s^2.
  wider = toy.GaussianMixture(dist.means, np.sqrt(np.square(dist.stds) + 0.3**2),
                              dist.weights)
  rng = np.random.default_rng(0)
  x = np.asarray(dist.sample(KEY, 32)) + 0.5 * rng.normal(size=(32, dist.dim))
  x = x.astype(np.float32)

  @jax.jit
  def check(x, sigma):
    grad = jax.grad(lambda z: jnp.sum(dist.noisy_log_prob(z, sigma)))(x)
    return grad, dist.noisy_score(x, sigma), dist.noisy_denoiser(x, sigma)

  per_example = rng.uniform(0.05, 2.0, size=(32,)).astype(np.float32)
  for sigma in (np.float32(0.0), np.float32(0.3), per_example):
    grad, score, denoised = map(np.asarray, check(x, sigma))
    np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4 * np.abs(grad).max())
    s2 = np.square(sigma)[..., None]
    np.testing.assert_allclose(denoised, x + s2 * score, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dist.noisy_log_prob(x, 0.0), dist.log_prob(x), rtol=1e-6)
  np.testing.assert_allclose(dist.noisy_log_prob(x, 0.3), wider.log_prob(x), rtol=1e-5)


def _riemann_mass(log_prob, half_width, h):
  axis = np.arange(-half_width + h / 2, half_width, h, dtype=np.float32)
  gx, gy = np.meshgrid(axis, axis, indexing='ij')
  grid = np.stack([gx.ravel(), gy.ravel()], 1)
  return float(np.sum(np.exp(np.asarray(log_prob(grid), np.float64)))) * h * h


@pytest.mark.parametrize('name,half_width,h', [
    ('8gaussians', 3.5, 0.02), ('grid', 3.5, 0.02), ('rings', 4.0, 0.02),
    ('checkerboard', 5.0, 0.05)])
def test_log_prob_integrates_to_one(name, half_width, h):
  assert _riemann_mass(toy.get(name).log_prob, half_width, h) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize('name', ['gaussian_mixture', '8gaussians'])
def test_sample_moments_match_mean_and_cov(name):
  dist = _build(name)
  n = 20_000
  x = np.asarray(dist.sample(KEY, n), np.float64)
  mean, cov = np.asarray(dist.mean), np.asarray(dist.cov)
  var = np.diag(cov)
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / n))
  cov_se = np.sqrt((np.outer(var, var) + cov**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 6 * cov_se + 1e-6)


def test_8gaussians_moments_in_closed_form():
  dist = toy.get('8gaussians', radius=2.0, std=0.15)
  np.testing.assert_allclose(dist.mean, np.zeros(2), atol=1e-6)
  # The ring's 8 equally spaced points have covariance r^2 / 2 I.
  np.testing.assert_allclose(dist.cov, (2.0**2 / 2 + 0.15**2) * np.eye(2), atol=1e-5)


def test_checkerboard_samples_are_on_black_squares():
  dist = toy.get('checkerboard')
  x = np.asarray(dist.sample(KEY, 4000))
  np.testing.assert_allclose(dist.log_prob(x), -math.log(8 * 2.0**2))
  assert x.min() >= -4.0 and x.max() <= 4.0
  # Lower-left square (black) vs its right neighbour (white) vs off the board.
  lp = dist.log_prob(np.array([[-3.0, -3.0], [-1.0, -3.0], [4.5, 0.0], [-3.0, -1.0]]))
  assert np.isfinite(lp[0]) and np.all(np.isneginf(lp[1:]))


def test_gaussian_mixture_in_50_dimensions():
  d = 50
  dist = toy.get('gaussian_mixture', means=[[-2.0] * d, [2.0] * d], stds=0.5)
  x = np.asarray(dist.sample(KEY, 2000))
  assert x.shape == (2000, d)
  assert abs(np.mean(x[:, 0] > 0) - 0.5) < 0.05
  assert np.all(np.isfinite(dist.log_prob(x)))
  # Far on one mode's side, the score is that single component's: (mu - x) / var.
  score = dist.noisy_score(np.full((1, d), 1.0, np.float32), 0.5)
  expected = (2.0 - 1.0) / (0.5**2 + 0.5**2)
  np.testing.assert_allclose(score, np.full((1, d), expected), rtol=1e-4)


@pytest.mark.parametrize('name,params,needle', [
    ('nope', {}, 'allowed: 8gaussians'),
    ('moons', dict(noize=0.1), r"unknown params \['noize'\].*allowed: noise, scale"),
    ('gaussian_mixture', {}, 'needs params: means'),
    ('gaussian_mixture', dict(means=[0.0, 0.0]), r'means must be a \[K, d\]'),
    ('gaussian_mixture', dict(means=[[0.0, 0.0], [1.0]]), 'means must be numbers'),
    ('gaussian_mixture', dict(means=[[0.0, 0.0]], stds=-1.0), 'stds must be > 0'),
    ('gaussian_mixture', dict(means=[[0.0, 0.0], [1.0, 1.0]], stds=[1.0, 1.0, 1.0]),
     r'stds must be a scalar, \[K\]'),
    ('gaussian_mixture', dict(means=[[0.0, 0.0], [1.0, 1.0]], weights=[1.0]),
     r'weights must have shape \[2\]'),
    ('gaussian_mixture', dict(means=[[0.0, 0.0], [1.0, 1.0]], weights=[1.0, -1.0]),
     'weights must be >= 0'),
    ('8gaussians', dict(std=-0.1), 'std must be > 0'),
    ('8gaussians', dict(radius='big'), 'radius must be a number'),
    ('grid', dict(size=0), 'size must be an integer >= 1'),
    ('grid', dict(spacing=float('nan')), 'spacing must be finite'),
    ('moons', dict(noise=-0.1), 'noise must be >= 0'),
    ('checkerboard', dict(extent=0.0), 'extent must be > 0'),
    ('rings', dict(radii=[]), 'radii must be a non-empty list'),
    ('rings', dict(noise=0.0), 'noise must be > 0'),
    ('swissroll', dict(scale=-1.0), 'scale must be > 0'),
])
def test_bad_params_raise_config_error(name, params, needle):
  with pytest.raises(ConfigError, match=needle) as info:
    toy.get(name, **params)
  assert '\n' not in str(info.value)
