"""Score distillation against closed forms (ALGORITHMS.md §4 and §5, analytic checks)."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.distill import toy2d
from conftest import run_cli
from gensuite import data as data_lib
from gensuite.errors import ConfigError
from gensuite.methods import distill, divergences

N_SAMPLES = 200_000


def _method(arg='smoke', **overrides):
  config = toy2d.get_config(arg)
  with config.unlocked():
    for key, value in overrides.items():
      section, field = key.split('.')
      config[section][field] = value
  spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
  return distill.Distill(config, spec)


def _gaussian_data(mean, std):
  """Overrides that make the data (and the analytic teacher) one Gaussian."""
  return {'data.name': 'gaussian_mixture',
          'data.params': dict(means=[list(mean)], stds=std)}


def _log_normal(x, mean, var):
  return -0.5 * ((x - mean)**2 / var + jnp.log(2 * jnp.pi * var))


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
      'method.divergence': name, 'method.gan_weight': 0.0, 'method.normalize_ratio': False,
      'method.normalize_h': False, 'method.dm_normalize': False,
      'method.logit_clamp': 50.0, 'method.ratio_clip': (1e-12, 1e12)})
  v_t = lambda s: s**2 + sigma**2
  method.generate = lambda p, z, rng=None, k=None: p['theta'] + p['scale'] * z
  method.sample_sigma = lambda rng, n, full=False: (jnp.full((n,), sigma),
                                                    jnp.zeros((n,), jnp.int32))

  def fake_denoiser(p, x, s):
    return (p['scale']**2 * x + s[:, None]**2 * p['theta']) / v_t(p['scale']), None

  method.fake_denoiser = fake_denoiser
  method.logit = lambda others, x, s: (_log_normal(x, 0.0, 1.0 + sigma**2) - _log_normal(
      x, others['fake_score']['theta'], v_t(others['fake_score']['scale'])))[:, 0]
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
  f_method = _method('f_distill,reverse_kl,smoke', **{'method.gan_weight': 0.0})
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

  def generate(p, z, rng=None, k=None):  # exact samples of the data, shifted by b
    drawn['y'] = mixture.sample(rng, n)
    return drawn['y'] + p['b']

  method.generate = generate
  method.fake_denoiser = lambda p, x, s: (drawn['y'] + p['b'], None)
  # The exact ratio of the data to the shifted data, for f-distill's h(r).
  method.logit = lambda others, x, s: (mixture.noisy_log_prob(x, s) - mixture.noisy_log_prob(
      x - others['fake_score']['b'], s))
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


def test_discriminator_recovers_the_log_ratio_of_two_gaussians():
  """§4 check 3: trained briefly by the method's own loss, the discriminator's logit
  approaches log p_t - log q_t, and E_q[exp(logit)] approaches 1."""
  sigma = 0.3
  mu_q, s_q = jnp.array([1.0, 0.5]), 0.8
  method = _method('smoke', **_gaussian_data([0.0, 0.0], 1.0), **{
      'method.fake_updates': 4, 'method.lr_discriminator': 3e-3, 'net.hidden': 64})
  method.generate = lambda p, z, rng=None, k=None: mu_q + s_q * z
  method.sample_sigma = lambda rng, n, full=False: (jnp.full((n,), sigma),
                                                    jnp.zeros((n,), jnp.int32))
  dist = method.teacher.mixture
  state = jax.jit(method.init)(jax.random.PRNGKey(0), {'x': jnp.zeros((256, 2))})
  step = jax.jit(method.train_step)
  for i in range(120):
    batch = {'x': dist.sample(jax.random.PRNGKey(1000 + i), 256)}
    state, metrics = step(state, batch, jax.random.PRNGKey(i))
  x_q = mu_q + math.sqrt(s_q**2 + sigma**2) * jax.random.normal(jax.random.PRNGKey(9),
                                                                (20000, 2))
  logit = method.logit(state.params, x_q, jnp.full((20000,), sigma))
  true = (jnp.sum(_log_normal(x_q, 0.0, 1.0 + sigma**2), 1)
          - jnp.sum(_log_normal(x_q, mu_q, s_q**2 + sigma**2), 1))
  err = float(jnp.mean(jnp.abs(logit - true)))
  assert err < 0.25, err
  assert abs(float(jnp.mean(jnp.exp(logit))) - 1.0) < 0.1
  assert 0.55 < float(metrics['disc_acc']) < 0.9  # p_t and q_t overlap: not separable


def test_backward_simulation_marginals():
  """§5 check 4: k = 0 feeds pure noise sigma_0 z; with the exact posterior-mean
  generator of N(0, s^2) data, step k's input has variance c^2 v + sigma_k^2."""
  s = 1.0
  method = _method('dmd2,multistep,smoke', **_gaussian_data([0.0], s))
  method.generator = lambda p, x, sigma: s**2 / (s**2 + sigma**2) * x
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


@pytest.mark.parametrize('arg', ['dmd,smoke', 'dmd2,multistep,smoke'])
def test_variants_train_with_finite_losses(arg):
  method = _method(arg)
  data = data_lib.build(method.config.data, seed=0, global_batch_size=64)
  state = jax.jit(method.init)(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, data.batch(0)))
  step = jax.jit(method.train_step)
  for i in range(4):
    state, metrics = step(state, jax.tree.map(jnp.asarray, data.batch(i)),
                          jax.random.PRNGKey(i))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(state.step) == 4
  if 'dmd,' in arg:  # the paired data made once by the teacher's ODE sampler
    assert state.extra['pair_target'].shape == (64, 2)
    assert float(metrics['reg_loss']) > 0
  x = jax.jit(lambda s, r: method.sample(s, r, 16, steps=method.gen_steps))(
      state, jax.random.PRNGKey(0))
  assert x.shape == (16, 2) and np.all(np.isfinite(x))


def test_config_errors():
  with pytest.raises(ConfigError, match='needs a teacher'):
    _method('smoke', **{'teacher.analytic': ''})
  with pytest.raises(ConfigError, match='holds no run'):
    _method('smoke', **{'teacher.analytic': '', 'teacher.workdir': '/nonexistent/run'})
  with pytest.raises(ConfigError, match='Gaussian mixture'):
    _method('smoke', **{'teacher.analytic': 'moons'})
  with pytest.raises(ConfigError, match='unknown method.divergence'):
    _method('smoke', **{'method.divergence': 'kl'})
  with pytest.raises(ConfigError, match='minimises reverse KL'):
    _method('dmd,smoke', **{'method.divergence': 'js'})
  with pytest.raises(ConfigError, match='gen_steps'):
    _method('smoke', **{'sampler.steps': 2})


def test_missing_teacher_exits_2_before_compiling(tmp_path):
  proc = run_cli('train', '--config=configs/distill/toy2d.py:smoke',
                 '--config.teacher.analytic=', f'--workdir={tmp_path / "run"}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'needs a teacher' in proc.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


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
  tv, covered, _ = distill.mode_statistics(y, mixture.means, mixture.weights, mixture.stds)
  assert tv < 0.03 and covered == 8, (tv, covered)
