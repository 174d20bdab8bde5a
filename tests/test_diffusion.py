"""Diffusion (EDM / VP / VE) against Gaussian closed forms (ALGORITHMS.md §1 checks)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.diffusion import digits, toy2d
from conftest import run_cli
from gensuite import data as data_lib
from gensuite import train
from gensuite.errors import ConfigError
from gensuite.methods import diffusion

FORMULATIONS = ('edm', 'vp', 've')


def _method(arg='smoke', module=toy2d, data=None, **method_overrides):
  config = module.get_config(arg)
  config.method.update(method_overrides)
  if data is not None:
    config.data.name, config.data.params = data
  spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
  return diffusion.Diffusion(config, spec)


def _wiener(x, sigma, mu, s):
  """E[x0 | x0 + sigma eps = x] for x0 ~ N(mu, s^2)."""
  return mu + s**2 / (s**2 + sigma**2) * (x - mu)


class _OracleNet:
  """Stands in for the network: the exact minimiser of each formulation's loss.

  It sees only what the real network sees (its scaled input and noise condition), so
  the method's own conversions are what turn it back into a denoiser.
  """

  def __init__(self, method, mu, s):
    self.m, self.mu, self.s = method, mu, s

  def apply(self, variables, x_in, cond, label=None, train=False, rngs=None):
    del variables, label, train, rngs
    m, mu, s = self.m, self.mu, self.s
    cond = cond.reshape((-1,) + (1,) * (x_in.ndim - 1))
    if m.formulation == 'edm':
      sigma = jnp.exp(4.0 * cond)
      c_skip, c_out, c_in, _ = diffusion.edm_preconditioning(sigma, m.sigma_data)
      x = x_in / c_in
      return (_wiener(x, sigma, mu, s) - c_skip * x) / c_out
    if m.formulation == 'vp':
      a, b = m.path.a(cond), m.path.b(cond)
      return (x_in - a * _wiener(x_in / a, b / a, mu, s)) / b
    sigma = m.path.sigma(cond)
    x = x_in * jnp.sqrt(1.0 + sigma**2)
    return (x - _wiener(x, sigma, mu, s)) / sigma


def test_edm_preconditioning_identity():
  sigma = jnp.geomspace(1e-3, 100.0, 50)
  for sigma_data in (0.5, 1.0):
    _, c_out, _, _ = diffusion.edm_preconditioning(sigma, sigma_data)
    np.testing.assert_allclose(diffusion.edm_weight(sigma, sigma_data) * c_out**2, 1.0,
                               rtol=1e-5)


def test_edm_optimal_raw_output_is_zero_when_data_std_is_sigma_data():
  """mu = 0, s = sigma_data: c_skip is the Wiener filter, so F* = 0 (§1 check 1)."""
  m = _method(sigma_data=0.7)
  oracle = _OracleNet(m, 0.0, 0.7)
  sigma = jnp.geomspace(0.01, 50.0, 7)
  _, _, c_in, c_noise = diffusion.edm_preconditioning(sigma, 0.7)
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 2)) * 3.0
  np.testing.assert_allclose(oracle.apply(None, c_in[:, None] * x, c_noise), 0.0, atol=1e-5)


@pytest.mark.parametrize('formulation', FORMULATIONS)
def test_denoiser_fn_is_the_closed_form_in_the_ve_frame(formulation):
  """Each formulation's exact optimum, read through denoiser_fn, is E[x0 | x0 + sigma eps]."""
  mu, s = 0.8, 0.6
  m = _method(formulation=formulation)
  m.net = _OracleNet(m, mu, s)
  fn = m.denoiser_fn(None)
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  for sigma in (0.02, 0.3, 1.0, 5.0, 40.0):
    np.testing.assert_allclose(fn(x * (1 + sigma), sigma),
                               _wiener(x * (1 + sigma), sigma, mu, s), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('formulation', FORMULATIONS)
def test_loss_at_the_optimal_denoiser_equals_its_analytic_minimum(formulation):
  """EDM: lambda s^2 sigma^2 / (s^2 + sigma^2) (= 1 when s = sigma_data); VP / VE
  (eps-prediction DSM): s^2 / (s^2 + sigma^2) per dimension, with sigma = b_t / a_t."""
  mu, s = 0.5, 0.5
  m = _method(formulation=formulation, sigma_data=0.5)
  m.net = _OracleNet(m, mu, s)
  x0 = mu + s * jax.random.normal(jax.random.PRNGKey(2), (20000, 2))
  loss, sigma = m.per_example_loss(None, x0, jax.random.PRNGKey(3), train=False)
  if formulation == 'edm':
    expected = diffusion.edm_weight(sigma, m.sigma_data) * s**2 * sigma**2 / (s**2 + sigma**2)
  else:
    expected = s**2 / (s**2 + sigma**2)
  err = np.asarray(loss - expected)
  se = err.std() / np.sqrt(err.size)
  assert abs(err.mean()) < 4 * se, (err.mean(), se)
  if formulation == 'edm':  # s = sigma_data = 0.5: the minimum is exactly 1 for all sigma
    np.testing.assert_allclose(expected, 1.0, rtol=1e-5)
    assert abs(float(loss.mean()) - 1.0) < 4 * float(loss.std()) / np.sqrt(loss.size)


def _denoiser_error(m, params, mu, s):
  fn = m.denoiser_fn(params)
  x0 = mu + s * jax.random.normal(jax.random.PRNGKey(7), (512, 1))
  eps = jax.random.normal(jax.random.PRNGKey(8), (512, 1))
  errs = []
  for sigma in (0.05, 0.2, 0.5, 1.0, 2.0):
    x = x0 + sigma * eps
    errs.append(float(jnp.mean((fn(x, sigma) - _wiener(x, sigma, mu, s))**2)))
  return float(np.mean(errs))


def test_edm_training_on_a_gaussian_approaches_the_closed_form():
  """400 Adam steps on N(1, 0.5^2) data cut the denoiser's mean squared error to the
  Wiener filter by more than 10x (measured: 0.279 -> 0.0028, 100x)."""
  mu, s = 1.0, 0.5
  config = toy2d.get_config('smoke')
  config.data.name, config.data.params = 'gaussian_mixture', {'means': [[mu]], 'stds': s}
  config.method.sigma_data = 0.5
  config.net.hidden, config.net.depth, config.net.emb_dim = 64, 2, 32
  config.train.num_steps, config.train.batch_size = 400, 256
  config.optim.lr, config.optim.schedule, config.optim.warmup_steps = 3e-3, 'constant', 0
  data = data_lib.build(config.data, seed=0, global_batch_size=256)
  m = diffusion.Diffusion(config, data.spec)
  state = m.init(jax.random.PRNGKey(0), data.batch(0))
  before = _denoiser_error(m, state.params, mu, s)

  @jax.jit
  def run(state, xs):
    def body(st, xi):
      x, i = xi
      st, _ = m.train_step(st, {'x': x}, jax.random.fold_in(jax.random.PRNGKey(1), i))
      return st, None
    return jax.lax.scan(body, state, (xs, jnp.arange(xs.shape[0])))[0]

  xs = mu + s * jax.random.normal(jax.random.PRNGKey(5), (400, 256, 1))
  state = run(state, xs)
  after = _denoiser_error(m, state.params, mu, s)
  print(f'EDM denoiser MSE to the Wiener filter: {before:.4g} -> {after:.4g} '
        f'({before / after:.1f}x)')
  assert after < before / 10, (before, after)


def test_cfg_scale_one_is_the_conditional_model():
  m = _method('cond,smoke', module=digits)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  label = jnp.array([0, 3, 5, 9])
  params = jax.jit(m.init)(jax.random.PRNGKey(1), {'x': x, 'label': label}).params
  # Perturb the zero-initialised output layers so that labels change the output.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  sigma = 0.7

  @jax.jit
  def outputs(params):
    cond = m.denoise(params, x, sigma, label)
    null = m.denoise(params, x, sigma, jnp.full_like(label, 10))
    return (cond, null, m.denoiser_fn(params, label, 1.0)(x, sigma),
            m.denoiser_fn(params, label, 3.0)(x, sigma))

  cond, null, scale_one, scale_three = outputs(params)
  assert float(jnp.max(jnp.abs(cond - null))) > 1e-3
  np.testing.assert_array_equal(scale_one, cond)
  np.testing.assert_allclose(scale_three, null + 3.0 * (cond - null), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('override, match', [
    (dict(formulation='ddpm'), 'formulation'),
    (dict(weighting='likelihood'), 'weighting'),
    (dict(sigma_data=0.0), 'sigma_data'),
    (dict(sigma_min=60.0), 'sigma_min'),
])
def test_bad_config_raises_config_error(override, match):
  with pytest.raises(ConfigError, match=match):
    _method(**override)


def test_sigma_grids_decrease_to_zero():
  for formulation in FORMULATIONS:
    grid = _method(formulation=formulation).sigma_grid(10)
    assert grid.shape == (11,) and grid[-1] == 0.0 and np.all(np.diff(grid) < 0)
  np.testing.assert_allclose(_method().sigma_grid(18)[[0, -2]], [80.0, 0.002])


@pytest.mark.slow
def test_smoke_run_trains_then_samples_with_several_samplers(tmp_path):
  """About 100 s on a loaded 2-core CPU: four `gensuite sample` processes."""
  workdir = str(tmp_path / 'run')
  config = toy2d.get_config('smoke')
  train.run(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert 'eval/mmd' in f.read()
  for sampler in ('euler', 'heun', 'dpm_solver_2m', 'edm_stochastic'):
    out = str(tmp_path / f'{sampler}.npz')
    run_cli('sample', f'--workdir={workdir}', '--num=32', f'--sampler={sampler}',
            '--steps=6', f'--out={out}')
    x = np.load(out)['samples']
    assert x.shape == (32, 2) and np.all(np.isfinite(x))


@pytest.mark.parametrize('variant', ['', 'vp', 'edm,cond'])
def test_cifar10_config_builds_a_38m_unet_from_abstract_shapes(variant):
  """The paper-scale config builds (no data, no compile): parameter count from
  jax.eval_shape of init on a mocked CIFAR-10 spec."""
  from configs.diffusion import cifar10  # pylint: disable=g-import-not-at-top
  config = cifar10.get_config(variant) if variant else cifar10.get_config()
  spec = data_lib.DataSpec(name='cifar10', kind='image', shape=(32, 32, 3), num_classes=10)
  m = diffusion.Diffusion(config, spec)
  batch = {'x': jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((2,), jnp.int32)}
  state = jax.eval_shape(m.init, jax.random.PRNGKey(0), batch)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  assert 38.0e6 < count < 38.7e6, count
  assert config.train.batch_size in (128, 512)
