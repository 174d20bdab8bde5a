"""Annealed importance sampling: log Z of energies whose normaliser is known exactly."""
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from gensuite import data as data_lib
from gensuite import methods
from gensuite.errors import ConfigError
from gensuite.samplers import ais

D = 5
LOG_C = 1.3  # U = -log p - LOG_C for a normalised mixture p, so log Z = LOG_C exactly


def _mixture_energy():
  rng = np.random.default_rng(0)
  means = jnp.asarray(rng.uniform(-1.5, 1.5, (3, D)), jnp.float32)
  stds = jnp.asarray([0.5, 0.7, 0.6])
  log_w = jnp.log(jnp.asarray([0.5, 0.3, 0.2]))

  def energy(x):
    sq = jnp.sum((x[:, None, :] - means[None])**2, -1) / stds[None]**2
    log_p = log_w[None] - 0.5 * sq - D * jnp.log(stds)[None] - 0.5 * D * math.log(2 * math.pi)
    return -jax.scipy.special.logsumexp(log_p, axis=1) - LOG_C
  return energy


def test_schedule_runs_from_zero_to_one_increasing():
  for kind in ais.SCHEDULES:
    b = np.asarray(ais.schedule(50, kind))
    assert b.shape == (51,) and b[0] == 0.0 and b[-1] == pytest.approx(1.0, abs=1e-6)
    assert np.all(np.diff(b) > 0)


def test_ais_recovers_the_exact_log_z_of_a_mixture_within_its_standard_error():
  out = jax.jit(lambda k: ais.log_partition(
      _mixture_energy(), (D,), k, num_chains=1000, num_temps=300, base_std=2.0,
      step_size=0.1))(jax.random.PRNGKey(1))
  err, se = float(out['log_z']) - LOG_C, float(out['stderr'])
  assert se < 0.03                      # a useful estimate, not a wide one
  assert abs(err) < 3.0 * se            # and an unbiased one (measured: -0.013, se 0.020)
  assert 0.4 < float(out['acceptance']) < 0.9   # the step size adapted to the target 0.65


def test_ais_on_the_base_itself_has_zero_variance():
  # exp(-U) = N(0, 4 I) times e^0.7: every increment is the constant -0.7 (b_k - b_{k-1}).
  energy = lambda x: 0.5 * jnp.sum(x**2, 1) / 4.0 - 0.7
  out = ais.log_partition(energy, (3,), jax.random.PRNGKey(0), num_chains=64, num_temps=20,
                          base_std=2.0)
  assert float(out['log_z']) == pytest.approx(0.5 * 3 * math.log(2 * math.pi * 4.0) + 0.7,
                                              abs=1e-4)
  assert float(out['stderr']) < 1e-5


def test_a_full_covariance_base_equal_to_the_target_gives_its_exact_log_z():
  # exp(-U) = N(m, S) e^0.4 with a correlated S: with the base N(m, S) each increment is
  # the constant -0.4 (b_k - b_{k-1}), so every chain's weight is exact.
  m = jnp.asarray([0.5, -1.0, 2.0])
  chol = jnp.asarray([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.3]])
  prec = jnp.linalg.inv(chol @ chol.T)
  energy = lambda x: 0.5 * jnp.sum(((x - m) @ prec) * (x - m), 1) - 0.4
  out = ais.log_partition(energy, (3,), jax.random.PRNGKey(0), num_chains=64, num_temps=20,
                          base_mean=m, base_chol=chol)
  exact = 0.5 * 3 * math.log(2 * math.pi) + float(jnp.sum(jnp.log(jnp.diag(chol)))) + 0.4
  assert float(out['log_z']) == pytest.approx(exact, abs=1e-4)
  assert float(out['stderr']) < 1e-5


def test_a_base_fitted_to_draws_of_the_mixture_recovers_its_log_z_with_fewer_temperatures():
  energy = _mixture_energy()
  means = np.random.default_rng(0).uniform(-1.5, 1.5, (3, D))  # _mixture_energy's
  rng = np.random.default_rng(3)
  k = rng.choice(3, 4000, p=[0.5, 0.3, 0.2])
  x = means[k] + np.asarray([0.5, 0.7, 0.6])[k, None] * rng.standard_normal((4000, D))
  mean, chol = ais.gaussian_fit(x)
  kw = dict(num_chains=1000, num_temps=60, step_size=0.1)
  fitted = ais.log_partition(energy, (D,), jax.random.PRNGKey(1), base_mean=mean,
                             base_chol=chol, **kw)
  wide = ais.log_partition(energy, (D,), jax.random.PRNGKey(1), base_std=4.0, **kw)
  err, se = float(fitted['log_z']) - LOG_C, float(fitted['stderr'])
  # measured: error +0.003, se 0.011, 897 effective chains of 1000; from N(0, 16 I)
  # 70 effective chains and an error of -0.20
  assert abs(err) < 3.0 * se and se < 0.03
  assert float(fitted['ess']) > 5.0 * float(wide['ess'])


def test_gaussian_fit_adds_the_extra_variance_to_the_sample_covariance():
  x = np.random.default_rng(0).standard_normal((500, 4)) * [1.0, 2.0, 0.5, 1.0]
  mean, chol = ais.gaussian_fit(x.reshape(500, 2, 2), extra_var=0.01, jitter=0.0)
  cov = np.asarray(chol, np.float64) @ np.asarray(chol, np.float64).T
  np.testing.assert_allclose(cov, np.cov(x, rowvar=False) + 0.01 * np.eye(4), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)


@pytest.mark.parametrize('kw', [dict(base_chol=jnp.eye(3)), dict(base_mean=jnp.zeros(2)),
                                dict(base_chol=jnp.eye(2), base_mean=jnp.zeros(3))])
def test_an_ais_base_of_the_wrong_shape_raises_a_config_error(kw):
  with pytest.raises(ConfigError):
    ais.log_partition(lambda x: jnp.sum(x**2, 1), (2,), jax.random.PRNGKey(0), **kw)


@pytest.mark.parametrize('kw', [dict(num_chains=0), dict(num_temps=-1), dict(step_size=0.0),
                                dict(mala_steps=1.5), dict(base_std=float('nan'))])
def test_bad_ais_settings_raise_a_config_error(kw):
  with pytest.raises(ConfigError):
    ais.log_partition(lambda x: jnp.sum(x**2, 1), (2,), jax.random.PRNGKey(0), **kw)


def _config(path, arg):
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_ebm_eval_reports_an_ais_log_z_that_agrees_with_quadrature():
  config = _config('configs/ebm/toy2d.py', 'smoke')
  config.eval.ais_temps, config.eval.ais_chains = 200, 512
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  method = methods.build(config, data.spec)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  step = jax.jit(method.train_step)
  for s in range(5):  # an energy that is no longer the Gaussian it started as
    state, _ = step(state, data.batch(s), jax.random.PRNGKey(s))
  scalars, _ = method.evaluate(state, jax.random.PRNGKey(9), data)
  se = scalars['ais_log_z_stderr']
  assert abs(scalars['ais_log_z'] - scalars['grid_log_z']) < max(3 * se, 0.02)


def test_ebm_eval_with_a_base_fitted_to_the_data_agrees_with_quadrature():
  config = _config('configs/ebm/toy2d.py', 'smoke')
  config.eval.ais_temps, config.eval.ais_chains, config.eval.ais_base = 200, 512, 'data'
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  method = methods.build(config, data.spec)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  step = jax.jit(method.train_step)
  for s in range(5):
    state, _ = step(state, data.batch(s), jax.random.PRNGKey(s))
  scalars, _ = method.evaluate(state, jax.random.PRNGKey(9), data)
  se = scalars['ais_log_z_stderr']
  assert abs(scalars['ais_log_z'] - scalars['grid_log_z']) < max(3 * se, 0.02)


@pytest.mark.parametrize('field,value', [('ais_temps', -3), ('ais_step_size', -1.0),
                                         ('ais_chains', 0), ('ais_base', 'uniform')])
def test_bad_eval_ais_fields_raise_at_construction(field, value):
  config = _config('configs/ebm/toy2d.py', 'smoke')
  config.eval.ais_temps = 10
  config.eval[field] = value
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  with pytest.raises(ConfigError):
    methods.build(config, data.spec)
