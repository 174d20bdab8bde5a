"""Log-weights, ESS, resampling and the Jarzynski ULA move (ALGORITHMS.md §6 checks)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensuite.samplers import langevin, smc


def test_ess_is_n_for_equal_weights_and_one_for_a_dominant_weight():
  n = 1000
  assert float(smc.ess(jnp.full((n,), 3.7))) == pytest.approx(n, rel=1e-4)
  a = jnp.full((n,), -1e4).at[17].set(0.0)
  assert float(smc.ess(a)) == pytest.approx(1.0, rel=1e-6)
  # Two equal dominant weights: ESS = 2.
  assert float(smc.ess(a.at[3].set(0.0))) == pytest.approx(2.0, rel=1e-6)


def test_log_mean_weight():
  a = jnp.log(jnp.array([1.0, 2.0, 3.0, 6.0]))
  assert float(smc.log_mean_weight(a)) == pytest.approx(math.log(3.0), rel=1e-6)


def test_systematic_resampling_copies_floor_or_ceil_of_n_w():
  n = 50
  a = jax.random.normal(jax.random.PRNGKey(0), (n,)) * 1.5
  expected = n * np.asarray(smc.normalized_weights(a), np.float64)
  for seed in range(20):
    idx = smc.systematic_resample(jax.random.PRNGKey(seed), a)
    counts = np.bincount(np.asarray(idx), minlength=n)
    assert counts.sum() == n
    assert np.all(counts >= np.floor(expected) - 1e-9)
    assert np.all(counts <= np.ceil(expected) + 1e-9)


@pytest.mark.parametrize('name', ['systematic', 'multinomial'])
def test_resampling_preserves_the_weighted_mean_in_expectation(name):
  n, reps = 64, 4000
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  a = 2.0 * jax.random.normal(k1, (n,))
  f = jax.random.normal(k2, (n,)) + jnp.arange(n) / n
  target = float(smc.weighted_mean(a, f))
  idx = jax.vmap(lambda k: smc.resample(name, k, a))(jax.random.split(jax.random.PRNGKey(2), reps))
  means = np.asarray(jnp.mean(f[idx], axis=1))
  stderr = means.std() / math.sqrt(reps)
  assert abs(means.mean() - target) < 4 * stderr + 1e-6, (means.mean(), target, stderr)


def test_increment_with_a_fixed_energy_is_the_ula_log_mh_ratio():
  energy = lambda x: jnp.sum(0.25 * x**4 - x**2 + 0.3 * x, axis=-1)
  x = jax.random.normal(jax.random.PRNGKey(3), (32, 3))
  h = 0.2
  y, delta, aux = smc.jarzynski_ula_move(energy, energy, x, jax.random.PRNGKey(4), h)
  ux, gx = langevin.energy_and_grad(energy, x)
  uy, gy = langevin.energy_and_grad(energy, y)
  mh = langevin.mala_log_ratio(x, y, ux, uy, gx, gy, h)
  np.testing.assert_allclose(delta, mh, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(aux['energy'], uy, rtol=1e-6)
  assert float(jnp.std(delta)) > 1e-2  # not trivially zero


def _run_weighted(energies, x, rng, h):
  """Walkers through a sequence of energies; returns (x, log_weights)."""
  a = jnp.zeros(x.shape[0], x.dtype)
  for k in range(len(energies) - 1):
    rng, key = jax.random.split(rng)
    x, delta, _ = smc.jarzynski_ula_move(energies[k], energies[k + 1], x, key, h)
    a = a + delta
  return x, a


def test_weighted_moments_remove_ula_bias_at_fixed_energy():
  s2, h, n = 2.0, 0.3, 100000
  energy = lambda x: 0.5 * jnp.sum(x**2, -1) / s2
  x0 = math.sqrt(s2) * jax.random.normal(jax.random.PRNGKey(5), (n, 1))
  step = jax.jit(lambda x, a, k: (lambda y, d, _: (y, a + d))(
      *smc.jarzynski_ula_move(energy, energy, x, k, h)))
  x, a = x0, jnp.zeros(n)
  for key in jax.random.split(jax.random.PRNGKey(6), 15):
    x, a = step(x, a, key)
  unweighted = float(jnp.mean(x[:, 0]**2))
  weighted = float(smc.weighted_mean(a, x[:, 0]**2))
  assert float(smc.ess(a)) > 0.2 * n
  # ULA alone drifts from 2 towards s^2 / (1 - h / (2 s^2)) = 2.162.
  assert unweighted > 2.1
  assert abs(weighted - s2) < 0.04, weighted
  # The weights estimate Z / Z = 1.
  assert abs(float(smc.log_mean_weight(a))) < 0.02


def test_jarzynski_weights_on_a_moving_gaussian_family():
  # U_theta = theta |x|^2 / 2 in d = 3, theta 1 -> 4 over 60 steps, h = 0.05:
  # mean e^A -> (theta_0 / theta_K)^{d/2} = 0.125, weighted E|x|^2 -> d / theta_K = 0.75.
  d, n, h, steps = 3, 100000, 0.05, 60
  thetas = np.linspace(1.0, 4.0, steps + 1)
  x = jax.random.normal(jax.random.PRNGKey(7), (n, d))   # exact samples of theta_0

  def move(x, a, key, t0, t1):
    e0 = lambda y: 0.5 * t0 * jnp.sum(y**2, -1)
    e1 = lambda y: 0.5 * t1 * jnp.sum(y**2, -1)
    y, delta, _ = smc.jarzynski_ula_move(e0, e1, x, key, h)
    return y, a + delta

  def body(carry, inp):
    x, a = carry
    key, t0, t1 = inp
    return move(x, a, key, t0, t1), None

  keys = jax.random.split(jax.random.PRNGKey(8), steps)
  (x, a), _ = jax.lax.scan(body, (x, jnp.zeros(n)),
                           (keys, jnp.asarray(thetas[:-1], jnp.float32),
                            jnp.asarray(thetas[1:], jnp.float32)))
  log_z_ratio = float(smc.log_mean_weight(a))
  exact = 0.5 * d * math.log(thetas[0] / thetas[-1])
  w = np.exp(np.asarray(a, np.float64) - float(jnp.max(a)))
  # delta-method std error of log mean e^A
  se = np.std(w) / np.mean(w) / math.sqrt(n)
  assert abs(log_z_ratio - exact) < 4 * se + 2e-3, (log_z_ratio, exact, se)
  sq = jnp.sum(x**2, -1)
  weighted = float(smc.weighted_mean(a, sq))
  unweighted = float(jnp.mean(sq))
  assert abs(weighted - d / thetas[-1]) < 0.015, weighted
  assert unweighted > 0.82, unweighted   # ULA lags behind the moving target
