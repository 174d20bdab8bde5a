"""Toy distributions in pure JAX: Gaussian mixtures (any dimension) and 2-D shapes.

  dist = toy.get('8gaussians')                  # or toy.get('moons', noise=0.05)
  x = dist.sample(jax.random.PRNGKey(0), 512)   # float32 [512, dist.dim]
  if dist.has_log_prob:
    lp = dist.log_prob(x)                       # [512]
  gmm = toy.get('gaussian_mixture', means=[[-2.0] * 50, [2.0] * 50], stds=0.5)
  gmm.noisy_score(x, sigma)                     # score of data * N(0, sigma^2 I)
  toy.NAMES                                     # the registered names

Every `sample(rng, n)` is jittable with `n` static and is a deterministic function
of `rng`; `sample(k, 1)` works, so one example per key can be drawn with
`jax.vmap(lambda k: dist.sample(k, 1)[0])(keys)`. Every object has `dim` and a
boolean `has_log_prob`; only those with a closed-form density define `log_prob(x)`.

Registered distributions and their defaults (all centred near the origin):
  gaussian_mixture  means [K, d] (required), stds scalar / [K] / [K, d] (diagonal;
                    default 1.0), weights [K] (default uniform). Any d.
  8gaussians        8 isotropic Gaussians evenly spaced on a circle:
                    radius=2.0, std=0.15. A GaussianMixture.
  grid              size x size isotropic Gaussians on a square grid centred at 0:
                    size=5, spacing=1.0, std=0.1. A GaussianMixture.
  moons             sklearn-style two moons, centred, scaled by `scale`, plus
                    isotropic Gaussian noise of std `noise` in output units:
                    noise=0.1, scale=2.0. No closed-form density.
  checkerboard      uniform on the black squares of a size x size board covering
                    [-extent, extent]^2, with the lower-left square black:
                    size=4, extent=4.0. Density 1 / (black area) inside, 0 outside.
  rings             concentric circles with radial Gaussian noise (the circle,
                    convolved with N(0, noise^2 I)): radii=(1.0, 2.0, 3.0),
                    noise=0.1, weights proportional to the radii (uniform per arc
                    length). Density in closed form via the Bessel function I0.
  swissroll         2-D swiss roll t (cos t, sin t) * scale, t ~ U[1.5 pi, 4.5 pi],
                    plus Gaussian noise of std `noise`: scale=0.2, noise=0.2 (the
                    FFJORD toy: sklearn's roll with noise 1, divided by 5).
Everything is float32, except that GaussianMixture's noisy_log_prob / noisy_score /
noisy_denoiser compute in float64 for a float64 x (under jax.enable_x64).
"""
import functools
import inspect
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import i0e, logsumexp

from gensuite.errors import ConfigError, lookup

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- params


def _number(what: str, value: Any, *, positive: bool = False,
            nonnegative: bool = False) -> float:
  """Returns value as a float, or raises ConfigError saying what is allowed."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
    raise ConfigError(f'{what} must be a number, got {value!r}')
  v = float(value)
  if not math.isfinite(v):
    raise ConfigError(f'{what} must be finite, got {value!r}')
  if positive and v <= 0:
    raise ConfigError(f'{what} must be > 0, got {value!r}')
  if nonnegative and v < 0:
    raise ConfigError(f'{what} must be >= 0, got {value!r}')
  return v


def _int(what: str, value: Any, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ConfigError(f'{what} must be an integer >= {minimum}, got {value!r}')
  return int(value)


def _array(what: str, value: Any) -> np.ndarray:
  """A finite float64 array (float64 so that validation and moments are exact)."""
  try:
    a = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise ConfigError(f'{what} must be numbers (a list or array), got {value!r}') from None
  if not np.all(np.isfinite(a)):
    raise ConfigError(f'{what} must be finite, got {value!r}')
  return a


def _weights(what: str, value: Any, k: int) -> np.ndarray:
  """Normalized weights: None means uniform; otherwise [k] non-negative, sum > 0."""
  if value is None:
    return np.full((k,), 1.0 / k)
  w = _array(what, value)
  if w.shape != (k,):
    raise ConfigError(f'{what} must have shape [{k}] (one per component), got shape '
                      f'{list(w.shape)}')
  if np.any(w < 0) or w.sum() <= 0:
    raise ConfigError(f'{what} must be >= 0 with a positive sum, got {value!r}')
  return w / w.sum()


def _as_x(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _as_float(x) -> jax.Array:
  """x as float32, or float64 when it is float64 (under jax.enable_x64)."""
  x = jnp.asarray(x)
  return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


# Methods are jitted with the (immutable, identity-hashed) object static: eager calls
# then compile once instead of once per primitive, and under an outer jit or vmap
# they inline as nested calls.
_jit_sample = functools.partial(jax.jit, static_argnums=(0, 2))
_jit_method = functools.partial(jax.jit, static_argnums=0)


# --------------------------------------------------------------------------- base


class ToyDistribution:
  """Base class: `name`, `dim`, `has_log_prob`, `sample(rng, n) -> [n, dim]`."""

  name: str = ''
  dim: int = 2
  has_log_prob: bool = False

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    raise NotImplementedError

  def __repr__(self) -> str:
    return f'{type(self).__name__}(name={self.name!r}, dim={self.dim})'


# --------------------------------------------------------------------------- GMMs


class GaussianMixture(ToyDistribution):
  """Mixture of K Gaussians in R^d with diagonal covariances.

  Args:
    means: [K, d] component means.
    stds: scalar, [K] (isotropic per component) or [K, d] (diagonal); all > 0. A
      1-D stds always means one value per component, even when K == d.
    weights: [K] non-negative mixture weights (normalized here); None is uniform.
    name: the registry name, for messages and repr.
  """

  has_log_prob = True

  def __init__(self, means: Any, stds: Any = 1.0, weights: Any = None,
               name: str = 'gaussian_mixture'):
    self.name = name
    mu = _array(f'{name}: means', means)
    if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
      raise ConfigError(f'{name}: means must be a [K, d] list of lists (K, d >= 1), got '
                        f'shape {list(mu.shape)}')
    k, d = mu.shape
    s = _array(f'{name}: stds', stds)
    if s.ndim == 0:
      s = np.full((k, d), float(s))
    elif s.shape == (k,):
      s = np.repeat(s[:, None], d, axis=1)
    elif s.shape != (k, d):
      raise ConfigError(f'{name}: stds must be a scalar, [K]=[{k}] or [K, d]=[{k}, {d}], '
                        f'got shape {list(s.shape)}')
    if np.any(s <= 0):
      raise ConfigError(f'{name}: stds must be > 0, got {stds!r}')
    w = _weights(f'{name}: weights', weights, k)
    self.dim = int(d)
    self.num_components = int(k)
    # Kept as numpy so that they become compile-time constants under jit and no
    # device is touched at construction.
    self._means = mu.astype(np.float32)
    self._stds = s.astype(np.float32)
    self._var = (s * s).astype(np.float32)
    self._weights = w.astype(np.float32)
    with np.errstate(divide='ignore'):  # zero weights are allowed: log 0 = -inf
      self._log_w = np.log(w).astype(np.float32)
      # float64 copies: the noisy_* methods compute in the precision of x.
      self._noisy_params = (mu, s * s, np.log(w))
    mean = w @ mu
    second = np.einsum('k,ki,kj->ij', w, mu, mu) + np.diag(w @ (s * s))
    self._mean = mean.astype(np.float32)
    self._cov = (second - np.outer(mean, mean)).astype(np.float32)

  @property
  def means(self) -> jax.Array:
    return jnp.asarray(self._means)

  @property
  def stds(self) -> jax.Array:
    """[K, d] per-component standard deviations."""
    return jnp.asarray(self._stds)

  @property
  def weights(self) -> jax.Array:
    return jnp.asarray(self._weights)

  @property
  def mean(self) -> jax.Array:
    """[d] mean of the mixture."""
    return jnp.asarray(self._mean)

  @property
  def cov(self) -> jax.Array:
    """[d, d] covariance of the mixture."""
    return jnp.asarray(self._cov)

  @_jit_sample
  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_comp, k_eps = jax.random.split(rng)
    comp = jax.random.categorical(k_comp, jnp.asarray(self._log_w), shape=(n,))
    eps = jax.random.normal(k_eps, (n, self.dim), jnp.float32)
    return jnp.asarray(self._means)[comp] + jnp.asarray(self._stds)[comp] * eps

  def _component_log_probs(self, x, sigma):
    """log w_k + log N(x; mu_k, diag(std_k^2 + sigma^2)): [..., K], and (diff, var).

    In float32, or in float64 for a float64 x (under jax.enable_x64)."""
    x = _as_float(x)
    means, var0, log_w = (jnp.asarray(p, x.dtype) for p in self._noisy_params)
    sigma = jnp.asarray(sigma, x.dtype)
    var = var0 + jnp.square(sigma)[..., None, None]                     # [..., K, d]
    diff = x[..., None, :] - means                                      # [..., K, d]
    quad = jnp.sum(jnp.square(diff) / var + jnp.log(var), axis=-1)
    return log_w - 0.5 * (quad + self.dim * _LOG_2PI), diff, var

  @_jit_method
  def log_prob(self, x: jax.Array) -> jax.Array:
    """log p(x) for x [..., d] -> [...]."""
    return self.noisy_log_prob(x, 0.0)

  @_jit_method
  def noisy_log_prob(self, x: jax.Array, sigma) -> jax.Array:
    """log of (p * N(0, sigma^2 I))(x); sigma is a scalar or has shape x.shape[:-1]."""
    logc, _, _ = self._component_log_probs(x, sigma)
    return logsumexp(logc, axis=-1)

  @_jit_method
  def noisy_score(self, x: jax.Array, sigma) -> jax.Array:
    """grad_x of noisy_log_prob, in closed form: sum_k r_k(x) (mu_k - x) / var_k."""
    logc, diff, var = self._component_log_probs(x, sigma)
    resp = jax.nn.softmax(logc, axis=-1)  # posterior over components given x
    return -jnp.sum(resp[..., None] * diff / var, axis=-2)

  @_jit_method
  def noisy_denoiser(self, x: jax.Array, sigma) -> jax.Array:
    """E[x0 | x0 + sigma eps = x] (Tweedie): x + sigma^2 noisy_score(x, sigma)."""
    x = _as_float(x)
    sigma = jnp.asarray(sigma, x.dtype)
    return x + jnp.square(sigma)[..., None] * self.noisy_score(x, sigma)


def gaussian_mixture(means: Any, stds: Any = 1.0, weights: Any = None) -> GaussianMixture:
  return GaussianMixture(means, stds, weights, name='gaussian_mixture')


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
  radius = _number('8gaussians: radius', radius, positive=True)
  std = _number('8gaussians: std', std, positive=True)
  angles = np.arange(8) * (2 * np.pi / 8)
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return GaussianMixture(means, std, name='8gaussians')


def grid(size: int = 5, spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
  size = _int('grid: size', size)
  spacing = _number('grid: spacing', spacing, positive=True)
  std = _number('grid: std', std, positive=True)
  axis = (np.arange(size) - (size - 1) / 2) * spacing
  gx, gy = np.meshgrid(axis, axis, indexing='ij')
  means = np.stack([gx.ravel(), gy.ravel()], axis=1)
  return GaussianMixture(means, std, name='grid')


# --------------------------------------------------------------------------- 2-D shapes


class Moons(ToyDistribution):
  """Two interleaved half circles (see module docstring); no closed-form density."""

  name = 'moons'

  def __init__(self, noise: float = 0.1, scale: float = 2.0):
    self.noise = _number('moons: noise', noise, nonnegative=True)
    self.scale = _number('moons: scale', scale, positive=True)

  @_jit_sample
  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_side, k_t, k_eps = jax.random.split(rng, 3)
    lower = jax.random.bernoulli(k_side, 0.5, (n,))
    t = jax.random.uniform(k_t, (n,), jnp.float32, 0.0, jnp.pi)
    upper_xy = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    lower_xy = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=1)
    xy = jnp.where(lower[:, None], lower_xy, upper_xy)
    # (0.5, 0.25) is the centre of sklearn's moons' bounding box.
    xy = (xy - jnp.array([0.5, 0.25], jnp.float32)) * self.scale
    return xy + self.noise * jax.random.normal(k_eps, (n, 2), jnp.float32)


class Checkerboard(ToyDistribution):
  """Uniform on the black squares of a size x size board over [-extent, extent]^2."""

  name = 'checkerboard'
  has_log_prob = True

  def __init__(self, size: int = 4, extent: float = 4.0):
    self.size = _int('checkerboard: size', size)
    self.extent = _number('checkerboard: extent', extent, positive=True)
    self.side = 2 * self.extent / self.size
    ij = np.array([(i, j) for i in range(self.size) for j in range(self.size)
                   if (i + j) % 2 == 0], np.int32)
    self._black = ij  # [B, 2] column (x) and row (y) indices of black squares
    self._log_density = -math.log(len(ij) * self.side**2)

  @_jit_sample
  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_sq, k_u = jax.random.split(rng)
    sq = jax.random.randint(k_sq, (n,), 0, len(self._black))
    # Staying a hair inside each square keeps float32 rounding from putting a
    # sample on an edge, where log_prob could assign it to a white square.
    u = jax.random.uniform(k_u, (n, 2), jnp.float32, 1e-5, 1.0 - 1e-5)
    corner = jnp.asarray(self._black, jnp.float32)[sq]
    return (corner + u) * self.side - self.extent

  @_jit_method
  def log_prob(self, x: jax.Array) -> jax.Array:
    """-log(black area) on black squares, -inf elsewhere (x [..., 2] -> [...])."""
    x = _as_x(x)
    cell = jnp.floor((x + self.extent) / self.side)
    inside = jnp.all((cell >= 0) & (cell < self.size), axis=-1)
    black = jnp.sum(cell, axis=-1) % 2 == 0
    return jnp.where(inside & black, jnp.float32(self._log_density), -jnp.inf)


class Rings(ToyDistribution):
  """Concentric circles convolved with N(0, noise^2 I); exact density via I0."""

  name = 'rings'
  has_log_prob = True

  def __init__(self, radii: Sequence[float] = (1.0, 2.0, 3.0), noise: float = 0.1,
               weights: Any = None):
    r = _array('rings: radii', radii)
    if r.ndim != 1 or r.size < 1 or np.any(r <= 0):
      raise ConfigError(f'rings: radii must be a non-empty list of numbers > 0, got {radii!r}')
    self.noise = _number('rings: noise', noise, positive=True)
    w = _weights('rings: weights', weights, r.size) if weights is not None else r / r.sum()
    self._radii = r.astype(np.float32)
    with np.errstate(divide='ignore'):
      self._log_w = np.log(w).astype(np.float32)

  @_jit_sample
  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_ring, k_t, k_eps = jax.random.split(rng, 3)
    ring = jax.random.categorical(k_ring, jnp.asarray(self._log_w), shape=(n,))
    t = jax.random.uniform(k_t, (n,), jnp.float32, 0.0, 2 * jnp.pi)
    r = jnp.asarray(self._radii)[ring]
    xy = r[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    return xy + self.noise * jax.random.normal(k_eps, (n, 2), jnp.float32)

  @_jit_method
  def log_prob(self, x: jax.Array) -> jax.Array:
    """log p(x), x [..., 2] -> [...].

    Averaging N(x; R u(theta), s^2 I) over theta gives
    exp(-(r^2 + R^2) / 2s^2) I0(r R / s^2) / (2 pi s^2); written with the scaled
    i0e(z) = exp(-z) I0(z) the exponent becomes -(r - R)^2 / 2s^2, which does not
    overflow.
    """
    x = _as_x(x)
    r = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1))[..., None]
    radii = jnp.asarray(self._radii)
    s2 = self.noise**2
    logc = (jnp.asarray(self._log_w) - jnp.square(r - radii) / (2 * s2)
            + jnp.log(i0e(r * radii / s2)) - math.log(2 * math.pi * s2))
    return logsumexp(logc, axis=-1)


class SwissRoll(ToyDistribution):
  """2-D swiss roll (see module docstring); no closed-form density."""

  name = 'swissroll'

  def __init__(self, noise: float = 0.2, scale: float = 0.2):
    self.noise = _number('swissroll: noise', noise, nonnegative=True)
    self.scale = _number('swissroll: scale', scale, positive=True)

  @_jit_sample
  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    k_t, k_eps = jax.random.split(rng)
    t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,), jnp.float32))
    xy = self.scale * t[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    return xy + self.noise * jax.random.normal(k_eps, (n, 2), jnp.float32)


# --------------------------------------------------------------------------- registry

TABLE: dict[str, Callable[..., ToyDistribution]] = {
    'gaussian_mixture': gaussian_mixture,
    '8gaussians': eight_gaussians,
    'grid': grid,
    'moons': Moons,
    'checkerboard': Checkerboard,
    'rings': Rings,
    'swissroll': SwissRoll,
}
NAMES: tuple[str, ...] = tuple(TABLE)


def get(name: str, **params) -> ToyDistribution:
  """Builds the toy distribution `name`; bad names or params raise ConfigError."""
  builder = lookup('toy data', name, TABLE)
  sig = inspect.signature(builder)
  allowed = list(sig.parameters)
  unknown = sorted(set(params) - set(allowed))
  if unknown:
    raise ConfigError(f'unknown params {unknown} for toy data {name!r}; allowed: '
                      f'{", ".join(allowed)}')
  missing = [p for p, v in sig.parameters.items()
             if v.default is inspect.Parameter.empty and p not in params]
  if missing:
    raise ConfigError(f'toy data {name!r} needs params: {", ".join(missing)}')
  return builder(**params)
