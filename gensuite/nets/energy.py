"""Energy networks U(x) -> [B] for energy-based models, each with an exactly sampleable
initial model.

  net = EnergyMLP(data_dim=2, hidden=128, depth=3)            # or EnergyConv, GMMEnergy
  params = net.init(rng, x)['params']
  u = net.apply({'params': params}, x)                         # [B] energies
  x0 = net.apply({'params': params}, rng, 512, method='sample_init')   # exact draws

EnergyMLP / EnergyConv: U(x) = f(x) + |x|^2 / (2 prior_std^2), with the last layer of f
zero-initialised, so at initialisation exp(-U) is exactly N(0, prior_std^2 I) and
`sample_init` draws from it (it is only exact before training).

GMMEnergy: the parametric mixture U(x) = -logsumexp_m [l_m - |x - a_m|^2 / (2 s_m^2)
- d log s_m] with learnable means a_m, log-stds log s_m (optional) and logits l_m.
exp(-U) integrates to Z = (2 pi)^{d/2} sum_m e^{l_m}, so `log_partition` is exact and
`sample_init` samples the current model exactly at any time. With
freeze_first_logit the first logit is the constant 0 (the gauge of Carbone et al.).

Every net takes (x, t=None, label=None, train=False) like the other gensuite nets;
t and label are ignored.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from gensuite.errors import ConfigError
from gensuite.nets.embeddings import get_activation

POOLS = ('mean', 'flatten')


def _quadratic(x, prior_std):
  flat = x.reshape(x.shape[0], -1)
  return 0.5 * jnp.sum(flat**2, axis=1) / prior_std**2


class EnergyMLP(nn.Module):
  """MLP energy for vector data plus a Gaussian confining term.

  Attributes:
    data_dim: size of the (last) data axis; only used for sampling the initial model.
    hidden: hidden width; depth: hidden layers; activation: a gensuite activation.
    prior_std: std of the initial Gaussian model exp(-U) at initialisation.
  """
  data_dim: int
  hidden: int = 128
  depth: int = 3
  activation: str = 'silu'
  prior_std: float = 1.0
  num_classes: int | None = None

  @nn.compact
  def __call__(self, x, t=None, label=None, train=False):
    del t, label, train
    act = get_activation(self.activation)
    h = x.reshape(x.shape[0], -1)
    for i in range(self.depth):
      z = act(nn.Dense(self.hidden, name=f'dense_{i}')(h))
      h = z if i == 0 else h + z
    f = nn.Dense(1, kernel_init=nn.initializers.zeros, name='out')(h)[:, 0]
    return f + _quadratic(x, self.prior_std)

  def sample_init(self, rng, n: int):
    return self.prior_std * jax.random.normal(rng, (n, self.data_dim))


class EnergyConv(nn.Module):
  """Small conv energy for [H, W, C] images plus a Gaussian confining term.

  Attributes:
    data_dim: channels C; image_size: (H, W) for sampling the initial model.
    channels: conv widths, each stage halving the resolution after the first.
    pool: how the last feature map becomes a vector: 'mean' over positions, or
      'flatten' (keeps where each feature is: a digit is a shape at a place).
  """
  data_dim: int
  image_size: tuple[int, int] = (8, 8)
  channels: tuple[int, ...] = (32, 64)
  activation: str = 'silu'
  prior_std: float = 1.0
  pool: str = 'mean'
  num_classes: int | None = None

  def __post_init__(self):
    if self.pool not in POOLS:
      raise ConfigError(f'unknown net.pool {self.pool!r}; allowed: {", ".join(POOLS)}')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, t=None, label=None, train=False):
    del t, label, train
    act = get_activation(self.activation)
    h = x
    for i, c in enumerate(self.channels):
      h = act(nn.Conv(c, (3, 3), strides=(1, 1) if i == 0 else (2, 2), name=f'conv_{i}')(h))
    h = jnp.mean(h, axis=(1, 2)) if self.pool == 'mean' else h.reshape(h.shape[0], -1)
    h = act(nn.Dense(self.channels[-1], name='dense')(h))
    f = nn.Dense(1, kernel_init=nn.initializers.zeros, name='out')(h)[:, 0]
    return f + _quadratic(x, self.prior_std)

  def sample_init(self, rng, n: int):
    return self.prior_std * jax.random.normal(rng, (n,) + tuple(self.image_size)
                                              + (self.data_dim,))


class GMMEnergy(nn.Module):
  """Parametric Gaussian-mixture energy (see module docstring).

  Attributes:
    data_dim: d. num_components: M.
    init_means: optional [M, d] initial means (default: a_m = 0.1 (2m/(M-1) - 1) e1,
      i.e. +-0.1 e1 for M = 2), plus init_noise * N(0, I).
    init_log_std: initial log s_m; learn_log_stds: train them (else fixed).
    freeze_first_logit: the first logit is the constant 0 (fixes the gauge).
  """
  data_dim: int
  num_components: int = 2
  init_means: tuple | None = None
  init_noise: float = 0.01
  init_log_std: float = 0.0
  learn_log_stds: bool = False
  freeze_first_logit: bool = True
  num_classes: int | None = None

  def _means_init(self, rng, shape):
    m, d = shape
    if self.init_means is not None:
      base = jnp.asarray(self.init_means, jnp.float32).reshape(m, d)
    else:
      pos = jnp.linspace(-0.1, 0.1, m) if m > 1 else jnp.zeros((1,))
      base = jnp.zeros((m, d)).at[:, 0].set(pos)
    return base + self.init_noise * jax.random.normal(rng, (m, d))

  def setup(self):
    m, d = self.num_components, self.data_dim
    self.means = self.param('means', self._means_init, (m, d))
    if self.freeze_first_logit:
      rest = self.param('logits', nn.initializers.zeros, (m - 1,))
      self._logits = jnp.concatenate([jnp.zeros((1,)), rest])
    else:
      self._logits = self.param('logits', nn.initializers.zeros, (m,))
    if self.learn_log_stds:
      self._log_stds = self.param('log_stds', nn.initializers.constant(self.init_log_std),
                                  (m,))
    else:
      self._log_stds = jnp.full((m,), self.init_log_std)

  def mixture(self):
    """(logits [M], means [M, d], log_stds [M]) of the current model."""
    return self._logits, self.means, self._log_stds

  def __call__(self, x, t=None, label=None, train=False):
    del t, label, train
    s2 = jnp.exp(2.0 * self._log_stds)
    sq = jnp.sum((x[:, None, :] - self.means[None])**2, axis=-1)          # [B, M]
    log_terms = self._logits - 0.5 * sq / s2 - self.data_dim * self._log_stds
    return -logsumexp(log_terms, axis=-1)

  def log_partition(self):
    """log Z = (d/2) log 2 pi + logsumexp(logits), exactly."""
    return 0.5 * self.data_dim * math.log(2.0 * math.pi) + logsumexp(self._logits)

  def weights(self):
    return jax.nn.softmax(self._logits)

  def sample_init(self, rng, n: int):
    """Exact samples of exp(-U)/Z for the current parameters."""
    k_c, k_z = jax.random.split(rng)
    comp = jax.random.categorical(k_c, self._logits, shape=(n,))
    z = jax.random.normal(k_z, (n, self.data_dim))
    return self.means[comp] + jnp.exp(self._log_stds)[comp][:, None] * z
