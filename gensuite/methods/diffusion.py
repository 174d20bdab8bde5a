"""Denoising diffusion: VP and VE SDEs (Song et al.) and EDM (Karras et al.).

  config.method = dict(name='diffusion', formulation='edm', sigma_data=0.5, ...)
  method = Diffusion(config, data_spec)
  state = method.init(rng, batch); state, m = method.train_step(state, batch, rng)
  x = method.sample(state, rng, 64, sampler='heun', steps=18)
  denoise = method.denoiser_fn(params, label=None, cfg_scale=1.0)   # D(x, sigma)

Formulations (ALGORITHMS.md §1). Every one trains a network F(input, noise_cond, label)
and every one is read back through the same VE-frame denoiser D(x, sigma) ~ E[x0 | x],
x = x0 + sigma eps, which is what the samplers and a distillation teacher use.
  edm  D = c_skip x + c_out F(c_in x, c_noise), c_noise = ln(sigma) / 4,
       ln sigma ~ N(P_mean, P_std^2), loss lambda(sigma) |D - x0|^2 with
       lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (so lambda c_out^2 = 1).
  vp   x_t = a_t x0 + b_t eps, log a_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2,
       b_t = sqrt(1 - a_t^2), t ~ U(t_eps, 1); F(x_t, t) predicts eps (loss
       |F - eps|^2 = |b_t s + eps|^2, the default DSM weighting; 'likelihood' weights
       it by g(t)^2 / b_t^2). In the VE frame sigma = b_t / a_t and x_t = a_t x.
  ve   x_t = x0 + sigma(t) eps, sigma(t) = sigma_min (sigma_max / sigma_min)^t; F
       predicts eps from x_t / sqrt(1 + sigma^2) (an input scale that keeps the
       network's input O(1); it does not change the optimum) and t.
Losses are means over dimensions and batch (score_sde sums over dimensions; that
only rescales the learning rate).

Class conditioning: labels are dropped to the null class (index num_classes) with
probability label_dropout; classifier-free guidance at sampling uses
D = D_null + w (D_label - D_null), so w = 1 is the conditional model
(config.sampler.guidance: kind 'cfg' with an interval, or 'autoguidance' with a guide
run; gensuite.samplers.guidance).

Sampling integrates from sigma_max to 0 on a sigma grid: EDM's rho = 7 grid for edm,
and the images of a uniform t grid for vp (t from 1 to sample_t_eps) and ve (t from
1 to 0), each followed by sigma = 0; x starts at sigma_0 z.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import nets, samplers
from gensuite.samplers import frames
from gensuite.errors import ConfigError
from gensuite.methods import defaults, rand
from gensuite.methods.base import choice, FieldSampling, Method, SingleNetMethod

FORMULATIONS = ('edm', 'vp', 've')
WEIGHTINGS = ('default', 'likelihood')


def edm_preconditioning(sigma, sigma_data: float):
  """(c_skip, c_out, c_in, c_noise) of Karras et al. (2022), Table 1."""
  sigma = jnp.asarray(sigma)
  total = sigma**2 + sigma_data**2
  c_skip = sigma_data**2 / total
  c_out = sigma * sigma_data / jnp.sqrt(total)
  c_in = 1.0 / jnp.sqrt(total)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def edm_weight(sigma, sigma_data: float):
  """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data)**2


def _vp_g2(beta_min: float, beta_max: float):
  """g(t)^2 = beta(t) of the VP SDE."""
  return lambda t: beta_min + t * (beta_max - beta_min)


def _ve_g2(sigma_min: float, sigma_max: float):
  """g(t)^2 = d sigma(t)^2 / dt of the VE SDE."""
  log_ratio = math.log(sigma_max / sigma_min)
  return lambda t: 2.0 * log_ratio * (sigma_min * jnp.exp(t * log_ratio))**2


def _bcast(v, x):
  v = jnp.asarray(v, x.dtype)
  if v.ndim == 0:
    return v
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _positive(mc, key):
  v = float(mc[key])
  if not v > 0:
    raise ConfigError(f'method.{key} must be > 0, got {v}')
  return v


class Diffusion(SingleNetMethod, FieldSampling, Method):
  """VP / VE / EDM denoising diffusion (see module docstring)."""
  field_kind = 'denoiser'

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    mc = defaults.resolve(config.method)
    self.formulation = choice(mc, 'formulation', FORMULATIONS)
    self.weighting = choice(mc, 'weighting', WEIGHTINGS)
    if self.weighting != 'default' and self.formulation == 'edm':
      raise ConfigError("method.weighting='likelihood' is for vp/ve; edm uses its own "
                        'lambda(sigma): leave weighting at default')
    self.sigma_data = _positive(mc, 'sigma_data')
    self.p_mean = float(mc.p_mean)
    self.p_std = _positive(mc, 'p_std')
    self.t_eps = float(mc.t_eps)
    self.sample_t_eps = float(mc.sample_t_eps)
    for key in ('t_eps', 'sample_t_eps'):
      if not 0.0 <= getattr(self, key) < 1.0:
        raise ConfigError(f'method.{key} must be in [0, 1), got {getattr(self, key)}')
    self.beta_min = _positive(mc, 'beta_min')
    self.beta_max = _positive(mc, 'beta_max')
    self.sigma_min = _positive(mc, 'sigma_min')
    self.sigma_max = _positive(mc, 'sigma_max')
    if self.sigma_min >= self.sigma_max:
      raise ConfigError(f'method.sigma_min must be below method.sigma_max, got '
                        f'{self.sigma_min} >= {self.sigma_max}')
    if self.beta_min >= self.beta_max:
      raise ConfigError(f'method.beta_min must be below method.beta_max, got '
                        f'{self.beta_min} >= {self.beta_max}')
    # The path x_t = a_t x0 + b_t eps and its VE noise level sigma = b_t / a_t.
    if self.formulation == 'vp':
      self.path = frames.vp(self.beta_min, self.beta_max)
      self.g2 = _vp_g2(self.beta_min, self.beta_max)
    elif self.formulation == 've':
      self.path = frames.ve(self.sigma_min, self.sigma_max)
      self.g2 = _ve_g2(self.sigma_min, self.sigma_max)
    else:
      self.path, self.g2 = frames.edm(), None
    self.edm_sigma_min = _positive(mc, 'edm_sigma_min')
    self.edm_sigma_max = _positive(mc, 'edm_sigma_max')
    self.rho = _positive(mc, 'rho')
    self.conditional = bool(mc.class_conditional)
    if self.conditional and not data_spec.num_classes:
      raise ConfigError(f'method.class_conditional needs labelled data; '
                        f'data {data_spec.name!r} has no classes')
    self.label_dropout = float(mc.label_dropout)
    if not 0.0 <= self.label_dropout <= 1.0:
      raise ConfigError(f'method.label_dropout must be in [0, 1], got {self.label_dropout}')
    num_classes = data_spec.num_classes if self.conditional else None
    self.net = nets.build(config.net, data_shape=self.data_shape,
                          out_dim_or_channels=self.data_shape[-1], num_classes=num_classes,
                          data_name=data_spec.name)
    self.check_sampler()

  # ---- the network in each formulation ----------------------------------------

  def _net(self, params, x, cond, label, train=False, rngs=None):
    cond = jnp.broadcast_to(jnp.asarray(cond, x.dtype).reshape(-1), (x.shape[0],))
    return self.net.apply({'params': params}, x, cond, label=label, train=train,
                          rngs=rngs or {})

  def edm_denoiser(self, params, x, sigma, label=None, train=False, rngs=None):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (sigma scalar or [B])."""
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
    f = self._net(params, _bcast(c_in, x) * x, c_noise, label, train, rngs)
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * f

  def eps_prediction(self, params, x_t, t, label=None, train=False, rngs=None):
    """The vp / ve network's eps_hat(x_t, t) in the formulation's own frame."""
    if self.formulation == 've':
      scale = 1.0 / jnp.sqrt(1.0 + self.path.sigma(t)**2)
      x_t = _bcast(scale, x_t) * x_t
    return self._net(params, x_t, t, label, train, rngs)

  def denoise(self, params, x, sigma, label=None):
    """VE-frame denoiser E[x0 | x0 + sigma eps = x] for any formulation (sigma scalar)."""
    sigma = jnp.asarray(sigma, x.dtype)
    if self.formulation == 'edm':
      return self.edm_denoiser(params, x, sigma, label)
    # x_t = a_t x and eps_hat = (x_t - a_t D) / b_t, so D = x - sigma eps_hat.
    t = self.path.t_of_sigma(sigma)
    return x - sigma * self.eps_prediction(params, self.path.from_ve(x, t), t, label)

  def denoiser_fn(self, params, label=None, cfg_scale: float = 1.0):
    """fn(x, sigma) -> D(x, sigma) in the VE frame (x = x0 + sigma eps, sigma scalar).

    With a class-conditional model, `label` [B] picks the classes (None: the null
    label) and cfg_scale != 1 applies classifier-free guidance at every sigma
    (gensuite.samplers.guidance.guided_denoiser; config.sampler.guidance adds an
    interval and autoguidance when sampling).
    """
    if label is not None and not self.conditional:
      raise ConfigError('denoiser_fn got a label, but this model is unconditional')
    denoiser = lambda x, sigma: self.denoise(params, x, sigma, label)
    if not (self.conditional and label is not None and cfg_scale != 1.0):
      return denoiser
    null = jnp.full_like(label, self.spec.num_classes)
    return samplers.guidance.guided_denoiser(
        denoiser, lambda x, sigma: self.denoise(params, x, sigma, null), cfg_scale)

  # ---- training -----------------------------------------------------------------

  def per_example_loss(self, params, x0, rng, label=None, train=True):
    """(loss [B], sigma [B]): the formulation's weighted DSM loss per example."""
    n = x0.shape[0]
    k_noise, k_eps, k_net = jax.random.split(rng, 3)
    eps = rand.normal(k_eps, x0.shape, x0.dtype)
    axes = tuple(range(1, x0.ndim))
    rngs = {'dropout': rand.microbatch_key(k_net)}
    if self.formulation == 'edm':
      sigma = jnp.exp(self.p_mean + self.p_std * rand.normal(k_noise, (n,), x0.dtype))
      d = self.edm_denoiser(params, x0 + _bcast(sigma, x0) * eps, sigma, label, train, rngs)
      loss = edm_weight(sigma, self.sigma_data) * jnp.mean((d - x0)**2, axis=axes)
      return loss, sigma
    t = self.t_eps + (1.0 - self.t_eps) * rand.uniform(k_noise, (n,), x0.dtype)
    a, b = self.path.a(t), self.path.b(t)
    x_t = _bcast(a, x0) * x0 + _bcast(b, x0) * eps
    eps_hat = self.eps_prediction(params, x_t, t, label, train, rngs)
    loss = jnp.mean((eps_hat - eps)**2, axis=axes)
    sigma = b / a
    if self.weighting == 'likelihood':  # g^2 |s + eps / b|^2 = g^2 / b^2 |eps_hat - eps|^2
      loss = loss * self.g2(t) / b**2
    return loss, sigma

  def loss(self, params, batch, rng, train=True):
    x0 = batch['x']
    k_drop, k_loss = jax.random.split(rng)
    label = None
    if self.conditional:
      label = batch['label']
      if self.label_dropout > 0:
        drop = rand.bernoulli(k_drop, self.label_dropout, label.shape)
        label = jnp.where(drop, self.spec.num_classes, label)
    per_example, sigma = self.per_example_loss(params, x0, k_loss, label, train)
    loss = jnp.mean(per_example)
    log_sigma = jnp.log(sigma)
    low = log_sigma < jnp.log(self.sigma_data)
    metrics = {
        'loss': loss,
        # The loss split at sigma_data: where the denoising is hard vs nearly trivial.
        'loss_low_sigma': jnp.sum(jnp.where(low, per_example, 0.0)) / jnp.maximum(jnp.sum(low), 1),
        'loss_high_sigma': jnp.sum(jnp.where(low, 0.0, per_example))
                           / jnp.maximum(jnp.sum(~low), 1),
    }
    return loss, metrics

  # ---- the Method interface ------------------------------------------------------

  # init and train_step: SingleNetMethod (one network, one loss).

  def sigma_grid(self, steps: int) -> np.ndarray:
    """steps + 1 decreasing noise levels ending at 0 (float64, see module docstring)."""
    if self.formulation == 'edm':
      return samplers.karras_sigmas(int(steps), self.edm_sigma_min, self.edm_sigma_max,
                                    self.rho)
    if self.formulation == 'vp':
      return samplers.vp_sigmas(int(steps), self.sample_t_eps, self.beta_min, self.beta_max)
    return samplers.ve_sigmas(int(steps), self.sigma_min, self.sigma_max)

  def field(self, params, label=None, cfg_scale: float = 1.0) -> samplers.Field:
    """The VE-frame denoiser on this formulation's grid (FieldSampling.sample uses it)."""
    return samplers.Field.denoiser(self.denoiser_fn(params, label, cfg_scale), self.sigma_grid)
