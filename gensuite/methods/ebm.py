"""Energy-based models trained with Jarzynski-weighted Langevin walkers; CD / PCD baselines.

  config.method = dict(name='ebm', estimator='jarzynski', num_walkers=10000, step_size=0.1,
                       resampler='systematic', resample_threshold=0.5)
  method = EBM(config, data_spec)
  state = method.init(rng, batch); state, m = method.train_step(state, batch, rng)
  x = method.sample(state, rng, 1000, sampler='mala', steps=100)

Model rho_theta = exp(-U_theta) / Z_theta, trained on the cross-entropy
H(theta) = E_data[U_theta] + log Z_theta, whose gradient is
E_data[d_theta U] - E_rho[d_theta U] (ALGORITHMS.md §6; Carbone et al., arXiv 2305.19414).
A population of N walkers X with log-weights A lives in `state.extra`, starting as
exact samples of the initial model (see gensuite.nets.energy) with A = 0. One step:
  1. g = mean_data d_theta U(x) - sum_i softmax(A)_i d_theta U(X_i)
  2. theta' = optimizer(theta, g)
  3. X' = X - h grad U_theta(X) + sqrt(2h) z, and A' = A - a_theta'(X', X) + a_theta(X, X')
     (the exact Jarzynski increment, gensuite.samplers.smc.jarzynski_ula_move); any
     further ULA steps of the same update use theta' on both sides (the MH-ratio form).
     With method.walker_move = 'mala' instead: A' = A + U_theta(X) - U_theta'(X), then
     `ula_steps` MALA steps under theta' (invariant, so the move adds no weight): the
     same exactness, with weights that see only the parameter step; the ULA form also
     pays each move's Metropolis ratio in weight, which for a steep energy (h near
     2 / curvature) is what drives the log Z estimate away (experiments/ebm_log_z.py).
  4. if ESS / N < resample_threshold: resample X, add log mean e^A to the log Z offset,
     set A = 0.
log Z_theta ~ log Z_0 + offset + log mean e^A, so the cross-entropy estimate
mean_data U + log Z is logged every step.

The walkers that drive the gradient estimate log Z with a bias (the step raises the
energy at exactly those walkers). method.log_z_walkers = M > 0 adds a second population
that never enters the gradient and gives `log_z` (the coupled one is logged as
`log_z_coupled`). It moves by method.log_z_move ('' = walker_move) and follows the
trained params, or with method.log_z_ema = d (one of optim.ema_decays) their EMA:
log Z and the logged cross-entropy are then the EMA energy's. The EMA moves smoothly
where the Adam iterate jitters from step to step, and each jitter costs the
population weight (experiments/results/ebm_log_z.md measures both).

Estimators (`method.estimator`):
  jarzynski       the weighted scheme above.
  ula_unweighted  the same persistent walkers and moves, weights held at zero.
  pcd             persistent walkers moved `ula_steps` steps before the gradient
                  (persistent contrastive divergence).
  cd              walkers restarted from the data batch every step and moved `cd_steps`
                  ULA steps (CD-k).
method.data_noise = sigma > 0 trains on data + N(0, sigma^2 I) (fresh noise each step),
so the model is of the smoothed density, whose curvature is at most about 1 / sigma^2:
an energy that cannot sharpen past what the walkers' step size h resolves. `sample`
then returns Tweedie's posterior mean x - sigma^2 grad U(x) of the last Langevin state
(method.denoise_samples, default on). The logged `energy_scale` is sqrt(E_data U^2).
`param_lr_scale` multiplies the gradient of top-level parameters by name (with sgd this
is a per-parameter learning rate: the paper's GMM uses 0.2 for the means).
Walkers are replicated across devices; only the data term is split over them.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import nets
from gensuite.errors import ConfigError, lookup
from gensuite import samplers
from gensuite.methods import defaults
from gensuite.methods.base import choice, Method
from gensuite.methods.state import TrainState, apply_gradients, ema_name
from gensuite.samplers import ais, langevin, smc

ESTIMATORS = ('jarzynski', 'ula_unweighted', 'pcd', 'cd')
WALKER_MOVES = ('ula', 'mala')
AIS_BASES = ('prior', 'data')  # eval.ais_base: see EBM.ais_log_partition
ENERGY_NETS = ('energy_mlp', 'energy_conv', 'gmm_energy')


def _positive(what, value, integer=False):
  ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
  if integer:
    ok = ok and float(value) == int(value)
  if not ok or value <= 0 or not math.isfinite(float(value)):
    kind = 'a positive integer' if integer else 'a positive number'
    raise ConfigError(f'{what} must be {kind}, got {value!r}')
  return int(value) if integer else float(value)


class EBM(Method):
  """Energy-based model family (see module docstring)."""
  grad_accum_refusal = ('an ebm step moves one population of walkers, which does not '
                        'split with the batch')
  field_kind = 'energy'

  def __init__(self, config, data_spec, load_run=None):
    mc = defaults.resolve(config.method)
    super().__init__(config, data_spec, load_run)
    self.estimator = choice(mc, 'estimator', ESTIMATORS)
    self.walker_move = choice(mc, 'walker_move', WALKER_MOVES)
    # How the log-Z population moves ('': as the training walkers).
    self.log_z_move = mc.log_z_move or self.walker_move
    if self.log_z_move not in WALKER_MOVES:
      raise ConfigError(f"unknown method.log_z_move {self.log_z_move!r}; allowed: '' (as "
                        f"walker_move), {', '.join(WALKER_MOVES)}")
    self.log_z_walkers = mc.log_z_walkers
    if isinstance(self.log_z_walkers, bool) or not isinstance(self.log_z_walkers, int) or \
        self.log_z_walkers < 0:
      raise ConfigError('method.log_z_walkers (a separate population for the log Z '
                        f'estimate; 0: none) must be an integer >= 0, got {self.log_z_walkers!r}')
    self.log_z_ema = float(mc.log_z_ema)
    if self.log_z_ema:
      if not self.log_z_walkers:
        raise ConfigError('method.log_z_ema tracks an EMA with the log-Z population; set '
                          'method.log_z_walkers > 0 too')
      decays = [float(d) for d in config.optim.ema_decays]
      if self.log_z_ema not in decays:
        have = ', '.join(f'{d:g}' for d in decays) or 'none'
        raise ConfigError(f'method.log_z_ema={self.log_z_ema:g} must be one of '
                          f'optim.ema_decays ({have}), or 0 (the trained params)')
    self.num_walkers = _positive('method.num_walkers', mc.num_walkers, True)
    self.step_size = _positive('method.step_size', mc.step_size)
    self.ula_steps = _positive('method.ula_steps', mc.ula_steps, True)
    self.cd_steps = _positive('method.cd_steps', mc.cd_steps, True)
    self.resampler = mc.resampler
    lookup('resampler', self.resampler, smc.RESAMPLERS)
    self.resample_threshold = float(mc.resample_threshold)
    if not 0.0 <= self.resample_threshold <= 1.0:
      raise ConfigError('method.resample_threshold (resample when ESS/N falls below it) '
                        f'must be in [0, 1], got {self.resample_threshold}')
    self.energy_reg = float(mc.energy_reg)
    if self.energy_reg < 0:
      raise ConfigError(f'method.energy_reg must be >= 0, got {self.energy_reg}')
    self.data_noise = float(mc.data_noise)
    if not 0.0 <= self.data_noise < math.inf:
      raise ConfigError('method.data_noise (std of the Gaussian noise added to each data '
                        f'batch; 0: none) must be a finite number >= 0, got {mc.data_noise!r}')
    self.denoise_samples = bool(mc.denoise_samples)
    self.param_lr_scale = dict(mc.param_lr_scale or {})
    for name, v in self.param_lr_scale.items():
      _positive(f'method.param_lr_scale[{name!r}]', v)
    if config.net.name not in ENERGY_NETS:
      raise ConfigError(f'method ebm needs an energy net; net.name {config.net.name!r} is '
                        f'not one of: {", ".join(ENERGY_NETS)}')
    net = nets.build(config.net, data_shape=self.data_shape,
                     out_dim_or_channels=self.data_shape[-1], num_classes=None,
                     data_name=data_spec.name)
    if config.net.name == 'energy_conv':
      net = net.clone(image_size=self.data_shape[:2])
    self.net = net
    self.is_gmm = config.net.name == 'gmm_energy'
    self.check_sampler()
    self.sample_step_size = _positive('sampler.step_size',
                                      config.sampler.get('step_size', self.step_size))
    self.ais_settings()  # checked now; read again at eval (`gensuite eval` may override)

  # ---- pieces ------------------------------------------------------------------

  def energy_fn(self, params):
    return lambda x: self.net.apply({'params': params}, x)

  def initial_log_partition(self, params) -> jax.Array:
    """log Z of the initial model, exactly (a mixture, or N(0, prior_std^2 I))."""
    if self.is_gmm:
      return self.net.apply({'params': params}, method='log_partition')
    d = float(np.prod(self.data_shape))
    s = float(self.net.prior_std)
    return jnp.asarray(0.5 * d * math.log(2.0 * math.pi * s * s), jnp.float32)

  def _scale_grads(self, grads):
    if not self.param_lr_scale:
      return grads
    unknown = sorted(set(self.param_lr_scale) - set(grads))
    if unknown:
      raise ConfigError(f'method.param_lr_scale names unknown parameters {unknown}; the '
                        f'net has: {", ".join(sorted(grads))}')
    return {k: jax.tree.map(lambda g, s=float(self.param_lr_scale.get(k, 1.0)): g * s, v)
            for k, v in grads.items()}

  def _ula(self, params, x, rng, steps):
    x, _ = langevin.ula(None, x, rng, self.step_size, steps, energy_fn=self.energy_fn(params))
    return x

  def loss(self, params, data_x, walkers, log_weights):
    """mean_data U - sum_i p_i U(X_i) (+ energy_reg (E_data U^2 + E_p U^2)).

    Its gradient is the cross-entropy gradient estimate; p = softmax(A) is constant.
    """
    energy = self.energy_fn(params)
    u_data = energy(data_x)
    u_walk = energy(walkers)
    p = jax.lax.stop_gradient(smc.normalized_weights(log_weights))
    data_term = jnp.mean(u_data)
    walker_term = jnp.sum(p * u_walk)
    loss = data_term - walker_term
    if self.energy_reg > 0:
      loss = loss + self.energy_reg * (jnp.mean(u_data**2) + jnp.sum(p * u_walk**2))
    return loss, {'data_energy': data_term, 'walker_energy': walker_term,
                  'energy_scale': jnp.sqrt(jnp.mean(u_data**2))}

  # ---- the Method interface ----------------------------------------------------

  def init(self, rng, batch) -> TrainState:
    k_params, k_walkers = jax.random.split(rng)
    params = self.net.init(k_params, jnp.asarray(batch['x'][:1]))['params']
    walkers = self.net.apply({'params': params}, k_walkers, self.num_walkers,
                             method='sample_init')
    dtype = walkers.dtype
    extra = {
        'walkers': walkers,
        'log_weights': jnp.zeros((self.num_walkers,), dtype),
        'log_z0': jnp.asarray(self.initial_log_partition(params), dtype),
        'log_z_offset': jnp.zeros((), dtype),
        'num_resamples': jnp.zeros((), jnp.int32),
    }
    if self.log_z_walkers:
      zw = self.net.apply({'params': params}, jax.random.fold_in(k_walkers, 1),
                          self.log_z_walkers, method='sample_init')
      extra.update(z_walkers=zw, z_log_weights=jnp.zeros((self.log_z_walkers,), dtype),
                   z_log_z_offset=jnp.zeros((), dtype), z_num_resamples=jnp.zeros((), jnp.int32))
    return TrainState.create(params, self.tx, self.ema_decays, extra=extra,
                             phema_stds=self.phema_stds)

  def log_z_params(self, state):
    """The params whose log Z the estimate is of: the EMA of decay method.log_z_ema,
    or the trained params (log_z_ema 0, or without a separate population)."""
    if self.log_z_ema:
      return state.ema[ema_name(self.log_z_ema)]
    return state.params

  def log_z(self, extra, coupled: bool = False) -> jax.Array:
    """The walkers' log Z estimate: from the log-Z population when there is one (and
    coupled=False), else from the walkers that drive the gradient."""
    pre = 'z_' if self.log_z_walkers and not coupled else ''
    return extra['log_z0'] + extra[pre + 'log_z_offset'] + smc.log_mean_weight(
        extra[pre + 'log_weights'])

  def _jarzynski(self, params, new_params, walkers, log_weights, k_move, k_more, move=None):
    """Walkers and weights that tracked rho_params, moved and reweighted to track
    rho_new_params (move, default walker_move, 'ula': the Jarzynski ULA increments;
    'mala': reweight by the energy change, then MALA under new_params). Returns
    (walkers, weights, info)."""
    new_energy = self.energy_fn(new_params)
    if (move or self.walker_move) == 'mala':
      log_weights = log_weights + self.energy_fn(params)(walkers) - new_energy(walkers)
      walkers, info = langevin.mala(new_energy, walkers, k_move, self.step_size,
                                    self.ula_steps)
      return walkers, log_weights, {'acceptance': info['acceptance']}
    walkers, delta, _ = smc.jarzynski_ula_move(self.energy_fn(params), new_energy, walkers,
                                               k_move, self.step_size)
    log_weights = log_weights + delta
    if self.ula_steps > 1:
      def more(carry, key):
        x, a = carry
        x, d, _ = smc.jarzynski_ula_move(new_energy, new_energy, x, key, self.step_size)
        return (x, a + d), None

      (walkers, log_weights), _ = jax.lax.scan(
          more, (walkers, log_weights), jax.random.split(k_more, self.ula_steps - 1))
    return walkers, log_weights, {}

  def _resample(self, walkers, log_weights, offset, count, rng):
    """Resample when ESS / N < resample_threshold; the log mean weight joins the offset."""
    n = log_weights.shape[0]
    if self.resample_threshold <= 0:
      return walkers, log_weights, offset, count, jnp.zeros((), jnp.bool_)
    resampled = smc.ess(log_weights) < self.resample_threshold * n
    idx = smc.resample(self.resampler, rng, log_weights)
    walkers = jnp.where(resampled, walkers[idx], walkers)
    offset = jnp.where(resampled, offset + smc.log_mean_weight(log_weights), offset)
    log_weights = jnp.where(resampled, jnp.zeros_like(log_weights), log_weights)
    return walkers, log_weights, offset, count + resampled.astype(jnp.int32), resampled

  def train_step(self, state, batch, rng):
    ex = state.extra
    params = state.params
    k_pre, k_move, k_more, k_res = jax.random.split(rng, 4)
    walkers, log_weights = ex['walkers'], ex['log_weights']
    data_x = batch['x']
    if self.data_noise > 0:  # the model is of the data convolved with N(0, data_noise^2 I)
      data_x = data_x + self.data_noise * jax.random.normal(
          jax.random.fold_in(rng, 11), data_x.shape, data_x.dtype)
    if self.estimator == 'cd':
      idx = jnp.arange(self.num_walkers) % data_x.shape[0]
      walkers = self._ula(params, data_x[idx].astype(walkers.dtype), k_pre, self.cd_steps)
    elif self.estimator == 'pcd':
      walkers = self._ula(params, walkers, k_pre, self.ula_steps)
    log_z = self.log_z(ex)
    tracked = self.log_z_params(state)
    grads, terms = jax.grad(self.loss, has_aux=True)(params, data_x, walkers, log_weights)
    new_state, norms = apply_gradients(state, self._scale_grads(grads), self.tx)
    new_params = new_state.params
    n = self.num_walkers
    metrics = {
        'loss': terms['data_energy'] - terms['walker_energy'],
        **terms,
        'log_z': log_z,
        'cross_entropy': (jnp.mean(self.energy_fn(tracked)(data_x)) if self.log_z_ema
                          else terms['data_energy']) + log_z,
        'ess': smc.ess(log_weights) / n,
    }
    extra = dict(ex)
    if self.estimator == 'jarzynski':
      walkers, log_weights, info = self._jarzynski(
          params, new_params, walkers, log_weights, k_move, k_more)
      metrics.update(info)
    elif self.estimator == 'ula_unweighted':
      walkers = self._ula(params, walkers, k_move, 1)
      if self.ula_steps > 1:
        walkers = self._ula(new_params, walkers, k_more, self.ula_steps - 1)
    offset, num_resamples = ex['log_z_offset'], ex['num_resamples']
    resampled = jnp.zeros((), jnp.bool_)
    if self.estimator == 'jarzynski':
      walkers, log_weights, offset, num_resamples, resampled = self._resample(
          walkers, log_weights, offset, num_resamples, k_res)
    if self.log_z_walkers:  # a population that tracks rho_theta and never feeds the gradient
      metrics['log_z_coupled'] = self.log_z(ex, coupled=True)
      metrics['log_z_ess'] = smc.ess(ex['z_log_weights']) / self.log_z_walkers
      zw, za, _ = self._jarzynski(tracked, self.log_z_params(new_state), ex['z_walkers'],
                                  ex['z_log_weights'],
                                  jax.random.fold_in(k_move, 1), jax.random.fold_in(k_more, 1),
                                  move=self.log_z_move)
      zw, za, zoff, zcount, _ = self._resample(zw, za, ex['z_log_z_offset'],
                                               ex['z_num_resamples'],
                                               jax.random.fold_in(k_res, 1))
      extra.update(z_walkers=zw, z_log_weights=za, z_log_z_offset=zoff,
                   z_num_resamples=zcount)
    metrics['resampled'] = resampled.astype(jnp.float32)
    metrics['num_resamples'] = num_resamples.astype(jnp.float32)
    if self.is_gmm:
      w = self.net.apply({'params': params}, method='weights')
      for m in range(w.shape[0]):
        metrics[f'weight_{m}'] = w[m]
      metrics['exact_log_z'] = self.net.apply({'params': params}, method='log_partition')
    extra.update(walkers=walkers, log_weights=log_weights, log_z_offset=offset,
                 num_resamples=num_resamples)
    return new_state.replace(extra=extra), {**metrics, **norms}

  def field(self, params) -> samplers.Field:
    return samplers.Field.energy(self.energy_fn(params), self.sample_step_size)

  def sample(self, state, rng, num: int, sampler: str | None = None,
             steps: int | None = None, use_ema=False, **options):
    """num draws: walkers picked by their weights, then `steps` ULA or MALA steps
    (option step_size, default config.sampler.step_size or method.step_size). A CD run
    starts from the initial model N(0, prior_std^2 I) instead: its chains begin at the
    data batch each step, so picking them would hand back perturbed training data."""
    name, steps, options = samplers.resolve(self.config.sampler, sampler, steps, options)
    k_pick, k_run = jax.random.split(rng)
    params = state.eval_params(use_ema)
    if self.estimator == 'cd':  # its chains restart at the data batch: not model samples
      x = self.net.apply({'params': params}, k_pick, num, method='sample_init')
    else:
      idx = jax.random.categorical(k_pick, state.extra['log_weights'], shape=(num,))
      x = state.extra['walkers'][idx]
    x = samplers.sample(name, self.field(params), x, k_run, steps, **options)
    if self.data_noise > 0 and self.denoise_samples:
      x = self.denoise(params, x)
    return x

  def denoise(self, params, x):
    """Tweedie's estimate of the clean point, E[x0 | x] = x - data_noise^2 grad U(x):
    exact when exp(-U) is the noisy data density (method.data_noise > 0)."""
    grad = jax.grad(lambda y: jnp.sum(self.energy_fn(params)(y)))(x)
    return x - self.data_noise**2 * grad

  def exact_cross_entropy(self, params, data_x) -> jax.Array:
    """mean_data U + log Z with the exact log Z (GMM energy only)."""
    u = self.energy_fn(params)(data_x)
    return jnp.mean(u) + self.net.apply({'params': params}, method='log_partition')

  def evaluate(self, state, rng, data, workdir=None):
    """Extra eval scalars: the log Z / cross-entropy estimates, exact ones for the GMM,
    a quadrature log Z in 2-D, and with eval.ais_temps > 0 an AIS log Z (+ its stderr)."""
    del workdir
    ex = jax.device_get(state.extra)
    log_z = float(self.log_z(ex))
    scalars = {'log_z_estimate': log_z, 'ess': float(smc.ess(ex['log_weights'])) /
               self.num_walkers}
    if self.log_z_walkers:
      scalars['log_z_coupled'] = float(self.log_z(ex, coupled=True))
    if self.is_gmm:
      params = jax.device_get(state.params)
      ref = jnp.asarray(data.reference(rng, 10000))
      scalars['exact_cross_entropy'] = float(self.exact_cross_entropy(params, ref))
      scalars['exact_log_z'] = float(self.net.apply({'params': params},
                                                    method='log_partition'))
      scalars['estimated_cross_entropy'] = float(jnp.mean(self.energy_fn(params)(ref))) + log_z
    elif self.data_shape == (2,):  # of the params the estimate is of (log_z_params)
      params = jax.device_get(self.log_z_params(state))
      scalars['grid_log_z'] = float(self.grid_log_partition(params))
    if self.ais_settings():
      out = self.ais_log_partition(self.log_z_params(state), jax.random.fold_in(rng, 7),
                                   data)
      scalars.update(ais_log_z=float(out['log_z']), ais_log_z_stderr=float(out['stderr']),
                     ais_ess=float(out['ess']), ais_acceptance=float(out['acceptance']))
    return scalars, {}

  def ais_settings(self) -> dict | None:
    """config.eval.ais_* checked, as ais.log_partition's keywords; None when ais_temps
    is 0 (no AIS at eval)."""
    ec = self.config.eval
    temps = ec.get('ais_temps', 0)
    if isinstance(temps, bool) or not isinstance(temps, int) or temps < 0:
      raise ConfigError('eval.ais_temps (AIS temperatures at eval; 0: no AIS) must be an '
                        f'integer >= 0, got {temps!r}')
    if not temps:
      return None
    h = float(ec.get('ais_step_size', 0.0) or 0.0)
    self.ais_base()
    return dict(num_temps=temps,
                num_chains=_positive('eval.ais_chains', ec.get('ais_chains', 256), True),
                mala_steps=_positive('eval.ais_mala_steps', ec.get('ais_mala_steps', 1), True),
                step_size=_positive('eval.ais_step_size', h) if h else self.sample_step_size,
                base_std=float(getattr(self.net, 'prior_std', 1.0)))

  def ais_base(self) -> str:
    base = self.config.eval.get('ais_base', 'prior')
    if base not in AIS_BASES:
      raise ConfigError(f'unknown eval.ais_base {base!r}; allowed: {", ".join(AIS_BASES)}')
    return base

  def ais_log_partition(self, params, rng, data=None) -> dict[str, jax.Array]:
    """log Z by annealed importance sampling (gensuite.samplers.ais), with
    config.eval.ais_* settings, from the base eval.ais_base names: 'prior', the initial
    model's N(0, prior_std^2 I); 'data', the Gaussian with the mean and covariance of
    (up to 10000) reference examples of `data` plus data_noise^2 I, the density the
    energy was trained on smoothed to second moments."""
    kw = self.ais_settings() or {}
    if self.ais_base() == 'data':
      if data is None:
        raise ConfigError("eval.ais_base='data' fits its base to the data; none was given")
      ref = data.reference(jax.random.fold_in(rng, 11), 10000)
      kw['base_mean'], kw['base_chol'] = ais.gaussian_fit(ref, extra_var=self.data_noise**2)
    fn = jax.jit(lambda p, k: ais.log_partition(self.energy_fn(p), self.data_shape, k, **kw))
    return fn(params, rng)

  def grid_log_partition(self, params, half_width: float = 12.0, n: int = 481) -> jax.Array:
    """log Z of a 2-D energy by the rectangle rule on [-w, w]^2 (n x n points)."""
    g = jnp.linspace(-half_width, half_width, n)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1).reshape(n, n, 2)
    u = jax.lax.map(self.energy_fn(params), pts)
    return jax.scipy.special.logsumexp(-u) + 2.0 * jnp.log(g[1] - g[0])
