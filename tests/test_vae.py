"""Tests for gensuite.methods.vae: KL, IWAE, linear-Gaussian VAE = PPCA, balancing, runs.

  PYTHONPATH=$PWD .venv/bin/python -m pytest -q tests/test_vae.py

The analytic facts are those of ALGORITHMS.md §7: closed-form Gaussian KL; L_1 = ELBO
in expectation and L_K non-decreasing in K; with the exact posterior of a
linear-Gaussian model every L_K equals log p(x); a trained linear VAE reaches the
maximum-likelihood PPCA log-likelihood; the balanced decoder variance is the running
MSE; the discretised logistic is a distribution over its bins.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import losses, run_cli
from gensuite import config as config_lib
from gensuite.data import DataSpec
from gensuite.errors import ConfigError
from gensuite.methods import vae as vae_lib

TOY = 'configs/vae/toy2d.py'


def _method(dim=2, latent_dim=2, depth=1, hidden=16, lr=1e-2, num_steps=100, **method):
  c = config_lib.base()
  c.net = ml_collections.ConfigDict(dict(name='vae_mlp', hidden=hidden, depth=depth))
  c.method = ml_collections.ConfigDict(dict(name='vae', latent_dim=latent_dim, **method))
  c.optim.lr = lr
  c.optim.ema_decays = ()
  c.train.num_steps = num_steps
  return vae_lib.VAE(c, DataSpec(name='test', kind='toy', shape=(dim,)))


def test_gaussian_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(3, 4)).astype(np.float32)
  log_var = rng.normal(scale=0.7, size=(3, 4)).astype(np.float32)
  kl = np.asarray(vae_lib.gaussian_kl(mu, log_var))
  n = 200_000
  eps = rng.normal(size=(n, 3, 4))
  z = mu + np.exp(0.5 * log_var) * eps
  log_ratio = np.sum(-0.5 * eps**2 - 0.5 * log_var + 0.5 * z**2, axis=-1)  # log q - log p
  mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
  assert np.all(np.abs(mc - kl) < 4 * se), (mc, kl, se)
  assert np.all(kl > 0)
  np.testing.assert_allclose(vae_lib.gaussian_kl(np.zeros(4), np.zeros(4)), 0.0)


def test_discretized_logistic_sums_to_one_over_bins():
  bins = 17
  levels = jnp.linspace(-1.0, 1.0, bins)[:, None]
  for mean, log_scale in [(0.3, -2.0), (-0.95, -4.0), (1.4, 0.5), (0.0, -6.5)]:
    lp = vae_lib.discretized_logistic_log_prob(
        levels, jnp.full_like(levels, mean), jnp.full_like(levels, log_scale), bins)
    np.testing.assert_allclose(jax.nn.logsumexp(lp), 0.0, atol=1e-5)


def _linear_gaussian(rng, dim=4, latent=2, s=0.5):
  """W with orthogonal columns (so the exact posterior is diagonal), b, s."""
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  w = q[:, :latent] * np.array([1.5, 0.8])[:latent]
  b = rng.normal(size=dim)
  return w, b, s


def _exact_posterior_params(method, w, b, s):
  """Sets a depth-0 VAE to p(x|z) = N(Wz + b, s² I) and q(z|x) = p(z|x) exactly."""
  m = w.T @ w + s**2 * np.eye(w.shape[1])        # diagonal by construction
  a = np.linalg.solve(m, w.T)                     # posterior mean = a (x - b)
  post_var = s**2 / np.diag(m)
  latent = w.shape[1]
  kernel = np.concatenate([a.T, np.zeros_like(a.T)], 1)
  bias = np.concatenate([-a @ b, np.log(post_var)])
  return {'encoder': {'out': {'kernel': jnp.asarray(kernel, jnp.float32),
                              'bias': jnp.asarray(bias, jnp.float32)}},
          'decoder': {'out': {'kernel': jnp.asarray(w.T, jnp.float32),
                              'bias': jnp.asarray(b, jnp.float32)}}}, latent


def _log_marginal(x, w, b, s):
  cov = w @ w.T + s**2 * np.eye(len(b))
  d = x - b
  _, logdet = np.linalg.slogdet(cov)
  return -0.5 * (np.einsum('ni,ij,nj->n', d, np.linalg.inv(cov), d) + logdet
                 + len(b) * math.log(2 * math.pi))


def test_linear_gaussian_exact_posterior_and_iwae_ordering():
  rng = np.random.default_rng(1)
  w, b, s = _linear_gaussian(rng)
  method = _method(dim=4, latent_dim=2, depth=0, likelihood='gaussian', variance='fixed',
                   fixed_sigma=s)
  params, _ = _exact_posterior_params(method, w, b, s)
  x = (rng.normal(size=(64, 2)) @ w.T + b + s * rng.normal(size=(64, 4))).astype(np.float32)
  exact = _log_marginal(x, w, b, s)
  extra = {'mse': jnp.ones(())}
  key = jax.random.PRNGKey(0)

  def mean_bound(p, k, reps, chunk=None):
    keys = jax.random.split(jax.random.fold_in(key, k), reps)
    fn = jax.jit(jax.vmap(lambda r: method.iwae_bound(p, extra, x, r, k, chunk=chunk)))
    return np.asarray(fn(keys))

  for k in (1, 5, 50):  # constant importance weights: every L_K is log p(x)
    lk = mean_bound(params, k, 1, chunk=7)[0]
    np.testing.assert_allclose(lk, exact, rtol=0, atol=2e-4)
  # A perturbed q: L_1 < L_5 < L_50 < log p(x), Monte Carlo means over 64 x 220+ draws.
  bad = jax.tree.map(lambda p: p, params)
  bad['encoder']['out']['bias'] = params['encoder']['out']['bias'] + jnp.array(
      [0.6, -0.5, 0.8, 0.8])
  means = {k: float(mean_bound(bad, k, 200 // k + 20).mean()) for k in (1, 5, 50)}
  assert means[1] < means[5] < means[50] < exact.mean(), (means, exact.mean())


def _ppca_ml_log_likelihood(x, latent):
  """Tipping & Bishop: the maximum of the PPCA mean log-likelihood, in closed form."""
  d = x.shape[1]
  cov = np.cov(x, rowvar=False, bias=True)
  lam = np.sort(np.linalg.eigvalsh(cov))[::-1]
  sigma2 = lam[latent:].mean()
  logdet = np.sum(np.log(lam[:latent])) + (d - latent) * np.log(sigma2)
  return -0.5 * (d * math.log(2 * math.pi) + logdet + d)


def test_linear_vae_elbo_reaches_ppca_maximum_likelihood():
  """A depth-0 (linear) VAE with a learned scalar std trained on Gaussian data."""
  rng = np.random.default_rng(2)
  w, b, _ = _linear_gaussian(rng, dim=4, latent=2, s=0.3)
  n = 2000
  x = (rng.normal(size=(n, 2)) @ w.T + b + 0.3 * rng.normal(size=(n, 4))
       ).astype(np.float32)
  target = _ppca_ml_log_likelihood(x, 2)
  method = _method(dim=4, latent_dim=2, depth=0, likelihood='gaussian',
                   variance='learned_scalar', lr=2e-2, num_steps=1500)
  state = method.init(jax.random.PRNGKey(0), {'x': x[:8]})
  batch = {'x': jnp.asarray(x)}

  @jax.jit
  def steps(state, key):
    def body(st, i):
      st, m = method.train_step(st, batch, jax.random.fold_in(key, i))
      return st, m['elbo']
    return jax.lax.scan(body, state, jnp.arange(1500))

  state, trace = steps(state, jax.random.PRNGKey(1))
  extra = state.extra
  elbo = float(np.mean([method.elbo_parts(state.params, extra, x,
                                          jax.random.PRNGKey(10 + r))['elbo']
                        for r in range(20)]))
  # The model's exact marginal: W from the decoder, gamma = exp(log_gamma).
  dec = state.params['decoder']['out']
  gamma = float(jnp.exp(state.params['log_gamma']))
  model_ll = _log_marginal(x, np.asarray(dec['kernel']).T, np.asarray(dec['bias']),
                           gamma).mean()
  assert model_ll <= target + 1e-3             # the ML value is the maximum
  assert elbo <= model_ll + 0.01               # the ELBO is a lower bound
  assert target - elbo < 0.02, (elbo, model_ll, target, float(trace[0]))


def test_iwae_non_decreasing_in_k_and_l1_is_the_elbo_in_expectation():
  from gensuite.data import toy  # pylint: disable=g-import-not-at-top
  method = _method(dim=2, latent_dim=2, depth=2, hidden=32, lr=3e-3,
                   likelihood='gaussian', variance='learned_scalar')
  dist = toy.get('8gaussians')
  key = jax.random.PRNGKey(0)
  state = method.init(key, {'x': np.zeros((8, 2), np.float32)})

  @jax.jit
  def train(state):  # a brief training: the posterior is still far from exact
    def body(st, i):
      batch = {'x': dist.sample(jax.random.fold_in(key, i), 256)}
      return method.train_step(st, batch, jax.random.fold_in(key, 10_000 + i))[0], None
    return jax.lax.scan(body, state, jnp.arange(300))[0]

  state = train(state)
  x = np.asarray(dist.sample(jax.random.PRNGKey(7), 200), np.float32)
  p, extra = state.params, state.extra

  @jax.jit
  def bounds_and_weights(p, extra):
    bounds = [jnp.mean(method.iwae_bound(p, extra, x, jax.random.PRNGKey(k), k))
              for k in (1, 10, 100, 1000)]
    lw = method.log_weights(p, extra, x[:20], jax.random.PRNGKey(3), 4000)  # [4000, 20]
    elbos = jax.vmap(lambda r: method.elbo_parts(p, extra, x[:20], r)['elbo'])(
        jax.random.split(jax.random.PRNGKey(4), 4000))                      # [4000, 20]
    return jnp.stack(bounds), lw, elbos

  vals, lw, elbos = bounds_and_weights(p, extra)
  vals = [float(v) for v in vals]
  assert all(a < b for a, b in zip(vals, vals[1:])), vals
  # E[L_1] = E[log p(x|z)] - KL (the analytic-KL ELBO), per example.
  diff = np.asarray(lw.mean(0) - elbos.mean(0))
  se = np.sqrt(np.asarray(lw.var(0) + elbos.var(0)) / 4000)
  assert np.all(np.abs(diff) < 4.5 * se), (diff, se)


def test_balanced_variance_is_the_running_mse():
  method = _method(dim=2, likelihood='gaussian', variance='balanced', balance_decay=0.9,
                   balance_init_mse=2.0)
  key = jax.random.PRNGKey(0)
  state = method.init(key, {'x': np.zeros((8, 2), np.float32)})
  assert float(state.extra['mse']) == 2.0
  step = jax.jit(method.train_step)
  x = jax.random.normal(key, (64, 2)) * jnp.array([1.0, 0.3])
  seen_decrease = False
  for i in range(12):
    before = float(state.extra['mse'])
    state, m = step(state, {'x': x}, jax.random.fold_in(key, i))
    np.testing.assert_allclose(float(m['decoder_var']), before, rtol=1e-6)
    want = min(before, 0.9 * before + 0.1 * float(m['batch_mse']))
    np.testing.assert_allclose(float(state.extra['mse']), want, rtol=1e-6)
    seen_decrease |= want < before
  assert seen_decrease
  # At fixed reconstructions the Gaussian NLL is stationary in gamma at gamma² = MSE.
  target = jax.random.normal(jax.random.PRNGKey(1), (16, 5))
  mean = target + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (16, 5))
  mse = jnp.mean((target - mean)**2)
  nll = lambda log_g: -jnp.sum(vae_lib.gaussian_log_prob(target, mean,
                                                         jnp.full(mean.shape, log_g)))
  np.testing.assert_allclose(jax.grad(nll)(0.5 * jnp.log(mse)), 0.0, atol=1e-4)
  assert abs(float(jax.grad(nll)(0.5 * jnp.log(mse) + 0.2))) > 1.0


def test_beta_one_loss_is_negative_elbo_and_warmup_ramps():
  method = _method(dim=2, beta=1.0)
  key = jax.random.PRNGKey(0)
  state = method.init(key, {'x': np.zeros((8, 2), np.float32)})
  x = {'x': jax.random.normal(key, (32, 2))}
  loss, m = method.loss(state.params, state.extra, x, key, state.step)
  np.testing.assert_allclose(loss, -m['elbo'], rtol=1e-6)
  warm = _method(dim=2, beta=4.0, kl_warmup_steps=10)
  np.testing.assert_allclose([warm.kl_weight(jnp.asarray(s)) for s in (0, 4, 9, 50)],
                             [0.4, 2.0, 4.0, 4.0], rtol=1e-6)
  loss4, m4 = _method(dim=2, beta=4.0).loss(state.params, state.extra, x, key, state.step)
  np.testing.assert_allclose(loss4, m4['recon'] + 4.0 * m4['kl'], rtol=1e-6)


@pytest.mark.parametrize('method, net, shape, match', [
    (dict(likelihood='poisson'), 'vae_mlp', (2,), 'unknown method.likelihood'),
    (dict(likelihood='bernoulli'), 'vae_mlp', (2,), 'needs image data'),
    (dict(variance='huge'), 'vae_mlp', (2,), 'unknown method.variance'),
    (dict(latent_dim=0), 'vae_mlp', (2,), 'latent_dim must be a positive integer'),
    (dict(beta=-1.0), 'vae_mlp', (2,), 'beta must be >= 0'),
    (dict(), 'vae_conv', (2,), "net 'vae_conv'.*needs images"),
    (dict(), 'vae_conv', (6, 6, 1), 'divisible by 4'),
    (dict(), 'unet', (8, 8, 1), 'unknown vae net name'),
])
def test_bad_config_raises_config_error(method, net, shape, match):
  c = config_lib.base()
  c.net = ml_collections.ConfigDict(dict(name=net))
  c.method = ml_collections.ConfigDict(dict(name='vae', **method))
  kind = 'image' if len(shape) == 3 else 'toy'
  with pytest.raises(ConfigError, match=match):
    vae_lib.VAE(c, DataSpec(name='test', kind=kind, shape=shape))


# ---- runs through the shared loop -------------------------------------------------


def _leaves(state):
  return [np.asarray(v) for v in jax.tree.leaves(state)]


@pytest.fixture(scope='module')
def toy_runs(tmp_path_factory):
  """A 20-step balanced toy VAE run, and the same run stopped at 10 and resumed."""
  from gensuite import train  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('vae_toy')
  full, split = str(root / 'full'), str(root / 'split')

  def config(num_steps, eval_every=10):
    c = config_lib.from_file(f'{TOY}:smoke,balanced')
    with c.unlocked():
      c.optim.schedule = 'constant'  # the cosine schedule depends on num_steps
      c.train.num_steps = num_steps
      c.train.eval_every = eval_every  # evals never change the trained state
    return c

  state_full = train.run(config(20), full)
  train.run(config(10, eval_every=0), split)
  state_split = train.run(config(20, eval_every=0), split)  # resumes from step 10
  return full, split, state_full, state_split


def test_smoke_run_resumes_exactly_and_logs_eval(toy_runs):
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  full, split, state_full, state_split = toy_runs
  assert int(state_full.step) == int(state_split.step) == 20
  for a, b in zip(_leaves(state_full), _leaves(state_split)):
    np.testing.assert_array_equal(a, b)  # incl. the running MSE in TrainState.extra
  assert losses(full) == losses(split)
  rows = [r for r in log_lib.read_jsonl(full) if 'eval/nll_nats' in r]
  assert [r['step'] for r in rows] == [10, 20]
  last = rows[-1]
  assert last['eval/iwae_16'] >= last['eval/iwae_1'] - 0.05
  assert abs(last['eval/nll_nats'] + last['eval/iwae_16']) < 1e-9
  np.testing.assert_allclose(last['eval/bits_per_dim'],
                             last['eval/nll_nats'] / (2 * math.log(2)), rtol=1e-9)
  np.testing.assert_allclose(last['eval/balanced_gamma'],
                             math.sqrt(float(state_full.extra['mse'])), rtol=1e-6)
  assert 0 <= last['eval/active_units'] <= 2
  assert os.listdir(os.path.join(full, 'reconstructions'))


def test_sample_cli_gives_decoded_prior_samples(toy_runs, tmp_path):
  full = toy_runs[0]
  out = str(tmp_path / 's.npz')
  run_cli('sample', f'--workdir={full}', '--num=33', f'--out={out}')
  got = np.load(out)['samples']
  assert got.shape == (33, 2) and np.all(np.isfinite(got))
  import gensuite  # pylint: disable=g-import-not-at-top
  again = gensuite.load_run(full).sample(jax.random.PRNGKey(0), 33)
  np.testing.assert_allclose(got, again, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_digits_smoke_writes_image_grids(tmp_path):
  from gensuite import train  # pylint: disable=g-import-not-at-top
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'digits')
  config = config_lib.from_file('configs/vae/digits.py:smoke,logistic')
  with config.unlocked():
    config.data.data_dir = str(tmp_path / 'tfds')
  train.run(config, workdir)
  rows = [r for r in log_lib.read_jsonl(workdir) if 'eval/nll_nats' in r]
  assert rows and np.isfinite(rows[-1]['eval/nll_nats'])
  # Exact discrete probabilities: the NLL of 64 pixels on 17 levels is positive.
  assert rows[-1]['eval/nll_nats'] > 0
  for name in ('samples', 'reconstructions', 'prior_samples'):
    assert os.listdir(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['method']['eval_split'] == 'test'


@pytest.mark.slow
def test_mnist_config_builds_with_tfds_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from gensuite import experiment  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file('configs/vae/mnist.py:smoke')
  with config.unlocked():
    config.data.data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=12):
    exp = experiment.build_experiment(config)
    assert exp.data.spec.shape == (28, 28, 1)
    state = exp.init_state()
    state, metrics = exp.bare_step(state, exp.global_batch(0))
    scalars, images = exp.method.evaluate(state, jax.random.PRNGKey(0), exp.data)
  assert np.isfinite(float(metrics['loss']))
  # Bernoulli probabilities of 784 binarised pixels: a positive NLL, L_4 >= L_1 - noise.
  assert scalars['nll_nats'] > 0 and np.isfinite(scalars['elbo'])
  assert images['reconstructions'].shape[-1] == 3
  assert images['prior_samples'].shape == (8 * 29 + 1, 8 * 29 + 1, 3)
