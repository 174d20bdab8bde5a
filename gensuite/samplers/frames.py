"""Time <-> sigma conversions between Gaussian noising paths and the VE/EDM frame.

  path = frames.vp()                                   # or ve(), edm(), fm_path('linear')
  sigma = path.sigma(t); t = path.t_of_sigma(sigma)
  x_ve = path.to_ve(x_t, t)                            # x_t / a_t
  denoiser = frames.denoiser_from_velocity(velocity_fn, frames.fm_path('linear'))
  score = frames.score_from_velocity(velocity_fn, frames.fm_path('linear', gamma=g))
  x, info = samplers.sample_sigmas('dpm_solver_2m', denoiser, sigmas[0] * z, sigmas, rng)

This module is the one place where times and noise levels are converted, and the one
definition of the flow-matching paths (FM_PATHS, used by gensuite.methods.flow_matching).
A Gaussian path x_t = a_t x_data + b_t eps is the VE path x_ve = x_data + sigma eps
after the change of variables

  sigma = b_t / a_t,   x_ve = x_t / a_t,

and a denoiser D(x_t, t) = E[x_data | x_t] is the VE-frame denoiser
D_ve(x_ve, sigma) = D(a_t x_ve, t(sigma)). Every sigma-space sampler therefore runs in
the VE frame; a method on another path hands it a VE-frame denoiser.

Paths (ALGORITHMS.md §0, §1.1, §2):
  vp      a = exp(-t^2 (beta_max - beta_min)/4 - t beta_min/2), b = sqrt(1 - a^2),
          t = 0 data, t = 1 noise; t(sigma) solves a quadratic in t.
  ve      a = 1, b = sigma(t) = sigma_min (sigma_max/sigma_min)^t; t(sigma) is a log.
  edm     a = 1, b = sigma = t.
  fm      flow matching's convention (gensuite.methods.flow_matching): t = 0 noise,
          t = 1 data, x_t = alpha(t) x0_noise + beta(t) x1_data + gamma(t) z, so
          a = beta and b = sqrt(alpha^2 + gamma^2). Closed-form t(sigma) for the
          linear path (t = 1/(1 + sigma - sigma_min)), the cosine path
          (t = (2/pi) arctan(1/sigma)) and the VP path (t = 1 - vp t(sigma));
          bisection for any other monotone path (e.g. with gamma != 0).

Velocity <-> denoiser. For any such path, with ' = d/dt and n = x_t - a D the noise
part, the velocity of the probability flow is v = (b'/b) n + a' D (for the
interpolant with gamma this uses E[alpha x0 + gamma z | x_t] = n and
alpha alpha' + gamma gamma' = b b'), so

  D = (b v - b' x) / (b a' - b' a),        v = (b'/b)(x - a D) + a' D,

and the score of x_t is (a D - x_t) / b^2 (ALGORITHMS.md §0). With gamma = 0 this is
§2.4's one-sided formula s = -eta/alpha; with gamma != 0 the frame's b includes gamma
(the one-sided formula, with b = alpha, is then wrong). Both need the noise to be
independent of the data (not so under minibatch-OT coupling).
"""
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from gensuite.errors import ConfigError

ScalarFn = Callable[[jax.Array], jax.Array]
DenoiserFn = Callable[[jax.Array, jax.Array], jax.Array]
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]

VP_BETA_MIN, VP_BETA_MAX = 0.1, 20.0
VE_SIGMA_MIN, VE_SIGMA_MAX = 0.01, 50.0


@dataclasses.dataclass(frozen=True)
class GaussianPath:
  """x_t = a(t) x_data + b(t) eps, with its VE noise level sigma(t) = b/a.

  t_range: the interval of t where sigma(t) is finite and monotone (the bisection
    bracket); t_of_sigma inverts sigma on it.
  """
  name: str
  a: ScalarFn
  b: ScalarFn
  t_of_sigma: Callable[[jax.Array], jax.Array]
  t_range: tuple[float, float]

  def sigma(self, t) -> jax.Array:
    t = jnp.asarray(t)
    return self.b(t) / self.a(t)

  def to_ve(self, x: jax.Array, t) -> jax.Array:
    """x_t -> x_ve = x_t / a_t."""
    return x / jnp.asarray(self.a(jnp.asarray(t)), x.dtype)

  def from_ve(self, x_ve: jax.Array, t) -> jax.Array:
    """x_ve -> x_t = a_t x_ve."""
    return x_ve * jnp.asarray(self.a(jnp.asarray(t)), x_ve.dtype)


def _bisect_inverse(sigma_of_t: ScalarFn, t_lo: float, t_hi: float,
                    iters: int = 64) -> Callable[[jax.Array], jax.Array]:
  """t(sigma) for a monotone sigma(t) on [t_lo, t_hi], by bisection (jittable)."""
  def t_of_sigma(sigma):
    sigma = jnp.asarray(sigma)
    dtype = jnp.result_type(sigma, jnp.float32)
    lo = jnp.full(sigma.shape, t_lo, dtype)
    hi = jnp.full(sigma.shape, t_hi, dtype)
    increasing = sigma_of_t(jnp.asarray(t_hi, dtype)) > sigma_of_t(jnp.asarray(t_lo, dtype))

    def body(_, bounds):
      lo, hi = bounds
      mid = 0.5 * (lo + hi)
      go_up = (sigma_of_t(mid) < sigma) == increasing
      return jnp.where(go_up, mid, lo), jnp.where(go_up, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)
  return t_of_sigma


# ---------------------------------------------------------------- diffusion paths


def _vp_log_a(t, beta_min, beta_max):
  return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def vp(beta_min: float = VP_BETA_MIN, beta_max: float = VP_BETA_MAX) -> GaussianPath:
  """Song et al.'s VP SDE marginals (t = 0 data, t = 1 noise)."""
  a = lambda t: jnp.exp(_vp_log_a(t, beta_min, beta_max))
  b = lambda t: jnp.sqrt(-jnp.expm1(2.0 * _vp_log_a(t, beta_min, beta_max)))

  def t_of_sigma(sigma):
    # a^2 = 1/(1 + sigma^2): (beta_max - beta_min)/4 t^2 + beta_min/2 t = log1p(sigma^2)/2.
    sigma = jnp.asarray(sigma)
    c = 0.5 * jnp.log1p(sigma**2)
    qa, qb = 0.25 * (beta_max - beta_min), 0.5 * beta_min
    if qa == 0.0:
      return c / qb
    # The root in the cancellation-free form 2c / (qb + sqrt(qb^2 + 4 qa c)).
    return 2.0 * c / (qb + jnp.sqrt(qb**2 + 4.0 * qa * c))

  return GaussianPath('vp', a, b, t_of_sigma, (0.0, 1.0))


def ve(sigma_min: float = VE_SIGMA_MIN, sigma_max: float = VE_SIGMA_MAX) -> GaussianPath:
  """Song et al.'s VE SDE: sigma(t) = sigma_min (sigma_max/sigma_min)^t."""
  if not 0.0 < sigma_min < sigma_max:
    raise ConfigError(f've path needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}')
  log_ratio = math.log(sigma_max / sigma_min)
  a = lambda t: jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))
  b = lambda t: sigma_min * jnp.exp(t * log_ratio)
  t_of_sigma = lambda sigma: jnp.log(jnp.asarray(sigma) / sigma_min) / log_ratio
  return GaussianPath('ve', a, b, t_of_sigma, (0.0, 1.0))


def edm() -> GaussianPath:
  """EDM: t is sigma itself (a = 1, b = t)."""
  a = lambda t: jnp.ones_like(jnp.asarray(t, jnp.result_type(float)))
  b = lambda t: jnp.asarray(t)
  return GaussianPath('edm', a, b, lambda sigma: jnp.asarray(sigma), (0.0, math.inf))


# ---------------------------------------------------------------- flow-matching paths


# kind -> (sigma_min -> (alpha, beta)): x_t = alpha(t) x0_noise + beta(t) x1_data.
#   linear  alpha = 1 - (1 - sigma_min) t, beta = t  (CFM; sigma_min = 0: rectified flow)
#   vp      alpha = sqrt(1 - a(1-t)^2), beta = a(1-t), with a the VP signal scale above
#           (Lipman et al.'s VP path); 1 - a^2 as -expm1(2 log a), exact near t = 1
#   cosine  alpha = cos(pi t / 2), beta = sin(pi t / 2)


def _fm_linear(sigma_min):
  return (lambda t: 1.0 - (1.0 - sigma_min) * t), (lambda t: t)


def _fm_vp(sigma_min):
  del sigma_min
  signal = lambda s: jnp.exp(_vp_log_a(s, VP_BETA_MIN, VP_BETA_MAX))
  return (lambda t: jnp.sqrt(-jnp.expm1(2.0 * _vp_log_a(1.0 - t, VP_BETA_MIN, VP_BETA_MAX))),
          lambda t: signal(1.0 - t))


def _fm_cosine(sigma_min):
  del sigma_min
  return (lambda t: jnp.cos(0.5 * math.pi * t)), (lambda t: jnp.sin(0.5 * math.pi * t))


FM_PATHS = {'linear': _fm_linear, 'vp': _fm_vp, 'cosine': _fm_cosine}


def _fm_closed_form(kind: str, sigma_min: float):
  if kind == 'linear':
    # sigma = (1 - (1 - sigma_min) t)/t = 1/t - 1 + sigma_min.
    return lambda sigma: 1.0 / (1.0 + jnp.asarray(sigma) - sigma_min)
  if kind == 'cosine':
    # sigma = cot(pi t / 2); arctan2 keeps sigma = 0 -> t = 1 exact.
    return lambda sigma: (2.0 / math.pi) * jnp.arctan2(1.0, jnp.asarray(sigma))
  if kind == 'vp':
    vp_t = vp().t_of_sigma
    return lambda sigma: 1.0 - vp_t(sigma)
  raise ConfigError(f'unknown flow path {kind!r}; allowed: {", ".join(sorted(FM_PATHS))}')


def interpolant_path(alpha: ScalarFn, beta: ScalarFn, gamma: ScalarFn | None = None,
                     t_of_sigma=None, name: str = 'interpolant',
                     t_range: tuple[float, float] = (1e-6, 1.0)) -> GaussianPath:
  """A flow-matching interpolant alpha(t) x0_noise + beta(t) x1_data + gamma(t) z.

  a = beta and b = sqrt(alpha^2 + gamma^2); t_of_sigma defaults to bisection on
  t_range (t = 0, where beta = 0 and sigma = inf, is left out of the bracket).
  """
  if gamma is None:
    b = lambda t: jnp.abs(alpha(t))
  else:
    b = lambda t: jnp.sqrt(alpha(t)**2 + gamma(t)**2)
  path = GaussianPath(name, beta, b, lambda s: s, t_range)
  inverse = t_of_sigma or _bisect_inverse(path.sigma, *t_range)
  return dataclasses.replace(path, t_of_sigma=inverse)


def fm_path(kind: str = 'linear', sigma_min: float = 0.0,
            gamma: ScalarFn | None = None) -> GaussianPath:
  """The flow-matching path `kind` (FM_PATHS) with the interpolant's gamma, if any."""
  if kind not in FM_PATHS:
    raise ConfigError(f'unknown flow path {kind!r}; allowed: {", ".join(sorted(FM_PATHS))}')
  alpha, beta = FM_PATHS[kind](float(sigma_min))
  closed = None if gamma is not None else _fm_closed_form(kind, float(sigma_min))
  return interpolant_path(alpha, beta, gamma, closed, name=f'fm_{kind}')


DIFFUSION_PATHS = {'vp': vp, 've': ve, 'edm': edm}


# ---------------------------------------------------------------- function conversions


def _value_and_derivative(fn: ScalarFn, t):
  return jax.jvp(fn, (t,), (jnp.ones_like(t),))


def _denoised(v, x_t, t, path: GaussianPath):
  """E[x_data | x_t] from the velocity v at (x_t, t): D = (b v - b' x_t)/(b a' - b' a)."""
  a, da = _value_and_derivative(path.a, t)
  b, db = _value_and_derivative(path.b, t)
  return (b * v - db * x_t) / (b * da - db * a)


def denoiser_from_velocity(velocity_fn: VelocityFn, path: GaussianPath) -> DenoiserFn:
  """VE-frame denoiser D_ve(x_ve, sigma) from a velocity v(x_t, t) on `path`.

  t = t(sigma), x_t = a_t x_ve, D = (b v - b' x_t)/(b a' - b' a). sigma must be > 0
  and finite (t strictly inside the path).
  """
  def denoiser(x_ve, sigma):
    t = path.t_of_sigma(jnp.asarray(sigma, x_ve.dtype)).astype(x_ve.dtype)
    x_t = path.a(t) * x_ve
    return _denoised(velocity_fn(x_t, t), x_t, t, path)
  return denoiser


def score_from_velocity(velocity_fn: VelocityFn, path: GaussianPath) -> Callable:
  """score(x_t, t) = grad log p_t(x_t) = (a D - x_t)/b^2 from a velocity on `path`.

  In the path's own frame and time (no t(sigma) round trip); D as in
  denoiser_from_velocity. For a flow-matching interpolant b = sqrt(alpha^2 + gamma^2)
  (fm_path with its gamma). Diverges as b -> 0 (data end): keep t inside the path.
  """
  def score(x_t, t):
    t = jnp.asarray(t, x_t.dtype)
    d = _denoised(velocity_fn(x_t, t), x_t, t, path)
    return (path.a(t) * d - x_t) / path.b(t)**2
  return score


def velocity_from_denoiser(denoiser_fn: DenoiserFn, path: GaussianPath) -> VelocityFn:
  """The probability-flow velocity v(x_t, t) on `path` from a VE-frame denoiser.

  v = (b'/b)(x_t - a D) + a' D with D = D_ve(x_t / a, b / a). Needs a, b > 0 at t.
  """
  def velocity(x_t, t):
    t = jnp.asarray(t, x_t.dtype)
    a, da = _value_and_derivative(path.a, t)
    b, db = _value_and_derivative(path.b, t)
    d = denoiser_fn(x_t / a, b / a)
    return (db / b) * (x_t - a * d) + da * d
  return velocity


def score_from_denoiser(denoiser_fn: DenoiserFn) -> Callable:
  """VE-frame score (D(x, sigma) - x) / sigma^2."""
  def score(x, sigma):
    sigma = jnp.asarray(sigma, x.dtype)
    return (denoiser_fn(x, sigma) - x) / sigma**2
  return score


def denoiser_from_score(score_fn: Callable) -> DenoiserFn:
  """VE-frame denoiser x + sigma^2 score(x, sigma) (Tweedie)."""
  def denoiser(x, sigma):
    sigma = jnp.asarray(sigma, x.dtype)
    return x + sigma**2 * score_fn(x, sigma)
  return denoiser
