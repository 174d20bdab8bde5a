"""Flow matching against closed forms (ALGORITHMS.md §2, analytic checks)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
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


def _interpolant_velocity(method, m, s):
  """The exact velocity b(t, x) = E[alpha' x0 + beta' x1 + gamma' z | x_t = x] for
  x0, z ~ N(0, 1) and x1 ~ N(m, s^2) independent, on the method's own interpolant.

  Everything is jointly Gaussian: with r = (x - beta m) / var, var = alpha^2 +
  beta^2 s^2 + gamma^2, E[x0 | x] = alpha r, E[x1 | x] = m + beta s^2 r and
  E[z | x] = gamma r (the covariances of x0, x1, z with x_t over var).
  """
  def velocity(x, t):
    t = jnp.asarray(t, x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    (a, da), (b, db), (g, dg) = (jax.jvp(f, (t,), (jnp.ones_like(t),))
                                 for f in (method.alpha, method.beta, method.gamma))
    r = (x - b * m) / (a**2 + b**2 * s**2 + g**2)
    return da * a * r + db * (m + b * s**2 * r) + dg * g * r
  return velocity


def _with_exact_velocity(m, s, **method_overrides):
  """A method whose "network" is the exact velocity of N(m, s^2) data (no head)."""
  method = _method(**method_overrides)
  velocity = _interpolant_velocity(method, m, s)
  method._apply = lambda params, x, t, label=None, **kw: (velocity(x, t), None)
  return method


def _gaussian_score(method, x, t, m, s):
  """grad log p_t(x) = -(x - beta m) / (alpha^2 + gamma^2 + beta^2 s^2)."""
  a, b, g = method.alpha(t), method.beta(t), method.gamma(t)
  return -(x - b * m) / (a**2 + g**2 + b**2 * s**2)


def test_score_from_exact_velocity_matches_closed_form():
  """§2 check 4: s = -(x - t m) / ((1-t)^2 + t^2 s^2) for the linear Gaussian path,
  read through score_fn from a velocity-only network that is §2 check 1's v*."""
  m, s = 2.0, 0.5
  method = _method(path='linear')
  method._apply = lambda params, x, t, label=None, **kw: (
      _exact_velocity(x, t[:, None], m, s), None)
  x = jnp.linspace(-3, 3, 7)[:, None]
  for t in (0.05, 0.3, 0.5, 0.8, 0.95):
    got = method.score_fn(None)(x, t)
    want = -(x - t * m) / ((1 - t)**2 + t**2 * s**2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('path', ['linear', 'vp', 'cosine'])
@pytest.mark.parametrize('gamma', ['none', 'sqrt', 'quadratic'])
def test_score_from_velocity_with_gamma_matches_closed_form(path, gamma):
  """Without a denoiser head the score comes from the velocity on the frame a = beta,
  b = sqrt(alpha^2 + gamma^2): s = (a D - x)/b^2; with gamma != 0 the one-sided
  formula (gamma = 0) is wrong. Worked case (linear, gamma = sqrt(t(1-t)),
  N(1.5, 0.5^2), t = 0.3, x = 1): -0.761 (the gamma = 0 formula gave -0.924)."""
  m, s = 1.5, 0.5
  method = _with_exact_velocity(m, s, path=path, gamma=gamma)
  score = method.score_fn(None)
  x = jnp.linspace(-3.0, 3.0, 7)[:, None]
  for t in (0.1, 0.3, 0.5, 0.7, 0.9):
    np.testing.assert_allclose(score(x, t), _gaussian_score(method, x, t, m, s),
                               rtol=2e-4, atol=2e-5)
  if path == 'linear' and gamma == 'sqrt':
    got = float(score(jnp.ones((1, 1)), 0.3)[0, 0])
    print(f'score at t = 0.3, x = 1: {got:.4f} (closed form -0.7612)')
    np.testing.assert_allclose(got, -0.55 / 0.7225, rtol=1e-5)


def _two_class_method(**overrides):
  """OT flow matching, class-conditional, on 1-D data with two classes."""
  config = toy2d.get_config('ot,smoke')
  config.method.update(class_conditional=True, **overrides)
  spec = data_lib.DataSpec('two_classes', 'toy', (1,), num_classes=2)
  return fm.FlowMatching(config, spec)


def _paired(method, batch, rng):
  """(x0, x1) as the loss pairs them (the interpolant's inputs)."""
  seen = {}
  interpolate = method.interpolate

  def spy(t, x0, x1, z):
    seen['x0'], seen['x1'] = x0, x1
    return interpolate(t, x0, x1, z)

  method.interpolate = spy
  method._apply = lambda params, x, t, label=None, **kw: (jnp.zeros_like(x), None)
  method.loss(None, batch, rng)
  return np.asarray(seen['x0'][:, 0]), np.asarray(seen['x1'][:, 0])


def test_ot_coupling_pairs_within_each_class():
  """§2.3: with labels the OT plan is solved within each class, so the noise paired
  with class A (data near -3) is still N(0, 1) -- sampling starts every label from
  N(0, I). The batch-wide plan gave class A the lower half of the noise (a
  half-normal: fraction negative ~1). Within a class the pairing is still optimal:
  in 1-D, the sorted matching, and no worse than any random within-class pairing."""
  method = _two_class_method()
  rs = np.random.RandomState(0)
  noise_a, noise_b = [], []
  for i in range(16):
    label = rs.randint(0, 2, 256).astype(np.int32)
    x1 = np.where(label == 0, -3.0, 3.0) + 0.5 * rs.randn(256)
    batch = {'x': jnp.asarray(x1[:, None], jnp.float32), 'label': jnp.asarray(label)}
    x0, x1_seen = _paired(method, batch, jax.random.PRNGKey(i))
    for side, noise in ((x1_seen < 0, noise_a), (x1_seen > 0, noise_b)):
      a, b = x0[side], x1_seen[side]
      noise.append(a)
      cost = np.sum((a - b)**2)
      np.testing.assert_allclose(cost, np.sum((np.sort(a) - np.sort(b))**2), rtol=1e-5)
      for _ in range(5):
        assert cost <= np.sum((rs.permutation(a) - b)**2) + 1e-4
  noise_a, noise_b = np.concatenate(noise_a), np.concatenate(noise_b)
  negative = float(np.mean(noise_a < 0))
  print(f'noise paired with class A: mean {noise_a.mean():+.3f}, std {noise_a.std():.3f}, '
        f'fraction negative {negative:.3f} (n = {noise_a.size})')
  # n ~ 2048: SE(mean) ~ 0.022, SE(fraction) ~ 0.011, SE(std) ~ 0.016.
  assert abs(noise_a.mean()) < 0.1 and abs(noise_b.mean()) < 0.1
  assert abs(negative - 0.5) < 0.05
  assert abs(noise_a.std() - 1.0) < 0.08 and abs(noise_b.std() - 1.0) < 0.08


def test_ot_assignment_with_labels_stays_within_classes():
  k0, k1 = jax.random.split(jax.random.PRNGKey(6))
  label = jnp.asarray(np.random.RandomState(1).randint(0, 3, 50), jnp.int32)  # unequal
  a = jax.random.normal(k0, (50, 1))
  b = 4.0 * label[:, None] + jax.random.normal(k1, (50, 1))
  perm = np.asarray(fm.ot_assignment(a, b, label))
  assert sorted(perm) == list(range(50))
  np.testing.assert_array_equal(np.asarray(label)[perm], label)
  for c in range(3):  # within a class, the 1-D OT plan is the sorted matching
    idx = np.flatnonzero(np.asarray(label) == c)
    np.testing.assert_array_equal(np.argsort(np.argsort(a[idx, 0])),
                                  np.argsort(np.argsort(b[perm[idx], 0])))
  np.testing.assert_array_equal(jax.jit(fm.ot_assignment)(a, b, label), perm)


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
    ('checkerboard,si,smoke', toy2d),
    # The conditional digits U-Net with other-class negatives: about 45 s on 2 cores; the
    # contrastive loss itself is checked by test_contrastive_minimizer_is_affine_...
    pytest.param('smoke,contrastive', digits, marks=pytest.mark.slow),
    ('smoke,cond,ot', digits),
    ('8gaussians,concat,smoke', toy2d), ('moons,ot,sinkhorn,concat,smoke', toy2d),
])
def test_every_variant_trains_and_samples(arg, module):
  """12 steps lower the flow-matching loss, measured on fixed batches and keys (the
  per-step training losses of a 16-example batch are too noisy to compare)."""
  method = _method(arg, module)
  config = method.config
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  batches = [jax.tree.map(jnp.asarray, data.batch(i)) for i in range(2)]
  state = method.init(jax.random.PRNGKey(0), batches[0])
  step = jax.jit(method.train_step)
  fm_loss = jax.jit(lambda p, b, k: method.loss(p, b, k, train=False)[1]['fm_loss'])
  held = lambda p: np.mean([float(fm_loss(p, b, jax.random.PRNGKey(100 + j)))
                            for b in batches for j in range(8)])
  before = held(state.params)
  losses = []
  for i in range(12):
    state, metrics = step(state, batches[i % 2], jax.random.PRNGKey(i))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses))
  assert held(state.params) < before
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


SCORE_SAMPLERS = [('euler_maruyama', None), ('pc', None), ('edm_stochastic', None),
                  ('annealed_langevin', None), ('ddim', 0.5)]
DETERMINISTIC = [('heun', None), ('dpm_solver_2m', None), ('ddim', 0.0), ('ddim', None)]


@pytest.mark.parametrize('sampler, eta', SCORE_SAMPLERS + DETERMINISTIC)
def test_ot_coupling_refuses_score_samplers_at_build(sampler, eta):
  """The OT plan couples the noise to the data, so (D - x)/sigma^2 is not the score:
  the samplers that use it (or add fresh noise assuming it) are refused in one line;
  the deterministic ones integrate the velocity and are accepted."""
  def build(coupling):
    config = toy2d.get_config(f'{coupling},smoke')
    config.sampler.name = sampler
    if eta is not None:
      config.sampler.eta = eta
    spec = data_lib.build(config.data, seed=0, global_batch_size=8).spec
    return fm.FlowMatching(config, spec)

  build('independent')  # every one of them is fine with independent noise
  if (sampler, eta) in DETERMINISTIC:
    build('ot')
    return
  with pytest.raises(ConfigError, match="coupled to the data.*coupling='ot'") as e:
    build('ot')
  assert '\n' not in str(e.value)


def test_ot_coupling_refuses_score_samplers_at_sample_time():
  method = _method('ot,smoke')
  state = method.init(jax.random.PRNGKey(0), {'x': jnp.zeros((8, 2))})
  rng = jax.random.PRNGKey(1)
  for sampler, options in (('pc', {}), ('euler_maruyama', {}), ('ddim', {'eta': 0.5})):
    with pytest.raises(ConfigError, match='coupled to the data'):
      method.sample(state, rng, 4, sampler=sampler, steps=3, **options)
  for sampler in ('heun', 'dpm_solver_2m', 'ddim'):
    x = method.sample(state, rng, 4, sampler=sampler, steps=3)
    assert x.shape == (4, 2) and np.all(np.isfinite(x))


def test_ot_coupling_with_an_sde_sampler_exits_2_before_writing(tmp_path):
  workdir = tmp_path / 'run'
  proc = run_cli('train', '--config=configs/flow_matching/toy2d.py:ot,smoke',
                 '--config.sampler.name=euler_maruyama', f'--workdir={workdir}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gensuite: error: '), proc.stderr
  assert "'euler_maruyama'" in lines[0] and 'coupled to the data' in lines[0]
  assert not os.path.exists(workdir)
