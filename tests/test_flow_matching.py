"""Flow matching against closed forms (ALGORITHMS.md §2, analytic checks)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flow_matching import digits, toy2d
from gensuite import data as data_lib
from gensuite.errors import ConfigError
from gensuite.methods import flow_matching as fm


def _method(arg='8gaussians,smoke', module=toy2d, **method_overrides):
  config = module.get_config(arg)
  config.method.update(method_overrides)
  spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
  return fm.FlowMatching(config, spec)


def _exact_velocity(x, t, m, s):
  """v*(x, t) for x0 ~ N(0, 1), x1 ~ N(m, s^2), linear path (§2 check 1)."""
  return m + (t * s**2 - (1 - t)) / ((1 - t)**2 + t**2 * s**2) * (x - t * m)


@pytest.mark.parametrize('path', ['linear', 'vp', 'cosine'])
@pytest.mark.parametrize('gamma', ['none', 'sqrt', 'quadratic'])
def test_interpolant_endpoints_and_velocity_target(path, gamma):
  method = _method(path=path, gamma=gamma)
  k0, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
  x0, x1, z = (jax.random.normal(k, (5, 2)) for k in (k0, k1, k2))
  ends = jnp.array([0.0, 1.0])
  x_ends = [method.interpolate(ends[i:i + 1].repeat(5), x0, x1, z)[0] for i in range(2)]
  tol = 5e-2 if path == 'vp' else 1e-6  # the VP path only reaches pure noise as T -> inf
  np.testing.assert_allclose(x_ends[0], x0, atol=tol)
  np.testing.assert_allclose(x_ends[1], x1, atol=1e-6)
  t = jnp.full((5,), 0.37)
  _, u = method.interpolate(t, x0, x1, z)
  h = 1e-3
  fd = (method.interpolate(t + h, x0, x1, z)[0] - method.interpolate(t - h, x0, x1, z)[0]) / (2 * h)
  np.testing.assert_allclose(u, fd, rtol=2e-3, atol=2e-3)


def test_cfm_and_fm_gradients_agree_for_a_linear_model():
  """grad L_CFM = grad L_FM: the losses differ by a constant in theta (§2 check 2)."""
  method = _method(path='linear')
  m, s, n = 1.5, 0.5, 400_000
  k0, k1, kt = jax.random.split(jax.random.PRNGKey(1), 3)
  x0 = jax.random.normal(k0, (n, 1))
  x1 = m + s * jax.random.normal(k1, (n, 1))
  t = jax.random.uniform(kt, (n,))
  xt, u = method.interpolate(t, x0, x1, jnp.zeros_like(x0))
  feats = jnp.stack([jnp.ones(n), xt[:, 0], t, xt[:, 0] * t], 1)
  theta = jnp.array([0.3, -0.2, 0.5, 0.1])
  v = feats @ theta
  v_star = _exact_velocity(xt[:, 0], t, m, s)
  g_cfm = 2 * jnp.mean(feats * (v - u[:, 0])[:, None], 0)
  g_fm = 2 * jnp.mean(feats * (v - v_star)[:, None], 0)
  se = 2 * jnp.std(feats * (v_star - u[:, 0])[:, None], 0) / np.sqrt(n)
  assert np.all(np.abs(g_cfm - g_fm) < 4 * se + 1e-6), (g_cfm, g_fm, se)


def test_score_from_exact_velocity_matches_closed_form():
  """§2 check 4: s = -(x - t m) / ((1-t)^2 + t^2 s^2) for the linear Gaussian path."""
  method = _method(path='linear')
  m, s = 2.0, 0.5
  x = jnp.linspace(-3, 3, 7)
  for t in (0.05, 0.3, 0.5, 0.8, 0.95):
    t = jnp.asarray(t)
    got = fm.score_from_velocity(method.alpha, method.beta, _exact_velocity(x, t, m, s), x, t)
    want = -(x - t * m) / ((1 - t)**2 + t**2 * s**2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_contrastive_minimizer_is_affine_in_the_fm_minimizer():
  """§2.5/§2 check 5: c_dFM = (c_FM - [lambda E u~, 0]) / (1 - lambda) at fixed t."""
  lam, m, s, n = 0.3, 1.5, 0.5, 50_000

  def minimizer(weight):
    method = _method(path='linear', contrastive_weight=weight)
    method._sample_t = lambda rng, k: jnp.full((k,), 0.5)
    method._apply = lambda p, x, t, label=None, **kw: (p[0] + p[1] * x, None)
    x1 = m + s * jax.random.normal(jax.random.PRNGKey(2), (n, 1))
    loss = lambda p: method.loss(p, {'x': x1}, jax.random.PRNGKey(3))[0]
    g = jax.grad(loss)(jnp.zeros(2))
    return -jnp.linalg.solve(jax.hessian(loss)(jnp.zeros(2)), g)

  c_fm, c_dfm = minimizer(0.0), minimizer(lam)
  want = (c_fm - jnp.array([lam * m, 0.0])) / (1 - lam)  # E u~ = E x1 - E x0 = m
  np.testing.assert_allclose(c_dfm, want, atol=0.03)


def test_ot_assignment_is_sorted_matching_in_1d_and_beats_identity():
  k0, k1 = jax.random.split(jax.random.PRNGKey(4))
  a = jax.random.normal(k0, (64, 1))
  b = 3 + jax.random.normal(k1, (64, 1))
  perm = np.asarray(fm.ot_assignment(a, b))
  assert sorted(perm) == list(range(64))
  np.testing.assert_array_equal(np.argsort(np.argsort(a[:, 0])),
                                np.argsort(np.argsort(b[perm, 0])))
  a, b = jax.random.normal(k0, (128, 5)), jax.random.normal(k1, (128, 5))
  perm = np.asarray(fm.ot_assignment(a, b))
  assert sorted(perm) == list(range(128))
  assert jnp.sum((a - b[perm])**2) < jnp.sum((a - b)**2)
  batched = jax.jit(fm.ot_assignment)(a, b)  # also under jit
  np.testing.assert_array_equal(batched, perm)


@pytest.mark.parametrize('arg, module', [
    ('8gaussians,smoke', toy2d), ('moons,vp,ot,smoke', toy2d), ('grid,cosine,smoke', toy2d),
    ('checkerboard,si,smoke', toy2d), ('smoke,contrastive', digits), ('smoke,cond,ot', digits),
])
def test_every_variant_trains_and_samples(arg, module):
  method = _method(arg, module)
  config = method.config
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = method.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(method.train_step)
  losses = []
  for i in range(12):
    state, metrics = step(state, jax.tree.map(jnp.asarray, data.batch(i % 2)),
                          jax.random.PRNGKey(i))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  x = method.sample(state, jax.random.PRNGKey(0), 4, sampler='euler', steps=3)
  assert x.shape == (4,) + tuple(data.spec.shape) and np.all(np.isfinite(x))
  score = method.score_fn(state.params)(x, 0.5)
  assert score.shape == x.shape


def test_bad_method_settings_raise_config_error():
  with pytest.raises(ConfigError, match='linear'):
    _method(path='straight')
  with pytest.raises(ConfigError, match='ot'):
    _method(coupling='sinkhorn')
  with pytest.raises(ConfigError, match='stochastic interpolant'):
    _method(denoiser_head=True)
  with pytest.raises(ConfigError, match='labelled'):
    _method(class_conditional=True)
