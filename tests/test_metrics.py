"""Sample distances against closed forms (ALGORITHMS.md §9) and the evaluate() registry."""
import math
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist
from scipy.stats import norm

from gensuite import metrics
from gensuite.data import toy
from gensuite.errors import ConfigError
from gensuite.metrics import distances

KEY = jax.random.PRNGKey(0)


def _expected_rbf(a, cov_a, b, cov_b, l):
  """E k(x, y) for x ~ N(a, A), y ~ N(b, B) independent, RBF bandwidth l."""
  s = cov_a + cov_b
  d = len(a)
  diff = a - b
  return (np.linalg.det(np.eye(d) + s / l**2) ** -0.5
          * math.exp(-0.5 * diff @ np.linalg.solve(s + l**2 * np.eye(d), diff)))


def _brute_mmd2(x, y, bandwidths):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  def k(a, b):
    sq = cdist(a, b, 'sqeuclidean')
    return sum(np.exp(-sq / (2 * l**2)) for l in bandwidths)
  m, n = len(x), len(y)
  kxx, kyy = k(x, x), k(y, y)
  return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy))
          / (n * (n - 1)) - 2 * k(x, y).mean())


def test_mmd_matches_the_gaussian_closed_form():
  a, cov_a = np.zeros(2), np.eye(2)
  b, cov_b = np.array([1.0, 0.5]), np.diag([2.0, 0.5])
  l = 1.3
  exact = (_expected_rbf(a, cov_a, a, cov_a, l) + _expected_rbf(b, cov_b, b, cov_b, l)
           - 2 * _expected_rbf(a, cov_a, b, cov_b, l))
  assert exact == pytest.approx(0.1347, abs=1e-4)
  rng = np.random.default_rng(0)
  runs = [distances.mmd2_unbiased(rng.normal(size=(500, 2)),
                                  b + rng.normal(size=(500, 2)) * np.sqrt([2.0, 0.5]), l)
          for _ in range(24)]
  se = np.std(runs, ddof=1) / np.sqrt(len(runs))
  assert se < 0.01
  assert abs(np.mean(runs) - exact) < 4 * se


def test_mmd_of_identical_distributions_is_centred_on_zero():
  rng = np.random.default_rng(1)
  runs = np.array([distances.mmd2_unbiased(rng.normal(size=(200, 3)),
                                           rng.normal(size=(200, 3)))
                   for _ in range(30)])
  assert runs.min() < 0 < runs.max()
  assert abs(runs.mean()) < 4 * runs.std(ddof=1) / np.sqrt(len(runs))


@pytest.mark.parametrize('m,n,d', [(5, 7, 3), (600, 530, 2), (40, 30, 20)])
def test_mmd_is_the_u_statistic(m, n, d):
  # 600 rows exceed BLOCK_ROWS (padding); d = 20 takes the |a|^2 + |b|^2 - 2ab path.
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(m, d)), 0.3 + rng.normal(size=(n, d))
  bws = (0.7, 2.5)
  assert distances.mmd2_unbiased(x, y, bws) == pytest.approx(_brute_mmd2(x, y, bws),
                                                             abs=2e-5)
  # A sum of kernels gives the sum of the MMDs.
  assert distances.mmd2_unbiased(x, y, bws) == pytest.approx(
      distances.mmd2_unbiased(x, y, 0.7) + distances.mmd2_unbiased(x, y, 2.5), abs=2e-5)
  # 'median' is the median pairwise distance of the pooled sample.
  pooled = np.concatenate([x, y])
  assert distances.median_bandwidth(x, y) == pytest.approx(np.median(pdist(pooled)),
                                                           rel=1e-4)
  assert distances.mmd2_unbiased(x, y) == pytest.approx(
      _brute_mmd2(x, y, [np.median(pdist(pooled))]), abs=2e-5)


def test_null_quantile_separates_a_shifted_sample():
  dist = toy.get('8gaussians')
  bw = distances.median_bandwidth(dist.sample(KEY, 300))
  q95 = distances.mmd2_null_quantile(dist.sample, KEY, 300, q=0.95, num_pairs=20,
                                     bandwidths=bw)
  q50 = distances.mmd2_null_quantile(dist.sample, KEY, 300, q=0.5, num_pairs=20,
                                     bandwidths=bw)
  assert 0 < q95 and q50 < q95
  reference = dist.sample(jax.random.PRNGKey(5), 300)
  shifted = np.asarray(dist.sample(jax.random.PRNGKey(6), 300)) + [1.0, 0.0]
  assert distances.mmd2_unbiased(shifted, reference, bw) > q95


def test_sliced_wasserstein_of_shifted_gaussians():
  rng = np.random.default_rng(3)
  d, n = 3, 1000
  a, b = np.array([1.0, -1.0, 0.5]), np.array([0.0, 0.5, 1.5])
  x, y = a + rng.normal(size=(n, d)), b + rng.normal(size=(n, d))
  sw = distances.sliced_wasserstein(KEY, x, y, num_projections=4096)
  assert sw == pytest.approx(np.sum((a - b) ** 2) / d, rel=0.05)
  assert distances.sliced_wasserstein(KEY, x, x) == 0.0
  # p = 1 in 1-D is the mean absolute shift of sorted samples.
  assert distances.sliced_wasserstein(KEY, x[:, :1], x[:, :1] + 2.0, p=1) == pytest.approx(
      2.0, rel=1e-5)
  with pytest.raises(ValueError, match='equal shapes'):
    distances.sliced_wasserstein(KEY, x, y[:10])


def _mean_abs_normal(m, s):
  return s * math.sqrt(2 / math.pi) * math.exp(-m**2 / (2 * s**2)) + m * (1 - 2 * norm.cdf(-m / s))


def test_energy_distance_1d_gaussians():
  s = math.sqrt(2.0)  # X - Y and X - X' have variance 2
  exact = 2 * _mean_abs_normal(1.0, s) - 2 * _mean_abs_normal(0.0, s)
  assert exact == pytest.approx(0.54181, abs=1e-5)
  rng = np.random.default_rng(4)
  runs = [distances.energy_distance(rng.normal(size=(1000, 1)),
                                    1.0 + rng.normal(size=(1000, 1))) for _ in range(8)]
  se = np.std(runs, ddof=1) / np.sqrt(len(runs))
  assert se < 0.02
  assert abs(np.mean(runs) - exact) < 4 * se


def test_energy_distance_is_the_u_statistic():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(9, 20)), rng.normal(size=(6, 20)) + 0.2
  m, n = len(x), len(y)
  exact = (2 * cdist(x, y).mean() - pdist(x).sum() * 2 / (m * (m - 1))
           - pdist(y).sum() * 2 / (n * (n - 1)))
  assert distances.energy_distance(x, y) == pytest.approx(exact, abs=1e-4)


def test_nll_of_a_gaussian_is_its_entropy():
  d, s = 3, 0.7
  dist = toy.get('gaussian_mixture', means=[[0.5, -1.0, 2.0]], stds=s)
  x = dist.sample(KEY, 20_000)
  nats = -np.asarray(dist.log_prob(x), np.float64)
  entropy = 0.5 * d * math.log(2 * math.pi * math.e * s**2)
  assert distances.nll(x, dist.log_prob) == pytest.approx(nats.mean(), rel=1e-6)
  assert abs(distances.nll(x, dist.log_prob) - entropy) < 4 * nats.std() / math.sqrt(len(x))
  assert distances.nll_finite_fraction(x, dist.log_prob) == 1.0


def test_nll_is_inf_when_some_sample_has_zero_density():
  board = toy.get('checkerboard')
  x = np.array([[-3.0, -3.0], [-1.0, -3.0], [-3.0, -3.5], [9.0, 9.0]], np.float32)
  assert distances.nll(x, board.log_prob) == math.inf
  assert distances.nll_finite_fraction(x, board.log_prob) == 0.5


def test_evaluate_computes_the_named_metrics():
  dist = toy.get('8gaussians')
  samples = np.asarray(dist.sample(KEY, 200))
  reference = np.asarray(dist.sample(jax.random.PRNGKey(1), 200))
  out = metrics.evaluate(('mmd', 'sliced_wasserstein', 'energy_distance', 'nll'), KEY,
                         samples, reference, log_prob=dist.log_prob)
  assert set(out) == {'mmd', 'sliced_wasserstein', 'energy_distance', 'nll',
                      'nll_finite_fraction'}
  assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
  bw = distances.median_bandwidth(reference)
  assert out['mmd'] == distances.mmd2_unbiased(samples, reference, bw)
  assert out['energy_distance'] == distances.energy_distance(samples, reference)
  # nll is skipped without a density; a metric's value does not depend on the others.
  only = metrics.evaluate(['sliced_wasserstein', 'nll'], KEY, samples, reference)
  assert only == {'sliced_wasserstein': out['sliced_wasserstein']}
  images = metrics.evaluate(['mmd'], KEY, samples.reshape(200, 1, 2, 1),
                            reference.reshape(200, 1, 2, 1))
  assert images['mmd'] == pytest.approx(out['mmd'], abs=1e-6)
  assert {'mmd', 'sliced_wasserstein', 'energy_distance', 'nll'} <= set(metrics.METRICS)


def test_unknown_metric_is_a_config_error():
  with pytest.raises(ConfigError,
                     match='unknown metric name .*allowed: class_tv_digits, energy_distance'):
    metrics.evaluate(['mmd', 'not_a_metric'], KEY, np.zeros((4, 2)), np.zeros((4, 2)))


def test_importing_metrics_is_light():
  code = ('import sys, gensuite; before = set(sys.modules); import gensuite.metrics; '
          'new = set(sys.modules) - before; '
          'print(sorted(m for m in new if m.split(".")[0] in '
          '("tensorflow", "matplotlib", "tensorflow_datasets", "torch")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True).stdout.strip()
  assert out == '[]'
