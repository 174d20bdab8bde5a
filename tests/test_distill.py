"""Score distillation against closed forms (ALGORITHMS.md §4 and §5, analytic checks)."""
import math
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.distill import toy2d
from conftest import losses, run_cli
from gensuite import data as data_lib
from gensuite import nets
from gensuite.errors import ConfigError
from gensuite.methods import distill, divergences, teachers
from gensuite.methods.base import Method
from gensuite.metrics import distances

N_SAMPLES = 200_000


def _method(arg='smoke', load_run=None, **overrides):
  config = toy2d.get_config(arg)
  with config.unlocked():
    for key, value in overrides.items():
      section, field = key.split('.')
      config[section][field] = value
  spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
  return distill.Distill(config, spec, load_run=load_run)


def _gaussian_data(mean, std):
  """Overrides that make the data (and the analytic teacher) one Gaussian."""
  return {'data.name': 'gaussian_mixture',
          'data.params': dict(means=[list(mean)], stds=std)}


def _log_normal(x, mean, var):
  return -0.5 * ((x - mean)**2 / var + jnp.log(2 * jnp.pi * var))


def _gaussian_fake_denoiser(p, x, s, label=None, features=False):
  """The exact denoiser of the student's law N(theta, scale^2) (1-D), per-example s."""
  del label, features
  s = s[:, None]
  return (p['scale']**2 * x + s**2 * p['theta']) / (p['scale']**2 + s**2)


def _gaussian_logit(others, x, s, label=None):
  """log p_t - log q_t exactly: teacher N(0, 1), student N(theta, scale^2), noise s."""
  del label
  p = others['fake_score']
  s = s[:, None]
  return (_log_normal(x, 0.0, 1.0 + s**2)
          - _log_normal(x, p['theta'], p['scale']**2 + s**2))[:, 0]


@pytest.mark.parametrize('name', sorted(divergences.DIVERGENCES))
def test_weight_is_r_squared_times_second_derivative_of_f(name):
  alphas = (0.5, 2.0, -0.7) if name == 'alpha' else (0.5,)
  r = jnp.array([0.05, 0.3, 1.0, 2.5, 13.0])
  for alpha in alphas:
    f = divergences.f_fn(name, alpha)
    fpp = jax.vmap(jax.grad(jax.grad(f)))(r)
    np.testing.assert_allclose(divergences.weight_fn(name, alpha)(r), r**2 * fpp,
                               rtol=2e-4)
    assert abs(float(f(jnp.float32(1.0)))) < 1e-7  # f(1) = 0


def test_pseudo_loss_gradient_is_g():
  """§5 check 3: d/dx0 of 0.5 mean (x0 - sg(x0 - g))^2 is g / x0.size."""
  x0 = jax.random.normal(jax.random.PRNGKey(0), (7, 3))
  g = jax.random.normal(jax.random.PRNGKey(1), (7, 3))
  np.testing.assert_allclose(jax.grad(distill.pseudo_loss)(x0, g), g / x0.size, rtol=1e-6)


def _quadrature_divergence(name, theta, scale, var_p):
  """D_f(N(0, var_p) || N(theta, scale^2 + sigma^2)) by the trapezoid rule."""
  x = jnp.linspace(-16.0, 16.0, 40001)
  f = divergences.f_fn(name, 0.5)
  log_p = _log_normal(x, 0.0, var_p)
  log_q = _log_normal(x, theta, scale**2 + var_p - 1.0)
  return jnp.trapezoid(jnp.exp(log_q) * f(jnp.exp(log_p - log_q)), x)


def test_quadrature_reference_reproduces_the_worked_values():
  """§4 check 1 at sigma = 0: dD_f/dtheta at theta = 0.7, student theta + 1.5 z."""
  want = {'reverse_kl': 0.700, 'forward_kl': 0.3111, 'js': 0.17545, 'jeffreys': 1.0111,
          'squared_hellinger': 0.09964}
  for name, value in want.items():
    got = jax.grad(_quadrature_divergence, argnums=1)(name, 0.7, 1.5, 1.0)
    np.testing.assert_allclose(got, value, rtol=2e-3)


@pytest.mark.parametrize('name', sorted(divergences.DIVERGENCES))
def test_f_distill_gradient_equals_gradient_of_the_diffused_divergence(name):
  """§4: E[g dx0/dtheta] = sigma^2 grad D_f(p_t || q_t) with exact scores and ratio.

  Teacher N(0, 1), student theta + s z, x_t = x0 + sigma eps; the fake denoiser and
  the discriminator logit are the exact ones of the student's law. The reference is
  the autodiff gradient of D_f computed by quadrature (no h involved).
  """
  sigma, theta, scale = 0.5, 0.7, 1.0
  method = _method('smoke', **_gaussian_data([0.0], 1.0), **{
      'method.divergence': name, 'method.gan_weight': 0.0, 'method.reg_weight': 0.0,
      'method.normalize_ratio': False, 'method.normalize_h': False, 'method.dm_normalize': False,
      'method.logit_clamp': 50.0, 'method.ratio_clip': (1e-12, 1e12)})
  method.generate = lambda p, z, rng=None, k=None, label=None: p['theta'] + p['scale'] * z
  method.sample_sigma = lambda rng, n, full=False: (jnp.full((n,), sigma),
                                                    jnp.zeros((n,), jnp.int32))
  method.fake_denoiser = _gaussian_fake_denoiser
  method.logit = _gaussian_logit
  params = {'theta': jnp.float32(theta), 'scale': jnp.float32(scale)}
  batch = {'x': jnp.zeros((N_SAMPLES // 8, 1))}
  extra = {'ratio_mean': jnp.ones((10,))}
  grad = jax.jit(jax.grad(lambda p, key: method.generator_loss(
      p, {'fake_score': params}, batch, key, extra)[0]))
  # Eight independent estimates: their spread gives the Monte Carlo error.
  runs = [grad(params, jax.random.PRNGKey(i)) for i in range(8)]

  def reference(p):
    return sigma**2 * _quadrature_divergence(name, p['theta'], p['scale'], 1.0 + sigma**2)

  want = jax.grad(reference)(params)
  for key in ('theta', 'scale'):
    values = np.array([float(r[key]) for r in runs])
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - float(want[key])) < 4 * se + 1e-4, (key, values, want)
  assert float(want['theta']) > 0  # descent moves the student's mean back toward 0


def test_reverse_kl_f_distill_gradient_equals_dmd_gradient():
  """§4 check 2: with h = 1 the f-distill generator gradient is DMD's, bit for bit."""
  f_method = _method('f_distill,reverse_kl,smoke',
                     **{'method.gan_weight': 0.0, 'method.reg_weight': 0.0})
  d_method = _method('dmd,smoke', **{'method.reg_weight': 0.0})
  data = data_lib.build(f_method.config.data, seed=0, global_batch_size=64)
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = jax.jit(f_method.init)(jax.random.PRNGKey(0), batch)
  others = {k: v for k, v in state.params.items() if k != 'generator'}
  grads = []
  for method in (f_method, d_method):
    g, (metrics, _) = jax.grad(method.generator_loss, has_aux=True)(
        state.params['generator'], others, batch, jax.random.PRNGKey(5), state.extra)
    grads.append(g)
  assert float(metrics['dm_loss']) > 0
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  assert optax.global_norm(grads[0]) > 0


@pytest.mark.parametrize('arg', ['dmd', 'f_distill,js'])
def test_generator_gradient_vanishes_in_expectation_when_student_equals_data(arg):
  """A student that samples the data mixture exactly, shifted by b, and the fake
  denoiser's single-sample DSM target (D_fake = x0): E[g] = 0 at b = 0 within Monte
  Carlo error, and E[g] points along b otherwise (the update moves b back to 0).
  """
  method = _method(f'{arg},smoke', **{'method.gan_weight': 0.0, 'method.dm_normalize': False,
                                      'method.normalize_ratio': False, 'method.reg_weight': 0.0})
  mixture = method.teacher.mixture
  n = N_SAMPLES // 8
  drawn = {}

  def generate(p, z, rng=None, k=None, label=None):  # exact samples of the data, shifted by b
    drawn['y'] = mixture.sample(rng, n)
    return drawn['y'] + p['b']

  method.generate = generate
  method.fake_denoiser = lambda p, x, s, label=None: drawn['y'] + p['b']
  # The exact ratio of the data to the shifted data, for f-distill's h(r).
  method.logit = lambda others, x, s, label=None: (
      mixture.noisy_log_prob(x, s) - mixture.noisy_log_prob(x - others['fake_score']['b'], s))
  batch = {'x': jnp.zeros((n, 2))}
  extra = {'ratio_mean': jnp.ones((10,))}
  for shift in ((0.0, 0.0), (0.3, -0.2)):
    params = {'b': jnp.array(shift, jnp.float32)}
    grad = jax.jit(jax.grad(lambda p, key: method.generator_loss(
        p, {'fake_score': params}, batch, key, extra)[0]))
    # Independent estimates of mean_i g_i (the loss averages over n * 2 entries).
    runs = np.array([np.asarray(grad(params, jax.random.PRNGKey(i))['b']) * 2
                     for i in range(8)])
    mean, se = runs.mean(0), runs.std(0, ddof=1) / math.sqrt(len(runs))
    if shift == (0.0, 0.0):
      assert np.all(np.abs(mean) < 4 * se + 1e-6), (mean, se)
    else:
      assert float(np.dot(mean, shift)) > 0
      assert np.all(np.abs(mean) > 4 * se), (mean, se)


@pytest.mark.parametrize('head', ['fake_score', pytest.param('separate', marks=pytest.mark.slow)])
def test_discriminator_recovers_the_log_ratio_of_two_gaussians(head):
  """§4 check 3: trained briefly by the method's own loss, the discriminator's logit
  approaches log p_t - log q_t, and E_q[exp(logit)] approaches 1. `fake_score`: the
  FeatureHead on the fake-score MLP's last hidden layer (which the DSM loss trains
  too); `separate`: its own MLP."""
  sigma = 0.3
  mu_q, s_q = jnp.array([1.0, 0.5]), 0.8
  method = _method('smoke', **_gaussian_data([0.0, 0.0], 1.0), **{
      'method.fake_updates': 4, 'method.lr_discriminator': 3e-3, 'net.hidden': 64,
      'method.disc_head': head, 'method.disc_weight': 1e-2 if head == 'fake_score' else 1.0,
      'method.reg_weight': 0.0})
  method.generate = lambda p, z, rng=None, k=None, label=None: mu_q + s_q * z
  method.sample_sigma = lambda rng, n, full=False: (jnp.full((n,), sigma),
                                                    jnp.zeros((n,), jnp.int32))
  dist = method.teacher.mixture
  state = jax.jit(method.init)(jax.random.PRNGKey(0), {'x': jnp.zeros((1024, 2))})
  if head == 'fake_score':
    assert set(state.params['discriminator']) >= {'time_emb', 'out'}  # the head alone
  step = jax.jit(method.train_step)
  for i in range(120):  # 4 inner updates of 256 data and 256 student samples each
    batch = {'x': dist.sample(jax.random.PRNGKey(1000 + i), 1024)}
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
  x_q = mu_q + math.sqrt(s_q**2 + sigma**2) * jax.random.normal(jax.random.PRNGKey(9),
                                                                (20000, 2))
  logit = method.logit(state.params, x_q, jnp.full((20000,), sigma))
  true = (jnp.sum(_log_normal(x_q, 0.0, 1.0 + sigma**2), 1)
          - jnp.sum(_log_normal(x_q, mu_q, s_q**2 + sigma**2), 1))
  err = float(jnp.mean(jnp.abs(logit - true)))
  print(f'{head}: mean |logit - log p_t/q_t| = {err:.3f} (E_q|log ratio| = '
        f'{float(jnp.mean(jnp.abs(true))):.3f}), E_q exp(logit) = '
        f'{float(jnp.mean(jnp.exp(logit))):.3f}, disc_acc {float(metrics["disc_acc"]):.3f}')
  assert err < 0.15, err
  assert abs(float(jnp.mean(jnp.exp(logit))) - 1.0) < 0.1
  assert 0.55 < float(metrics['disc_acc']) < 0.9  # p_t and q_t overlap: not separable


def test_each_inner_update_trains_on_its_own_part_of_the_batch():
  """The K = fake_updates inner updates of one step see K disjoint parts of the batch,
  in order, which together are the whole batch (config: batch_size = K x per-update)."""
  method = _method('smoke')
  k = method.fake_updates
  assert k == 2 and method.config.train.batch_size == 2 * toy2d.SMOKE_PER_UPDATE_BATCH
  seen = []
  inner = method.fake_loss

  def spy(trainable, gen_params, batch, rng):
    jax.debug.callback(lambda x: seen.append(np.asarray(x)), batch['x'], ordered=True)
    return inner(trainable, gen_params, batch, rng)

  method.fake_loss = spy
  data = data_lib.build(method.config.data, seed=0, global_batch_size=64)
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
  jax.block_until_ready(jax.jit(method.train_step)(state, batch, jax.random.PRNGKey(1)))
  assert len(seen) == k and all(part.shape == (64 // k, 2) for part in seen)
  np.testing.assert_array_equal(np.concatenate(seen), np.asarray(batch['x']))
  shared = np.all(seen[0][:, None, :] == seen[1][None, :, :], axis=-1)
  assert not shared.any()
  with pytest.raises(ConfigError, match='multiple of method.fake_updates=3'):
    _method('smoke', **{'method.fake_updates': 3})


def test_default_ratio_pipeline_with_the_exact_logit():
  """§4 normalisation with its defaults on (logit clamp 10, r clipped to [0.1, 20],
  per-bin E_q r = 1, h / batch mean of h) and the exact logit, over two time bins:
  the per-bin running means come out at E_q[p_t / q_t] = 1; the gradient is
  (1/2) sum_b sigma_b^2 grad D_f(p_b || q_b) / ((1/2) sum_b E_q[h(r_b)]) (quadrature);
  adding a constant per bin to the logit (r -> e^c r) changes it by < 1e-3 (the
  per-bin normalisation takes the constant out; only the clip sees it)."""
  sigmas, bins, theta, scale = (0.5, 1.2), (0, 3), 0.7, 1.0
  method = _method('smoke', **_gaussian_data([0.0], 1.0), **{
      'method.divergence': 'js', 'method.gan_weight': 0.0, 'method.dm_normalize': False,
      'method.reg_weight': 0.0})
  assert (method.normalize_ratio, method.normalize_h, method.ratio_ema) == (True, True, 0.0)
  assert (method.logit_clamp, method.ratio_clip) == (10.0, (0.1, 20.0))
  n = N_SAMPLES // 8

  def sample_sigma(rng, m, full=False):
    half = jnp.arange(m) < m // 2
    return (jnp.where(half, sigmas[0], sigmas[1]).astype(jnp.float32),
            jnp.where(half, bins[0], bins[1]).astype(jnp.int32))

  method.generate = lambda p, z, rng=None, k=None, label=None: p['theta'] + p['scale'] * z
  method.sample_sigma = sample_sigma
  method.fake_denoiser = _gaussian_fake_denoiser
  params = {'theta': jnp.float32(theta), 'scale': jnp.float32(scale)}
  batch = {'x': jnp.zeros((n, 1))}
  extra = {'ratio_mean': jnp.ones((10,))}

  def grad_fn(shift):
    def logit(others, x, s, label=None):
      return _gaussian_logit(others, x, s) + jnp.where(s == sigmas[0], shift[0], shift[1])
    method.logit = logit
    return jax.jit(jax.grad(lambda p, key: method.generator_loss(
        p, {'fake_score': params}, batch, key, extra), has_aux=True))

  exact = grad_fn((0.0, 0.0))
  runs = [exact(params, jax.random.PRNGKey(i)) for i in range(8)]
  shifted = grad_fn((0.3, -0.2))
  running = np.array([np.asarray(r[1][1]) for r in runs])
  np.testing.assert_allclose(running[:, list(bins)], 1.0, atol=0.03)
  np.testing.assert_array_equal(np.delete(running, bins, axis=1), 1.0)  # untouched bins
  h_fn = divergences.weight_fn('js')
  x = jnp.linspace(-16.0, 16.0, 40001)
  mean_h = 0.0
  for s in sigmas:
    log_p, log_q = _log_normal(x, 0.0, 1.0 + s**2), _log_normal(x, theta, scale**2 + s**2)
    mean_h += 0.5 * float(jnp.trapezoid(jnp.exp(log_q) * h_fn(jnp.exp(log_p - log_q)), x))

  def reference(p):
    return 0.5 * sum(s**2 * _quadrature_divergence('js', p['theta'], p['scale'], 1.0 + s**2)
                     for s in sigmas)

  want = jax.grad(reference)(params)
  for key in ('theta', 'scale'):
    values = np.array([float(r[0][key]) for r in runs])
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - float(want[key]) / mean_h) < 4 * se + 1e-4, (
        key, values, float(want[key]) / mean_h)
  for i in range(2):
    a, b = runs[i][0], shifted(params, jax.random.PRNGKey(i))[0]
    for key in ('theta', 'scale'):
      np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=1e-3)


@pytest.mark.parametrize('gen_sigmas', [(), (80.0, 1.0, 0.3, 0.05)])
def test_backward_simulation_marginals(gen_sigmas):
  """§5 check 4: k = 0 feeds pure noise sigma_0 z; with the exact posterior-mean
  generator of N(0, s^2) data, step k's input has variance c^2 v + sigma_k^2. On the
  grid's every K-th level by default, or on the levels method.gen_sigmas gives."""
  s = 1.0
  method = _method('dmd2,multistep,smoke', **_gaussian_data([0.0], s),
                   **{'method.gen_sigmas': gen_sigmas})
  if gen_sigmas:
    np.testing.assert_allclose(method.gen_sigmas, gen_sigmas, rtol=1e-6)
  else:  # every 250th of the 1000 Karras levels
    np.testing.assert_allclose(method.gen_sigmas, method.levels[[0, 250, 500, 750]])
  method.generator = lambda p, x, sigma, label=None: s**2 / (s**2 + sigma**2) * x
  z = jax.random.normal(jax.random.PRNGKey(0), (N_SAMPLES, 1))
  sig = np.asarray(method.gen_sigmas, np.float64)
  c = s**2 / (s**2 + sig**2)
  # k = 0: output = c_0 * sigma_0 z exactly.
  np.testing.assert_allclose(method.generate(None, z, jax.random.PRNGKey(1), 0),
                             c[0] * sig[0] * z, rtol=1e-6)
  v = sig[0]**2
  for k in range(1, method.gen_steps):
    v = c[k - 1]**2 * v + sig[k]**2  # input variance at step k
    out = method.generate(None, z, jax.random.PRNGKey(1), k)
    np.testing.assert_allclose(float(jnp.var(out)), c[k]**2 * v, rtol=0.02)


def test_sampling_chain_of_some_trained_levels():
  """config.sampler.gen_sigmas: a sample's chain on chosen levels (here 3 of the 4
  trained ones). With the exact posterior-mean generator of N(0, s^2) data the output
  variance follows the same recursion over the chosen levels; bad chains are refused
  in one line."""
  s = 1.0
  trained = (80.0, 1.0, 0.3, 0.05)
  method = _method('dmd2,multistep,smoke', **_gaussian_data([0.0], s),
                   **{'method.gen_sigmas': trained})
  method.generator = lambda p, x, sigma, label=None: s**2 / (s**2 + sigma**2) * x
  method.generator_params = lambda state, use_ema=True: None
  default = method.sample(None, jax.random.PRNGKey(0), N_SAMPLES, steps=4)
  chosen = (80.0, 1.0, 0.05)
  with method.config.unlocked():
    method.config.sampler.gen_sigmas = chosen
  method.check_sampler()
  out = method.sample(None, jax.random.PRNGKey(0), N_SAMPLES, steps=3)
  v = chosen[0]**2
  for k in range(1, 3):
    v = (s**2 / (s**2 + chosen[k - 1]**2))**2 * v + chosen[k]**2
  c = s**2 / (s**2 + chosen[2]**2)
  np.testing.assert_allclose(float(jnp.var(out)), c**2 * v, rtol=0.02)
  assert abs(float(jnp.var(out)) - float(jnp.var(default))) > 1e-3  # another chain
  with pytest.raises(ConfigError, match='samples with 1..3 steps'):
    method.sample(None, jax.random.PRNGKey(0), 8, steps=4)
  for bad in ((40.0, 1.0), (80.0, 1.0, 1.0), (80.0, 0.3, 1.0)):
    with method.config.unlocked():
      method.config.sampler.gen_sigmas = bad
    with pytest.raises(ConfigError, match=r'config.sampler.gen_sigmas=.* the first '
                       r'sigma_max=80, strictly decreasing'):
      method.check_sampler()


@pytest.mark.parametrize('arg, overrides', [
    ('dmd,smoke', {}), ('dmd2,multistep,smoke', {}),
    ('f_distill,js,smoke', {'method.reg_weight': 0.5}),  # the regression on any objective
    ('dmd,smoke', {'method.reg_loss': 'pseudo_huber'})])
def test_variants_train_with_finite_losses(arg, overrides):
  method = _method(arg, **overrides)
  data = data_lib.build(method.config.data, seed=0, global_batch_size=64)
  state = jax.jit(method.init)(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, data.batch(0)))
  step = jax.jit(method.train_step)
  for i in range(4):
    state, metrics = step(state, jax.tree.map(jnp.asarray, data.batch(i)),
                          jax.random.PRNGKey(i))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(state.step) == 4
  if method.reg_weight > 0:  # the paired data made once by the teacher's ODE sampler
    assert state.extra['pair_target'].shape == (64, 2)
    assert float(metrics['reg_loss']) > 0
  x = jax.jit(lambda s, r: method.sample(s, r, 16, steps=method.gen_steps))(
      state, jax.random.PRNGKey(0))
  assert x.shape == (16, 2) and np.all(np.isfinite(x))


def test_pseudo_huber_regression_distance():
  """sqrt(|d|^2 + c^2) - c per pair: |d|^2 / 2c near 0, |d| - c far out, gradient norm < 1."""
  method = _method('dmd,smoke', **{'method.reg_loss': 'pseudo_huber', 'method.reg_huber_c': 0.1})
  target = jnp.zeros((3, 2))
  pred = jnp.array([[3e-3, -4e-3], [3.0, 4.0], [30.0, -40.0]])
  dist = np.asarray(method.regression_distance(pred, target))
  np.testing.assert_allclose(dist[0], 25e-6 / 0.2, rtol=1e-3)  # quadratic near 0
  np.testing.assert_allclose(dist[1:], [np.sqrt(25.01) - 0.1, np.sqrt(2500.01) - 0.1],
                             rtol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(method.regression_distance(p, target)))(pred)
  norms = np.linalg.norm(np.asarray(grad), axis=1)
  assert np.all(norms < 1) and norms[2] > 0.9999
  # c = 0 takes iCT's 0.00054 sqrt(dim); 'l2' stays the mean squared error over dims.
  auto = _method('dmd,smoke', **{'method.reg_loss': 'pseudo_huber'})
  c = 0.00054 * np.sqrt(2)
  np.testing.assert_allclose(np.asarray(auto.regression_distance(pred, target))[1],
                             np.sqrt(25 + c * c) - c, rtol=1e-6)
  l2 = _method('dmd,smoke')
  np.testing.assert_allclose(np.asarray(l2.regression_distance(pred, target))[1], 12.5)


def test_config_errors(tmp_path):
  with pytest.raises(ConfigError, match='needs a teacher'):
    _method('smoke', **{'teacher.analytic': ''})
  with pytest.raises(ConfigError, match='reg_weight must be >= 0'):
    _method('smoke', **{'method.reg_weight': -1.0})
  with pytest.raises(ConfigError, match="unknown method.reg_loss 'l1'; allowed: l2, pseudo_huber"):
    _method('smoke', **{'method.reg_loss': 'l1'})
  with pytest.raises(ConfigError, match='reg_huber_c must be >= 0'):
    _method('smoke', **{'method.reg_huber_c': -1.0})
  with pytest.raises(ConfigError, match='holds no run'):
    _method('smoke', **{'teacher.analytic': '', 'teacher.workdir': '/nonexistent/run'})
  with pytest.raises(ConfigError, match='Gaussian mixture'):
    _method('smoke', **{'teacher.analytic': 'moons'})
  with pytest.raises(ConfigError, match='unknown method.divergence'):
    _method('smoke', **{'method.divergence': 'kl'})
  with pytest.raises(ConfigError, match="objective name 'gan'; allowed: dmd, dmd2, f_distill"):
    _method('smoke', **{'method.objective': 'gan'})
  with pytest.raises(ConfigError, match="unknown method.disc_head 'bogus'; allowed: separate, "
                     'fake_score, teacher_features, none'):
    _method('smoke', **{'method.disc_head': 'bogus'})
  with pytest.raises(ConfigError, match='minimises reverse KL'):
    _method('dmd,smoke', **{'method.divergence': 'js'})
  with pytest.raises(ConfigError, match='gen_steps'):
    _method('smoke', **{'sampler.steps': 2})
  for bad in ((80.0, 1.0), (80.0, 1.0, 1.0, 0.1), (40.0, 1.0, 0.3, 0.1), (80.0, 1.0, 0.3, 1e-4)):
    with pytest.raises(ConfigError, match=r'method.gen_sigmas=.* must be 4 levels '
                       r'\(method.gen_steps\), the first sigma_max=80, strictly decreasing'):
      _method('multistep,smoke', **{'method.gen_sigmas': bad})
  with pytest.raises(ConfigError, match=r'teacher makes data of shape \(3,\) but config.data '
                     r"'gaussian_mixture' has shape \(2,\)"):
    _method('smoke', **{'teacher.analytic': 'gaussian_mixture',
                        'teacher.params': dict(means=[[0.0, 0.0, 0.0]], stds=1.0)})
  with pytest.raises(ConfigError, match='an analytic teacher has none'):
    _method('smoke', **{'method.disc_head': 'teacher_features'})
  with pytest.raises(ConfigError, match='class_conditional=True'):
    _method('smoke', **{'method.teacher_cfg_scale': 2.0})
  with pytest.raises(ConfigError, match="disc_head must be one of separate, fake_score"):
    _method('smoke', **{'method.disc_head': 'none'})
  with pytest.raises(ConfigError, match="unknown method.generator_schedule 'linear'; "
                     r"allowed: '' \(config.optim.schedule\), constant, cosine"):
    _method('smoke', **{'method.generator_schedule': 'linear'})
  # A run teacher whose method has no denoiser (a VAE, say): one line, at construction.
  (tmp_path / 'config.json').write_text('{}')

  class Vae(Method):
    def __init__(self):  # pylint: disable=super-init-not-called
      self.config = ml_collections.ConfigDict({'method': {'name': 'vae'}})

  vae_run = types.SimpleNamespace(method=Vae())
  with pytest.raises(ConfigError, match='a vae run has no denoiser'):
    _method('smoke', load_run=lambda workdir: vae_run,
            **{'teacher.analytic': '', 'teacher.workdir': str(tmp_path)})


def test_generator_schedule_decays_only_the_generator():
  """method.generator_schedule='cosine': the generator's LR falls to
  final_lr_fraction x lr by the last step; the fake score and discriminator keep
  optim's constant LR (and their own method.lr_<net>)."""
  overrides = {'method.generator_schedule': 'cosine', 'method.lr_generator': 2e-3,
               'method.lr_fake_score': 1e-3, 'train.num_steps': 100,
               'optim.final_lr_fraction': 0.1}
  m = _method('smoke', **overrides)
  assert float(m.lr_schedule(0)) == pytest.approx(2e-3)
  assert float(m.lr_schedule(50)) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5), rel=1e-5)
  assert float(m.lr_schedule(100)) == pytest.approx(2e-4, rel=1e-5)
  # Adam with b1 = 0 and a constant gradient moves each parameter by lr per step, so
  # one step of each net shows its LR at step 100 (the fake score: still 1e-3).
  for name, lr in (('generator', 2e-4), ('fake_score', 1e-3)):
    params = {'w': jnp.zeros((3,))}
    state = m.txs[name].init(params)
    for _ in range(100):
      _, state = m.txs[name].update({'w': jnp.ones((3,))}, state, params)
    updates, _ = m.txs[name].update({'w': jnp.ones((3,))}, state, params)
    np.testing.assert_allclose(-np.asarray(updates['w']), lr, rtol=1e-3)


def test_cosine_regression_schedule_weights_the_paired_loss_by_step():
  """method.reg_schedule='cosine': the regression weight is reg_weight at step 0,
  reg_weight x (reg_final + (1 - reg_final)/2) half way and reg_weight x reg_final at
  train.num_steps; the generator's loss at a step is the constant-weight loss with that
  weight (same key, same pairs), and its gradient follows."""
  overrides = {'method.reg_weight': 0.8, 'method.reg_final': 0.25, 'train.num_steps': 100,
               'method.gan_weight': 0.0}
  cosine = _method('dmd,smoke', **overrides, **{'method.reg_schedule': 'cosine'})
  weights = [float(cosine.reg_weight_at(s)) for s in (0, 50, 100, 400)]
  np.testing.assert_allclose(weights, [0.8, 0.8 * (0.25 + 0.75 * 0.5), 0.2, 0.2], rtol=1e-6)
  data = data_lib.build(cosine.config.data, seed=0, global_batch_size=16)
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = jax.jit(cosine.init)(jax.random.PRNGKey(0), batch)
  others = {n: p for n, p in state.params.items() if n != 'generator'}
  key = jax.random.PRNGKey(3)

  def loss(method, params, step):
    return method.generator_loss(params, others, batch, key, state.extra, step)

  (l_cos, (m_cos, _)) = loss(cosine, state.params['generator'], jnp.int32(50))
  np.testing.assert_allclose(float(m_cos['reg_weight']), weights[1], rtol=1e-6)
  for step, weight in ((50, weights[1]), (100, 0.2)):
    const = _method('dmd,smoke', **{**overrides, 'method.reg_weight': weight})
    l_c, (m_c, _) = loss(const, state.params['generator'], None)
    l_s, (m_s, _) = loss(cosine, state.params['generator'], jnp.int32(step))
    np.testing.assert_allclose(float(l_s), float(l_c), rtol=1e-5)
    np.testing.assert_allclose(float(m_s['reg_loss']), float(m_c['reg_loss']), rtol=1e-6)
    g_s = jax.grad(lambda p, c=cosine, s=step: loss(c, p, jnp.int32(s))[0])(
        state.params['generator'])
    g_c = jax.grad(lambda p, c=const: loss(c, p, None)[0])(state.params['generator'])
    for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_c)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
  assert 'reg_weight' not in loss(_method('dmd,smoke', **overrides),
                                  state.params['generator'], jnp.int32(50))[1][0]
  with pytest.raises(ConfigError, match="unknown method.reg_schedule 'step'; allowed: "
                     'constant, cosine'):
    _method('dmd,smoke', **{'method.reg_schedule': 'step'})
  with pytest.raises(ConfigError, match=r'method.reg_final is a fraction .* in \[0, 1\], got 1.5'):
    _method('dmd,smoke', **{'method.reg_final': 1.5})


def test_few_step_student_regresses_its_first_step_onto_the_pair_targets():
  """method.reg_step='first' (the default): a 4-step student's paired regression is the
  squared error of its first step G(sigma_max z) against the teacher outputs, the same
  whatever the chain's re-noising key; 'last' regresses the whole chain, whose output
  moves with that key. The generator loss carries the regression at its weight."""
  overrides = {'method.reg_weight': 0.5, 'method.gan_weight': 0.0, 'method.gen_steps': 4}
  first = _method('dmd2,multistep,smoke', **overrides)
  last = _method('dmd2,multistep,smoke', **overrides, **{'method.reg_step': 'last'})
  data = data_lib.build(first.config.data, seed=0, global_batch_size=16)
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = jax.jit(first.init)(jax.random.PRNGKey(0), batch)
  params = state.params['generator']
  noise, target = state.extra['pair_noise'][:8], state.extra['pair_target'][:8]
  sigma_max = first.gen_sigmas[0]
  expected = np.mean(np.sum((np.asarray(first.generator(params, sigma_max * noise,
                                                          sigma_max, None))
                             - np.asarray(target))**2, axis=1) / noise.shape[1])
  for seed in (1, 2):
    np.testing.assert_allclose(
        float(first.regression_loss(params, noise, target, jax.random.PRNGKey(seed))),
        expected, rtol=1e-5)
  chain = [float(last.regression_loss(params, noise, target, jax.random.PRNGKey(seed)))
           for seed in (1, 2)]
  assert chain[0] != chain[1] and abs(chain[0] - expected) > 1e-6 * abs(expected)
  np.testing.assert_allclose(
      chain[0], np.mean((np.asarray(last.generate(params, noise, jax.random.PRNGKey(1),
                                                   per_example=False)) - np.asarray(target))**2),
      rtol=1e-5)
  with pytest.raises(ConfigError, match="unknown method.reg_step 'middle'; allowed: first, last, "
                     'every'):
    _method('dmd2,multistep,smoke', **{'method.reg_step': 'middle'})


def test_few_step_student_regresses_every_step_from_the_teacher_ode_point():
  """method.reg_step='every': each pair keeps the teacher ODE's point at every level of
  the chain. For N(mu, s^2) data the ODE from sigma_max z is x(sigma) = mu +
  sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) (sigma_max z - mu), so the points
  match it; the exact flow map to sigma = 0, mu + s (x - mu) / sqrt(s^2 + sigma^2),
  then has zero regression loss at every step, while a map that is right only at
  sigma_max (all that reg_step='first' checks) does not."""
  mu, s = 0.5, 1.0
  overrides = {'method.reg_weight': 0.5, 'method.gan_weight': 0.0, 'method.gen_steps': 4,
               'method.pair_steps': 200}  # Heun error < 2e-3
  every = _method('dmd2,multistep,smoke', **_gaussian_data([mu], s), **overrides,
                  **{'method.reg_step': 'every'})
  data = data_lib.build(every.config.data, seed=0, global_batch_size=16)
  state = jax.jit(every.init)(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, data.batch(0)))
  noise, target = state.extra['pair_noise'], state.extra['pair_target']
  states = state.extra['pair_states']
  assert states.shape == (noise.shape[0], 4, 1)
  sig = np.asarray(every.gen_sigmas, np.float64)
  x_max = sig[0] * np.asarray(noise, np.float64)
  np.testing.assert_allclose(states[:, 0], x_max, rtol=1e-6)
  exact = mu + np.sqrt(s**2 + sig**2)[None, :, None] / np.hypot(s, sig[0]) * (x_max - mu)[:, None]
  np.testing.assert_allclose(states, exact, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(target, mu + s / np.hypot(s, sig[0]) * (x_max - mu), atol=2e-3)

  def flow_map(p, x, sigma, label=None, at=None):
    del p, label
    sigma = jnp.reshape(jnp.asarray(sigma if at is None else at, jnp.float32), (-1, 1))
    return mu + s * (x - mu) / jnp.sqrt(s**2 + sigma**2)

  args = (noise, target, jax.random.PRNGKey(3), states)
  every.generator = flow_map
  assert float(every.regression_loss(None, *args)) < 1e-5
  every.generator = lambda p, x, sigma, label=None: flow_map(p, x, sigma, at=sig[0])
  assert float(every.regression_loss(None, *args)) > 0.1
  first = np.mean((np.asarray(every.generator(None, x_max, sig[0])) - np.asarray(target))**2)
  assert first < 1e-5  # the 'first' regression is blind to it


def test_online_regression_targets_are_the_teacher_ode_from_the_chains_own_inputs():
  """method.reg_step='online': teachers.pf_ode_from solves the PF-ODE from per-example
  levels. For N(mu, s^2) data its solution from x at sigma is mu + s (x - mu) /
  sqrt(s^2 + sigma^2); from sigma_max for all it is pf_ode_sample's own grid. The
  exact flow map then has zero online loss at every later step, a map right only at
  sigma_max does not, and the generator loss adds it at the regression's weight."""
  mu, s = 0.5, 1.0
  overrides = {'method.reg_weight': 0.5, 'method.gan_weight': 0.0, 'method.gen_steps': 4,
               'method.online_steps': 64, 'method.online_batch': 32}
  online = _method('dmd2,multistep,smoke', **_gaussian_data([mu], s), **overrides,
                   **{'method.reg_step': 'online'})
  teacher = online.teacher.denoiser
  sig = np.asarray(online.gen_sigmas, np.float64)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 1)) * 3.0, jnp.float32)
  start = jnp.asarray(np.repeat(sig[:3], 2), jnp.float32)
  solved = teachers.pf_ode_from(teacher, x, start, steps=64)
  exact = mu + s * (np.asarray(x) - mu) / np.hypot(s, np.asarray(start))[:, None]
  np.testing.assert_allclose(solved, exact, atol=2e-3)
  same_grid = teachers.pf_ode_from(teacher, x, jnp.full((6,), 80.0), steps=18)
  np.testing.assert_allclose(same_grid, teachers.pf_ode_sample(teacher, x / 80.0, 80.0)[0],
                             rtol=1e-5, atol=1e-5)

  def flow_map(p, x, sigma, label=None, at=None):
    del p, label
    sigma = jnp.reshape(jnp.asarray(sigma if at is None else at, jnp.float32), (-1, 1))
    return mu + s * (x - mu) / jnp.sqrt(s**2 + sigma**2)

  online.generator = flow_map
  assert float(online.online_regression_loss(None, jax.random.PRNGKey(3))) < 1e-5
  online.generator = lambda p, x, sigma, label=None: flow_map(p, x, sigma, at=sig[0])
  assert float(online.online_regression_loss(None, jax.random.PRNGKey(3))) > 0.1

  real = _method('dmd2,multistep,smoke', **overrides, **{'method.reg_step': 'online'})
  data = data_lib.build(real.config.data, seed=0, global_batch_size=16)
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = jax.jit(real.init)(jax.random.PRNGKey(0), batch)
  others = {k: v for k, v in state.params.items() if k != 'generator'}
  loss, (metrics, _) = real.generator_loss(state.params['generator'], others, batch,
                                           jax.random.PRNGKey(1), state.extra)
  assert float(metrics['reg_loss_later']) > 0
  np.testing.assert_allclose(
      float(loss), float(metrics['dm_loss'] + 0.5 * (metrics['reg_loss'] +
                                                      metrics['reg_loss_later'])), rtol=1e-5)
  with pytest.raises(ConfigError, match='method.online_steps must be >= 2'):
    _method('dmd2,multistep,smoke', **{'method.reg_step': 'online', 'method.online_steps': 1})


@pytest.mark.parametrize('flag, message', [
    ('--config.teacher.analytic=', 'needs a teacher'),
    ('--config.method.disc_head=bogus', "unknown method.disc_head 'bogus'; allowed: separate, "
     'fake_score, teacher_features, none'),
])
def test_bad_input_exits_2_with_one_line_before_writing(tmp_path, flag, message):
  workdir = tmp_path / 'run'
  proc = run_cli('train', '--config=configs/distill/toy2d.py:smoke', flag,
                 f'--workdir={workdir}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert message in lines[-1], proc.stderr[-2000:]
  assert not os.path.exists(workdir / 'checkpoints')
  written = [f for _, _, files in os.walk(workdir) for f in files]
  assert not [f for f in written if not f.endswith('.lock')], written


def test_nets_return_bottleneck_features_without_changing_outputs_or_params():
  """return_features=True adds the MLP's last hidden layer / the U-Net's mid block to
  the output; the default output and the parameter tree are unchanged."""
  cases = [(nets.TimeMLP(out_dim=2, hidden=16, depth=2, emb_dim=8), (4, 2), (4, 16)),
           (nets.UNet(out_channels=1, channels=4, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=()), (2, 4, 4, 1), (2, 2, 2, 8))]
  for net, x_shape, f_shape in cases:
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    t = jnp.linspace(0.1, 0.9, x_shape[0])
    plain = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(1), x, t))['params']
    feat = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(1), x, t,
                                           return_features=True))['params']
    assert jax.tree.map(lambda a: a.shape, plain) == jax.tree.map(lambda a: a.shape, feat)
    # Random (not init's zero) weights, so that every layer reaches the output.
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape, np.float32), plain)
    out, (out2, features) = jax.jit(lambda p: (
        net.apply({'params': p}, x, t), net.apply({'params': p}, x, t,
                                                  return_features=True)))(params)
    np.testing.assert_allclose(out, out2, rtol=1e-6, atol=1e-6)
    assert float(jnp.std(out)) > 0 and features.shape == f_shape


def test_analytic_class_conditional_teacher():
  """Classes = mixture components: D(x | c) is component c's Gaussian denoiser, CFG
  interpolates/extrapolates from the mixture's (null) denoiser, and draw_labels makes
  (x0, c) an exact draw of the joint (marginal = weights, c = the true component)."""
  method = _method('cond,smoke')
  teacher, mixture = method.teacher, method.teacher.mixture
  assert method.num_classes == teacher.num_classes == 8
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (6, 2))
  sigma = jnp.array([0.05, 0.2, 0.5, 1.0, 3.0, 20.0])
  label = jnp.array([0, 1, 2, 5, 6, 7])
  var = mixture.stds[label]**2
  want = x + sigma[:, None]**2 * (mixture.means[label] - x) / (var + sigma[:, None]**2)
  np.testing.assert_allclose(teacher.denoiser(x, sigma, label), want, rtol=1e-5, atol=1e-6)
  null = mixture.noisy_denoiser(x, sigma)
  np.testing.assert_allclose(teacher.denoiser(x, sigma), null, rtol=1e-6)
  np.testing.assert_allclose(teacher.denoiser(x, sigma, label, cfg_scale=2.5),
                             null + 2.5 * (want - null), rtol=1e-4, atol=1e-5)
  k_c, k_e, k_l = jax.random.split(jax.random.PRNGKey(1), 3)
  comp = jax.random.categorical(k_c, jnp.log(mixture.weights), shape=(100_000,))
  x0 = mixture.means[comp] + mixture.stds[comp] * jax.random.normal(k_e, (100_000, 2))
  drawn = teacher.draw_labels(k_l, x0)
  freq = np.bincount(np.asarray(drawn), minlength=8) / 100_000
  np.testing.assert_allclose(freq, mixture.weights, atol=0.005)
  assert float(jnp.mean(drawn == comp)) > 0.999  # modes 0.77 apart, std 0.15


def test_class_conditional_student_trains_and_samples_with_labels():
  """cond,smoke with a guided teacher: labelled nets, finite losses, samples that
  depend on the label, and the eval's label_match."""
  method = _method('cond,smoke', **{'method.teacher_cfg_scale': 1.5})
  data = data_lib.build(method.config.data, seed=0, global_batch_size=64)
  state = jax.jit(method.init)(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, data.batch(0)))
  assert state.params['generator']['label_emb']['Embed_0']['embedding'].shape[0] == 9
  state, metrics = jax.jit(method.train_step)(state, jax.tree.map(jnp.asarray, data.batch(0)),
                                              jax.random.PRNGKey(1))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  sample = jax.jit(lambda s, label: method.sample(s, jax.random.PRNGKey(0), 16, label=label))
  x3, x5 = sample(state, 3), sample(state, 5)
  assert x3.shape == (16, 2) and np.all(np.isfinite(x3))
  assert float(jnp.max(jnp.abs(x3 - x5))) > 0  # the label reaches the generator
  scalars, _ = method.evaluate(state, jax.random.PRNGKey(0), None)
  assert 0.0 <= scalars['label_match'] <= 1.0 and scalars['modes_covered'] >= 0


@pytest.mark.slow
def test_smoke_trains_checkpoints_resumes_and_samples_in_one_step(tmp_path):
  """Through gensuite.train.run: 10 + 10 steps with a restart equal 20 straight
  steps bitwise; then `gensuite sample --steps=1` writes one-NFE samples."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  full, split = str(tmp_path / 'full'), str(tmp_path / 'split')
  config = toy2d.get_config('smoke')
  train.run(config, full)
  short = toy2d.get_config('smoke')
  short.train.num_steps = 10
  train.run(short, split)
  assert gensuite.load_run(split).step == 10
  train.run(config, split)
  a, b = gensuite.load_run(full), gensuite.load_run(split)
  assert a.step == b.step == 20
  for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  out = tmp_path / 'x.npz'
  run_cli('sample', f'--workdir={full}', '--steps=1', '--num=100', f'--out={out}')
  x = np.load(out)['samples']
  assert x.shape == (100, 2) and np.all(np.isfinite(x))
  with open(os.path.join(full, 'metrics.jsonl')) as f:
    text = f.read()
  for key in ('disc_acc', 'h_mean', 'h_std', 'fake_score_loss', 'eval/mmd',
              'eval/mode_mass_tv', 'eval/nfe'):
    assert f'"{key}"' in text, key


@pytest.mark.slow
def test_run_teacher_distills_a_diffusion_run(tmp_path):
  """A (smoke) EDM digits run as teacher: per-example sigmas match the teacher's own
  denoiser_fn, the generator and fake score start at the teacher's EMA weights, and
  the student trains through gensuite.train.run and samples in one step."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from configs.diffusion import digits as diffusion_digits  # pylint: disable=g-import-not-at-top
  from configs.distill import digits  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  from gensuite.methods import teachers  # pylint: disable=g-import-not-at-top
  teacher_dir, student_dir = str(tmp_path / 'teacher'), str(tmp_path / 'student')
  train.run(diffusion_digits.get_config('smoke'), teacher_dir)
  config = digits.get_config('smoke')
  config.teacher.workdir = teacher_dir
  teacher = teachers.build(config, data_lib.build(config.data, seed=0,
                                                  global_batch_size=16).spec,
                           load_run=gensuite.load_run)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  own = teacher.method.denoiser_fn(teacher.params)(x, 1.7)
  np.testing.assert_allclose(teacher.denoiser(x, jnp.full((3,), 1.7)), own, rtol=1e-5,
                             atol=1e-5)
  train.run(config, student_dir)
  run = gensuite.load_run(student_dir)
  assert run.step == config.train.num_steps
  y = run.sample(jax.random.PRNGKey(1), 8, steps=1)
  assert y.shape == (8, 8, 8, 1) and np.all(np.isfinite(y))
  first = jax.jit(run.method.init)(jax.random.PRNGKey(0), {'x': jnp.zeros((16, 8, 8, 1))})
  for a, b in zip(jax.tree.leaves(first.params['generator']), jax.tree.leaves(teacher.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _multistep_run_teacher(tmp_path, variant='multistep,smoke', **method_fields):
  """(config, method) of a 4-step student of a (smoke) EDM digits run."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from configs.diffusion import digits as diffusion_digits  # pylint: disable=g-import-not-at-top
  from configs.distill import digits  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  teacher_dir = str(tmp_path / 'teacher')
  train.run(diffusion_digits.get_config('smoke'), teacher_dir)
  config = digits.get_config(variant)
  config.teacher.workdir = teacher_dir
  config.method.update(method_fields)
  spec = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size).spec
  return config, distill.Distill(config, spec, load_run=gensuite.load_run)


def test_multistep_student_of_a_run_teacher_has_a_fake_copy_per_step(tmp_path):
  """From the teacher's own network the fake score is one copy of the teacher's weights
  per student step: all start at the teacher's; the fake update's chain leaves its j-th
  quarter after step j (at level sigma_j); fake_denoiser(k) runs copy k; a batch that
  does not split into equal groups is refused with the sizes that would."""
  import gensuite  # pylint: disable=g-import-not-at-top
  config, m = _multistep_run_teacher(tmp_path, reg_weight=0.0)  # no teacher pairs to make
  assert m.fake_copies and not m.step_labels and m.gen_steps == 4
  n = config.train.batch_size
  state = m.init(jax.random.PRNGKey(0), {'x': jnp.zeros((n, 8, 8, 1))})
  for copies, teacher in zip(jax.tree.leaves(state.params['fake_score']),
                             jax.tree.leaves(m.teacher.params)):
    assert copies.shape == (4,) + teacher.shape
    for k in range(4):
      np.testing.assert_array_equal(np.asarray(copies[k]), np.asarray(teacher))
  # A generator that outputs its input level: group j must come out of step j.
  stamp = types.SimpleNamespace(generator=lambda p, x, s, label=None: jnp.zeros_like(x) + s,
                                gen_sigmas=m.gen_sigmas, gen_steps=4)
  out = distill.Distill.generate_by_step(stamp, None, jnp.ones((n, 8, 8, 1)),
                                         jax.random.PRNGKey(1))
  want = np.repeat(np.asarray(m.gen_sigmas, np.float32), n // 4)
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], want, rtol=1e-6)
  # Copies that differ (the teacher's weights scaled by 1 + k / 10): k picks copy k.
  stacked = jax.tree.map(lambda p: p * (1.0 + 0.1 * jnp.arange(4.0)).reshape(
      (4,) + (1,) * (p.ndim - 1)), state.params['fake_score'])
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
  sigma = jnp.full((2,), 1.3)
  fake = jax.jit(lambda p, k: m.fake_denoiser(p, x, sigma, k=k))
  teacher = jax.jit(lambda p: m.teacher.apply(p, x, sigma))
  outs = []
  for k in (0, 3):
    one = jax.tree.map(lambda p, k=k: p * (1.0 + 0.1 * k), m.teacher.params)
    outs.append(fake(stacked, k))
    np.testing.assert_allclose(outs[-1], teacher(one), rtol=1e-5, atol=1e-5)
  assert not np.allclose(outs[0], outs[1])
  config.train.batch_size = 18
  spec = data_lib.build(config.data, seed=0, global_batch_size=18).spec
  with pytest.raises(ConfigError, match=r'microbatch \(18 = .*a multiple of 4'):
    distill.Distill(config, spec, load_run=gensuite.load_run)


def test_chain_diagnosis_follows_the_samplers_chain(tmp_path):
  """experiments/distill_chain_classes.py tracks the chain the sampler draws: its output
  after the last step is the K-NFE sample of the same key and noise, after the first the
  one-step sample; and a step's label changes and net class gains are counted exactly."""
  from experiments import distill_chain_classes as dcc  # pylint: disable=g-import-not-at-top
  config, m = _multistep_run_teacher(tmp_path, reg_weight=0.0)
  state = m.init(jax.random.PRNGKey(0), {'x': jnp.zeros((config.train.batch_size, 8, 8, 1))})
  params = state.params['generator']
  z = jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 1))
  rng = jax.random.PRNGKey(2)
  outs = np.asarray(dcc.chain_outputs(m, params, z, rng))
  assert outs.shape == (4, 6, 8, 8, 1)
  np.testing.assert_allclose(outs[-1], np.asarray(m.generate(params, z, rng)), atol=1e-6)
  first = m.generator(params, m.gen_sigmas[0] * z, m.gen_sigmas[0])
  np.testing.assert_allclose(outs[0], np.asarray(first), atol=1e-6)
  assert not np.allclose(outs[1], outs[0])  # a later step does change the sample
  before, after = np.array([1, 1, 2, 3, 3]), np.array([1, 4, 2, 4, 1])
  sure = np.array([True, True, False, False, True])
  changed, of_sure, of_unsure, gain = dcc.label_changes(before, after, sure)
  assert (changed, of_sure, of_unsure) == (0.6, 2 / 3, 0.5)
  np.testing.assert_array_equal(gain, [0, 0, 0, -2, 2, 0, 0, 0, 0, 0])


@pytest.mark.slow  # two U-Net students with a 4-step chain, about 6 min on 2 shared cores
def test_fake_copies_grad_accum_gives_the_one_batch_update(tmp_path):
  """Each step's group holds the same examples, and they get the same draws, whether the
  fake update's part is split into microbatches or not (gensuite.methods.rand)."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite.experiment import build_experiment  # pylint: disable=g-import-not-at-top
  config, _ = _multistep_run_teacher(tmp_path)
  config.train.batch_size = 32

  def steps(grad_accum):
    config.train.grad_accum = grad_accum
    exp = build_experiment(config, load_run=gensuite.load_run)
    state, out = exp.init_state(), []
    for step in range(2):
      state, metrics = exp.bare_step(state, exp.global_batch(step))
      out.append(float(metrics['loss']))
    return out, state
  loss_1, state_1 = steps(1)
  loss_2, state_2 = steps(2)
  np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
  # Every copy trained, each on its own step's outputs.
  copies = np.asarray(jax.tree.leaves(state_1.params['fake_score'])[0])
  start = np.asarray(jax.tree.leaves(_multistep_teacher_params(config))[0])
  assert all(not np.array_equal(copies[k], start) for k in range(4))
  assert not np.array_equal(copies[0], copies[3])


def _multistep_teacher_params(config):
  import gensuite  # pylint: disable=g-import-not-at-top
  return gensuite.load_run(config.teacher.workdir).state.eval_params(True)


def test_analytic_teacher_score_and_heun_sampler():
  """score = grad log p_sigma with one sigma per example; Heun on 18 levels costs 35
  NFE and reproduces the mixture's mode masses (TV within sampling error)."""
  method = _method('smoke')
  teacher, mixture = method.teacher, method.teacher.mixture
  x = 2.5 * jax.random.normal(jax.random.PRNGKey(0), (6, 2))
  sigma = jnp.array([0.01, 0.1, 0.5, 1.0, 3.0, 40.0])
  want = jax.vmap(jax.grad(mixture.noisy_log_prob))(x, sigma)
  np.testing.assert_allclose(teacher.score(x, sigma), want, rtol=1e-4, atol=1e-5)
  y, nfe = teacher.sample(jax.random.normal(jax.random.PRNGKey(1), (4000, 2)), 80.0, 18)
  assert nfe == 35
  tv, covered, _ = distances.mode_statistics(y, mixture.means, mixture.weights, mixture.stds)
  assert tv < 0.03 and covered == 8, (tv, covered)


@pytest.mark.slow  # four CLI runs, about 70 s on two cores
def test_one_and_four_devices_give_the_same_losses(tmp_path):
  """f-distill (separate discriminator) and DMD2 (GAN head on the fake score's
  bottleneck), 20 smoke steps each: the batch split over 1 or 4 devices (and over the
  inner updates) gives the same losses."""
  for variant in ('smoke', 'dmd2,smoke'):
    args = [f'--config=configs/distill/toy2d.py:{variant}', '--config.train.eval_every=0',
            '--config.train.log_every=2']
    one, four = str(tmp_path / f'{variant}_1'), str(tmp_path / f'{variant}_4')
    run_cli('train', f'--workdir={one}', *args, devices=1)
    run_cli('train', f'--workdir={four}', *args, devices=4)
    a, b = losses(one), losses(four)
    assert sorted(a) == sorted(b) and len(a) == 10, (a, b)
    print(variant, 'max relative loss difference',
          max(abs(a[k] - b[k]) / abs(a[k]) for k in a))
    np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)],
                               rtol=1e-4, err_msg=variant)


@pytest.mark.slow
def test_class_conditional_student_puts_each_label_on_its_mode():
  """A conditional DMD student of the analytic 8-mode teacher (classes = components):
  after 600 steps almost every sample lands nearest its own label's mode, and the
  label prior (the weights) gives the right mode masses."""
  config = toy2d.get_config('cond,dmd')
  method = distill.Distill(config, data_lib.build(config.data, seed=0,
                                                  global_batch_size=256).spec)
  data = data_lib.build(config.data, seed=0, global_batch_size=256)
  state = jax.jit(method.init)(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, data.batch(0)))
  step = jax.jit(method.train_step)
  for i in range(600):
    state, _ = step(state, jax.tree.map(jnp.asarray, data.batch(i)), jax.random.PRNGKey(i))
  scalars, _ = method.evaluate(state, jax.random.PRNGKey(1), None)
  print(scalars)
  assert scalars['label_match'] > 0.95, scalars
  assert scalars['mode_mass_tv'] < 0.06, scalars


@pytest.mark.slow
@pytest.mark.parametrize('head', ['teacher_head', 'fake_score_head'])
def test_class_conditional_run_teacher_with_a_feature_head(tmp_path, head):
  """A (smoke) class-conditional EDM digits run as teacher, guided at w = 1.5: its
  features come through the interceptor without changing its output, and a
  conditional student with the head on the teacher's / fake score's bottleneck
  trains through gensuite.train.run and samples given labels in one step."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from configs.diffusion import digits as diffusion_digits  # pylint: disable=g-import-not-at-top
  from configs.distill import digits  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  teacher_dir, student_dir = str(tmp_path / 'teacher'), str(tmp_path / 'student')
  train.run(diffusion_digits.get_config('cond,smoke'), teacher_dir)
  config = digits.get_config(f'f_distill,cond,{head},smoke')
  config.teacher.workdir = teacher_dir
  config.method.fake_updates = 2
  config.method.teacher_cfg_scale = 1.5  # the token's default is 1 (unguided)
  config.train.batch_size = 32
  spec = data_lib.build(config.data, seed=0, global_batch_size=32).spec
  method = distill.Distill(config, spec, load_run=gensuite.load_run)
  teacher = method.teacher
  assert teacher.num_classes == 10 and method.cfg_scale == 1.5
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  label, sigma = jnp.array([1, 4, 9]), jnp.full((3,), 1.7)
  d, features = teacher.apply(teacher.params, x, sigma, label, features=True)
  np.testing.assert_allclose(d, teacher.denoiser(x, sigma, label), rtol=1e-5, atol=1e-5)
  assert features.shape[0] == 3 and features.ndim == 4
  guided = teacher.denoiser(x, sigma, label, 1.5)
  null = teacher.denoiser(x, sigma)
  np.testing.assert_allclose(guided, null + 1.5 * (d - null), rtol=1e-4, atol=1e-4)
  train.run(config, student_dir)
  run = gensuite.load_run(student_dir)
  assert run.step == config.train.num_steps
  assert 'discriminator' in run.state.params
  y = run.sample(jax.random.PRNGKey(1), 8, steps=1, label=3)
  assert y.shape == (8, 8, 8, 1) and np.all(np.isfinite(y))


@pytest.mark.parametrize('variant', ['dmd,smoke', 'dmd2,multistep,smoke'])
def test_grad_accum_gives_the_one_batch_update(variant):
  """DMD (with its paired regression) and a 4-step DMD2 (backward simulation, GAN head):
  each inner update's part and the generator's batch split into 2 microbatches give the
  update of the unsplit batch."""
  from test_accel import _steps  # pylint: disable=g-import-not-at-top
  spec = f'configs/distill/toy2d.py:{variant}'
  loss_1, state_1 = _steps(spec)
  loss_2, state_2 = _steps(spec, train__grad_accum=2)
  np.testing.assert_allclose(loss_2, loss_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_f_distill_refuses_grad_accum_with_batch_normalisations():
  config = toy2d.get_config('smoke')
  config.train.grad_accum = 2
  with pytest.raises(ConfigError, match='normalize_ratio'):
    distill.Distill(config, data_lib.build(config.data, seed=0,
                                           global_batch_size=config.train.batch_size).spec)


def test_multistep_fake_score_and_discriminator_are_per_step():
  """A 4-step student's fake score and discriminator take the step as part of their
  label (class * gen_steps + k): one label embedding row per (class, step); a 1-step
  student, method.fake_per_step=False and the generator keep the plain labels."""
  m = _method('multistep,smoke')
  assert m.step_labels and m.gen_steps == 4
  np.testing.assert_array_equal(m.fake_label(None, 3, 2), [3, 3])
  state = m.init(jax.random.PRNGKey(0), {'x': jnp.zeros((4, 2))})
  # 4 step labels and the null label the nets keep for guidance.
  emb = lambda tree: tree['label_emb']['Embed_0']['embedding'].shape[0]
  assert emb(state.params['fake_score']) == 5 and emb(state.params['discriminator']) == 5
  assert 'label_emb' not in state.params['generator']
  cond = _method('multistep,cond,smoke')
  labels = jnp.array([0, 1, 7])
  np.testing.assert_array_equal(cond.fake_label(labels, 2, 3), [2, 6, 30])
  shared = _method('multistep,cond,smoke', **{'method.fake_per_step': False})
  assert not shared.step_labels
  np.testing.assert_array_equal(shared.fake_label(labels, 2, 3), labels)
  assert not _method('smoke').step_labels
