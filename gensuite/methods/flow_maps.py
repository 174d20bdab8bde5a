"""Few-step generators trained from scratch: flow maps (ALGORITHMS.md §10).

  config.method = defaults.section('meanflow')          # or 'scm', 'shortcut'
  method = gensuite.methods.build(config, data_spec)
  state = method.init(rng, batch); state, m = method.train_step(state, batch, rng)
  x = method.sample(state, rng, 2000, steps=1)          # 1, 2, 4, ... network calls

A flow map jumps an ODE state from one time to another in one network call, so these
methods are their own samplers: `steps` is the number of network evaluations (NFE)
and config.sampler.name is not read. Each method keeps its paper's time convention:

  meanflow  (Geng et al., arXiv 2505.13447) t = 0 data, t = 1 noise, z_t = (1-t) x + t e.
            The net u(z_t, r, t) is the average velocity over [r, t] (it embeds t and
            t - r), so z_r = z_t - (t - r) u. Target u_tgt = sg(v - (t - r) du/dt) with
            the total derivative du/dt = v . d_z u + d_t u from one jax.jvp along
            (v, 1, 0) in (z, t, r); the primal u of that same call is what the loss
            trains, so there is no second forward and no second derivative. With
            tangent='model' (improved MeanFlow, Geng et al., arXiv 2512.02012) the
            jvp's dz is the net's own marginal velocity sg(u(z_t, t, t)) instead of
            the conditional v = e - x; the regression target keeps v (one more
            forward, no gradient through it). Loss per
            example L = ||u - u_tgt||^2 (summed over dims), weighted L / sg((L + c)^p).
            (t, r): both logit-normal(time_mean, time_std), sorted so t >= r
            (time_pairing='sorted', the paper's), or t logit-normal(time_mean,
            time_std) and r logit-normal(r_time_mean, r_time_std) drawn apart, r
            then cut to min(r, t) ('separate', py-meanflow's CIFAR sampler 'v1':
            most r near 0); either way r = t on the first equal_fraction of the
            batch. With class labels, the training-time guidance
            v_g = omega v + (1 - omega - kappa) u(z, t, t | null) + kappa u(z, t, t | c)
            on t in cfg_t_range replaces v (effective scale
            omega / (1 - kappa)); sampling then needs no guidance.
  scm       (Lu & Song, arXiv 2410.11081) TrigFlow: t = 0 data, x_t = cos t x + sin t z,
            z ~ N(0, sigma_d^2), f(x_t, t) = cos t x_t - sin t sigma_d F(x_t / sigma_d, t).
            Continuous-time consistency: with F- the net at sg(params),
            g = -cos^2 t (sigma_d F- - dx/dt) - w (cos t sin t x_t + sigma_d cos t sin t dF-/dt)
            (one jax.jvp, no gradient), normalised g / (rms(g) + c) (tangent_norm
            'example', sCM's; 'time': rms over the batch's examples in g's bin of
            tangent_norm_bins equal-mass bins of the t proposal), warm-up
            w = min(1, step / tangent_warmup), and the loss
            lambda(t) e^{-l(t)} mean((F - F- - g)^2) + l(t) with l a learned function of t
            (adaptive weighting) and lambda = 1 / (sigma_d tan t) ('tan') or 1.
            dx/dt = cos t z - sin t x for sCT (training='sct'); for sCD
            (training='scd') it is the teacher's PF-ODE velocity (cos t x_t - D)/sin t,
            D the teacher's denoiser at sigma = sigma_d tan t (config.teacher, as
            distillation reads it: an analytic mixture or a run's workdir). With
            init_from_teacher (a run teacher) the student is the teacher's network
            from its weights, F = (cos t x_t / sigma_d - D(x_t / cos t, sigma_d tan t)
            / sigma_d) / sin t, so f = D at the start (sCM's initialisation).
            training='ect' is ECT's discrete-time consistency (Geng et al., arXiv
            2406.14548) on the same parametrisation, in EDM sigma units (sigma =
            sigma_d tan t): sigma ~ LogNormal(p_mean, p_std), r = max(0, sigma (1 -
            2^-(s+1) (1 + 8 sigmoid(-sigma)))) at stage s = step // ect_stage_steps,
            x_sigma and x_r share the noise (and the dropout key), and the loss is
            ||f(x_sigma) - sg(f(x_r))||_2 / (sigma - r) (not squared), the target being
            the data where r = 0; no JVP and no tangent.
  shortcut  (Frans et al., arXiv 2410.12557) t = 0 noise, t = 1 data, x_t = (1-t) x0 + t x1.
            The net s(x_t, t, d) is the step-size-conditioned velocity:
            x_{t+d} ~ x_t + d s. Flow matching (target x1 - x0) at the smallest step
            d = 1/max_steps on a 1/max_steps time grid, and on the first
            1/bootstrap_every of the batch the self-consistency target of two half
            steps, (s(x_t, t, d/2) + s(x', t + d/2, d/2)) / 2 with x' = x_t + (d/2) s1,
            d = 2^-k for k = 0 .. log2(max_steps) - 1 in equal blocks, t on the d grid,
            from sg(params) ('online') or the fastest EMA ('ema'), clipped to
            +-target_clip (0: not clipped). Sampling takes M = steps, a power of two
            <= max_steps: x <- x + s(x, i/M, 1/M) / M.

All condition on class labels (method.class_conditional) with label dropout to
the null label. method.coupling='ot' pairs each batch's noise with its data by the
minibatch OT plan (method.ot_solver 'exact' or 'sinkhorn', as flow matching's
coupling; within classes when labelled) before the method's interpolation: the flow
being learned is then that of the OT-coupled pairs, whose paths cross less. MeanFlow
and shortcut sampling integrate that flow deterministically, so the map's endpoints
keep the data's marginal; sCM's multi-step sampler re-noises with independent noise,
which matches the marginals of coupling='independent' only. Parameters are
{'net': ...} (sCM adds {'weight': ...}, its l(t)).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gensuite import nets
from gensuite.errors import ConfigError
from gensuite.methods import defaults, rand, teachers
from gensuite.methods.flow_matching import COUPLINGS, ot_permutation, OT_SOLVERS
from gensuite.methods.base import choice, Method
from gensuite.methods.state import TrainState, apply_gradients, ema_name
from gensuite.nets.embeddings import sinusoidal_embedding

sg = jax.lax.stop_gradient


def _bcast(v, x):
  return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _mean_dims(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def _sum_dims(x):
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


class FlowMap(Method):
  """What the three methods share: the net (with a second time where the method needs
  one), labels, init, the train step (the loss also sees the state: EMA targets,
  warm-up) and sampling with `steps` network calls."""
  uses_second_time = True
  supports_grad_accum = True

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    self.mc = mc = defaults.resolve(config.method)
    self.name = mc.name
    self.conditional = bool(mc.class_conditional)
    if self.conditional and not data_spec.num_classes:
      raise ConfigError(f'method.class_conditional needs labelled data; data '
                        f'{data_spec.name!r} has no classes')
    self.label_dropout = float(mc.label_dropout)
    if not 0.0 <= self.label_dropout < 1.0:
      raise ConfigError(f'method.label_dropout must be in [0, 1), got {self.label_dropout}')
    self.num_classes = data_spec.num_classes if self.conditional else None
    self.net = nets.build(config.net, data_shape=self.data_shape,
                          out_dim_or_channels=self.data_shape[-1],
                          num_classes=self.num_classes, data_name=data_spec.name,
                          second_time=self.uses_second_time)
    self.coupling = choice(mc, 'coupling', COUPLINGS)
    self.ot_solver = choice(mc, 'ot_solver', OT_SOLVERS)
    self.sinkhorn_eps, self.sinkhorn_iters = float(mc.sinkhorn_eps), int(mc.sinkhorn_iters)
    if self.sinkhorn_eps <= 0 or self.sinkhorn_iters < 1:
      raise ConfigError('method.sinkhorn_eps must be > 0 and method.sinkhorn_iters >= 1, '
                        f'got {self.sinkhorn_eps}, {self.sinkhorn_iters}')
    if self.coupling == 'ot' and self.grad_accum > 1:
      self.refuse_grad_accum("method.coupling='ot' pairs noise and data over the whole batch")
    self.check_steps(self.sample_steps, 'config.sampler.steps')
    self.check_sampler()

  # ---- pieces ------------------------------------------------------------------

  def apply(self, params, x, t, second=None, label=None, train=False, rng=None):
    """The net on x with time t [B] (and the second time [B]); params = params['net']."""
    kw = {'second_time': second} if self.uses_second_time else {}
    return self.net.apply({'params': params}, x, t, label=label, train=train,
                          rngs={'dropout': rng} if rng is not None else {}, **kw)

  def train_labels(self, batch, rng):
    """(label, net_label): the batch's labels and those the net sees after dropout to
    the null label num_classes (None, None when unconditional)."""
    if not self.conditional:
      return None, None
    label = batch['label']
    if self.label_dropout <= 0:
      return label, label
    drop = rand.bernoulli(rng, self.label_dropout, label.shape)
    return label, jnp.where(drop, self.spec.num_classes, label)

  def couple(self, x, noise, label=None):
    """The noise paired with the data x: as drawn ('independent'), or permuted by the
    minibatch OT plan between the two (coupling='ot', within classes when labelled), so
    the pairs' straight paths cross less and the marginal flow is straighter. A
    permutation keeps both marginals exact, whatever the mixture weights."""
    if self.coupling != 'ot':
      return noise
    return noise[ot_permutation(x, noise, label, self.ot_solver, self.sinkhorn_eps,
                                self.sinkhorn_iters)]

  def extra_params(self, rng) -> dict:
    return {}

  def init_net_params(self, rng, x, t, label):
    kw = {'second_time': t} if self.uses_second_time else {}
    return self.net.init({'params': rng, 'dropout': rng}, x, t, label=label, **kw)['params']

  def init(self, rng, batch) -> TrainState:
    x = batch['x']
    label = batch.get('label') if self.conditional else None
    t = jnp.zeros((x.shape[0],), x.dtype)
    k_net, k_extra = jax.random.split(rng)
    params = {'net': self.init_net_params(k_net, x, t, label),
              **self.extra_params(k_extra)}
    return TrainState.create(params, self.tx, self.ema_decays, phema_stds=self.phema_stds)

  def train_step(self, state, batch, rng):
    grads, metrics = self.loss_grads(lambda p, b, r: self.loss(p, b, r, state),
                                     state.params, batch, rng)
    state, norms = apply_gradients(state, grads, self.tx)
    return state, {**metrics, **norms}

  def loss(self, params, batch, rng, state):
    raise NotImplementedError

  # ---- sampling ------------------------------------------------------------------

  def check_steps(self, steps: int, where: str = 'steps') -> None:
    if int(steps) < 1:
      raise ConfigError(f'{where}={steps}: a {self.name} run samples with 1 or more steps')

  def sample(self, state, rng, num: int, sampler: str | None = None,
             steps: int | None = None, use_ema=True, label=None, **unused):
    """num samples with `steps` network calls (default config.sampler.steps); the
    sampler name is not read (the flow map is its own sampler)."""
    del sampler, unused
    steps = int(steps or self.sample_steps)
    self.check_steps(steps)
    params = state.eval_params(use_ema)['net']
    k_z, k_y, k_s = jax.random.split(rng, 3)
    label = self.sample_labels(k_y, num, label)
    z = jax.random.normal(k_z, (num,) + self.data_shape, jnp.float32)
    return self.generate(params, z, steps, label, k_s)

  @property
  def sample_steps(self) -> int:
    """config.sampler.steps, read when used (`gensuite eval --steps` changes it on a
    loaded run)."""
    return int(self.config.sampler.get('steps', 1) or 1)

  def generate(self, params, z, steps, label, rng):
    raise NotImplementedError

  def evaluate(self, state, rng, data, workdir=None):
    del state, rng, data, workdir
    return {'nfe': float(self.sample_steps)}, {}


# ---- MeanFlow --------------------------------------------------------------------


# How MeanFlow draws (t, r): both from one logit-normal and sorted, or apart (r's own
# logit-normal, cut to r <= t).
TIME_PAIRINGS = ('sorted', 'separate')
# What MeanFlow's jvp moves z along: the conditional velocity e - x (the paper's) or
# the net's own marginal velocity u(z_t, t, t) (improved MeanFlow).
MEANFLOW_TANGENTS = ('conditional', 'model')
# What sCM divides its tangent g by (plus tangent_norm_c): each example's own rms(g)
# (sCM's), or the rms over the batch's examples in g's time bin (SCM.tangent_scale).
SCM_TANGENT_NORMS = ('example', 'time')


class MeanFlow(FlowMap):
  """MeanFlow (module docstring): average velocity u(z_t, r, t), t = 0 data."""

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    mc = self.mc
    self.time_mean, self.time_std = float(mc.time_mean), float(mc.time_std)
    self.time_pairing = str(mc.time_pairing)
    if self.time_pairing not in TIME_PAIRINGS:
      raise ConfigError(f'method.time_pairing must be one of {", ".join(TIME_PAIRINGS)}, '
                        f'got {self.time_pairing!r}')
    self.r_time_mean, self.r_time_std = float(mc.r_time_mean), float(mc.r_time_std)
    self.tangent = str(mc.tangent)
    if self.tangent not in MEANFLOW_TANGENTS:
      raise ConfigError(f'method.tangent must be one of {", ".join(MEANFLOW_TANGENTS)}, '
                        f'got {self.tangent!r}')
    self.equal_fraction = float(mc.equal_fraction)
    if not 0.0 <= self.equal_fraction <= 1.0:
      raise ConfigError(f'method.equal_fraction must be in [0, 1], got {self.equal_fraction}')
    self.p, self.c = float(mc.adaptive_p), float(mc.adaptive_c)
    if self.p > 0 and self.c <= 0:
      raise ConfigError(f'method.adaptive_c must be > 0 when adaptive_p > 0, got {self.c}')
    self.omega, self.kappa = float(mc.cfg_omega), float(mc.cfg_kappa)
    self.cfg_t_range = tuple(float(v) for v in mc.cfg_t_range)
    self.guided = self.omega != 1.0 or self.kappa != 0.0
    if self.guided:
      if not self.conditional or self.label_dropout <= 0:
        raise ConfigError('method.cfg_omega/cfg_kappa guide a class-conditional run with '
                          'label dropout (method.class_conditional=True, label_dropout > 0)')
      if self.kappa >= 1.0:
        raise ConfigError(f'method.cfg_kappa must be < 1 (the effective scale is omega / '
                          f'(1 - kappa)), got {self.kappa}')

  def u(self, params, z, t, r, label=None, train=False, rng=None):
    """u(z_t, r, t) for times t, r [B]: the net sees t and t - r."""
    return self.apply(params, z, t, t - r, label, train, rng)

  def sample_times(self, rng, n):
    """(t, r) [n]: logit-normal pairs, t >= r (time_pairing), r = t on the first
    equal_fraction of the (global) batch's rows."""
    k = rand.normal(rng, (2, n), batch_axis=1)
    if self.time_pairing == 'sorted':
      a, b = jax.nn.sigmoid(k * self.time_std + self.time_mean)
      t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    else:
      t = jax.nn.sigmoid(k[0] * self.time_std + self.time_mean)
      r = jnp.minimum(t, jax.nn.sigmoid(k[1] * self.r_time_std + self.r_time_mean))
    equal = rand.rows(n) < int(round(self.equal_fraction * rand.total(n)))
    return t, jnp.where(equal, t, r)

  def guided_velocity(self, params, z, t, v, label, net_label):
    """v_g: v, or on t in cfg_t_range for kept labels, the training-time guidance."""
    if not self.guided:
      return v
    null = jnp.full_like(label, self.spec.num_classes)
    v_null = sg(self.u(params, z, t, t, null))
    v_g = self.omega * v + (1.0 - self.omega - self.kappa) * v_null
    if self.kappa != 0.0:
      v_g = v_g + self.kappa * sg(self.u(params, z, t, t, label))
    lo, hi = self.cfg_t_range
    use = (net_label != self.spec.num_classes) & (t >= lo) & (t <= hi)
    return jnp.where(_bcast(use, v), v_g, v)

  def target(self, fn, z, t, r, v, dz=None):
    """(u, u_tgt): fn(z, t, r) and sg(v - clip(t - r, 0, 1) du/dt), du/dt along
    (dz, dt, dr) = (dz, 1, 0) from the same call (jax.jvp); dz defaults to v."""
    dz = v if dz is None else dz
    u, dudt = jax.jvp(fn, (z, t, r), (dz, jnp.ones_like(t), jnp.zeros_like(r)))
    return u, sg(v - _bcast(jnp.clip(t - r, 0.0, 1.0), v) * dudt)

  def loss(self, params, batch, rng, state=None):
    x = batch['x']
    n = x.shape[0]
    k_e, k_t, k_drop, k_net = jax.random.split(rng, 4)
    k_net = rand.microbatch_key(k_net)
    label, net_label = self.train_labels(batch, k_drop)
    e = self.couple(x, rand.normal(k_e, x.shape, x.dtype), label)
    t, r = self.sample_times(k_t, n)
    z = (1.0 - _bcast(t, x)) * x + _bcast(t, x) * e
    v = self.guided_velocity(params['net'], z, t, e - x, label, net_label)
    fn = lambda z_, t_, r_: self.u(params['net'], z_, t_, r_, net_label, True, k_net)
    dz = sg(fn(z, t, t)) if self.tangent == 'model' else v
    u, u_tgt = self.target(fn, z, t, r, v, dz)
    err = _sum_dims((u - u_tgt)**2)
    weight = sg(1.0 / (err + self.c)**self.p) if self.p > 0 else 1.0
    loss = jnp.mean(weight * err)
    return loss, {'loss': loss, 'mse': jnp.mean(err) / np.prod(self.data_shape),
                  'fraction_r_eq_t': jnp.mean(t == r)}

  def sampling_mid_t(self) -> float | None:
    """The second step's time (config.sampler.mid_t, in MeanFlow's time: 1 noise, 0
    data), or None for the uniform grid."""
    given = self.config.sampler.get('mid_t', None)
    if given is None:
      return None
    if not 0.0 < float(given) < 1.0:
      raise ConfigError(f'config.sampler.mid_t must be in (0, 1) (MeanFlow time of the '
                        f'second step; unset: the uniform grid), got {given}')
    return float(given)

  def check_sampler(self, load_guide: bool = False) -> None:
    super().check_sampler(load_guide)
    self.sampling_mid_t()

  def times(self, steps: int) -> np.ndarray:
    """The steps + 1 grid times from 1 to 0: uniform, or 1, then config.sampler.mid_t
    and on linearly to 0."""
    mid = self.sampling_mid_t()
    if mid is None or steps == 1:
      return np.linspace(1.0, 0.0, steps + 1)
    return np.concatenate([[1.0], np.linspace(mid, 0.0, steps)])

  def generate(self, params, z, steps, label, rng=None):
    """z_1 = z; z_r = z_t - (t - r) u(z_t, r, t) on the grid 1 -> 0 (times())."""
    del rng
    ts = jnp.asarray(self.times(steps), z.dtype)
    n = z.shape[0]

    def body(i, x):
      t = jnp.full((n,), ts[i])
      r = jnp.full((n,), ts[i + 1])
      return x - _bcast(t - r, x) * self.u(params, x, t, r, label)
    return jax.lax.fori_loop(0, steps, body, z)


# ---- sCM (TrigFlow continuous-time consistency) ------------------------------------


class _TimeWeight(nn.Module):
  """l(t): the adaptive weighting's learned log-variance, a small MLP of t (zero at
  init, so the loss starts as the plain weighted MSE)."""
  hidden: int = 64

  @nn.compact
  def __call__(self, t):
    h = sinusoidal_embedding(t, self.hidden, scale=10.0)
    h = nn.silu(nn.Dense(self.hidden)(h))
    return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[:, 0]


class SCM(FlowMap):
  """sCT / sCD on TrigFlow (module docstring)."""
  uses_second_time = False

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    mc = self.mc
    self.training = choice(mc, 'training', ('sct', 'scd', 'ect'))
    self.ect_stage_steps = int(mc.ect_stage_steps)
    if self.ect_stage_steps < 1:
      raise ConfigError(f'method.ect_stage_steps must be >= 1, got {self.ect_stage_steps}')
    self.sigma_d = float(mc.sigma_data)
    self.p_mean, self.p_std = float(mc.p_mean), float(mc.p_std)
    self.warmup = int(mc.tangent_warmup)
    self.norm_c = float(mc.tangent_norm_c)
    self.norm_kind = choice(mc, 'tangent_norm', SCM_TANGENT_NORMS)
    self.norm_bins = int(mc.tangent_norm_bins)
    if self.norm_bins < 1:
      raise ConfigError(f'method.tangent_norm_bins must be >= 1, got {self.norm_bins}')
    self.prior = choice(mc, 'prior_weighting', ('tan', 'none'))
    self.t_max = math.atan(float(mc.sigma_max) / self.sigma_d)
    self.mid_t = float(mc.mid_t)
    if not 0.0 < self.mid_t < self.t_max:
      raise ConfigError(f'method.mid_t must be in (0, {self.t_max:.4f}) (TrigFlow time of '
                        f'the second step), got {self.mid_t}')
    self.sampling_mid_t()
    self.sampling_t_start()
    self.weight_net = _TimeWeight(int(mc.weight_hidden))
    self.teacher = None
    if self.training == 'scd':
      self.teacher = teachers.build(config, data_spec, load_run)
    self.cfg_scale = float(mc.teacher_cfg_scale)
    self.from_teacher = bool(mc.init_from_teacher)
    if self.from_teacher and (self.teacher is None or not self.teacher.has_network):
      raise ConfigError("method.init_from_teacher=True starts the student from a trained "
                        "run's network: it needs method.training='scd' and a run teacher "
                        "(config.teacher.workdir), not an analytic one")

  def init_net_params(self, rng, x, t, label):
    if self.from_teacher:  # a copy, so donating the state never frees the teacher's
      return jax.tree_util.tree_map(jnp.array, self.teacher.params)
    return super().init_net_params(rng, x, t, label)

  def apply(self, params, x, t, second=None, label=None, train=False, rng=None):
    """F(x, t) on x = x_t / sigma_d. From the teacher (init_from_teacher), the
    teacher's architecture with `params` read through TrigFlow's change of variables:
    its denoiser D at sigma = sigma_d tan t of x_t / cos t is the consistency function
    f, so F = (cos t x - D / sigma_d) / sin t (for an EDM teacher with the same
    sigma_d, exactly minus its raw network: Lu & Song 2024, §2). A single sample step
    of the initial student is then the teacher's one-step denoiser."""
    if not self.from_teacher:
      return super().apply(params, x, t, second, label, train, rng)
    del second, train, rng  # a run teacher's denoiser has no dropout at eval
    tb = _bcast(t, x)
    d = self.teacher.apply(params, self.sigma_d * x / jnp.cos(tb), self.sigma_d * jnp.tan(t),
                           label)
    return (jnp.cos(tb) * x - d / self.sigma_d) / jnp.sin(tb)

  def extra_params(self, rng):
    if self.training == 'ect':  # no adaptive weighting: the unsquared norm is ECT's
      return {}
    return {'weight': self.weight_net.init(rng, jnp.zeros((1,)))['params']}

  def F(self, params, x, t, label=None, train=False, rng=None):
    """F(x / sigma_d, t), the raw net output."""
    return self.apply(params, x / self.sigma_d, t, None, label, train, rng)

  def f(self, params, x, t, label=None):
    """The consistency function f(x_t, t) = cos t x_t - sin t sigma_d F."""
    tb = _bcast(t, x)
    return jnp.cos(tb) * x - jnp.sin(tb) * self.sigma_d * self.F(params, x, t, label)

  def sample_t(self, rng, n):
    """t = arctan(sigma / sigma_d), log sigma ~ N(p_mean, p_std^2)."""
    sigma = jnp.exp(self.p_mean + self.p_std * rand.normal(rng, (n,)))
    return jnp.arctan(sigma / self.sigma_d)

  def velocity(self, x0, z, x_t, t, label):
    """dx_t/dt: the conditional velocity (sCT) or the teacher's PF-ODE one (sCD)."""
    tb = _bcast(t, x_t)
    if self.teacher is None:
      return jnp.cos(tb) * z - jnp.sin(tb) * x0
    sigma = self.sigma_d * jnp.tan(t)
    kw = dict(label=label, cfg_scale=self.cfg_scale) if self.conditional else {}
    d = sg(self.teacher.denoiser(x_t / jnp.cos(tb), sigma, **kw))
    return (jnp.cos(tb) * x_t - d) / jnp.sin(tb)

  def time_bin(self, t):
    """The bin [B] of each time among tangent_norm_bins of equal mass under the training
    proposal: floor(K Phi((log(sigma_d tan t) - p_mean) / p_std))."""
    zscore = (jnp.log(self.sigma_d * jnp.tan(t)) - self.p_mean) / self.p_std
    u = 0.5 * jax.lax.erfc(-zscore / math.sqrt(2.0))
    return jnp.clip(jnp.floor(u * self.norm_bins), 0, self.norm_bins - 1).astype(jnp.int32)

  def tangent_scale(self, rms, t):
    """What g is divided by, less c: its own rms per example (tangent_norm='example',
    sCM's), or the rms of g over the batch's examples in the same time bin ('time'): a
    function of t alone, so it rescales the loss over time without reweighting the
    examples at one time against each other."""
    if self.norm_kind == 'example':
      return rms
    b = self.time_bin(t)
    total = jax.ops.segment_sum(rms**2, b, self.norm_bins)
    count = jax.ops.segment_sum(jnp.ones_like(rms), b, self.norm_bins)
    return jnp.sqrt(total / jnp.maximum(count, 1.0))[b]

  def tangent(self, fn, x_t, t, dxdt, w):
    """(F-, g): the net at sg(params) and the normalised tangent (module docstring)."""
    tb = _bcast(t, x_t)
    cs = jnp.cos(t) * jnp.sin(t)
    f_minus, csdf = jax.jvp(fn, (x_t / self.sigma_d, t),
                            (_bcast(cs, x_t) * dxdt / self.sigma_d, cs))
    g = (-jnp.cos(tb)**2 * (self.sigma_d * f_minus - dxdt)
         - w * (_bcast(cs, x_t) * x_t + self.sigma_d * csdf))
    rms = jnp.sqrt(_mean_dims(g**2))
    scale = self.tangent_scale(rms, t)
    return sg(f_minus), sg(g / _bcast(scale + self.norm_c, g)), rms

  def ect_r(self, sigma, step):
    """ECT's r(sigma) at stage step // ect_stage_steps (EDM sigma units)."""
    stage = (jnp.asarray(step) // self.ect_stage_steps).astype(jnp.float32)
    return jnp.maximum(0.0, sigma * (1.0 - 2.0**-(stage + 1) * (1.0 + 8.0 * jax.nn.sigmoid(
        -sigma))))

  def ect_loss(self, params, batch, rng, state=None):
    x0 = batch['x']
    n = x0.shape[0]
    k_z, k_t, k_drop, k_net = jax.random.split(rng, 4)
    k_net = rand.microbatch_key(k_net)
    label, net_label = self.train_labels(batch, k_drop)
    z = self.couple(x0, self.sigma_d * rand.normal(k_z, x0.shape, x0.dtype), label)
    sigma = jnp.exp(self.p_mean + self.p_std * rand.normal(k_t, (n,)))
    r = self.ect_r(sigma, 0 if state is None else state.step)
    t, t_r = jnp.arctan(sigma / self.sigma_d), jnp.arctan(r / self.sigma_d)

    def f(p, tt):
      tb = _bcast(tt, x0)
      x = jnp.cos(tb) * x0 + jnp.sin(tb) * z
      return jnp.cos(tb) * x - jnp.sin(tb) * self.sigma_d * self.F(p, x, tt, net_label, True,
                                                                   k_net)
    target = jnp.where(_bcast(r > 0, x0), sg(f(params['net'], t_r)), x0)
    dist = jnp.sqrt(_sum_dims((f(params['net'], t) - target)**2) + 1e-12)
    loss = jnp.mean(dist / (sigma - r))
    return loss, {'loss': loss, 'mse': jnp.mean(dist**2) / np.prod(self.data_shape),
                  'r_over_sigma': jnp.mean(r / sigma)}

  def loss(self, params, batch, rng, state=None):
    if self.training == 'ect':
      return self.ect_loss(params, batch, rng, state)
    x0 = batch['x']
    n = x0.shape[0]
    k_z, k_t, k_drop, k_net = jax.random.split(rng, 4)
    k_net = rand.microbatch_key(k_net)
    label, net_label = self.train_labels(batch, k_drop)
    z = self.couple(x0, self.sigma_d * rand.normal(k_z, x0.shape, x0.dtype), label)
    t = self.sample_t(k_t, n)
    tb = _bcast(t, x0)
    x_t = jnp.cos(tb) * x0 + jnp.sin(tb) * z
    dxdt = sg(self.velocity(x0, z, x_t, t, label))
    step = 0 if state is None else state.step
    w = jnp.minimum(1.0, (step + 1) / max(self.warmup, 1)) if self.warmup > 0 else 1.0
    frozen = sg(params['net'])
    fn = lambda x_, t_: self.apply(frozen, x_, t_, None, net_label, True, k_net)
    f_minus, g, g_rms = self.tangent(fn, x_t, t, dxdt, w)
    out = self.F(params['net'], x_t, t, net_label, True, k_net)
    mse = _mean_dims((out - f_minus - g)**2)
    logvar = self.weight_net.apply({'params': params['weight']}, t)
    lam = 1.0 / (self.sigma_d * jnp.tan(t)) if self.prior == 'tan' else 1.0
    loss = jnp.mean(lam * jnp.exp(-logvar) * mse + logvar)
    return loss, {'loss': loss, 'mse': jnp.mean(mse), 'tangent_rms': jnp.mean(g_rms),
                  'tangent_warmup': jnp.asarray(w, jnp.float32)}

  def sampling_mid_t(self) -> float:
    """The second step's time: config.sampler.mid_t when set (`gensuite sample/eval
    --config.sampler.mid_t=T` on a trained run), else method.mid_t."""
    given = self.config.sampler.get('mid_t', None)
    mid = self.mid_t if given is None else float(given)
    if not 0.0 < mid < self.t_max:
      raise ConfigError(f'config.sampler.mid_t must be in (0, {self.t_max:.4f}) (TrigFlow '
                        f'time of the second step), got {mid}')
    return mid

  def sampling_t_start(self) -> float:
    """The first step's time: config.sampler.t_start when set, else t_max =
    arctan(sigma_max / sigma_d). Below t_max the first step reads sigma_d z as x_t,
    ignoring the cos(t_start) x_0 part of the marginal (cos 1.5 = 0.07)."""
    given = self.config.sampler.get('t_start', None)
    start = self.t_max if given is None else float(given)
    if not 0.0 < start <= self.t_max:
      raise ConfigError(f'config.sampler.t_start must be in (0, {self.t_max:.4f}] (TrigFlow '
                        f'time of the first step; t_max by default), got {start}')
    return start

  def check_sampler(self, load_guide: bool = False) -> None:
    super().check_sampler(load_guide)
    if hasattr(self, 'mid_t'):  # the constructor checks it once its times are known
      self.sampling_mid_t()
      self.sampling_t_start()

  def times(self, steps: int) -> np.ndarray:
    """The sampling times: t_start (t_max by default), then steps - 1 times from the
    second step's time (sampling_mid_t) linearly towards 0."""
    mid_t, start = self.sampling_mid_t(), self.sampling_t_start()
    if steps > 1 and not mid_t < start:
      raise ConfigError(f'the second step\'s time (mid_t {mid_t}) must be below the first '
                        f'step\'s (t_start {start})')
    mids = [mid_t * (steps - 1 - j) / (steps - 1) for j in range(steps - 1)]
    return np.asarray([start] + mids, np.float64)

  def generate(self, params, z, steps, label, rng):
    """x = f(sigma_d z, t_start); then re-noise to each next time and apply f again."""
    ts = self.times(steps)
    x = self.sigma_d * z
    n = z.shape[0]
    for i, t in enumerate(ts):
      x = self.f(params, x, jnp.full((n,), t), label)
      if i + 1 < len(ts):
        eps = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
        x = math.cos(ts[i + 1]) * x + math.sin(ts[i + 1]) * self.sigma_d * eps
    return x


# ---- shortcut models ------------------------------------------------------------


class Shortcut(FlowMap):
  """Shortcut models (module docstring): s(x_t, t, d), t = 0 noise."""
  supports_grad_accum = False
  grad_accum_refusal = ('a shortcut step bootstraps the first 1/bootstrap_every of the '
                        'whole batch in blocks of step sizes')

  def __init__(self, config, data_spec, load_run=None):
    self._max_steps = int(config.method.get('max_steps', 128))
    super().__init__(config, data_spec, load_run)
    mc = self.mc
    self.max_steps = int(mc.max_steps)
    self.levels = int(round(math.log2(self.max_steps)))
    if self.max_steps < 2 or 2**self.levels != self.max_steps:
      raise ConfigError(f'method.max_steps must be a power of two >= 2, got {self.max_steps}')
    self.bootstrap_every = int(mc.bootstrap_every)
    if self.bootstrap_every < 1:
      raise ConfigError(f'method.bootstrap_every must be >= 1, got {self.bootstrap_every}')
    self.target_kind = choice(mc, 'bootstrap_target', ('online', 'ema'))
    if self.target_kind == 'ema' and not self.ema_decays:
      raise ConfigError("method.bootstrap_target='ema' reads an EMA of the params; set "
                        'optim.ema_decays (the fastest one is used)')
    self.clip = float(mc.target_clip)

  def check_steps(self, steps: int, where: str = 'steps') -> None:
    m = self._max_steps
    if steps < 1 or steps > m or steps & (steps - 1):
      raise ConfigError(f'{where}={steps}: a shortcut model samples with a power of two '
                        f'of steps up to method.max_steps={m} (1, 2, 4, ..., {m})')

  def s(self, params, x, t, d, label=None, train=False, rng=None):
    return self.apply(params, x, t, d, label, train, rng)

  def consistency_target(self, params, x_t, t, d, label):
    """(s(x_t, t, d/2) + s(x', t + d/2, d/2)) / 2, x' = x_t + (d/2) s1 (clipped)."""
    half = d / 2.0
    clip = (lambda v: jnp.clip(v, -self.clip, self.clip)) if self.clip > 0 else (lambda v: v)
    s1 = self.s(params, x_t, t, half, label)
    x_mid = clip(x_t + _bcast(half, x_t) * s1)
    s2 = self.s(params, x_mid, t + half, half, label)
    return sg(clip((s1 + s2) / 2.0))

  def loss(self, params, batch, rng, state=None):
    x1 = batch['x']
    n = x1.shape[0]
    nb = n // self.bootstrap_every if self.bootstrap_every > 1 else n
    k_x0, k_t, k_tb, k_drop, k_net = jax.random.split(rng, 5)
    label, net_label = self.train_labels(batch, k_drop)
    x0 = self.couple(x1, jax.random.normal(k_x0, x1.shape, x1.dtype), label)
    m = self.max_steps
    # Flow matching at the smallest step on the 1/m grid.
    t = jax.random.randint(k_t, (n,), 0, m).astype(x1.dtype) / m
    d = jnp.full((n,), 1.0 / m, x1.dtype)
    target = x1 - x0
    # Self-consistency on the first nb: k = 0 .. levels-1 in equal blocks.
    k = (jnp.arange(nb) * self.levels) // max(nb, 1)
    d_b = (2.0 ** -k).astype(x1.dtype)
    t_b = (jax.random.randint(k_tb, (nb,), 0, 2**self.levels) >> (self.levels - k)).astype(
        x1.dtype) * d_b  # uniform on {0, d, ..., 1 - d}
    x_tb = (1.0 - _bcast(t_b, x1[:nb])) * x0[:nb] + _bcast(t_b, x1[:nb]) * x1[:nb]
    if self.target_kind == 'ema':
      fastest = ema_name(min(self.ema_decays))
      target_params = sg(state.ema[fastest]['net'])
    else:
      target_params = sg(params['net'])
    lab_b = None if net_label is None else net_label[:nb]
    target_b = self.consistency_target(target_params, x_tb, t_b, d_b, lab_b)
    t = t.at[:nb].set(t_b)
    d = d.at[:nb].set(d_b)
    target = target.at[:nb].set(target_b)
    x_t = (1.0 - _bcast(t, x1)) * x0 + _bcast(t, x1) * x1
    x_t = x_t.at[:nb].set(x_tb)
    out = self.s(params['net'], x_t, t, d, net_label, True, k_net)
    err = _mean_dims((out - target)**2)
    loss = jnp.mean(err)
    is_b = jnp.arange(n) < nb
    return loss, {'loss': loss,
                  'fm_loss': jnp.sum(jnp.where(is_b, 0.0, err)) / max(n - nb, 1),
                  'consistency_loss': jnp.sum(jnp.where(is_b, err, 0.0)) / max(nb, 1)}

  def generate(self, params, z, steps, label, rng=None):
    """M = steps Euler steps of the step-1/M velocity: x <- x + s(x, i/M, 1/M)/M."""
    del rng
    n = z.shape[0]
    d = jnp.full((n,), 1.0 / steps)

    def body(i, x):
      t = jnp.full((n,), i / steps)
      return x + self.s(params, x, t, d, label) / steps
    return jax.lax.fori_loop(0, steps, body, z)
