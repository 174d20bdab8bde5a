"""Guidance as one layer over any denoiser or velocity field: classifier-free guidance
with a guidance interval, and autoguidance (ALGORITHMS.md §11.1-11.2).

  spec = guidance.from_config(config.sampler)          # config.sampler.guidance, checked
  field = guidance.guide(main_field, other_field, spec.weight, spec.sigma_lo, spec.sigma_hi)
  x = samplers.sample(name, field, z, rng, steps)       # any sampler of the field's kind

  d = guidance.guided_denoiser(main_fn, other_fn, weight, sigma_lo, sigma_hi)  # D(x, sigma)

The guided denoiser (Ho & Salimans, arXiv 2207.12598; Karras et al., arXiv 2406.02507):

  D_w(x; sigma) = D_0(x; sigma) + w (D_1(x; sigma) - D_0(x; sigma)),

D_1 the main (conditional) model and D_0 the other one: the null-label model for CFG
(kind 'cfg'), a smaller or less-trained run with the same conditioning for autoguidance
('autoguidance'). w = 1 is the main model itself (the other model is never built or
evaluated). The weights (1 - w, w) sum to one, so x cancels from every affine read-out:
the score s_w = s_0 + w (s_1 - s_0), i.e. D_w = x + sigma^2 (w grad log p(x|c; sigma) +
(1 - w) grad log p(x; sigma)) for CFG, and at fixed (x_t, t) the flow velocity, affine
in D (frames: v = (b'/b)(x - a D) + a' D), guides the same way: a velocity field is
guided on its velocities and its interval is tested on the path's sigma(t) = b/a. Per
noise level only: the guided sampler does not sample p(x|c)^w p(x)^(1-w) (§11.1).

Guidance interval (Kynkäänniemi et al., arXiv 2404.07724; kynkaat/guidance-interval's
edm_sampler): sampler step i, from sigma_i to sigma_{i+1}, is guided iff

  sigma_lo < sigma_i <= sigma_hi,

and then every evaluation of that step is (Heun's correction at sigma_{i+1}, RK4's
stages, the churned sigma_hat of edm_stochastic); outside it the step is the plain main
model's, with the guide not evaluated (lax.cond). Samplers ask for the step's denoiser
with `for_step(fn, sigma_i)`; a guided function called directly (a distillation
teacher, dopri5's adaptive steps) decides per evaluation from its own sigma. sigma_hi
>= NO_UPPER_BOUND (1e9, the default) is no upper bound, so sigma = inf (t = 0 of a flow
path) is inside; sigma_lo = 0 (the default) is no lower bound.
"""
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import config as config_lib
from gensuite.errors import ConfigError
from gensuite.samplers import frames

KINDS = ('none', 'cfg', 'autoguidance')
NO_UPPER_BOUND = 1e9
# config.sampler.guidance's fields and defaults (gensuite.config.base() holds the same).
DEFAULTS = dict(kind='none', weight=1.0, sigma_lo=0.0, sigma_hi=NO_UPPER_BOUND,
                guide_workdir='', guide_step=0, guide_ema='')


@dataclasses.dataclass(frozen=True)
class Spec:
  """config.sampler.guidance, checked. guide_ema: the guide run's EMA to use ('' = its
  default, the largest decay; a name such as '0.999' or 'phema_0.1')."""
  kind: str = 'none'
  weight: float = 1.0
  sigma_lo: float = 0.0
  sigma_hi: float = NO_UPPER_BOUND
  guide_workdir: str = ''
  guide_step: int = 0
  guide_ema: str = ''

  @property
  def active(self) -> bool:
    """Whether sampling differs from the main model's (a kind, and w != 1)."""
    return self.kind != 'none' and self.weight != 1.0


def from_config(sampler_config) -> Spec:
  """The checked guidance section of config.sampler (defaults where it has none).

  ConfigError (one line) for an unknown kind or field, a non-finite weight, sigma_lo <
  0 or > sigma_hi, or autoguidance without a guide_workdir."""
  section = sampler_config.get('guidance', None) if sampler_config is not None else None
  if section is None:
    return Spec()
  types = {k: config_lib.kind_of(v) for k, v in DEFAULTS.items()}
  config_lib.check_section(section, types, 'sampler.guidance')
  values = {**DEFAULTS, **{k: section[k] for k in section.keys()}}
  if values['kind'] not in KINDS:
    raise ConfigError(f'unknown sampler.guidance.kind {values["kind"]!r}; allowed: '
                      + ', '.join(KINDS))
  spec = Spec(kind=values['kind'], weight=float(values['weight']),
              sigma_lo=float(values['sigma_lo']), sigma_hi=float(values['sigma_hi']),
              guide_workdir=str(values['guide_workdir']), guide_step=int(values['guide_step']),
              guide_ema=str(values['guide_ema']))
  if not math.isfinite(spec.weight):
    raise ConfigError(f'sampler.guidance.weight must be finite, got {spec.weight}')
  if not spec.sigma_lo >= 0.0:
    raise ConfigError(f'sampler.guidance.sigma_lo must be >= 0, got {spec.sigma_lo}')
  if spec.sigma_lo > spec.sigma_hi:
    raise ConfigError(f'sampler.guidance.sigma_lo={spec.sigma_lo:g} is above sigma_hi='
                      f'{spec.sigma_hi:g}; the interval (sigma_lo, sigma_hi] must not be '
                      'reversed')
  if spec.guide_step < 0:
    raise ConfigError(f'sampler.guidance.guide_step must be >= 0 (0 = latest), got '
                      f'{spec.guide_step}')
  if spec.kind == 'autoguidance' and not spec.guide_workdir:
    raise ConfigError("sampler.guidance.kind='autoguidance' needs "
                      'sampler.guidance.guide_workdir: the guiding run (a smaller net, or '
                      'an early checkpoint of this run with guide_step)')
  return spec


def _static(value):
  """`value` as a numpy array if it is known now (not traced), else None."""
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


class Guided:
  """D_w = D_0 + w (D_1 - D_0) for sigma in (sigma_lo, sigma_hi], D_1 elsewhere.

  Callable as fn(x, s), like the functions it combines; s is sigma (denoisers) or t
  (velocities, with sigma_of = the path's sigma(t)). `at_step(s_i)` is the function a
  sampler uses for every evaluation of the step starting at s_i.
  """

  def __init__(self, main: Callable, other: Callable, weight: float, sigma_lo: float = 0.0,
               sigma_hi: float = NO_UPPER_BOUND, sigma_of: Callable | None = None):
    self.main, self.other, self.weight = main, other, float(weight)
    self.sigma_lo, self.sigma_hi, self.sigma_of = float(sigma_lo), float(sigma_hi), sigma_of

  def combined(self, x, s):
    """The guided value at every s (no interval)."""
    d1 = self.main(x, s)
    d0 = self.other(x, s)
    return d0 + jnp.asarray(self.weight, d1.dtype) * (d1 - d0)

  def _sigma(self, s, xp):
    if self.sigma_of is None:
      return s
    if xp is np:
      with jax.ensure_compile_time_eval():
        return np.asarray(self.sigma_of(jnp.asarray(s)), np.float64)
    return self.sigma_of(s)

  def inside(self, s, xp=jnp):
    """Whether s lies in the interval (xp=np: on the host, for a concrete grid)."""
    sigma = self._sigma(s, xp)
    above = sigma > self.sigma_lo
    if self.sigma_hi >= NO_UPPER_BOUND:
      return above
    return xp.logical_and(above, sigma <= self.sigma_hi)

  def _choose(self, inside, x, s):
    static = _static(inside)
    if static is not None and static.ndim == 0:
      return (self.combined if bool(static) else self.main)(x, s)
    inside = jnp.asarray(inside)
    if inside.ndim == 0:  # traced: evaluate the guide only where needed
      return jax.lax.cond(inside, self.combined, self.main, x, s)
    mask = inside.reshape(inside.shape + (1,) * (x.ndim - inside.ndim))
    return jnp.where(mask, self.combined(x, s), self.main(x, s))

  def __call__(self, x, s):
    return self._choose(self.inside(s), x, s)

  def at_step(self, s_step) -> Callable:
    """fn(x, s) with the decision of the step that starts at s_step."""
    inside = self.inside(s_step)
    return lambda x, s: self._choose(inside, x, s)

  def restrict(self, step_starts) -> Callable:
    """The function for a sampler whose steps start at the concrete `step_starts`:
    the main model if no step is guided, the combination if all are, else self."""
    inside = np.asarray(self.inside(np.asarray(step_starts, np.float64), xp=np))
    if not inside.any():
      return self.main
    if inside.all():
      return self.combined
    return self

  def map(self, convert: Callable, sigma_of: Callable | None = None) -> 'Guided':
    """The same guidance on convert(main), convert(other) (e.g. velocity -> denoiser)."""
    return Guided(convert(self.main), convert(self.other), self.weight, self.sigma_lo,
                  self.sigma_hi, sigma_of)


def _full_interval(sigma_lo: float, sigma_hi: float) -> bool:
  return sigma_lo <= 0.0 and sigma_hi >= NO_UPPER_BOUND


def guided_denoiser(main_fn: Callable, other_fn: Callable, weight: float,
                    sigma_lo: float = 0.0, sigma_hi: float = NO_UPPER_BOUND) -> Callable:
  """D_w(x, sigma) in the VE frame (module docstring); main_fn itself when w = 1, a
  plain combination when the interval holds every sigma."""
  if float(weight) == 1.0:
    return main_fn
  guided = Guided(main_fn, other_fn, weight, sigma_lo, sigma_hi)
  return guided.combined if _full_interval(sigma_lo, sigma_hi) else guided


def guided_velocity(main_fn: Callable, other_fn: Callable, weight: float,
                    path: frames.GaussianPath, sigma_lo: float = 0.0,
                    sigma_hi: float = NO_UPPER_BOUND) -> Callable:
  """v_w(x, t) = v_0 + w (v_1 - v_0) where path.sigma(t) is in the interval."""
  if float(weight) == 1.0:
    return main_fn
  guided = Guided(main_fn, other_fn, weight, sigma_lo, sigma_hi, sigma_of=path.sigma)
  return guided.combined if _full_interval(sigma_lo, sigma_hi) else guided


def for_step(fn: Callable, s_step) -> Callable:
  """The function a sampler evaluates throughout the step that starts at s_step."""
  at_step = getattr(fn, 'at_step', None)
  return fn if at_step is None else at_step(s_step)


def restrict(fn: Callable, step_starts) -> Callable:
  """fn for a sampler on a concrete grid (see Guided.restrict); others unchanged."""
  return fn.restrict(step_starts) if isinstance(fn, Guided) else fn


def convert(fn: Callable, conversion: Callable, sigma_of: Callable | None = None) -> Callable:
  """conversion(fn), keeping a guided function's guidance (now tested on sigma_of)."""
  return fn.map(conversion, sigma_of) if isinstance(fn, Guided) else conversion(fn)


def _same_path(a: frames.GaussianPath, b: frames.GaussianPath) -> bool:
  if a is b:
    return True
  ts = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
  with jax.ensure_compile_time_eval():
    return all(np.allclose(np.asarray(f(jnp.asarray(ts))), np.asarray(g(jnp.asarray(ts))),
                           rtol=1e-6, atol=1e-9) for f, g in ((a.a, b.a), (a.b, b.b)))


def guide(main, other, weight: float, sigma_lo: float = 0.0,
          sigma_hi: float = NO_UPPER_BOUND):
  """The guided gensuite.samplers.Field: main's kind, grid and path, with fn guided by
  other's (the same kind of field; for velocities, on the same path). main itself
  when w = 1."""
  if float(weight) == 1.0:
    return main
  if other.kind != main.kind:
    raise ConfigError(f'guidance combines fields of one kind; the main model has a '
                      f'{main.kind} field and the guide a {other.kind} field')
  if main.kind == 'denoiser':
    fn = guided_denoiser(main.fn, other.fn, weight, sigma_lo, sigma_hi)
  elif main.kind == 'velocity':
    if not _same_path(main.path, other.path):
      raise ConfigError(f'guidance combines velocities on one path; the main model is on '
                        f'{main.path.name!r} and the guide on {other.path.name!r} (or the '
                        'same name with other parameters)')
    fn = guided_velocity(main.fn, other.fn, weight, main.path, sigma_lo, sigma_hi)
  else:
    raise ConfigError(f'guidance needs a denoiser or velocity field, not {main.kind!r}')
  return dataclasses.replace(
      main, fn=fn, independent_noise=main.independent_noise and other.independent_noise)
