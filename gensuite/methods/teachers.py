"""Teachers for score distillation: one interface over exact and trained denoisers.

  teacher = teachers.build(config, data_spec, load_run)   # ConfigError if none/missing
  d = teacher.denoiser(x, sigma)                 # E[x0 | x0 + sigma eps = x], VE frame
  s = teacher.score(x, sigma)                    # (d - x) / sigma^2
  y, nfe = teacher.sample(z, steps=18)           # EDM Heun from sigma_max z: 35 NFE

`sigma` is a scalar or one value per example ([B]). Two kinds:
  AnalyticTeacher  the exact noisy denoiser of a toy Gaussian mixture
                   (config.teacher.analytic = 'data' takes the mixture from
                   config.data; a toy mixture name, e.g. '8gaussians', builds it from
                   config.teacher.params).
  RunTeacher       a trained gensuite run in config.teacher.workdir, loaded with
                   the load_run it is given (gensuite.load_run: its own config.json,
                   its EMA weights; config.teacher.ema picks which: '' the run's
                   default, the longest fixed decay; a decay such as '0.999';
                   'phema_0.1', a post-hoc EMA `gensuite phema` reconstructed; or
                   'none', the raw weights); its
                   method must expose denoiser_fn(params, label=None) -> fn(x, sigma)
                   in the VE frame. A RunTeacher also lends its architecture:
                   `apply(params, x, sigma)` runs the teacher's network with other
                   weights, so students and fake scores can start from `params`.

Class-conditional teachers (config.method.class_conditional): `label` [B] picks the
classes and cfg_scale w applies classifier-free guidance to the teacher, D = D_null +
w (D_label - D_null) (Ho & Salimans 2022; DMD2 distils SD v1.5 at w = 1.75). A run
teacher is conditional when its method is (diffusion's class_conditional); an
analytic teacher's classes are its mixture components, p(x | c) = N(mu_c, diag s_c^2),
the null label being the whole mixture, and since toy data carry no labels a real
sample's label is drawn from its component posterior p(c | x0) (`draw_labels`), which
makes (x0, c) an exact draw of the joint. `num_classes` (None: unconditional) and
`class_prior` (None: uniform) say what a student samples labels from.

Features (the discriminator head disc_head='teacher_features', FastGen's choice):
`apply(params, x, sigma, features=True)` returns (D, features of the network's first
call): the bottleneck the nets return with return_features=True (gensuite.nets), read
through a flax method interceptor so the teacher's own method (whatever its
formulation) is called unchanged.
"""
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gensuite import samplers
from gensuite.errors import ConfigError
from gensuite.methods import rand


def pf_ode_sample(denoiser, z: jax.Array, sigma_max: float, sigma_min: float = 0.002,
                  steps: int = 18, rho: float = 7.0, stops=()) -> tuple:
  """EDM's deterministic Heun sampler (gensuite.samplers.sample_sigmas 'heun').

  Starts at sigma_max z and integrates dx/dsigma = (x - D(x, sigma)) / sigma on the
  Karras grid down to 0, the last step by Euler: returns (x, nfe), nfe = 2 steps - 1
  (35 for steps = 18). With `stops` (noise levels in (0, sigma_max], descending) the
  grid also holds those levels and it returns (x, nfe, states): states[i] is the ODE's
  point at stops[i], [len(stops), B, ...] (stops[0] = sigma_max gives sigma_max z).
  """
  sigmas = samplers.karras_sigmas(steps, sigma_min, sigma_max, rho)
  if not len(stops):
    x, info = samplers.sample_sigmas('heun', denoiser, sigma_max * z, sigmas)
    return x, info['nfe']
  stops = np.asarray(stops, np.float64)
  if np.any(np.diff(stops) >= 0) or stops[-1] <= 0 or stops[0] > sigma_max * (1 + 1e-6):
    raise ConfigError(f'stops={stops.tolist()} must be strictly decreasing levels in '
                      f'(0, sigma_max={sigma_max:g}]')
  x, nfe, states, hi = sigma_max * z, 0, [], sigma_max
  for s in list(stops) + [0.0]:  # segment by segment: each stop is a level of the grid
    if s < hi:
      seg = np.concatenate([[hi], sigmas[(sigmas < hi) & (sigmas > s)], [s]])
      x, info = samplers.sample_sigmas('heun', denoiser, x, seg)
      nfe, hi = nfe + info['nfe'], s
    if s > 0:
      states.append(x)
  return x, nfe, jnp.stack(states)


def pf_ode_from(denoiser, x: jax.Array, sigma_start, steps: int = 8,
                sigma_min: float = 0.002, rho: float = 7.0) -> jax.Array:
  """EDM's Heun sampler from per-example levels: x [B, ...] at sigma_start [B] to 0.

  Each example takes its own Karras grid of `steps` levels from its sigma_start down to
  sigma_min, then 0 by Euler (2 steps - 1 NFE, as pf_ode_sample); `denoiser(x, sigma)`
  takes per-example sigmas [B]. sigma_start must be above sigma_min.
  """
  if steps < 2:
    raise ConfigError(f'pf_ode_from needs steps >= 2 Heun levels, got {steps}')
  start = jnp.asarray(sigma_start, jnp.float32).reshape(-1)
  frac = jnp.arange(steps, dtype=jnp.float32) / (steps - 1)
  hi, lo = start**(1.0 / rho), sigma_min**(1.0 / rho)
  grid = (hi[None] + frac[:, None] * (lo - hi[None]))**rho  # [steps, B]
  grid = jnp.concatenate([grid, jnp.zeros_like(grid[:1])])
  col = lambda s: s.reshape((-1,) + (1,) * (x.ndim - 1))

  def heun(j, x):
    s, s_next = grid[j], grid[j + 1]
    d = (x - denoiser(x, s)) / col(s)
    x_euler = x + col(s_next - s) * d
    d_next = (x_euler - denoiser(x_euler, s_next)) / col(s_next)
    return x + col(s_next - s) * 0.5 * (d + d_next)

  x = jax.lax.fori_loop(0, steps - 1, heun, x)
  return denoiser(x, grid[steps - 1])  # Euler's last step to 0 lands on the denoiser


class AnalyticTeacher:
  """The exact denoiser of a Gaussian mixture (toy.GaussianMixture); its components
  are the classes of a class-conditional student."""

  has_network = False

  def __init__(self, mixture):
    self.mixture = mixture
    self.data_shape = (mixture.dim,)
    cov = np.asarray(mixture.cov)
    self.sigma_data = float(math.sqrt(np.trace(cov) / mixture.dim))
    self.params = None
    self.num_classes = int(mixture.num_components)
    self.class_prior = np.asarray(mixture.weights, np.float32)

  def class_denoiser(self, x: jax.Array, sigma, label: jax.Array) -> jax.Array:
    """E[x0 | x, c] = mu_c + s_c^2 / (s_c^2 + sigma^2) (x - mu_c): one Gaussian."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    mu, std = self.mixture.means[label], self.mixture.stds[label]
    shrink = std**2 / (std**2 + sigma[:, None]**2)
    return mu + shrink * (x - mu)

  def denoiser(self, x: jax.Array, sigma, label=None, cfg_scale: float = 1.0) -> jax.Array:
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    if label is None:
      return self.mixture.noisy_denoiser(x, sigma)
    d = self.class_denoiser(x, sigma, label)
    if cfg_scale == 1.0:
      return d
    null = self.mixture.noisy_denoiser(x, sigma)
    return null + cfg_scale * (d - null)

  def score(self, x: jax.Array, sigma, label=None, cfg_scale: float = 1.0) -> jax.Array:
    sigma = jnp.asarray(sigma, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return (self.denoiser(x, sigma.reshape(-1), label, cfg_scale) - x) / sigma**2

  def draw_labels(self, rng: jax.Array, x0: jax.Array) -> jax.Array:
    """c ~ p(c | x0) proportional to w_c N(x0; mu_c, diag s_c^2): with x0 ~ p, an
    exact draw of the joint (x0, c) (labels for unlabelled toy data)."""
    var = self.mixture.stds**2                                         # [K, d]
    diff = x0[:, None, :] - self.mixture.means[None]                   # [B, K, d]
    log_n = -0.5 * jnp.sum(diff**2 / var + jnp.log(var), axis=-1)      # [B, K]
    with np.errstate(divide='ignore'):
      log_w = jnp.asarray(np.log(self.class_prior))
    # Gumbel-max with per-example uniforms (gensuite.methods.rand), so a label does not
    # depend on how the batch is split into microbatches.
    u = rand.uniform(rng, log_n.shape, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    return jnp.argmax(log_w + log_n - jnp.log(-jnp.log(u)), axis=-1)

  def sample(self, z: jax.Array, sigma_max: float = 80.0, steps: int = 18,
             stops=()) -> tuple:
    """(x, nfe) from the deterministic Heun sampler; with `stops`, (x, nfe, states)
    (pf_ode_sample)."""
    return pf_ode_sample(self.denoiser, z, sigma_max, steps=steps, stops=stops)


def call_with_features(fn):
  """(fn(), features): fn's first call of a network that can return features
  (gensuite.nets: `supports_features`) is made with return_features=True; fn sees
  only the usual output. ConfigError if fn calls no such network."""
  found = []

  def interceptor(next_fun, args, kwargs, context):
    if (context.method_name == '__call__' and not found
        and getattr(type(context.module), 'supports_features', False)):
      out, features = next_fun(*args, **dict(kwargs, return_features=True))
      found.append(features)
      return out
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    out = fn()
  if not found:
    raise ConfigError("the teacher's network returns no features (gensuite.nets mlp "
                      "and unet do); use method.disc_head='separate' or 'fake_score'")
  return out, found[0]


class RunTeacher:
  """A trained diffusion or flow-matching run, frozen at its EMA weights (`ema`: which
  of them, module docstring)."""

  has_network = True
  class_prior = None  # uniform over num_classes

  def __init__(self, workdir: str, load_run, ema: str = ''):
    self.workdir = workdir
    self.run = load_run(workdir)
    self.method = self.run.method
    self.method.denoiser_fn(None)  # ConfigError (one line) for a run with no denoiser
    self.data_shape = tuple(self.run.experiment.data.spec.shape)
    self.sigma_data = float(self.run.config.method.get('sigma_data', 0.5))
    # '' the run's default EMA; 'none' its raw weights; else a name in run.state.ema
    # (ConfigError naming the EMAs the run has, and how to make a post-hoc one).
    self.params = self.run.state.eval_params({'': True, 'none': False}.get(ema, ema))
    conditional = bool(getattr(self.method, 'conditional', False))
    self.num_classes = self.run.experiment.data.spec.num_classes if conditional else None

  def apply(self, params: Any, x: jax.Array, sigma, label=None, cfg_scale: float = 1.0,
            features: bool = False):
    """The teacher's network with `params`, one sigma (and label) per example.

    Returns D [B, ...], or (D, features [B, ...]) with features=True: those of the
    method's first network call, so ask for them unguided (cfg_scale = 1), as
    distillation does.
    """
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])

    def one(xi, si, li):
      lab = None if li is None else li[None]
      call = lambda: self.method.denoiser_fn(params, lab, cfg_scale)(xi[None], si)
      if not features:
        return call()[0]
      d, f = call_with_features(call)
      return d[0], f[0]

    if label is None:
      return jax.vmap(lambda xi, si: one(xi, si, None))(x, sigma)
    label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), x.shape[:1])
    return jax.vmap(one)(x, sigma, label)

  def denoiser(self, x: jax.Array, sigma, label=None, cfg_scale: float = 1.0) -> jax.Array:
    return self.apply(self.params, x, sigma, label, cfg_scale)

  def score(self, x: jax.Array, sigma, label=None, cfg_scale: float = 1.0) -> jax.Array:
    sigma = jnp.asarray(sigma, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return (self.denoiser(x, sigma.reshape(-1), label, cfg_scale) - x) / sigma**2

  def sample(self, z: jax.Array, sigma_max: float = 80.0, steps: int = 18,
             stops=()) -> tuple:
    """As AnalyticTeacher.sample; one sigma for the whole batch, so the network runs
    batched."""
    fn = self.method.denoiser_fn(self.params, None)
    return pf_ode_sample(fn, z, sigma_max, steps=steps, stops=stops)


def _mixture(name: str, params: dict):
  from gensuite.data import toy  # pylint: disable=g-import-not-at-top
  if name not in toy.NAMES:
    raise ConfigError(f'config.teacher.analytic={name!r} is not a toy distribution; '
                      f"allowed: 'data' or one of {', '.join(toy.NAMES)}")
  dist = toy.get(name, **params)
  if not isinstance(dist, toy.GaussianMixture):
    raise ConfigError(f'config.teacher.analytic={name!r} has no exact denoiser; an '
                      'analytic teacher must be a Gaussian mixture (gaussian_mixture, '
                      '8gaussians, grid)')
  return dist


def build(config, data_spec, load_run=None):
  """The teacher named by config.teacher (exactly one of analytic / workdir).

  load_run(workdir) loads a run teacher (gensuite.load_run; the experiment passes it).
  """
  tc = config.get('teacher', None)
  analytic = str(tc.get('analytic', '') or '') if tc is not None else ''
  workdir = str(tc.get('workdir', '') or '') if tc is not None else ''
  if not analytic and not workdir:
    raise ConfigError('distillation needs a teacher: set config.teacher.analytic '
                      "('data' or a toy mixture name) or config.teacher.workdir (a "
                      'trained diffusion or flow_matching run)')
  if analytic and workdir:
    raise ConfigError('set only one of config.teacher.analytic and '
                      f'config.teacher.workdir (got {analytic!r} and {workdir!r})')
  if workdir:
    if not os.path.exists(os.path.join(workdir, 'config.json')):
      raise ConfigError(f'config.teacher.workdir={workdir!r} holds no run '
                        '(no config.json); train the teacher first')
    if load_run is None:
      raise ConfigError('a run teacher (config.teacher.workdir) is loaded by the experiment: '
                        'build the method through gensuite.experiment.build_experiment, or '
                        'pass load_run=gensuite.load_run')
    teacher = RunTeacher(workdir, load_run, str(tc.get('ema', '') or ''))
  elif analytic == 'data':
    teacher = AnalyticTeacher(_mixture(config.data.name,
                                       dict(config.data.get('params', {}) or {})))
  else:
    teacher = AnalyticTeacher(_mixture(analytic, dict(tc.get('params', {}) or {})))
  if tuple(teacher.data_shape) != tuple(data_spec.shape):
    raise ConfigError(f'teacher makes data of shape {tuple(teacher.data_shape)} but '
                      f'config.data {data_spec.name!r} has shape {tuple(data_spec.shape)}')
  return teacher
