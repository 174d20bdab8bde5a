"""Variational autoencoders: Gaussian encoder, several decoder likelihoods, beta and KL
warm-up, deterministic balancing, and the importance-weighted bound for evaluation.

  config.method = dict(name='vae', latent_dim=8, likelihood='gaussian',
                       variance='balanced', beta=1.0, kl_warmup_steps=0, ...)
  method = VAE(config, data_spec)
  state = method.init(rng, batch); state, m = method.train_step(state, batch, rng)
  x = method.sample(state, rng, 64)                    # decoded prior samples
  scalars, images = method.evaluate(state, rng, data)  # ELBO, IWAE NLL, active units

Model (ALGORITHMS.md §7): p(z) = N(0, I), q(z|x) = N(mu(x), diag exp(log_var(x))),
z = mu + sigma * eps (reparameterisation), KL = ½ Σ (mu² + sigma² - 1 - log sigma²).
The loss per example is -log p(x|z) + w KL with w = beta * min(1, (step+1)/warmup).

method.likelihood and method.variance:
  gaussian  N(x; x_hat, gamma²) per dimension, with gamma
            'learned_scalar' one learned log gamma (Dai & Wipf's Two-Stage VAE),
            'learned_pixel'  a log-scale per output dimension from the decoder,
            'fixed'          gamma = method.fixed_sigma,
            'balanced'       gamma² = a running estimate of the per-dimension
                             reconstruction MSE held constant in backprop (Asperti &
                             Trentin): mse <- min(mse, d mse + (1-d) batch_mse) after
                             each step, d = method.balance_decay, kept in
                             TrainState.extra['mse'] (started at balance_init_mse).
  bernoulli targets binarised as x > 0 (pixels in [-1, 1]); decoder gives logits.
  logistic  discretised logistic on method.num_bins levels spanning [-1, 1] (PixelCNN++
            style edges); decoder gives a mean and a log-scale per dimension.
The Gaussian and logistic log-scales are bounded below softly at log(1e-3).

Evaluation (the loop's optional hook): on method.eval_examples examples (the
method.eval_split split of an image dataset, else data.reference), the one-sample
ELBO and its parts, the IWAE bound L_K = E log (1/K) Σ p(x, z_k)/q(z_k|x) for each K in
method.iwae_k (Burda et al.), NLL = -L_{max K} in nats and bits/dim (of the density of
x as scaled to [-1, 1] for the continuous likelihoods; exact discrete bits for
bernoulli and logistic), and the number of active latent units, Cov_x(E_q[z_u]) > 0.01.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gensuite.errors import ConfigError
from gensuite.nets import vae as vae_nets
from gensuite import pictures
from gensuite.methods import defaults, rand
from gensuite.methods.base import choice, Method
from gensuite.methods.state import TrainState, apply_gradients

LIKELIHOODS = ('gaussian', 'bernoulli', 'logistic')
VARIANCES = ('learned_scalar', 'learned_pixel', 'fixed', 'balanced')
ACTIVE_UNIT_THRESHOLD = 0.01
_LOG_SCALE_FLOOR = math.log(1e-3)
_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_kl(mu: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mu, diag exp(log_var)) || N(0, I)), summed over the last axis."""
  return 0.5 * jnp.sum(mu**2 + jnp.exp(log_var) - 1.0 - log_var, axis=-1)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """log N(x; mean, sigma²) summed over all but the leading axis."""
  lp = -0.5 * ((x - mean) * jnp.exp(-log_sigma))**2 - log_sigma - 0.5 * _LOG_2PI
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


def bernoulli_log_prob(target: jax.Array, logits: jax.Array) -> jax.Array:
  lp = target * logits - jax.nn.softplus(logits)
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


def discretized_logistic_log_prob(x: jax.Array, mean: jax.Array, log_scale: jax.Array,
                                  num_bins: int) -> jax.Array:
  """log P(bin of x) for x on num_bins levels in [-1, 1]; the end bins take the tails."""
  half = 1.0 / (num_bins - 1)
  centered = x - mean
  inv_s = jnp.exp(-log_scale)
  plus_in = inv_s * (centered + half)
  min_in = inv_s * (centered - half)
  log_cdf_plus = plus_in - jax.nn.softplus(plus_in)
  log_one_minus_cdf_min = -jax.nn.softplus(min_in)
  cdf_delta = jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in)
  mid_in = inv_s * centered
  # In the far tail cdf_delta underflows; use the density at the bin centre instead.
  log_pdf_mid = mid_in - log_scale - 2.0 * jax.nn.softplus(mid_in) + math.log(2.0 * half)
  inner = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)), log_pdf_mid)
  lp = jnp.where(x < -1.0 + half, log_cdf_plus,
                 jnp.where(x > 1.0 - half, log_one_minus_cdf_min, inner))
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=-1)


def _soft_floor(raw: jax.Array) -> jax.Array:
  return _LOG_SCALE_FLOOR + jax.nn.softplus(raw - _LOG_SCALE_FLOOR)


def balanced_mse_update(mse: jax.Array, batch_mse: jax.Array, decay: float) -> jax.Array:
  """Asperti & Trentin's non-increasing running MSE: min(mse, d mse + (1-d) batch)."""
  return jnp.minimum(mse, decay * mse + (1.0 - decay) * batch_mse)


def _positive_int(mc, key):
  v = mc[key]
  if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
    raise ConfigError(f'method.{key} must be a positive integer, got {v!r}')
  return v


class VAE(Method):
  """A VAE with the likelihoods and balancing schemes of the module docstring."""
  supports_grad_accum = True
  precisions = ('float32',)  # the encoder and decoder nets compute in float32

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    mc = defaults.resolve(config.method)
    self.dim = int(math.prod(self.data_shape))
    self.latent_dim = _positive_int(mc, 'latent_dim')
    self.likelihood = choice(mc, 'likelihood', LIKELIHOODS)
    if self.likelihood != 'gaussian' and data_spec.kind != 'image':
      raise ConfigError(f'method.likelihood={self.likelihood!r} needs image data with '
                        f"pixels in [-1, 1]; data {data_spec.name!r} is {data_spec.kind!r}: "
                        "use 'gaussian'")
    self.variance = choice(mc, 'variance', VARIANCES)
    self.fixed_sigma = float(mc.fixed_sigma)
    if self.fixed_sigma <= 0:
      raise ConfigError(f'method.fixed_sigma must be > 0, got {self.fixed_sigma}')
    self.beta = float(mc.beta)
    if self.beta < 0:
      raise ConfigError(f'method.beta must be >= 0, got {self.beta}')
    self.kl_warmup_steps = int(mc.kl_warmup_steps)
    if self.kl_warmup_steps < 0:
      raise ConfigError(f'method.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}')
    self.balance_decay = float(mc.balance_decay)
    if not 0.0 <= self.balance_decay < 1.0:
      raise ConfigError(f'method.balance_decay must be in [0, 1), got {self.balance_decay}')
    self.balance_init_mse = float(mc.balance_init_mse)
    if self.balance_init_mse <= 0:
      raise ConfigError(f'method.balance_init_mse must be > 0, got {self.balance_init_mse}')
    self.num_bins = int(mc.num_bins)
    if self.num_bins < 2:
      raise ConfigError(f'method.num_bins must be >= 2, got {self.num_bins}')
    iwae_k = mc.iwae_k
    self.iwae_k = tuple(int(k) for k in (iwae_k if isinstance(iwae_k, (tuple, list))
                                         else (iwae_k,)))
    if not self.iwae_k or any(k <= 0 for k in self.iwae_k):
      raise ConfigError(f'method.iwae_k must be positive integers, got {iwae_k!r}')
    self.iwae_chunk = _positive_int(mc, 'iwae_chunk')
    self.eval_examples = _positive_int(mc, 'eval_examples')
    self.eval_batch = _positive_int(mc, 'eval_batch')
    self.eval_split = mc.eval_split or ''
    if self.eval_split and data_spec.kind != 'image':
      raise ConfigError(f'method.eval_split={self.eval_split!r} needs an image dataset; '
                        f'data {data_spec.name!r} is {data_spec.kind!r}: leave it empty')
    two = self.likelihood == 'logistic' or (self.likelihood == 'gaussian'
                                            and self.variance == 'learned_pixel')
    self.channels = self.data_shape[-1]
    self.encoder, self.decoder = vae_nets.build_vae_nets(
        config.net, data_shape=self.data_shape, latent_dim=self.latent_dim,
        out_channels=self.channels * (2 if two else 1))
    self._eval_x = None
    self._eval_fns = {}

  # ---- pieces ------------------------------------------------------------------

  def encode(self, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mu, log_var) of q(z|x)."""
    return self.encoder.apply({'params': params['encoder']}, x)

  def decoder_out(self, params, z: jax.Array) -> jax.Array:
    return self.decoder.apply({'params': params['decoder']}, z)

  def decode(self, params, z: jax.Array) -> jax.Array:
    """The mean image (or vector) of p(x|z), in the data's scale."""
    out = self.decoder_out(params, z)
    mean = out[..., :self.channels]
    if self.likelihood == 'bernoulli':
      return 2.0 * jax.nn.sigmoid(mean) - 1.0
    if self.likelihood == 'logistic':
      return jnp.clip(mean, -1.0, 1.0)
    return mean

  def log_sigma(self, params, extra, out: jax.Array) -> jax.Array:
    """The Gaussian decoder's log std (a scalar, or per dimension for learned_pixel)."""
    if self.variance == 'learned_scalar':
      return params['log_gamma']
    if self.variance == 'learned_pixel':
      return _soft_floor(out[..., self.channels:])
    if self.variance == 'fixed':
      return jnp.asarray(math.log(self.fixed_sigma), out.dtype)
    return 0.5 * jnp.log(jax.lax.stop_gradient(extra['mse']))

  def log_likelihood(self, params, extra, out: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x|z) per example, from the decoder output `out` at z."""
    mean = out[..., :self.channels]
    if self.likelihood == 'bernoulli':
      return bernoulli_log_prob((x > 0).astype(out.dtype), mean)
    if self.likelihood == 'logistic':
      return discretized_logistic_log_prob(x, mean, _soft_floor(out[..., self.channels:]),
                                           self.num_bins)
    log_sigma = jnp.broadcast_to(self.log_sigma(params, extra, out), mean.shape)
    return gaussian_log_prob(x, mean, log_sigma)

  def kl_weight(self, step: jax.Array) -> jax.Array:
    if self.kl_warmup_steps <= 0:
      return jnp.asarray(self.beta, jnp.float32)
    ramp = jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / self.kl_warmup_steps)
    return self.beta * ramp

  def loss(self, params, extra, batch, rng, step):
    x = batch['x']
    mu, log_var = self.encode(params, x)
    z = mu + jnp.exp(0.5 * log_var) * rand.normal(rng, mu.shape, mu.dtype)
    out = self.decoder_out(params, z)
    log_px = self.log_likelihood(params, extra, out, x)
    kl = gaussian_kl(mu, log_var)
    w = self.kl_weight(step)
    loss = jnp.mean(-log_px + w * kl)
    x_hat = jax.lax.stop_gradient(self.decode(params, z))
    batch_mse = jnp.mean((x_hat - x)**2)
    metrics = {'loss': loss, 'elbo': jnp.mean(log_px - kl), 'recon': -jnp.mean(log_px),
               'kl': jnp.mean(kl), 'kl_weight': w, 'batch_mse': batch_mse}
    if self.likelihood == 'gaussian' and self.variance != 'learned_pixel':
      metrics['decoder_var'] = jnp.exp(2.0 * self.log_sigma(params, extra, out))
    return loss, metrics

  # ---- the Method interface ----------------------------------------------------

  def init(self, rng, batch) -> TrainState:
    x = batch['x']
    k_enc, k_dec = jax.random.split(rng)
    enc = self.encoder.init(k_enc, x)['params']
    z = jnp.zeros((x.shape[0], self.latent_dim), x.dtype)
    dec = self.decoder.init(k_dec, z)['params']
    params = {'encoder': enc, 'decoder': dec}
    if self.likelihood == 'gaussian' and self.variance == 'learned_scalar':
      params['log_gamma'] = jnp.zeros((), jnp.float32)
    extra = {'mse': jnp.asarray(self.balance_init_mse, jnp.float32)}
    return TrainState.create(params, self.tx, self.ema_decays, extra=extra,
                             phema_stds=self.phema_stds)

  def train_step(self, state, batch, rng):
    grads, metrics = self.loss_grads(
        lambda p, b, r: self.loss(p, state.extra, b, r, state.step), state.params, batch, rng)
    mse = balanced_mse_update(state.extra['mse'], metrics['batch_mse'], self.balance_decay)
    state, norms = apply_gradients(state, grads, self.tx, extra={'mse': mse})
    return state, {**metrics, **norms, 'running_mse': mse}

  def sample(self, state, rng, num: int, use_ema=True, **unused_sampler_kw) -> jax.Array:
    """num decoded prior samples: the mean of p(x|z) at z ~ N(0, I)."""
    del unused_sampler_kw  # the loop passes sampler= and steps=; a VAE needs neither
    z = jax.random.normal(rng, (num, self.latent_dim))
    return self.decode(state.eval_params(use_ema), z)

  # ---- evaluation --------------------------------------------------------------

  def log_weights(self, params, extra, x: jax.Array, rng, k: int) -> jax.Array:
    """log p(x, z_k) - log q(z_k|x) for k draws z_k ~ q(z|x): [k, batch]."""
    mu, log_var = self.encode(params, x)
    eps = jax.random.normal(rng, (k,) + mu.shape, mu.dtype)
    z = mu + jnp.exp(0.5 * log_var) * eps
    n = x.shape[0]
    out = self.decoder_out(params, z.reshape((k * n, self.latent_dim)))
    xs = jnp.broadcast_to(x, (k,) + x.shape).reshape((k * n,) + x.shape[1:])
    log_px = self.log_likelihood(params, extra, out, xs).reshape(k, n)
    half_l = 0.5 * self.latent_dim * _LOG_2PI
    log_pz = -0.5 * jnp.sum(z**2, -1) - half_l
    log_qz = -0.5 * jnp.sum(eps**2, -1) - 0.5 * jnp.sum(log_var, -1) - half_l
    return log_px + log_pz - log_qz

  def iwae_bound(self, params, extra, x: jax.Array, rng, k: int,
                 chunk: int | None = None) -> jax.Array:
    """L_K per example, log (1/K) Σ_k w_k, accumulated over chunks of draws."""
    chunk = min(chunk or self.iwae_chunk, k)
    num_chunks = -(-k // chunk)

    def body(carry, i):
      lw = self.log_weights(params, extra, x, jax.random.fold_in(rng, i), chunk)
      valid = (i * chunk + jnp.arange(chunk)) < k  # the last chunk may overshoot K
      lw = jnp.where(valid[:, None], lw, -jnp.inf)
      return jnp.logaddexp(carry, jax.nn.logsumexp(lw, axis=0)), None

    init = jnp.full((x.shape[0],), -jnp.inf, x.dtype)
    total, _ = jax.lax.scan(body, init, jnp.arange(num_chunks))
    return total - math.log(k)

  def elbo_parts(self, params, extra, x: jax.Array, rng) -> dict[str, jax.Array]:
    """One-sample ELBO, -log p(x|z), KL and the posterior means, per example."""
    mu, log_var = self.encode(params, x)
    z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape, mu.dtype)
    log_px = self.log_likelihood(params, extra, self.decoder_out(params, z), x)
    kl = gaussian_kl(mu, log_var)
    return {'elbo': log_px - kl, 'recon': -log_px, 'kl': kl, 'mu': mu}

  def _eval_examples(self, rng, data) -> np.ndarray:
    if self.eval_split:
      if self._eval_x is None:
        from gensuite.data import images  # pylint: disable=g-import-not-at-top
        data_dir = self.config.data.get('data_dir', '') or None
        src = images.open_image_source(self.spec.name, self.eval_split, data_dir=data_dir)
        n = min(self.eval_examples, len(src))
        self._eval_x = src.get(np.arange(n))['x']
      return self._eval_x
    return np.asarray(data.reference(rng, self.eval_examples), np.float32)

  def _jitted(self, name, fn, **static):
    key = (name,) + tuple(sorted(static.items()))
    if key not in self._eval_fns:
      self._eval_fns[key] = jax.jit(lambda *a: fn(*a, **static))
    return self._eval_fns[key]

  def evaluate(self, state, rng, data, workdir=None):
    """ELBO, IWAE bounds, NLL (nats, bits/dim), active units; reconstruction pictures."""
    del workdir
    use_ema = self.config.eval.get('use_ema', True)
    params, extra = state.eval_params(use_ema), state.extra
    k_data, k_elbo, k_iwae, k_prior = jax.random.split(rng, 4)
    x_all = self._eval_examples(k_data, data)
    n = x_all.shape[0]
    b = min(self.eval_batch, n)
    parts = {'elbo': [], 'recon': [], 'kl': [], 'mu': []}
    bounds = {k: [] for k in self.iwae_k}
    elbo_fn = self._jitted('elbo', self.elbo_parts)
    for start in range(0, n, b):
      xb = x_all[start:start + b]
      m = xb.shape[0]
      if m < b:  # pad to one compiled shape
        xb = np.concatenate([xb, np.repeat(xb[-1:], b - m, 0)])
      out = elbo_fn(params, extra, xb, jax.random.fold_in(k_elbo, start))
      for key in parts:
        parts[key].append(np.asarray(out[key])[:m])
      for k in self.iwae_k:
        fn = self._jitted('iwae', self.iwae_bound, k=k)
        lk = fn(params, extra, xb, jax.random.fold_in(jax.random.fold_in(k_iwae, k), start))
        bounds[k].append(np.asarray(lk)[:m])
    parts = {key: np.concatenate(v) for key, v in parts.items()}
    scalars = {key: float(np.mean(parts[key])) for key in ('elbo', 'recon', 'kl')}
    for k in self.iwae_k:
      scalars[f'iwae_{k}'] = float(np.mean(np.concatenate(bounds[k])))
    nll = -scalars[f'iwae_{max(self.iwae_k)}']
    scalars['nll_nats'] = nll
    scalars['bits_per_dim'] = nll / (self.dim * math.log(2.0))
    unit_var = np.var(parts['mu'], axis=0)
    scalars['active_units'] = float(np.sum(unit_var > ACTIVE_UNIT_THRESHOLD))
    if self.variance == 'balanced' and self.likelihood == 'gaussian':
      scalars['balanced_gamma'] = float(np.sqrt(np.asarray(extra['mse'])))
    images = self._pictures(params, x_all, parts['mu'], k_prior)
    return scalars, images

  def _pictures(self, params, x, mu, rng) -> dict[str, np.ndarray]:
    if self.spec.kind == 'image':
      x, mu = x[:32], mu[:32]
    recon = np.asarray(self._jitted('decode', self.decode)(params, mu))
    prior = np.asarray(self._jitted('decode', self.decode)(
        params, jax.random.normal(rng, (64, self.latent_dim))))
    if self.spec.kind == 'image':
      pairs = np.stack([x, recon], 1).reshape((-1,) + x.shape[1:])
      return {'reconstructions': pictures.image_grid(pairs, ncols=16),
              'prior_samples': pictures.image_grid(prior)}
    if self.dim >= 2:
      flat = lambda a: a.reshape(a.shape[0], -1)[:, :2]
      return {'reconstructions': pictures.scatter_plot(flat(recon), flat(x),
                                                      title='reconstructions')}
    return {}
