"""Langevin samplers against Gaussian facts (ALGORITHMS.md §3, check 1)."""
import jax
import jax.numpy as jnp
import numpy as np

from gensuite import samplers
from gensuite.data import toy
from gensuite.samplers import langevin


def _gaussian_energy(s2):
  return lambda x: 0.5 * jnp.sum(x**2, axis=-1) / s2


def test_ula_stationary_variance_has_the_known_bias():
  # On N(0, s^2), ULA's stationary variance is s^2 / (1 - h / (2 s^2)): 2.1622 for
  # s^2 = 2, h = 0.3; not s^2 = 2.
  s2, h = 2.0, 0.3
  x0 = jnp.zeros((20000, 1))
  x, info = langevin.ula(None, x0, jax.random.PRNGKey(0), h, 200,
                         energy_fn=_gaussian_energy(s2))
  var = float(jnp.var(x))
  expected = s2 / (1.0 - h / (2.0 * s2))
  # std error of a variance from 20000 samples ~ var * sqrt(2/n) = 0.022
  assert abs(var - expected) < 0.07, (var, expected)
  assert abs(var - s2) > 0.09
  assert int(info['nfe']) == 200


def test_ula_with_score_fn_equals_ula_with_energy_fn():
  x0 = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
  energy = _gaussian_energy(1.5)
  a, _ = langevin.ula(None, x0, jax.random.PRNGKey(2), 0.1, 5, energy_fn=energy)
  b, _ = langevin.ula(lambda x: -x / 1.5, x0, jax.random.PRNGKey(2), 0.1, 5)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mala_samples_a_correlated_gaussian_exactly():
  mean = jnp.array([1.0, -2.0])
  cov = jnp.array([[2.0, 0.8], [0.8, 1.0]])
  prec = jnp.linalg.inv(cov)
  energy = lambda x: 0.5 * jnp.einsum('bi,ij,bj->b', x - mean, prec, x - mean)
  x0 = jnp.zeros((20000, 2))
  # A step large enough that ULA would be visibly biased.
  x, info = langevin.mala(energy, x0, jax.random.PRNGKey(3), 0.5, 300)
  acc = float(info['acceptance'])
  assert 0.0 < acc < 1.0
  assert int(info['nfe']) == 301
  np.testing.assert_allclose(jnp.mean(x, 0), mean, atol=0.05)
  np.testing.assert_allclose(jnp.cov(x.T), cov, atol=0.08)


def test_mala_returns_the_exact_variance_where_ula_is_biased():
  s2, h = 2.0, 0.3
  x0 = jnp.zeros((20000, 1))
  x, _ = langevin.mala(_gaussian_energy(s2), x0, jax.random.PRNGKey(4), h, 200)
  assert abs(float(jnp.var(x)) - s2) < 0.07


def _double_well(x):
  """U(x) = sum x^4/4 - x^2 (two modes at +-sqrt 2), and its gradient in closed form."""
  return jnp.sum(x**4 / 4 - x**2, axis=-1), x**3 - 2 * x


def _log_proposal(to, frm, grad_frm, h):
  """log q(to | frm) = log N(to; frm - h grad U(frm), 2h I), normalizer included."""
  return jnp.sum(jax.scipy.stats.norm.logpdf(to, frm - h * grad_frm, jnp.sqrt(2 * h)),
                 axis=-1)


def test_mala_log_ratio_is_the_metropolis_hastings_ratio():
  """mala_log_ratio = log [pi(y) q(x|y)] - log [pi(x) q(y|x)] with pi = exp(-U) and the
  ULA proposal density written out here, on random points of a non-quadratic energy."""
  h = 0.2
  k1, k2 = jax.random.split(jax.random.PRNGKey(5))
  x = 1.5 * jax.random.normal(k1, (64, 3))
  y = x + 0.7 * jax.random.normal(k2, (64, 3))
  (ux, gx), (uy, gy) = _double_well(x), _double_well(y)
  want = (-uy + _log_proposal(x, y, gy, h)) - (-ux + _log_proposal(y, x, gx, h))
  got = langevin.mala_log_ratio(x, y, ux, uy, gx, gy, h)
  assert float(jnp.std(want)) > 1.0  # a spread of ratios, not a degenerate check
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_mala_kernel_leaves_a_double_well_invariant():
  """pi K = pi on a grid, for the 1-D MALA kernel K(x, dy) = q(y|x) a(x, y) dy +
  r(x) delta_x with a = min(1, exp(mala_log_ratio)) and r the rejection mass, and
  pi ∝ exp(-U) the double well: a wrong ratio (e.g. one that drops the proposal
  terms) moves mass by far more than the quadrature error."""
  h = 0.3
  with jax.enable_x64(True):
    grid = jnp.linspace(-4.0, 4.0, 1201)
    n, dx = grid.size, float(grid[1] - grid[0])
    pi = jnp.exp(-_double_well(grid[:, None])[0])
    pi = pi / (jnp.sum(pi) * dx)
    # Every pair (x_i, y_j), flattened as i * n + j, as a batch of 1-D points.
    xs, ys = jnp.repeat(grid, n)[:, None], jnp.tile(grid, n)[:, None]
    (ux, gx), (uy, gy) = _double_well(xs), _double_well(ys)
    log_ratio = langevin.mala_log_ratio(xs, ys, ux, uy, gx, gy, h).reshape(n, n)
    q = jnp.exp(_log_proposal(ys, xs, gx, h)).reshape(n, n)
    move = q * jnp.exp(jnp.minimum(log_ratio, 0.0))  # [i, j] density of x_i -> y_j
    stay = 1.0 - jnp.sum(move, axis=1) * dx
    pushed = jnp.sum(pi[:, None] * move, axis=0) * dx + pi * stay
    assert float(jnp.sum(pi * stay) * dx) > 0.05  # a step large enough to reject often
    np.testing.assert_allclose(pushed, pi, atol=1e-6 * float(jnp.max(pi)))


def test_annealed_langevin_with_exact_score_lands_on_a_gmm():
  gmm = toy.get('gaussian_mixture', means=[[-3.0, 0.0], [3.0, 0.0]], stds=0.3,
                weights=[0.3, 0.7])
  sigmas = jnp.exp(jnp.linspace(jnp.log(5.0), jnp.log(0.01), 10))
  x0 = 5.0 * jax.random.normal(jax.random.PRNGKey(6), (4000, 2))
  x, info = langevin.annealed_langevin(gmm.noisy_score, x0, sigmas, jax.random.PRNGKey(7),
                                       steps_per_sigma=100, step_scale=2e-5)
  assert int(info['nfe']) == 1000
  right = float(jnp.mean(x[:, 0] > 0))
  assert abs(right - 0.7) < 0.04, right     # binomial std 0.007; annealing slack
  near = jnp.where(x[:, :1] > 0, x - jnp.array([3.0, 0.0]), x - jnp.array([-3.0, 0.0]))
  np.testing.assert_allclose(jnp.std(near, 0), [0.3, 0.3], atol=0.05)
  np.testing.assert_allclose(jnp.mean(near, 0), [0.0, 0.0], atol=0.05)


def test_sampler_names_are_registered():
  for name in ('ula', 'mala', 'annealed_langevin'):
    samplers.check_name(name)
