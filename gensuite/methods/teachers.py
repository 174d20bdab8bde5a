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
                   its EMA weights); its
                   method must expose denoiser_fn(params, label=None) -> fn(x, sigma)
                   in the VE frame. A RunTeacher also lends its architecture:
                   `apply(params, x, sigma)` runs the teacher's network with other
                   weights, so students and fake scores can start from `params`.
"""
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import samplers
from gensuite.errors import ConfigError


def pf_ode_sample(denoiser, z: jax.Array, sigma_max: float, sigma_min: float = 0.002,
                  steps: int = 18, rho: float = 7.0) -> tuple[jax.Array, int]:
  """EDM's deterministic Heun sampler (gensuite.samplers.sample_sigmas 'heun').

  Starts at sigma_max z and integrates dx/dsigma = (x - D(x, sigma)) / sigma on the
  Karras grid down to 0, the last step by Euler: returns (x, nfe), nfe = 2 steps - 1
  (35 for steps = 18).
  """
  sigmas = samplers.karras_sigmas(steps, sigma_min, sigma_max, rho)
  x, info = samplers.sample_sigmas('heun', denoiser, sigma_max * z, sigmas)
  return x, info['nfe']


class AnalyticTeacher:
  """The exact denoiser of a Gaussian mixture (toy.GaussianMixture)."""

  def __init__(self, mixture):
    self.mixture = mixture
    self.data_shape = (mixture.dim,)
    cov = np.asarray(mixture.cov)
    self.sigma_data = float(math.sqrt(np.trace(cov) / mixture.dim))
    self.params = None

  def denoiser(self, x: jax.Array, sigma, label=None) -> jax.Array:
    del label
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    return self.mixture.noisy_denoiser(x, sigma)

  def score(self, x: jax.Array, sigma, label=None) -> jax.Array:
    sigma = jnp.asarray(sigma, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return (self.denoiser(x, sigma.reshape(-1), label) - x) / sigma**2

  def sample(self, z: jax.Array, sigma_max: float = 80.0,
             steps: int = 18) -> tuple[jax.Array, int]:
    return pf_ode_sample(self.denoiser, z, sigma_max, steps=steps)


class RunTeacher:
  """A trained diffusion or flow-matching run, frozen at its EMA weights."""

  def __init__(self, workdir: str, load_run):
    self.workdir = workdir
    self.run = load_run(workdir)
    self.method = self.run.method
    self.method.denoiser_fn(None)  # ConfigError (one line) for a run with no denoiser
    self.data_shape = tuple(self.run.experiment.data.spec.shape)
    self.sigma_data = float(self.run.config.method.get('sigma_data', 0.5))
    self.params = self.run.state.eval_params(True)

  def apply(self, params: Any, x: jax.Array, sigma, label=None) -> jax.Array:
    """The teacher's network with `params`, one sigma per example (vmapped)."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])

    def one(xi, si):
      return self.method.denoiser_fn(params, label)(xi[None], si)[0]

    return jax.vmap(one)(x, sigma)

  def denoiser(self, x: jax.Array, sigma, label=None) -> jax.Array:
    return self.apply(self.params, x, sigma, label)

  def score(self, x: jax.Array, sigma, label=None) -> jax.Array:
    sigma = jnp.asarray(sigma, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return (self.denoiser(x, sigma.reshape(-1), label) - x) / sigma**2

  def sample(self, z: jax.Array, sigma_max: float = 80.0,
             steps: int = 18) -> tuple[jax.Array, int]:
    # One sigma for the whole batch here, so the network runs batched.
    fn = self.method.denoiser_fn(self.params, None)
    return pf_ode_sample(fn, z, sigma_max, steps=steps)


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
    teacher = RunTeacher(workdir, load_run)
  elif analytic == 'data':
    teacher = AnalyticTeacher(_mixture(config.data.name,
                                       dict(config.data.get('params', {}) or {})))
  else:
    teacher = AnalyticTeacher(_mixture(analytic, dict(tc.get('params', {}) or {})))
  if tuple(teacher.data_shape) != tuple(data_spec.shape):
    raise ConfigError(f'teacher makes data of shape {tuple(teacher.data_shape)} but '
                      f'config.data {data_spec.name!r} has shape {tuple(data_spec.shape)}')
  return teacher
