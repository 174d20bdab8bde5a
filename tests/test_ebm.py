"""The EBM method: energies with exact normalisers, config checks, the shared loop,
resume, and 1- vs 4-device agreement."""
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, run_cli
from gensuite import data as data_lib
from gensuite import methods, nets
from gensuite.errors import ConfigError
from gensuite.train import loop


def _config(path, arg):
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _build(config):
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  return methods.build(config, data.spec), data


def test_gmm_energy_log_partition_is_exact_by_quadrature():
  net = nets.GMMEnergy(data_dim=1, num_components=3, learn_log_stds=True,
                       freeze_first_logit=True)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))['params']
  params = {'means': jnp.array([[-2.0], [0.5], [3.0]]), 'logits': jnp.array([0.7, -1.2]),
            'log_stds': jnp.array([0.1, -0.5, 0.3])}
  grid = np.linspace(-15.0, 15.0, 60001)
  u = np.asarray(net.apply({'params': params}, jnp.asarray(grid[:, None])), np.float64)
  numeric = math.log(np.sum(np.exp(-u)) * (grid[1] - grid[0]))
  exact = float(net.apply({'params': params}, method='log_partition'))
  assert exact == pytest.approx(numeric, abs=1e-4)
  # Exact sampling: component frequencies follow softmax([0, 0.7, -1.2]).
  x = net.apply({'params': params}, jax.random.PRNGKey(1), 40000, method='sample_init')
  w = np.asarray(jax.nn.softmax(jnp.array([0.0, 0.7, -1.2])))
  frac_right = float(jnp.mean(x[:, 0] > 1.8))  # third component, s = e^0.3 at 3.0
  p_right = sum(w[m] * 0.5 * math.erfc((1.8 - mu) / (s * math.sqrt(2)))
                for m, (mu, s) in enumerate([(-2.0, math.exp(0.1)), (0.5, math.exp(-0.5)),
                                             (3.0, math.exp(0.3))]))
  assert frac_right == pytest.approx(p_right, abs=4 * math.sqrt(p_right / 40000) + 1e-3)


def test_neural_energy_starts_as_its_gaussian_and_knows_its_log_z():
  config = _config('configs/ebm/toy2d.py', 'smoke')
  method, data = _build(config)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
  u = method.energy_fn(state.params)(x)
  np.testing.assert_allclose(u, 0.5 * jnp.sum(x**2, 1) / 9.0, rtol=1e-6)
  assert float(state.extra['log_z0']) == pytest.approx(math.log(2 * math.pi * 9.0))
  grid = float(method.grid_log_partition(state.params))
  assert grid == pytest.approx(math.log(2 * math.pi * 9.0), abs=1e-3)
  w = state.extra['walkers']
  assert w.shape == (128, 2)
  assert float(jnp.std(w)) == pytest.approx(3.0, rel=0.15)


@pytest.mark.parametrize('field,value', [
    ('method.estimator', 'nce'), ('method.resampler', 'stratified'),
    ('method.resample_threshold', 1.5), ('method.step_size', -0.1),
    ('method.num_walkers', 0), ('net.name', 'mlp'), ('sampler.name', 'heun'),
    ('method.walker_move', 'hmc'), ('method.log_z_walkers', -1),
    ('method.log_z_move', 'hmc')])
def test_bad_config_raises_config_error_at_construction(field, value):
  config = _config('configs/ebm/gmm.py', 'smoke')
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ConfigError):
    _build(config)


def test_log_z_estimate_tracks_the_exact_gmm_log_partition():
  config = _config('configs/ebm/gmm.py', 'smoke')
  config.train.num_steps = 40
  config.method.num_walkers = 2000
  config.optim.lr = 0.05
  method, data = _build(config)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  step = jax.jit(method.train_step)
  rows = []
  for s in range(40):
    state, m = step(state, data.batch(s), jax.random.PRNGKey(100 + s))
    rows.append((float(m['log_z']), float(m['exact_log_z'])))
  est, exact = np.array(rows).T
  assert exact[-1] - exact[0] > 0.1          # the normaliser did move
  np.testing.assert_allclose(est, exact, atol=0.03)


@pytest.mark.parametrize('estimator', ['cd', 'pcd', 'ula_unweighted'])
def test_baselines_keep_uniform_weights(estimator):
  config = _config('configs/ebm/gmm.py', f'smoke,{estimator}')
  method, data = _build(config)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  for s in range(3):
    state, m = jax.jit(method.train_step)(state, data.batch(s), jax.random.PRNGKey(s))
  assert float(m['ess']) == pytest.approx(1.0)
  assert np.all(np.asarray(state.extra['log_weights']) == 0.0)
  assert np.isfinite(float(m['loss']))


@pytest.mark.parametrize('path', ['configs/ebm/toy2d.py', 'configs/ebm/digits.py'])
def test_smoke_configs_train_through_the_loop(path, tmp_path):
  config = _config(path, 'smoke')
  state = loop.run(config, str(tmp_path / 'run'))
  assert int(state.step) == config.train.num_steps
  assert os.path.isdir(tmp_path / 'run' / 'samples')
  assert np.all(np.isfinite(np.asarray(state.extra['walkers'])))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_train_run_checkpoints_and_resume_equals_uninterrupted(tmp_path):
  config = _config('configs/ebm/gmm.py', 'smoke')
  config.train.eval_every = 0
  config.method.resample_threshold = 0.99   # make resampling happen in 20 steps
  full = loop.run(config, str(tmp_path / 'full'))
  part = str(tmp_path / 'part')
  config.train.num_steps = 10
  loop.run(config, part)
  assert sorted(os.listdir(os.path.join(part, 'checkpoints'))) == ['10']
  config.train.num_steps = 20
  resumed = loop.run(config, part)
  assert int(full.step) == int(resumed.step) == 20
  assert int(full.extra['num_resamples']) > 0
  for a, b in zip(_leaves(full), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_one_and_four_devices_agree_and_sample_cli(tmp_path):
  args = ['--config=configs/ebm/gmm.py:smoke', '--config.train.eval_every=0',
          '--config.method.resample_threshold=0.99']
  one, four = str(tmp_path / 'one'), str(tmp_path / 'four')
  run_cli('train', f'--workdir={one}', *args, devices=1)
  run_cli('train', f'--workdir={four}', *args, devices=4)
  import gensuite  # pylint: disable=g-import-not-at-top
  a, b = gensuite.load_run(one), gensuite.load_run(four)
  np.testing.assert_allclose(np.asarray(a.state.extra['walkers']),
                             np.asarray(b.state.extra['walkers']), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(a.state.extra['log_weights']),
                             np.asarray(b.state.extra['log_weights']), atol=1e-3)
  assert int(a.state.extra['num_resamples']) == int(b.state.extra['num_resamples'])
  for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  out = str(tmp_path / 's.npz')
  run_cli('sample', f'--workdir={four}', '--num=50', '--sampler=mala', '--steps=5',
          f'--out={out}', devices=4)
  samples = np.load(out)['samples']
  assert samples.shape == (50, 5) and np.all(np.isfinite(samples))
  # `gensuite eval` overrides reach the method: an AIS log Z next to the exact one.
  proc = run_cli('eval', f'--workdir={one}', '--config.eval.ais_temps=100',
                 '--config.eval.ais_chains=128', '--config.eval.num_samples=64')
  got = dict(line.split(': ') for line in proc.stdout.splitlines() if line.startswith('eval/'))
  ais_z, exact = float(got['eval/ais_log_z']), float(got['eval/exact_log_z'])
  assert abs(ais_z - exact) < 3 * float(got['eval/ais_log_z_stderr']) + 2e-3


def _toy_steps(overrides, steps, seed=0):
  config = _config('configs/ebm/toy2d.py', 'smoke')
  for path, value in overrides.items():
    section, key = path.split('.')
    config[section][key] = value
  method, data = _build(config)
  state = method.init(jax.random.PRNGKey(seed), data.batch(0))
  step = jax.jit(method.train_step)
  for s in range(steps):
    state, _ = step(state, data.batch(s), jax.random.PRNGKey(1000 + s))
  return method, state


def test_a_separate_log_z_population_leaves_training_unchanged():
  _, plain = _toy_steps({}, 4)
  _, with_z = _toy_steps({'method.log_z_walkers': 64}, 4)
  for key in ('walkers', 'log_weights', 'log_z_offset'):
    np.testing.assert_array_equal(plain.extra[key], with_z.extra[key])
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(with_z.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('move', ['ula', 'mala'])
def test_separate_population_removes_the_coupled_walkers_log_z_drift(move):
  # The coupled estimate is biased low: theta' raises the energy at the very walkers its
  # gradient used, so their increments understate Z'/Z every step (measured: gap -0.38
  # at lr 3e-3 with 256 walkers after 200 steps; -1.77 at lr 1e-2). The separate
  # population never enters the gradient (measured gap +0.014).
  method, state = _toy_steps({'method.num_walkers': 256, 'method.log_z_walkers': 1024,
                              'optim.lr': 3e-3, 'method.walker_move': move}, 200)
  ex = jax.device_get(state.extra)
  quadrature = float(method.grid_log_partition(state.params))
  coupled = float(ex['log_z0'] + ex['log_z_offset'] +
                  jax.scipy.special.logsumexp(ex['log_weights']) - math.log(256))
  assert abs(float(method.log_z(ex)) - quadrature) < 0.08
  assert coupled < quadrature - 0.15


def test_an_ema_tracking_log_z_population_is_exact_for_the_ema_energy():
  """method.log_z_ema: the separate population follows the parameters' EMA, whose
  energy moves far less per step than the noisy Adam iterate: training is unchanged
  (bitwise), the estimate is of the EMA energy (quadrature of the EMA params), and
  its weights degenerate less (fewer resamplings than the population that follows the
  trained params)."""
  common = {'method.num_walkers': 256, 'method.log_z_walkers': 1024, 'optim.lr': 3e-3,
            'optim.ema_decays': (0.99,), 'method.walker_move': 'ula'}
  m_raw, raw = _toy_steps(common, 200)
  m_ema, ema = _toy_steps({**common, 'method.log_z_ema': 0.99}, 200)
  for a, b in zip(jax.tree.leaves(raw.params), jax.tree.leaves(ema.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(raw.extra['walkers'], ema.extra['walkers'])
  _, zmala = _toy_steps({**common, 'method.log_z_ema': 0.99, 'method.log_z_move': 'mala'}, 5)
  _, short = _toy_steps(common, 5)
  np.testing.assert_array_equal(zmala.extra['walkers'], short.extra['walkers'])
  assert not np.array_equal(zmala.extra['z_walkers'], short.extra['z_walkers'])
  ema_params = ema.ema['0.99']
  quad_ema = float(m_ema.grid_log_partition(ema_params))
  quad_raw = float(m_ema.grid_log_partition(ema.params))
  assert abs(float(m_ema.log_z(jax.device_get(ema.extra))) - quad_ema) < 0.05
  assert abs(quad_ema - quad_raw) > 0.05  # the two energies differ: the check has teeth
  def degeneracy(state):  # resamplings so far plus the current weights' 1 - ESS / N
    ex = jax.device_get(state.extra)
    w = ex['z_log_weights']
    ess = math.exp(2 * jax.scipy.special.logsumexp(w) - jax.scipy.special.logsumexp(2 * w))
    return int(ex['z_num_resamples']) + 1.0 - ess / w.shape[0]
  assert degeneracy(ema) < 0.5 * degeneracy(raw), (degeneracy(ema), degeneracy(raw))
  with pytest.raises(ConfigError, match=r'method.log_z_ema=0.9 must be one of '
                     r'optim.ema_decays \(0.99\), or 0'):
    _toy_steps({**common, 'method.log_z_ema': 0.9}, 0)
  with pytest.raises(ConfigError, match='set method.log_z_walkers > 0'):
    _toy_steps({**common, 'method.log_z_walkers': 0, 'method.log_z_ema': 0.99}, 0)


@pytest.mark.parametrize('spec, overrides, needle', [
    ('configs/ebm/digits.py:smoke', ['--config.data.name=moons'],
     "net 'energy_conv' needs image data.*use net.name='energy_mlp'"),
    ('configs/ebm/toy2d.py:smoke', ['--config.data.name=digits'],
     "net 'energy_mlp' needs vector data.*use net.name='energy_conv'"),
    ('configs/ebm/toy2d.py:smoke', ['--config.method.step_size=0'],
     'method.step_size must be a positive number'),
    ('configs/ebm/toy2d.py:smoke', ['--config.method.num_walkers=-5'],
     'method.num_walkers must be a positive integer'),
    ('configs/ebm/digits.py:smoke', ['--config.net.pool=max'],
     "unknown net.pool 'max'; allowed: mean, flatten"),
    ('configs/ebm/digits.py:smoke', ['--config.method.data_noise=-0.1'],
     r'method.data_noise .* must be a finite number >= 0'),
])
def test_bad_ebm_input_is_one_line_exit_2_and_writes_nothing(spec, overrides, needle, tmp_path):
  import re  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'never'
  proc = run_cli('train', f'--config={spec}', f'--workdir={workdir}', *overrides, check=False)
  assert proc.returncode == 2, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and re.search(needle, proc.stderr)
  assert not workdir.exists()


def test_mnist_config_trains_on_tfds_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _config('configs/ebm/mnist.py', 'smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=16):
    state = loop.run(config, str(tmp_path / 'run'))
  assert int(state.step) == config.train.num_steps
  assert state.extra['walkers'].shape == (16, 28, 28, 1)
  assert state.extra['z_walkers'].shape == (8, 28, 28, 1)
  assert np.all(np.isfinite(np.asarray(state.extra['walkers'])))


def test_denoised_samples_are_tweedies_posterior_mean_for_a_gaussian_mixture():
  """With method.data_noise = sigma the model is of the data convolved with N(0, sigma^2).
  For a mixture whose noisy components are N(a_m, s_m^2 + sigma^2), E[x0 | x] is
  sum_m w_m(x) (a_m + s_m^2 / (s_m^2 + sigma^2) (x - a_m)), w_m the posterior weights."""
  config = _config('configs/ebm/gmm.py', 'smoke')
  config.net.learn_log_stds = True
  config.method.data_noise = 0.5
  method, data = _build(config)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  d = method.data_shape[-1]
  m = state.params['means'].shape[0]
  rng = np.random.default_rng(0)
  means = rng.normal(size=(m, d)).astype(np.float32)
  clean_std = np.linspace(0.3, 0.8, m).astype(np.float32)
  noisy_std = np.sqrt(clean_std**2 + 0.25)
  params = dict(state.params, means=jnp.asarray(means),
                log_stds=jnp.asarray(np.log(noisy_std)))
  x = rng.normal(size=(7, d)).astype(np.float32) * 1.5
  got = np.asarray(method.denoise(params, jnp.asarray(x)), np.float64)
  logits = np.concatenate([[0.0], np.asarray(params['logits'], np.float64)])
  sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
  logw = logits - 0.5 * sq / noisy_std**2 - d * np.log(noisy_std)
  w = np.exp(logw - logw.max(1, keepdims=True))
  w /= w.sum(1, keepdims=True)
  shrink = (clean_std**2 / noisy_std**2)[None, :, None]
  want = (w[..., None] * (means[None] + shrink * (x[:, None] - means[None]))).sum(1)
  np.testing.assert_allclose(got, want, atol=2e-5)
  # Training adds the noise to the data term only: a noisy batch differs from the clean one.
  step = jax.jit(method.train_step)
  _, m1 = step(state, data.batch(0), jax.random.PRNGKey(3))
  config.method.data_noise = 0.0
  clean, _ = _build(config)
  _, m0 = jax.jit(clean.train_step)(state, data.batch(0), jax.random.PRNGKey(3))
  assert float(m1['data_energy']) != pytest.approx(float(m0['data_energy']), abs=1e-4)


def test_cd_samples_start_from_the_initial_model_not_from_its_data_started_chains():
  config = _config('configs/ebm/toy2d.py', 'smoke,cd')
  method, data = _build(config)
  state = method.init(jax.random.PRNGKey(0), data.batch(0))
  state, _ = jax.jit(method.train_step)(state, data.batch(0), jax.random.PRNGKey(1))
  walkers = np.asarray(state.extra['walkers'])
  x = np.asarray(method.sample(state, jax.random.PRNGKey(2), 64, steps=1,
                               step_size=1e-8))
  # One step of h = 1e-8 barely moves a point: every sample is a fresh prior draw
  # (std 3 on the toy), none of them a CD chain (which sit on the data).
  dist = np.min(np.linalg.norm(x[:, None] - walkers[None], axis=-1), axis=1)
  assert np.all(dist > 1e-3)
  assert float(np.std(x)) == pytest.approx(3.0, rel=0.3)
