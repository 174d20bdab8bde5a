"""Flow maps (MeanFlow, sCM, shortcut): analytic facts on Gaussian data, and the CLI.

Data x ~ N(mu, s^2) per coordinate (ALGORITHMS.md §10, analytic checks): every flow
map is affine, so the exact average velocity, consistency function and shortcut
velocity are closed forms, and the methods' targets, tangents and samplers can be
checked against them in float64.
"""
import math
import os

import jax

import jax.numpy as jnp
import numpy as np
import pytest

from configs.flow_maps import toy2d
from conftest import final_leaves, losses, run_cli
from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite import methods
from gensuite.errors import ConfigError

MU, S = 1.5, 0.5


def _method(arg, **overrides):
  c = toy2d.get_config(arg)
  c.unlock()
  for path, value in overrides.items():
    node = c
    *parents, last = path.split('.')
    for part in parents:
      node = node[part]
    node[last] = value
  data = data_lib.build(c.data, seed=0, global_batch_size=c.train.batch_size)
  return methods.build(c, data.spec), data


# ---- MeanFlow (t = 0 data, t = 1 noise) -------------------------------------------


def _mf_sigma(t):
  return jnp.sqrt((1 - t)**2 * S**2 + t**2)


def _mf_u(z, t, r):
  """The exact average velocity over [r, t] (r = t: the marginal velocity)."""
  m_t, sig_t = (1 - t) * MU, _mf_sigma(t)
  same = jnp.abs(t - r) < 1e-12
  v_coef = (t - (1 - t) * S**2) / sig_t**2
  u_coef = (sig_t - _mf_sigma(r)) / (jnp.where(same, 1.0, t - r) * sig_t)
  return -MU + jnp.where(same, v_coef, u_coef)[:, None] * (z - m_t[:, None])


def _mf_v(z, t):
  return _mf_u(z, t, t)


def _mf_batch(n, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  t = jax.random.uniform(k1, (n,), jnp.float64, 0.05, 0.95)
  r = t * jax.random.uniform(k2, (n,), jnp.float64)
  z = (1 - t)[:, None] * MU + _mf_sigma(t)[:, None] * jax.random.normal(k3, (n, 2),
                                                                           jnp.float64)
  return z, t, r


def test_meanflow_target_equals_a_finite_difference_of_u_along_the_trajectory():
  """du/dt from the jvp equals (u(z + h v, t + h, r) - u(z - h v, t - h, r)) / 2h, for
  a nonlinear u that is no flow map at all (the identity is about the derivative)."""
  method, _ = _method('meanflow,smoke')
  fn = lambda z, t, r: jnp.tanh(z * t[:, None]) + jnp.sin(3 * r)[:, None] * z**2
  with jax.enable_x64(True):
    z, t, r = _mf_batch(64)
    v = jnp.cos(z) + 0.5
    u, u_tgt = method.target(fn, z, t, r, v)
    dudt = (v - u_tgt) / (t - r)[:, None]
    h = 1e-5
    fd = (fn(z + h * v, t + h, r) - fn(z - h * v, t - h, r)) / (2 * h)
    np.testing.assert_allclose(u, fn(z, t, r), rtol=0, atol=0)
    np.testing.assert_allclose(dudt, fd, rtol=1e-7, atol=1e-8)


def test_meanflow_exact_average_velocity_is_its_own_target():
  """With the marginal velocity as tangent, u_tgt = u for the exact u (to 1e-12); the
  wrong tangents (v, 0, 0), (v, 1, 1) leave a residual of order 0.1."""
  method, _ = _method('meanflow,smoke')
  with jax.enable_x64(True):
    z, t, r = _mf_batch(256)
    v = _mf_v(z, t)
    u, u_tgt = method.target(_mf_u, z, t, r, v)
    assert float(jnp.max(jnp.abs(u - u_tgt))) < 1e-12
    for tangent in ((0.0, 0.0), (1.0, 1.0)):
      _, dudt = jax.jvp(_mf_u, (z, t, r), (v, jnp.full_like(t, tangent[0]),
                                           jnp.full_like(r, tangent[1])))
      wrong = v - (t - r)[:, None] * dudt
      assert float(jnp.sqrt(jnp.mean((wrong - u)**2))) > 0.05


def test_meanflow_separate_time_pairing_draws_t_and_r_apart():
  """time_pairing='separate': logit(t) ~ N(time_mean, time_std^2); r = min(t, r') with
  logit(r') ~ N(r_time_mean, r_time_std^2) drawn apart, so P(r = t) = P(r' >= t) =
  Phi((m_r - m_t) / sqrt(s_t^2 + s_r^2)); equal_fraction still sets r = t on its rows."""
  n = 400_000
  method, _ = _method('meanflow,smoke', **{
      'method.time_pairing': 'separate', 'method.time_mean': -0.6, 'method.time_std': 1.6,
      'method.r_time_mean': -1.0, 'method.r_time_std': 1.2, 'method.equal_fraction': 0.0})
  t, r = (np.asarray(a, np.float64) for a in method.sample_times(jax.random.PRNGKey(0), n))
  assert np.all(r <= t)
  logit_t = np.log(t) - np.log1p(-t)
  assert abs(logit_t.mean() + 0.6) < 0.01 and abs(logit_t.std() - 1.6) < 0.01
  p_equal = 0.5 * math.erfc(-(-1.0 + 0.6) / math.sqrt(2 * (1.6**2 + 1.2**2)))
  assert abs(np.mean(r == t) - p_equal) < 4 * math.sqrt(p_equal * (1 - p_equal) / n)
  below = r[r < t]
  logit_r = np.log(below) - np.log1p(-below)
  assert logit_r.mean() < -1.0  # the cut keeps the low draws
  method, _ = _method('meanflow,smoke', **{'method.time_pairing': 'separate',
                                           'method.equal_fraction': 0.5})
  t, r = method.sample_times(jax.random.PRNGKey(1), 1000)
  assert np.all(np.asarray(t[:500] == r[:500])) and np.mean(np.asarray(t[500:] == r[500:])) < 0.15
  with pytest.raises(ConfigError, match="method.time_pairing must be one of sorted, separate, "
                     "got 'v1'"):
    _method('meanflow,smoke', **{'method.time_pairing': 'v1'})


@pytest.mark.parametrize('tangent', ['conditional', 'model'])
def test_meanflow_loss_gradient_vanishes_in_expectation_at_the_exact_map(tangent):
  """The training loss (the method's own (t, r) sampler and target) has zero expected
  gradient at the exact solution: u_theta = a (-mu) + b coef(t, r) (z - m_t) at
  (a, b) = (1, 1), whether the jvp moves z along the conditional velocity e - x (the
  paper's) or along the net's own sg(u_theta(z, t, t)) (tangent='model', improved
  MeanFlow; at the solution that is the marginal velocity). Each gradient component is
  within 4 standard errors of 0 over 200k examples, while a perturbed (a, b) has a
  clearly non-zero gradient."""
  method, _ = _method('meanflow,smoke', **{'method.tangent': tangent})
  n = 200_000

  def per_example_grads(theta, seed):
    k_x, k_e, k_t = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = MU + S * jax.random.normal(k_x, (n, 2), jnp.float64)
    e = jax.random.normal(k_e, (n, 2), jnp.float64)
    t, r = method.sample_times(k_t, n)
    t, r = t.astype(jnp.float64), r.astype(jnp.float64)
    z = (1 - t)[:, None] * x + t[:, None] * e

    def u_theta(th, z, t, r):
      exact = _mf_u(z, t, r)
      lin = exact + MU  # coef (z - m_t)
      return th[0] * (-MU) + th[1] * lin

    def loss_one(th, z, t, r, v):  # one example, through the method's own target
      fn = lambda z, t, r: u_theta(th, z, t, r)
      z, t, r, v = z[None], t[None], r[None], v[None]
      dz = jax.lax.stop_gradient(fn(z, t, t)) if method.tangent == 'model' else v
      u, u_tgt = method.target(fn, z, t, r, v, dz)
      return jnp.sum((u - u_tgt)**2)
    return jax.vmap(jax.grad(loss_one), (None, 0, 0, 0, 0))(theta, z, t, r, e - x)  # [n, 2]

  with jax.enable_x64(True):
    g = per_example_grads(jnp.array([1.0, 1.0]), 0)
    mean, se = jnp.mean(g, 0), jnp.std(g, 0) / math.sqrt(n)
    assert np.all(np.abs(mean) < 4 * se), (mean, se)
    g_off = jnp.mean(per_example_grads(jnp.array([1.1, 0.9]), 0), 0)
    assert np.all(np.abs(g_off) > 20 * se), (g_off, se)


def test_meanflow_model_tangent_is_the_nets_own_velocity_in_the_loss(monkeypatch):
  """tangent='model': the jvp inside the loss moves z along the net's u(z, t, t) (not
  e - x), and the tangent only matters where r < t: with r = t on every row
  (equal_fraction 1) the two tangents give the same loss, bit for bit."""
  losses_by = {}
  for tangent in ('conditional', 'model'):
    for fraction in (0.75, 1.0):
      method, data = _method('meanflow,smoke', **{'method.tangent': tangent,
                                                  'method.equal_fraction': fraction})
      batch = jax.tree.map(jnp.asarray, data.batch(0))
      state = method.init(jax.random.PRNGKey(0), batch)
      seen = {}
      target = method.target

      def spy(fn, z, t, r, v, dz=None, target=target, seen=seen):
        seen.update(dz=dz, v=v, own=fn(z, t, t))
        return target(fn, z, t, r, v, dz)
      monkeypatch.setattr(method, 'target', spy)
      losses_by[tangent, fraction] = float(method.loss(state.params, batch,
                                                       jax.random.PRNGKey(3))[0])
      expected = seen['own'] if tangent == 'model' else seen['v']
      np.testing.assert_allclose(seen['dz'], expected, rtol=1e-6, atol=1e-6)
      assert not np.allclose(seen['own'], seen['v'], atol=1e-3)
  assert losses_by['conditional', 1.0] == losses_by['model', 1.0]
  assert abs(losses_by['conditional', 0.75] - losses_by['model', 0.75]) > 1e-4
  with pytest.raises(ConfigError, match="method.tangent must be one of conditional, model, "
                     "got 'marginal'"):
    _method('meanflow,smoke', **{'method.tangent': 'marginal'})


@pytest.mark.parametrize('steps,mid_t', [(1, None), (2, None), (4, None), (2, 0.3),
                                         (4, 0.7)])
def test_meanflow_sampling_with_the_exact_map_is_the_exact_ode_solution(steps, mid_t):
  """z_r = z_t - (t - r) u on the grid 1 -> 0 with the exact u gives mu + s z for every
  number of steps (the map composes exactly), on the uniform grid and on the one that
  config.sampler.mid_t sets (1, mid_t, then linearly to 0)."""
  method, _ = _method('meanflow,smoke')
  if mid_t is not None:
    with method.config.unlocked():
      method.config.sampler.mid_t = mid_t
    method.check_sampler()
    np.testing.assert_allclose(method.times(steps),
                               [1.0] + list(np.linspace(mid_t, 0.0, steps)))
  else:
    np.testing.assert_allclose(method.times(steps), np.linspace(1.0, 0.0, steps + 1))
  method.u = lambda params, z, t, r, label=None: _mf_u(z, t, r)
  with jax.enable_x64(True):
    z = jax.random.normal(jax.random.PRNGKey(3), (128, 2), jnp.float64)
    x = method.generate(None, z, steps, None)
    np.testing.assert_allclose(x, MU + S * z, rtol=0, atol=1e-12)


def test_meanflow_training_guidance_has_the_effective_scale_omega_over_1_minus_kappa():
  """At the fixed point u_c = v_g of the training-time guidance (r = t), the model is
  CFG of scale omega / (1 - kappa): u_c = v_null + w (v_c - v_null) reproduces itself
  through guided_velocity for w = omega / (1 - kappa) and for no other w. Dropped
  labels and times outside cfg_t_range keep the plain velocity."""
  from configs.flow_maps import digits  # pylint: disable=g-import-not-at-top
  c = digits.get_config('cond,smoke')
  c.method.cfg_omega, c.method.cfg_kappa, c.method.cfg_t_range = 1.5, 0.4, (0.0, 0.8)
  method = methods.build(c, data_lib.build(c.data, seed=0, global_batch_size=8).spec)
  null = method.spec.num_classes
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  z = jax.random.normal(k1, (6, 8, 8, 1))
  v_c = jax.random.normal(k2, z.shape)  # E[v | z, c] (the tangent's conditional mean)
  v_null = jax.random.normal(k3, z.shape)
  t = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
  label = jnp.array([1, 2, 3, 4, 5, 6])
  net_label = label.at[5].set(null)  # the last one dropped
  for w, fixed in ((1.5 / 0.6, True), (2.0, False)):
    def u(params, z_, t_, r_, lab=None, w=w):
      return jnp.where((lab == null)[:, None, None, None], v_null, v_null + w * (v_c - v_null))
    method.u = u
    v_g = method.guided_velocity(None, z, t, v_c, label, net_label)
    u_c = u(None, z, t, t, label)
    inside = np.asarray((t <= 0.8) & (net_label != null))
    np.testing.assert_allclose(v_g[~inside], v_c[~inside], atol=1e-6)
    assert np.allclose(v_g[inside], u_c[inside], atol=1e-5) == fixed


# ---- sCM on TrigFlow (t = 0 data) --------------------------------------------------


def _scm(sigma_d=0.5):
  method, _ = _method('scm,smoke', **{'method.sigma_data': sigma_d})
  return method


def _trig(t, sd):
  m_t = jnp.cos(t) * MU
  big_s = jnp.sqrt(jnp.cos(t)**2 * S**2 + jnp.sin(t)**2 * sd**2)
  return m_t, big_s


def _exact_f(x, t, sd):
  m_t, big_s = _trig(t, sd)
  return MU + (S / big_s)[:, None] * (x - m_t[:, None])


def _exact_F(x_scaled, t, sd):
  """F* with f = cos t x - sin t sd F*, as a function of the net's input x / sd."""
  x = x_scaled * sd
  return (jnp.cos(t)[:, None] * x - _exact_f(x, t, sd)) / (sd * jnp.sin(t))[:, None]


def _trig_v(x, t, sd):
  m_t, big_s = _trig(t, sd)
  return (-jnp.sin(t)[:, None] * MU + (jnp.sin(t) * jnp.cos(t) * (sd**2 - S**2)
                                       / big_s**2)[:, None] * (x - m_t[:, None]))


def _trig_batch(n, sd, seed=0, dtype=jnp.float64):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  t = jax.random.uniform(k1, (n,), dtype, 0.1, 1.4)
  m_t, big_s = _trig(t, sd)
  return m_t[:, None] + big_s[:, None] * jax.random.normal(k2, (n, 2), dtype), t


def test_scm_tangent_equals_cos_t_times_the_time_derivative_of_f():
  """Unnormalised, g = cos t d f-/dt along dx/dt (w = 1), for any F: checked by central
  differences of f(x + h dx/dt, t + h) with a nonlinear F."""
  method = _scm()
  sd = method.sigma_d
  F = lambda xs, t: jnp.tanh(xs * jnp.sin(2 * t)[:, None]) + jnp.cos(t)[:, None] * xs**2
  f = lambda x, t: jnp.cos(t)[:, None] * x - (jnp.sin(t) * sd)[:, None] * F(x / sd, t)
  with jax.enable_x64(True):
    x, t = _trig_batch(64, sd)
    dxdt = jnp.sin(x) - 0.3
    _, g, rms = method.tangent(F, x, t, dxdt, 1.0)
    g = g * (rms + method.norm_c)[:, None]
    h = 1e-5
    fd = (f(x + h * dxdt, t + h) - f(x - h * dxdt, t - h)) / (2 * h)
    np.testing.assert_allclose(g, jnp.cos(t)[:, None] * fd, rtol=1e-6, atol=1e-8)


def test_scm_time_normalisation_divides_by_the_rms_of_its_time_bin():
  """tangent_norm='time': the bins have equal mass under the training proposal (each
  1/K of 400k draws of sample_t, within 4 standard errors), and g is divided by the rms
  of g over the batch's examples in its bin (plus c): one factor per bin, so examples
  at one time keep their relative pull, where 'example' divides each by its own rms."""
  n, bins = 400_000, 8
  method, _ = _method('scm,smoke', **{'method.tangent_norm': 'time',
                                      'method.tangent_norm_bins': bins})
  b = np.asarray(method.time_bin(method.sample_t(jax.random.PRNGKey(0), n)))
  se = math.sqrt((1 / bins) * (1 - 1 / bins) / n)
  assert np.all(np.abs(np.bincount(b, minlength=bins) / n - 1 / bins) < 4 * se)
  sd = method.sigma_d
  F = lambda xs, t: jnp.tanh(xs * jnp.sin(2 * t)[:, None]) + jnp.cos(t)[:, None] * xs**2
  per_example = _scm(sd)
  with jax.enable_x64(True):
    t = method.sample_t(jax.random.PRNGKey(1), 512).astype(jnp.float64)
    m_t, big_s = _trig(t, sd)
    x = m_t[:, None] + big_s[:, None] * jax.random.normal(jax.random.PRNGKey(2), (512, 2),
                                                          jnp.float64)
    dxdt = jnp.sin(x) - 0.3
    _, g_ex, rms = per_example.tangent(F, x, t, dxdt, 1.0)
    raw = np.asarray(g_ex * (rms + per_example.norm_c)[:, None])
    _, g_time, rms_time = method.tangent(F, x, t, dxdt, 1.0)
    np.testing.assert_allclose(rms_time, rms, rtol=1e-12)
    b = np.asarray(method.time_bin(t))
    assert len(set(b.tolist())) == bins
    for k in range(bins):
      rows = b == k
      scale = math.sqrt(np.mean(np.asarray(rms)[rows]**2)) + method.norm_c
      np.testing.assert_allclose(np.asarray(g_time)[rows], raw[rows] / scale, rtol=1e-10)
      factors = np.asarray(g_ex)[rows, 0] / raw[rows, 0]
      assert factors.max() / factors.min() > 1.5  # 'example' reweights within the bin
  with pytest.raises(ConfigError, match="tangent_norm"):
    _method('scm,smoke', **{'method.tangent_norm': 'batch'})
  with pytest.raises(ConfigError, match="method.tangent_norm_bins must be >= 1, got 0"):
    _method('scm,smoke', **{'method.tangent_norm_bins': 0})


def test_scm_tangent_vanishes_for_the_exact_consistency_function():
  """With the exact F* and the exact PF-ODE velocity, g = 0 (f is constant along the
  flow); the conditional velocity gives g with mean 0 given x_t (not checked here)."""
  method = _scm()
  sd = method.sigma_d
  with jax.enable_x64(True):
    x, t = _trig_batch(256, sd)
    _, g, rms = method.tangent(lambda xs, t: _exact_F(xs, t, sd), x, t, _trig_v(x, t, sd),
                               1.0)
    assert float(jnp.max(rms)) < 1e-12


def test_scd_velocity_is_the_teachers_pf_ode_velocity():
  """sCD's dx_t/dt from an exact teacher (a one-component mixture N(mu, s^2)) is the
  TrigFlow PF-ODE velocity of that Gaussian, whatever the x0 and z drawn."""
  sd = 0.5
  method, _ = _method('scd,smoke', **{
      'method.sigma_data': sd, 'data.params': dict(means=[[MU, MU]], stds=S)})
  x, t = _trig_batch(256, sd, dtype=jnp.float32)
  noise = jnp.ones_like(x)  # not used by sCD
  v = method.velocity(noise, noise, x, t, None)
  np.testing.assert_allclose(v, _trig_v(x, t, sd), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('sampler_mid_t', [None, 0.6])
def test_scm_one_and_two_step_samples_of_the_exact_function(sampler_mid_t):
  """One step: f(sd z, t_max) is the exact ODE map from t_max; two steps re-noise to
  mid_t (method.mid_t, or config.sampler.mid_t as `gensuite sample/eval` may set it on
  a trained run) and map again, which leaves the law N(mu, s^2) exactly."""
  method = _scm()
  mid_t = method.mid_t
  if sampler_mid_t is not None:
    with method.config.unlocked():
      method.config.sampler.mid_t = sampler_mid_t
    mid_t = sampler_mid_t
  assert method.times(2)[1] == mid_t and method.times(3)[2] == mid_t / 2
  sd = method.sigma_d
  method.F = lambda params, x, t, label=None: _exact_F(x / sd, t, sd)
  with jax.enable_x64(True):
    z = jax.random.normal(jax.random.PRNGKey(0), (200_000, 2), jnp.float64)
    x1 = method.generate(None, z, 1, None, jax.random.PRNGKey(1))
    t_max = jnp.full((z.shape[0],), method.t_max, jnp.float64)
    np.testing.assert_allclose(x1, _exact_f(sd * z, t_max, sd), rtol=0, atol=1e-12)
    # sigma_max = 80: t_max is 0.006 short of pi/2, so the map is mu + s z to 1e-2.
    np.testing.assert_allclose(x1, MU + S * z, atol=0.05)
    x2 = method.generate(None, z, 2, None, jax.random.PRNGKey(1))
    # Its law: x1 = mu (1 - a) + b z (a, b from t_max), then f at mid_t of the re-noised
    # x1, which is N(mu, s^2) up to the same t_max offset: moments in closed form.
    _, s_max = _trig(jnp.float64(method.t_max), sd)
    _, s_mid = _trig(jnp.float64(mid_t), sd)
    a, b, c = S / s_max * math.cos(method.t_max), S / s_max * sd, S / s_mid
    cm, sm = math.cos(mid_t), math.sin(mid_t)
    mean, std = MU - c * cm * a * MU, c * math.sqrt(cm**2 * b**2 + sm**2 * sd**2)
    se = std / math.sqrt(z.size)
    assert abs(float(jnp.mean(x2)) - mean) < 4 * se, (float(jnp.mean(x2)), mean)
    assert abs(float(jnp.std(x2)) - std) < 4 * se, (float(jnp.std(x2)), std)
    assert abs(mean - MU) < 0.01 and abs(std - S) < 0.01


@pytest.mark.parametrize('bad', [0.0, 1.0, -0.3])
def test_meanflow_sampler_mid_t_out_of_range_is_refused(bad):
  """MeanFlow's config.sampler.mid_t outside (0, 1): one line naming the range."""
  method, _ = _method('meanflow,smoke')
  with method.config.unlocked():
    method.config.sampler.mid_t = bad
  with pytest.raises(config_lib.ConfigError, match=r'config.sampler.mid_t must be in \(0, 1\)'):
    method.check_sampler()


@pytest.mark.parametrize('bad', [0.0, -0.3, 1.6])
def test_scm_sampler_mid_t_out_of_range_is_refused(bad):
  """config.sampler.mid_t outside (0, t_max): one line naming the range."""
  method = _scm()
  with method.config.unlocked():
    method.config.sampler.mid_t = bad
  with pytest.raises(config_lib.ConfigError, match=r'config.sampler.mid_t must be in \(0, 1\.5'):
    method.check_sampler()


def test_scm_sampler_t_start_moves_the_first_step():
  """config.sampler.t_start: the first step is the exact map f(sd z, t_start) (the noise
  read as x at t_start), the second still re-noises to mid_t; t_max by default."""
  method = _scm()
  assert method.times(1)[0] == method.t_max
  with method.config.unlocked():
    method.config.sampler.t_start = 1.3
    method.config.sampler.mid_t = 0.9
  np.testing.assert_array_equal(method.times(2), [1.3, 0.9])
  sd = method.sigma_d
  method.F = lambda params, x, t, label=None: _exact_F(x / sd, t, sd)
  with jax.enable_x64(True):
    z = jax.random.normal(jax.random.PRNGKey(0), (1000, 2), jnp.float64)
    x1 = method.generate(None, z, 1, None, jax.random.PRNGKey(1))
    t = jnp.full((z.shape[0],), 1.3, jnp.float64)
    np.testing.assert_allclose(x1, _exact_f(sd * z, t, sd), rtol=0, atol=1e-12)


@pytest.mark.parametrize('bad', [0.0, -0.3, 1.6])
def test_scm_sampler_t_start_out_of_range_is_refused(bad):
  """config.sampler.t_start outside (0, t_max], or not above mid_t: one line."""
  method = _scm()
  with method.config.unlocked():
    method.config.sampler.t_start = bad
  with pytest.raises(config_lib.ConfigError,
                     match=r'config.sampler.t_start must be in \(0, 1\.5\d+\]'):
    method.check_sampler()
  with method.config.unlocked():
    method.config.sampler.t_start = 1.0
    method.config.sampler.mid_t = 1.2
  with pytest.raises(config_lib.ConfigError, match='must be below the first step'):
    method.times(2)


def test_ect_r_schedule_matches_the_reference_values():
  """ECT's r(t) (ALGORITHMS.md §10, check 6) at t = 0.01, 0.5, 2, 10, 80 in stages 0
  and 3."""
  method, _ = _method('ect,smoke', **{'method.ect_stage_steps': 100})
  sigma = jnp.array([0.01, 0.5, 2.0, 10.0, 80.0])
  np.testing.assert_allclose(method.ect_r(sigma, 0), [0, 0, 0.046, 5.00, 40], atol=6e-3)
  np.testing.assert_allclose(method.ect_r(sigma, 399), [0.0069, 0.374, 1.756, 9.375, 75],
                             atol=6e-3)


# ---- shortcut models (t = 0 noise, t = 1 data) --------------------------------------


def _sc_sigma(t):
  return jnp.sqrt((1 - t)**2 + t**2 * S**2)


def _sc_exact(z, t, d):
  """The exact shortcut velocity: x_{t+d} = z + d s*(z, t, d)."""
  return MU + ((_sc_sigma(t + d) - _sc_sigma(t)) / (d * _sc_sigma(t)))[:, None] * (
      z - (t * MU)[:, None])


def _sc_v(z, t):
  dsig = (-(1 - t) + t * S**2) / _sc_sigma(t)
  return MU + (dsig / _sc_sigma(t))[:, None] * (z - (t * MU)[:, None])


def test_shortcut_target_is_self_consistent_and_tends_to_the_velocity():
  method, _ = _method('shortcut,smoke')
  s_exact = lambda params, x, t, d, label=None: _sc_exact(x, t, d)
  with jax.enable_x64(True):
    n = 128
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    t = jax.random.uniform(k1, (n,), jnp.float64, 0.0, 0.5)
    z = (t * MU)[:, None] + _sc_sigma(t)[:, None] * jax.random.normal(k2, (n, 2),
                                                                      jnp.float64)
    method.s = s_exact
    for d in (0.5, 0.25, 1 / 128):
      dd = jnp.full((n,), d, jnp.float64)
      np.testing.assert_allclose(method.consistency_target(None, z, t, dd, None),
                                 _sc_exact(z, t, dd), rtol=0, atol=1e-12)
    errors = []
    for d in (1e-2, 1e-3, 1e-4):
      dd = jnp.full((n,), d, jnp.float64)
      errors.append(float(jnp.max(jnp.abs(method.consistency_target(None, z, t, dd, None)
                                          - _sc_v(z, t)))))
    assert errors[2] < 1e-3 and errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5


@pytest.mark.parametrize('steps', [1, 2, 8])
def test_shortcut_sampling_with_the_exact_velocity_is_exact(steps):
  method, _ = _method('shortcut,smoke')
  method.s = lambda params, x, t, d, label=None: _sc_exact(x, t, d)
  with jax.enable_x64(True):
    z = jax.random.normal(jax.random.PRNGKey(3), (64, 2), jnp.float64)
    np.testing.assert_allclose(method.generate(None, z, steps, None), MU + S * z,
                               rtol=0, atol=1e-12)


# ---- training, errors, CLI ---------------------------------------------------------


@pytest.mark.parametrize('arg', ['meanflow,smoke', 'scm,smoke', 'ect,smoke', 'shortcut,smoke'])
def test_each_method_trains_and_samples_with_1_2_4_steps(arg):
  method, data = _method(arg)
  state = jax.jit(method.init)(jax.random.PRNGKey(0), jax.tree.map(jnp.asarray, data.batch(0)))
  step = jax.jit(method.train_step)
  first = None
  for i in range(30):
    state, metrics = step(state, jax.tree.map(jnp.asarray, data.batch(i)),
                          jax.random.PRNGKey(i))
    first = first if first is not None else float(metrics['mse' if 'mse' in metrics
                                                          else 'loss'])
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  last = float(metrics['mse' if 'mse' in metrics else 'loss'])
  assert last < first, (first, last)
  for steps in (1, 2, 4):
    x = jax.jit(lambda s, r: method.sample(s, r, 16, steps=steps))(state, jax.random.PRNGKey(1))
    assert x.shape == (16, 2) and np.all(np.isfinite(x))


def test_config_errors():
  with pytest.raises(ConfigError, match="net 'energy_mlp' takes no second time input"):
    _method('meanflow,smoke', **{'net': config_lib.ml_collections.ConfigDict(
        dict(name='energy_mlp'))})
  with pytest.raises(ConfigError, match='power of two of steps up to method.max_steps=128'):
    _method('shortcut,smoke', **{'sampler.steps': 3})
  method, _ = _method('shortcut,smoke')
  with pytest.raises(ConfigError, match='power of two'):
    method.check_steps(256)
  with pytest.raises(ConfigError, match='class_conditional needs labelled data'):
    _method('meanflow,smoke', **{'method.class_conditional': True})
  with pytest.raises(ConfigError, match="unknown method.training 'ecm'; allowed: sct, scd, ect"):
    _method('scm,smoke', **{'method.training': 'ecm'})
  with pytest.raises(ConfigError, match='label dropout'):
    _method('meanflow,smoke', **{'method.cfg_kappa': 0.5})
  with pytest.raises(ConfigError, match="bootstrap_target='ema' reads an EMA"):
    _method('shortcut,smoke', **{'method.bootstrap_target': 'ema', 'optim.ema_decays': ()})
  with pytest.raises(ConfigError, match="unknown method.coupling 'sinkhorn'; allowed: "
                     'independent, ot'):
    _method('meanflow,smoke', **{'method.coupling': 'sinkhorn'})
  with pytest.raises(ConfigError, match="coupling='ot' pairs noise and data over the whole"):
    _method('scm,smoke', **{'method.coupling': 'ot', 'train.grad_accum': 2})
  for arg in ('scm,smoke', 'scd,smoke'):  # sCT has no teacher; the toy's is analytic
    with pytest.raises(ConfigError, match="init_from_teacher=True starts the student from "
                       "a trained run's network"):
      _method(arg, **{'method.init_from_teacher': True})


@pytest.mark.parametrize('solver, gap', [('exact', 1e-9), ('sinkhorn', 0.05)])
@pytest.mark.parametrize('arg', ['meanflow,smoke', 'scm,smoke', 'shortcut,smoke'])
def test_ot_coupling_permutes_the_noise_onto_the_minimum_cost_pairing(arg, solver, gap):
  """coupling='ot': the paired noise is a permutation of the drawn noise (both marginals
  stay exact) whose total squared distance to the data is the assignment optimum
  (scipy's Hungarian solution; sinkhorn within its few-percent gap); 'independent'
  leaves the draw as it is."""
  import scipy.optimize
  method, data = _method(arg, **{'method.coupling': 'ot', 'method.ot_solver': solver})
  x = jnp.asarray(data.batch(0)['x'])
  e = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  paired = np.asarray(jax.jit(method.couple)(x, e))
  np.testing.assert_array_equal(np.sort(paired, 0), np.sort(np.asarray(e), 0))
  cost = ((np.asarray(x)[:, None] - np.asarray(e)[None])**2).sum(-1)
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  best = cost[rows, cols].sum()
  got = ((np.asarray(x) - paired)**2).sum()
  assert best <= got * (1 + 1e-9) and got <= best * (1 + gap), (got, best)
  assert got < 0.5 * cost.trace(), (got, cost.trace())  # far below the drawn pairing's
  plain, _ = _method(arg, **{'method.coupling': 'independent'})
  np.testing.assert_array_equal(plain.couple(x, e), e)


def test_ot_coupling_is_what_the_meanflow_loss_trains_on(monkeypatch):
  """The MeanFlow loss with coupling='ot' equals the independent loss evaluated with its
  noise draw replaced by the OT-paired draw: the coupling changes the pairs only."""
  from gensuite.methods import rand
  ot, data = _method('meanflow,smoke', **{'method.coupling': 'ot', 'method.ot_solver': 'exact'})
  plain, _ = _method('meanflow,smoke', **{'method.coupling': 'independent'})
  batch = jax.tree.map(jnp.asarray, data.batch(0))
  state = ot.init(jax.random.PRNGKey(0), batch)
  rng = jax.random.PRNGKey(5)
  loss_ot, _ = ot.loss(state.params, batch, rng)
  loss_plain, _ = plain.loss(state.params, batch, rng)
  x = batch['x']
  e = rand.normal(jax.random.split(rng, 4)[0], x.shape, x.dtype)
  paired = ot.couple(x, e)
  assert not np.allclose(paired, e)
  normal = rand.normal
  monkeypatch.setattr(rand, 'normal', lambda k, shape, *a, **kw: (
      paired if tuple(shape) == x.shape else normal(k, shape, *a, **kw)))
  loss_swapped, _ = plain.loss(state.params, batch, rng)
  np.testing.assert_allclose(float(loss_ot), float(loss_swapped), rtol=1e-6)
  assert abs(float(loss_ot) - float(loss_plain)) > 1e-3


@pytest.mark.parametrize('args, message', [
    (['--config=configs/flow_maps/toy2d.py:smoke', '--config.net.name=energy_mlp'],
     "net 'energy_mlp' takes no second time input"),
    (['--config=configs/flow_maps/toy2d.py:smoke', '--config.method.name=meanflw'],
     "unknown method name 'meanflw'; allowed: diffusion, distill, ebm, flow_matching, "
     'meanflow, scm, shortcut, vae'),
    (['--config=configs/flow_maps/toy2d.py:meanflw,smoke'],
     "unknown flow_maps toy2d variant 'meanflw'"),
])
def test_bad_input_exits_2_with_one_line_before_writing(tmp_path, args, message):
  workdir = tmp_path / 'run'
  proc = run_cli('train', *args, f'--workdir={workdir}', check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert message in lines[-1], proc.stderr[-2000:]
  written = [f for _, _, files in os.walk(workdir) for f in files] if workdir.exists() else []
  assert not [f for f in written if not f.endswith('.lock')], written


def test_meanflow_resumes_bitwise_and_samples_from_the_cli(tmp_path):
  """20 straight steps equal a run killed (SIGKILL) after step 13 and resumed from its
  step-10 checkpoint, bit for bit; `gensuite sample --steps=2` then writes two-step
  samples and eval logs the mixture metrics."""
  full, split = tmp_path / 'full', tmp_path / 'split'
  args = ['--config=configs/flow_maps/toy2d.py:smoke', '--config.train.ckpt_every=10']
  run_cli('train', f'--workdir={full}', *args)
  killed = run_cli('train', f'--workdir={split}', *args, check=False,
                   GENSUITE_FAULT_KILL_AT_STEP=13)
  assert killed.returncode == -9, killed.stderr[-2000:]
  run_cli('train', f'--workdir={split}', *args)
  (step_a, leaves_a), (step_b, leaves_b) = final_leaves(full), final_leaves(split)
  assert step_a == step_b == 20
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  assert losses(full) == losses(split)
  out = tmp_path / 'x.npz'
  run_cli('sample', f'--workdir={full}', '--steps=2', '--num=64', f'--out={out}')
  x = np.load(out)['samples']
  assert x.shape == (64, 2) and np.all(np.isfinite(x))
  with open(full / 'metrics.jsonl') as f:
    text = f.read()
  for key in ('eval/on_mode', 'eval/mode_mass_tv', 'eval/modes_covered', 'eval/nfe',
              'fraction_r_eq_t'):
    assert f'"{key}"' in text, key
  proc = run_cli('sample', f'--workdir={full}', '--steps=0', '--num=4', f'--out={out}',
                 check=False)
  assert proc.returncode == 2 and 'steps must be a positive integer' in proc.stderr


@pytest.mark.slow  # six CLI runs
@pytest.mark.parametrize('variant', ['meanflow', 'scm', 'shortcut'])
def test_one_and_four_devices_give_the_same_losses(tmp_path, variant):
  args = [f'--config=configs/flow_maps/toy2d.py:{variant},smoke',
          '--config.train.num_steps=10', '--config.train.eval_every=0']
  one, four = tmp_path / 'one', tmp_path / 'four'
  run_cli('train', f'--workdir={one}', *args, devices=1)
  run_cli('train', f'--workdir={four}', *args, devices=4)
  a, b = losses(one), losses(four)
  assert a.keys() == b.keys() and a
  np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=2e-5)


def test_eval_reports_the_nfe_it_sampled_with_after_an_override():
  # `gensuite eval --steps=2` sets config.sampler.steps on a loaded run: the method's
  # reported NFE must follow it, not the value it was built with.
  config = toy2d.get_config('meanflow,smoke')
  data = data_lib.build(config.data, seed=0, global_batch_size=config.train.batch_size)
  method = methods.build(config, data.spec)
  assert method.evaluate(None, None, data)[0]['nfe'] == config.sampler.steps
  config.sampler.steps = 2
  assert method.evaluate(None, None, data)[0]['nfe'] == 2
  assert method.sample_steps == 2


def test_digits_meanflow_evaluates_and_samples_with_its_tracked_power_ema(tmp_path):
  """configs/flow_maps/digits.py's MeanFlow tracks power-function EMAs of stds 0.05 and
  0.1 and samples with 0.1's (config.eval.use_ema = 'phema_0.1'): the training-time
  eval, load_run's default sample and the snapshot on disk are that tracked EMA."""
  from configs.flow_maps import digits  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  from gensuite.methods import phema  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  config = digits.get_config('smoke')
  assert config.eval.use_ema == 'phema_0.1' and 0.1 in config.optim.phema_stds
  assert digits.get_config('scm,smoke').eval.use_ema is True  # MeanFlow's alone
  workdir = str(tmp_path / 'run')
  train.run(config, workdir)
  run = gensuite.load_run(workdir)
  tracked = run.state.phema['0.1']
  with np.load(os.path.join(workdir, 'phema', f'{run.step}.npz')) as f:
    for key, value in phema.flatten(tracked).items():
      np.testing.assert_array_equal(f[f'0.1/{key}'], value)
  key = jax.random.PRNGKey(0)
  x = run.sample(key, 8, steps=2, use_ema=run.config.eval.use_ema)
  np.testing.assert_array_equal(x, run.method.sample(
      run.state.replace(ema={'0.999': tracked}), key, 8, steps=2))
  assert np.max(np.abs(x - run.sample(key, 8, steps=2))) > 1e-6  # not the 0.999 EMA
  assert any('eval/mmd' in line for line in open(os.path.join(workdir, 'metrics.jsonl')))


@pytest.mark.slow  # a smoke EDM run, then its sCD student
def test_scd_distills_a_diffusion_run(tmp_path):
  """configs/flow_maps/digits.py:scd with a (smoke) EDM digits run as teacher: the
  tangent's velocity is the teacher's PF-ODE velocity (cos t x_t - D(x_t / cos t,
  sigma_d tan t)) / sin t, and the student trains through gensuite.train.run and samples
  in 1 and 2 steps."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from configs.diffusion import digits as diffusion_digits  # pylint: disable=g-import-not-at-top
  from configs.flow_maps import digits  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  teacher_dir, student_dir = str(tmp_path / 'teacher'), str(tmp_path / 'student')
  train.run(diffusion_digits.get_config('smoke'), teacher_dir)
  config = digits.get_config('scd,smoke')
  config.teacher.workdir = teacher_dir
  config.method.init_from_teacher = False  # the token's default is True: first from scratch
  train.run(config, student_dir)
  run = gensuite.load_run(student_dir)
  assert run.step == config.train.num_steps
  method, sd = run.method, run.method.sigma_d
  x = sd * jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t = jnp.full((4,), 0.7)
  c, s = math.cos(0.7), math.sin(0.7)
  d = method.teacher.denoiser(x / c, jnp.full((4,), sd * math.tan(0.7)))
  np.testing.assert_allclose(method.velocity(x, x, x, t, None), (c * x - d) / s,
                             rtol=1e-4, atol=1e-4)
  for steps in (1, 2):
    y = run.sample(jax.random.PRNGKey(1), 8, steps=steps)
    assert y.shape == (8, 8, 8, 1) and np.all(np.isfinite(y))
  # Started from the teacher (method.init_from_teacher): its initial consistency
  # function is the teacher's denoiser, f(x_t, t) = D(x_t / cos t, sigma_d tan t), at
  # small and large t; F is minus the EDM teacher's raw net (same sigma_d), so F = -(D -
  # c_skip x) / c_out; and the student trains, resumes from the run's own checkpoint
  # and samples.
  config.method.init_from_teacher = True
  warm = methods.build(config, run.experiment.data.spec, gensuite.load_run)
  state = warm.init(jax.random.PRNGKey(0), {'x': x})
  params = state.params['net']
  for tv in (0.01, 0.7, warm.t_max):
    t = jnp.full((4,), tv)
    c, s, sig = math.cos(tv), math.sin(tv), sd * math.tan(tv)
    d = warm.teacher.denoiser(x / c, jnp.full((4,), sig))
    np.testing.assert_allclose(warm.f(params, x, t), d, rtol=1e-4, atol=2e-4)
    c_skip, c_out = sd**2 / (sig**2 + sd**2), sig * sd / math.sqrt(sig**2 + sd**2)
    np.testing.assert_allclose(warm.F(params, x, t), -(d - c_skip * x / c) / c_out,
                               rtol=1e-3, atol=1e-3)
  warm_dir = str(tmp_path / 'warm')
  train.run(config, warm_dir)
  y = gensuite.load_run(warm_dir).sample(jax.random.PRNGKey(1), 8, steps=2)
  assert y.shape == (8, 8, 8, 1) and np.all(np.isfinite(y))
