"""Score distillation into one- (or few-) step generators: f-distill, DMD and DMD2.

  config.method = dict(name='distill', objective='f_distill', divergence='js', ...)
  config.teacher = dict(analytic='data')          # or workdir='runs/edm_digits'
  method = Distill(config, data_spec)
  state = method.init(rng, batch); state, m = method.train_step(state, batch, rng)
  x = method.sample(state, rng, 2000, steps=1)    # one NFE (label=... when conditional)

Three networks live in one TrainState: params = {'generator', 'fake_score',
'discriminator'} (the last unless disc_head='none'), one optax transform each
(config.optim, with per-net learning rates config.method.lr_<net> when > 0 and the
generator's own schedule method.generator_schedule when set: 'constant' or 'cosine'
to optim.final_lr_fraction, while the fake score and discriminator keep optim's and
so keep tracking the generator), and an EMA of the generator only
(state.ema[decay] = {'generator': ...}).

The generator is a denoiser G(x, sigma) (ALGORITHMS.md §0, VE frame): one step is
x0 = G(sigma_max z, sigma_max); with method.gen_steps = K > 1 it is DMD2's few-step
generator on the levels sigma_k of the 1000-level Karras grid at indices
k * 1000 / K (or method.gen_sigmas), re-noising x0 + sigma_{k+1} eps between steps,
and training uses
backward simulation (a step k drawn per batch, its input produced by the current
generator from pure noise; the fake score and discriminator then take the step k as
part of their label, class * K + k, so they model each step's output law and not the
mixture over steps, whose matching lets the steps specialise on different modes:
method.fake_per_step, on by default. With the teacher's own networks, whose label
embedding is the teacher's, the fake score is instead gen_steps stacked copies of the
teacher's weights, copy k trained on step k's outputs: each inner update runs one chain
whose j-th 1/K of the batch stops after step j, and the generator's loss at step k
reads copy k). With an
analytic teacher the networks are config.net
MLPs under EDM preconditioning; with a run teacher, generator and fake score are the
teacher's own network initialised from its EMA weights (as in the papers).

The discriminator D_psi(x_t, sigma) (method.disc_head) estimates log p_t - log q_t:
  separate          its own network (method.disc_net or config.net, one output
                    channel averaged over pixels);
  fake_score        a FeatureHead (gensuite.nets.heads) on the fake-score network's
                    bottleneck (MLP: last hidden layer; U-Net: mid block, pooled in the
                    head), DMD2's choice (Yin et al. 2024, §4.2): the classification
                    loss also trains the fake score's backbone, weighted by disc_weight
                    (DMD2: 1e-2) against its DSM loss;
  teacher_features  the same head on the frozen teacher's bottleneck (FastGen's
                    f-distill; needs a run teacher);
  none              no discriminator (DMD).
It is trained with the logistic (non-saturating GAN) loss softplus(D(fake_t)) +
softplus(-D(real_t)) on noisy data vs noisy detached student samples at the same sigma
(t_range of the Karras grid), whose minimiser is D = log p_t - log q_t (Goodfellow
et al. 2014, Prop. 1); f-distill takes its density ratio r = exp(D) from it, and the
generator's GAN term is gan_weight * softplus(-D(x_t)).

Each train_step runs `fake_updates` = K updates of the fake score (denoising score
matching on detached generator samples, EDM weight 1/sigma^2 + 1/sigma_data^2) and
the discriminator inside one lax.scan, then one generator update (the two time-scale
rule, DMD2 §4.1). Fresh data per inner update: the batch the loop hands over is split
into K equal parts, part k feeding inner update k (config.train.batch_size counts all
K: it must be a multiple of K, and each inner update and the generator update see
batch_size / K examples; the configs set batch_size = K x the per-update batch).
Objectives (method.objective):
  f_distill  generator gradient per sample g = h(r) (D_fake - D_real) / mean|x0 - D_real|
             at x_t = x0 + sigma eps, sigma on the Karras grid between t_range (2%..98%
             of the levels), h(r) = r^2 f''(r) of method.divergence (divergences.py),
             r = exp(logit) of the discriminator, clamped to +-logit_clamp, clipped to
             ratio_clip, divided by a per-time-bin running mean (ratio_bins,
             ratio_ema; E_q r = 1) and h divided by its batch mean; plus
             gan_weight * softplus(-logit) (Xu et al. 2025; FastGen's defaults).
  dmd        h = 1 (reverse KL), no discriminator, plus reg_weight (0.25) * squared
             error between G(z_ref) and y_ref on (noise, teacher output) pairs made
             once in init by the teacher's deterministic Heun sampler (pair_steps
             levels, 2 pair_steps - 1 NFE) and kept in state.extra (so in the
             checkpoints of the workdir); Yin et al. 2024 use LPIPS, which needs
             weights we do not have; method.reg_loss='pseudo_huber' replaces the
             squared error by iCT's pseudo-Huber distance (method.reg_huber_c);
             method.reg_schedule='cosine' decays the weight to reg_final x reg_weight
             over train.num_steps; a few-step student regresses its first step's
             output (method.reg_step='first'; 'last': the whole chain; 'every':
             each step k, from the teacher ODE's point at its level; 'online': the
             first step, and each later step from its own chain's input onto the
             teacher's ODE solution from there, solved every step). The other
             objectives take the same paired regression when reg_weight > 0
             (default 0 for them).
  dmd2       h = 1, no regression, fake_updates = 5 (two time-scale rule), the GAN
             head on the fake score's bottleneck and optional backward simulation.
The generator loss is 0.5 mean (x0 - sg(x0 - g))^2 (DMD2's pseudo-loss; its gradient
in x0 is g / x0.size). Logged: every loss, h_mean / h_std (before the batch
normalisation), r_mean, disc_acc, and at each eval the student's metrics with NFE.

Class-conditional students (method.class_conditional): generator, fake score and
discriminator take the label; the teacher is guided, D_real = D_null + w (D_label -
D_null) with w = method.teacher_cfg_scale (classifier-free guidance, Ho & Salimans
2022; DMD2 §5 distils SD v1.5 at w = 1.75), the fake score never is. Labels come with
the data, or for an analytic mixture teacher (classes = components) are drawn from
p(c | x0) (teachers.py). Sampling takes labels, drawn from the teacher's class prior
when not given (uniform for a run teacher).
"""
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gensuite import nets, samplers
from gensuite.errors import ConfigError
from gensuite.methods import defaults, divergences, optim, rand, teachers
from gensuite.methods.base import choice, Method
from gensuite.methods.diffusion import edm_preconditioning
from gensuite.methods.state import TrainState, ema_name
from gensuite.metrics import distances
from gensuite.nets.heads import FeatureHead

OBJECTIVES = ('f_distill', 'dmd', 'dmd2')
DISC_HEADS = ('separate', 'fake_score', 'teacher_features', 'none')
FEATURE_HEADS = ('fake_score', 'teacher_features')
NETS = ('generator', 'fake_score', 'discriminator')
# method.generator_schedule: the generator's own LR schedule ('' = config.optim.schedule);
# the fake score and discriminator keep optim's, so they go on tracking the generator.
GENERATOR_SCHEDULES = ('constant', 'cosine')
# method.reg_loss: the paired regression's distance. 'l2' is the mean squared error over
# the sample's dimensions; 'pseudo_huber' is sqrt(|d|^2 + c^2) - c on the whole sample
# (Song & Dhariwal 2023, iCT), whose gradient in the student's output has norm < 1: a pair
# whose teacher output the one-step map cannot reach (a noise near the boundary between
# two modes) pulls no harder than any other, so the map is not dragged into the gap
# between the modes.
REG_LOSSES = ('l2', 'pseudo_huber')
# method.reg_schedule: the paired regression's weight over training. 'constant' keeps
# method.reg_weight; 'cosine' takes it from reg_weight at step 0 to reg_weight * reg_final
# at train.num_steps on a half cosine, so the regression fixes the generator's partition
# of its noise among the modes early and the distribution-matching loss alone sharpens it
# late (the regression onto a fixed set of teacher outputs costs sharpness).
REG_SCHEDULES = ('constant', 'cosine')
# method.reg_step: which output of a few-step student (method.gen_steps > 1) the paired
# regression pulls onto the teacher's ODE endpoint of the pair's noise. 'first': the
# first step, G(sigma_max z), a deterministic function of z; backward simulation trains
# every step's output to be a data sample, so this is the one-step student's regression
# and it fixes how the chain's first step shares its noise among the modes. 'last': the
# whole chain, whose re-noising draws make its output a random function of z, so the
# regression pulls it towards their mean (a blur). 'every': each pair also keeps the
# teacher ODE's point at every level of the chain (the Heun grid holds those levels), and
# step k, with k uniform per pair, maps the point at sigma_k to the pair's endpoint: a
# consistency anchor for every step, so a later step cannot move mass between modes
# unopposed (the ODE's map from sigma_k carries p_{sigma_k} to the data law). The same
# cost as 'first'. On digits (one seed) it did not beat 'first': 4 NFE 4.43 against
# 4.46 +- 1.36, class TV unchanged (experiments/results/distill_digits.md). 'online':
# the first step as 'first', and besides it every later step k on inputs from the
# student's own chain (its previous output re-noised to sigma_k, as backward simulation
# makes them) regresses onto the teacher's ODE solution from that very input
# (teachers.pf_ode_from, method.online_steps Heun levels from sigma_k, 2 online_steps - 1
# NFE on method.online_batch chains, default reg_batch); k uniform in 1 .. gen_steps - 1
# per chain. The ODE carries p_{sigma_k} to the data law and keeps whatever class
# mass its input has, so a later step is held to moving none. On digits, 3 seeds: 4 NFE
# 2.92 +- 0.68 against 'first''s 4.46 +- 1.36, lower in every seed, at about half the
# steps/s (configs/distill/digits.py's multistep default). With gen_steps = 1 all four
# agree.
REG_STEPS = ('first', 'last', 'every', 'online')


def chain_sigmas(levels, gen_steps: int, given=(), name='method.gen_sigmas'):
  """The noise levels a gen_steps-step student's chain starts its steps at.

  By default every gen_steps-th level of the Karras grid `levels` (descending) from
  sigma_max: with 4 steps and the default grid, sigma 80, 17.5, 2.50, 0.17. `given`
  (method.gen_sigmas) sets them instead: gen_steps levels, the first sigma_max (the
  first step sees pure noise sigma_max z, as the teacher's ODE starts), strictly
  decreasing, the last above sigma_min (on the toy ring, levels 80, 0.5, 0.2, 0.05 did
  not beat the default in a one-seed probe: distill_multistep_unequal8.md).
  """
  levels = np.asarray(levels)
  if not given:
    return levels[[k * len(levels) // gen_steps for k in range(gen_steps)]]
  sig = np.asarray(given, np.float64)
  hi, lo = float(levels[0]), float(levels[-1])
  if (len(sig) != gen_steps or not np.isclose(sig[0], hi) or np.any(np.diff(sig) >= 0)
      or sig[-1] < lo):
    raise ConfigError(f'{name}={tuple(given)} must be {gen_steps} levels '
                      f'(method.gen_steps), the first sigma_max={hi:g}, strictly '
                      f'decreasing, the last >= sigma_min={lo:g}; or () for every '
                      f'{gen_steps}-th level of the grid')
  return sig.astype(levels.dtype)


def _bcast(v, x):
  return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _mean_dims(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def pseudo_loss(x0, g):
  """0.5 mean (x0 - sg(x0 - g))^2: its gradient in x0 is g / x0.size."""
  return 0.5 * jnp.mean((x0 - jax.lax.stop_gradient(x0 - g))**2)


def split_batch(batch, parts: int):
  """A batch [n, ...] as `parts` consecutive sub-batches, stacked: [parts, n / parts, ...]."""
  n = jax.tree.leaves(batch)[0].shape[0]
  if n % parts:
    raise ConfigError(f'the batch of {n} examples does not split into method.fake_updates='
                      f'{parts} equal parts (one per inner update); use a multiple of {parts}')
  return jax.tree.map(lambda v: v.reshape((parts, n // parts) + v.shape[1:]), batch)


class Distill(Method):
  """f-distill / DMD / DMD2 (see module docstring)."""
  supports_grad_accum = True  # but not f-distill's batch normalisations (see __init__)

  def __init__(self, config, data_spec, load_run=None):
    super().__init__(config, data_spec, load_run)
    mc = defaults.resolve(config.method)
    self.objective = choice(mc, 'objective', OBJECTIVES)
    self.divergence = mc.divergence
    self.alpha = float(mc.alpha)
    divergences.check_name(self.divergence, self.alpha)
    if self.objective != 'f_distill' and self.divergence != 'reverse_kl':
      raise ConfigError(f'method.objective={self.objective!r} minimises reverse KL; '
                        f"got method.divergence={self.divergence!r} (use objective "
                        "'f_distill' for other divergences)")
    self.h_fn = divergences.weight_fn(self.divergence, self.alpha)
    self.fake_updates = int(mc.fake_updates)
    if self.fake_updates < 1:
      raise ConfigError(f'method.fake_updates must be >= 1, got {self.fake_updates}')
    batch_size = int(config.train.batch_size)
    if batch_size % self.fake_updates:
      raise ConfigError(f'train.batch_size={batch_size} must be a multiple of '
                        f'method.fake_updates={self.fake_updates}: each inner update takes '
                        f'its own 1/{self.fake_updates} of the batch')
    self.disc_head = choice(mc, 'disc_head', DISC_HEADS)
    if self.objective == 'f_distill' and self.disc_head == 'none':
      raise ConfigError("method.objective='f_distill' estimates r with a discriminator; "
                        "method.disc_head must be one of "
                        + ', '.join(h for h in DISC_HEADS if h != 'none'))
    self.gan_weight = float(mc.gan_weight)
    self.disc_weight = float(mc.disc_weight)
    self.reg_weight = float(mc.reg_weight)
    if self.reg_weight < 0:
      raise ConfigError(f'method.reg_weight must be >= 0, got {self.reg_weight}')
    if self.gan_weight > 0 and self.disc_head == 'none':
      raise ConfigError('method.gan_weight > 0 needs a discriminator: set '
                        'method.disc_head to one of '
                        + ', '.join(h for h in DISC_HEADS if h != 'none'))
    self.reg_loss = choice(mc, 'reg_loss', REG_LOSSES)
    self.reg_huber_c = float(mc.reg_huber_c)
    if self.reg_huber_c < 0:
      raise ConfigError(f'method.reg_huber_c must be >= 0 (0: iCT\'s 0.00054 sqrt(dim)), '
                        f'got {self.reg_huber_c}')
    self.reg_schedule = choice(mc, 'reg_schedule', REG_SCHEDULES)
    self.reg_final = float(mc.reg_final)
    self.reg_step = choice(mc, 'reg_step', REG_STEPS)
    if not 0.0 <= self.reg_final <= 1.0:
      raise ConfigError(f'method.reg_final is a fraction of method.reg_weight in [0, 1], got '
                        f'{self.reg_final}')
    self.num_pairs = int(mc.num_pairs)
    self.pair_steps = int(mc.pair_steps)
    self.reg_batch = int(mc.reg_batch)
    self.online_steps = int(mc.get('online_steps', 8))
    self.online_batch = int(mc.get('online_batch', 0)) or self.reg_batch
    if self.online_steps < 2 or self.online_batch < 1:
      raise ConfigError(f'method.online_steps must be >= 2 and method.online_batch >= 0 '
                        f'(0: reg_batch), got {self.online_steps}, {mc.get("online_batch")}')
    # Noise levels.
    self.sigma_min = float(mc.sigma_min)
    self.sigma_max = float(mc.sigma_max)
    self.rho = float(mc.rho)
    self.num_levels = int(mc.num_levels)
    if not 0 < self.sigma_min < self.sigma_max or self.num_levels < 2:
      raise ConfigError('need 0 < method.sigma_min < method.sigma_max and '
                        f'method.num_levels >= 2, got {self.sigma_min}, {self.sigma_max}, '
                        f'{self.num_levels}')
    self.levels = np.asarray(samplers.karras_sigmas(
        self.num_levels, self.sigma_min, self.sigma_max, self.rho, append_zero=False),
                             np.float32)
    t_range = tuple(float(v) for v in mc.t_range)
    if len(t_range) != 2 or not 0.0 <= t_range[0] < t_range[1] <= 1.0:
      raise ConfigError(f'method.t_range must be (lo, hi) with 0 <= lo < hi <= 1, got '
                        f'{t_range}')
    self.index_range = (int(round(t_range[0] * (self.num_levels - 1))),
                        int(round(t_range[1] * (self.num_levels - 1))))
    # Ratio estimate and normalisations.
    self.logit_clamp = float(mc.logit_clamp)
    self.ratio_clip = tuple(float(v) for v in mc.ratio_clip)
    if len(self.ratio_clip) != 2 or not 0 < self.ratio_clip[0] < self.ratio_clip[1]:
      raise ConfigError(f'method.ratio_clip must be (lo, hi) with 0 < lo < hi, got '
                        f'{self.ratio_clip}')
    self.ratio_bins = int(mc.ratio_bins)
    self.ratio_ema = float(mc.ratio_ema)
    if self.ratio_bins < 1 or not 0.0 <= self.ratio_ema < 1.0:
      raise ConfigError('method.ratio_bins must be >= 1 and method.ratio_ema in [0, 1), '
                        f'got {self.ratio_bins}, {self.ratio_ema}')
    self.normalize_ratio = bool(mc.normalize_ratio)
    self.normalize_h = bool(mc.normalize_h)
    self.dm_normalize = bool(mc.dm_normalize)
    if self.grad_accum > 1 and self.objective == 'f_distill' and (
        self.normalize_ratio or self.normalize_h):
      self.refuse_grad_accum(
          'f-distill divides r by per-bin batch means and h by its batch mean '
          '(method.normalize_ratio, method.normalize_h), which microbatches would change; '
          'set both False, or use objective dmd or dmd2')
    parts = batch_size // self.fake_updates
    if parts % self.grad_accum:
      raise ConfigError(f'each inner update\'s part of the batch ({parts} = train.batch_size '
                        f'/ method.fake_updates) must split into config.train.grad_accum='
                        f'{self.grad_accum} microbatches; use a batch_size that is a '
                        f'multiple of {self.fake_updates * self.grad_accum}')
    # Student steps.
    self.gen_steps = int(mc.gen_steps)
    if self.gen_steps < 1:
      raise ConfigError(f'method.gen_steps must be >= 1, got {self.gen_steps}')
    self.gen_sigmas = chain_sigmas(self.levels, self.gen_steps, tuple(mc.gen_sigmas))
    chain = len(self.sampling_sigmas())
    if self.sample_steps > chain:
      raise ConfigError(f'config.sampler.steps={self.sample_steps} exceeds the '
                        f'student\'s chain of {chain} levels (method.gen_steps, or '
                        f'config.sampler.gen_sigmas when set)')
    # Teacher, classes and networks.
    self.teacher = teachers.build(config, data_spec, load_run)
    self.sigma_data = float(mc.sigma_data or self.teacher.sigma_data)
    self.from_teacher = self.teacher.params is not None and bool(
        mc.init_from_teacher)
    if self.disc_head == 'teacher_features' and not self.teacher.has_network:
      raise ConfigError("method.disc_head='teacher_features' reads the teacher's network, "
                        'and an analytic teacher has none; use a run teacher '
                        "(config.teacher.workdir) or disc_head 'fake_score' or 'separate'")
    self._init_classes(mc, data_spec)
    # A multi-step student's fake score and discriminator model each step's output law
    # (the step index is part of their label): one shared across steps models only the
    # mixture of the steps' laws, and the steps then specialise on different modes.
    # Not with the teacher's own networks (their label embedding is the teacher's).
    self.step_labels = (self.gen_steps > 1 and bool(mc.fake_per_step)
                        and not self.from_teacher and self.disc_head != 'teacher_features')
    # From the teacher's own network the step cannot enter through the label (the
    # embedding is the teacher's), so the fake score is gen_steps copies of the teacher's
    # weights stacked on a leading axis: copy k models step k's output law. Each inner
    # update trains every copy, on its own 1/gen_steps of the part (fake_loss).
    self.fake_copies = (self.gen_steps > 1 and bool(mc.fake_per_step) and self.from_teacher)
    micro = parts // self.grad_accum
    if self.fake_copies and micro % self.gen_steps:
      raise ConfigError(f'per-step fake scores (method.fake_per_step with a run teacher) '
                        f'split each inner update\'s microbatch ({micro} = train.batch_size '
                        f'/ method.fake_updates / train.grad_accum) into method.gen_steps='
                        f'{self.gen_steps} equal groups; use a batch_size that is a multiple '
                        f'of {self.fake_updates * self.grad_accum * self.gen_steps}, or '
                        'method.fake_per_step=False')
    fake_classes = ((self.num_classes or 1) * self.gen_steps if self.step_labels
                    else self.num_classes)
    channels = self.data_shape[-1]
    self.channels = channels
    if not self.from_teacher:
      self.gen_net = nets.build(config.net, data_shape=self.data_shape,
                                out_dim_or_channels=channels, num_classes=self.num_classes)
      self.fake_net = nets.build(config.net, data_shape=self.data_shape,
                                 out_dim_or_channels=channels, num_classes=fake_classes)
    if self.disc_head == 'separate':
      self.disc_net = nets.build(mc.get('disc_net', None) or config.net,
                                 data_shape=self.data_shape, out_dim_or_channels=1,
                                 num_classes=fake_classes)
    elif self.disc_head in FEATURE_HEADS:
      width = int(mc.head_width)
      if width < 1:
        raise ConfigError(f'method.head_width must be >= 1, got {width}')
      self.head = FeatureHead(width=width)
      if not self.from_teacher and not getattr(type(self.fake_net), 'supports_features',
                                               False):
        raise ConfigError(f"method.disc_head='fake_score' reads the fake score's features; "
                          f'net {config.net.name!r} has none (use mlp or unet, or '
                          "disc_head='separate')")
    num_steps = int(config.train.num_steps)
    self.num_train_steps = num_steps
    gen_schedule = str(mc.generator_schedule)
    if gen_schedule and gen_schedule not in GENERATOR_SCHEDULES:
      raise ConfigError(f'unknown method.generator_schedule {gen_schedule!r}; allowed: '
                        "'' (config.optim.schedule), " + ', '.join(GENERATOR_SCHEDULES))
    self.txs, schedules = {}, {}
    for name in self.net_names:
      oc = ml_collections.ConfigDict(config.optim.to_dict())
      lr = float(mc[f'lr_{name}'])
      if lr > 0:
        oc.lr = lr
      if name == 'generator' and gen_schedule:
        oc.schedule = gen_schedule
      schedules[name] = optim.schedule(oc, num_steps)
      self.txs[name] = optim.build(oc, num_steps)
    self.lr_schedule = schedules['generator']

  def _init_classes(self, mc, data_spec):
    """Class conditioning: num_classes (None: unconditional) and the teacher's guidance."""
    self.conditional = bool(mc.class_conditional)
    self.cfg_scale = float(mc.teacher_cfg_scale)
    self.num_classes = None
    if not self.conditional:
      if self.cfg_scale != 1.0:
        raise ConfigError(f'method.teacher_cfg_scale={self.cfg_scale} guides a '
                          'class-conditional teacher; set method.class_conditional=True '
                          '(or the scale to 1)')
      return
    classes = self.teacher.num_classes
    if not classes:
      raise ConfigError('method.class_conditional needs a class-conditional teacher: a run '
                        'trained with method.class_conditional=True, or an analytic '
                        'mixture (its components are the classes)')
    if data_spec.num_classes is not None and data_spec.num_classes != classes:
      raise ConfigError(f'the teacher has {classes} classes but data {data_spec.name!r} has '
                        f'{data_spec.num_classes}')
    if data_spec.num_classes is None and not hasattr(self.teacher, 'draw_labels'):
      raise ConfigError(f'method.class_conditional needs labelled data; data '
                        f'{data_spec.name!r} has no classes')
    self.num_classes = int(classes)

  @property
  def net_names(self):
    return NETS if self.disc_head != 'none' else NETS[:2]

  # ---- networks ------------------------------------------------------------------

  def _local(self, net, params, x, sigma, label=None, features=False):
    """EDM-preconditioned denoiser c_skip x + c_out F(c_in x, c_noise) [and features]."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
    out = net.apply({'params': params}, _bcast(c_in, x) * x, c_noise, label=label,
                    return_features=features)
    out, feats = out if features else (out, None)
    d = _bcast(c_skip, x) * x + _bcast(c_out, x) * out
    return (d, feats) if features else d

  def generator(self, params, x, sigma, label=None):
    if self.from_teacher:
      return self.teacher.apply(params, x, sigma, label)
    return self._local(self.gen_net, params, x, sigma, label)

  def fake_denoiser(self, params, x, sigma, label=None, features=False, k=None):
    """D_fake(x, sigma), or (D_fake, bottleneck features) with features=True; with
    per-step fake copies (self.fake_copies) the copy of student step k."""
    if self.fake_copies:
      params = jax.tree.map(lambda p: p[k], params)
    if self.from_teacher:
      return self.teacher.apply(params, x, sigma, label, features=features)
    return self._local(self.fake_net, params, x, sigma, label, features)

  def features(self, params, x, sigma, label=None, k=None):
    """The bottleneck the feature head reads: the fake score's (step k's copy with
    per-step copies) or the teacher's."""
    if self.disc_head == 'fake_score':
      return self.fake_denoiser(params['fake_score'], x, sigma, label, features=True,
                                k=k)[1]
    return self.teacher.apply(self.teacher.params, x, sigma, label, features=True)[1]

  def logit(self, params, x, sigma, label=None, k=None):
    """Discriminator logit D_psi(x, sigma), an estimate of log p_t(x) - log q_t(x)
    (k: the student step whose fake copy the head reads, with per-step copies)."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    _, _, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data)
    if self.disc_head in FEATURE_HEADS:
      feats = self.features(params, x, sigma, label, k)
      return self.head.apply({'params': params['discriminator']}, feats, c_noise)
    out = self.disc_net.apply({'params': params['discriminator']}, _bcast(c_in, x) * x,
                              c_noise, label=label)
    return _mean_dims(out)

  def fake_label(self, label, k, n):
    """The label the fake score and discriminator see for step-k outputs: the class
    label, or with per-step fakes class * gen_steps + k (k alone when unconditional)."""
    if not self.step_labels:
      return label
    base = jnp.zeros((n,), jnp.int32) if label is None else label
    return base * self.gen_steps + k

  def labels(self, batch, rng):
    """The labels of a real batch (None when unconditional): the data's, or for an
    analytic mixture teacher a draw from p(c | x0)."""
    if not self.conditional:
      return None
    if 'label' in batch:
      return jnp.asarray(batch['label'], jnp.int32)
    return self.teacher.draw_labels(rng, batch['x'])

  def sample_labels(self, rng, num):
    """num labels from the teacher's class prior (uniform when it has none)."""
    prior = getattr(self.teacher, 'class_prior', None)
    if prior is None:
      return jax.random.randint(rng, (num,), 0, self.num_classes)
    with np.errstate(divide='ignore'):
      log_prior = jnp.asarray(np.log(np.asarray(prior, np.float64)), jnp.float32)
    return jax.random.categorical(rng, log_prior, shape=(num,))

  def sample_sigma(self, rng, n, full=False):
    """sigma on the Karras grid, index uniform in t_range (or the full grid); and bin."""
    lo, hi = (0, self.num_levels - 1) if full else self.index_range
    i = rand.randint(rng, (n,), lo, hi + 1)
    bins = jnp.minimum((i - lo) * self.ratio_bins // (hi - lo + 1), self.ratio_bins - 1)
    return jnp.asarray(self.levels)[i], bins

  def generate(self, gen_params, z, rng=None, k=None, label=None, per_example=True,
               sigmas=None):
    """x0 at student step k (backward simulation from pure noise; k=None: last step).

    With k given, the steps before k run without gradient and the last one with it.
    The re-noising draws are per example of the step's batch (gensuite.methods.rand)
    unless per_example=False (the paired regression's own batch). `sigmas`: the chain's
    levels (default the trained ones, self.gen_sigmas; sampling_sigmas at sampling).
    """
    normal = rand.normal if per_example else jax.random.normal
    sig = jnp.asarray(self.gen_sigmas if sigmas is None else sigmas)
    k = sig.shape[0] - 1 if k is None else k
    x = sig[0] * z
    if sig.shape[0] > 1:
      def body(j, x):
        x0 = jax.lax.stop_gradient(self.generator(gen_params, x, sig[j], label))
        eps = normal(jax.random.fold_in(rng, j), x.shape, x.dtype)
        return x0 + sig[j + 1] * eps
      x = jax.lax.fori_loop(0, k, body, x)
    return self.generator(gen_params, x, sig[k], label)

  def generate_by_step(self, gen_params, z, rng, label=None):
    """Backward simulation for every step at once: the j-th 1/gen_steps of the batch
    ends after step j (one chain; each group leaves it where its step's output is)."""
    sig = jnp.asarray(self.gen_sigmas)
    m = z.shape[0] // self.gen_steps
    x, outs = sig[0] * z, []
    for j in range(self.gen_steps):
      x0 = self.generator(gen_params, x, sig[j], label)
      outs.append(x0[:m])
      if j + 1 < self.gen_steps:
        rest = x0[m:]
        x = rest + sig[j + 1] * rand.normal(jax.random.fold_in(rng, j), rest.shape,
                                            rest.dtype)
        label = None if label is None else label[m:]
    return jnp.concatenate(outs)

  def copy_kw(self, k):
    """The keyword that picks step k's fake copy ({} without per-step copies)."""
    return {'k': k} if self.fake_copies else {}

  def by_step(self, fn, k, *args):
    """fn(*args, k=k); with per-step fake copies and k=None, fn on each step's group of
    the batch (the j-th 1/gen_steps, as generate_by_step lays it out) with k=j."""
    if k is not None:
      return fn(*args, k=k)
    m = args[0].shape[0] // self.gen_steps
    outs = [fn(*(None if a is None else a[j * m:(j + 1) * m] for a in args), k=j)
            for j in range(self.gen_steps)]
    return jnp.concatenate(outs)

  # ---- losses --------------------------------------------------------------------

  def fake_loss(self, trainable, gen_params, batch, rng):
    """DSM of the fake score on detached generator samples, plus the discriminator loss.

    `batch` is this inner update's own part of the step's batch (see train_step)."""
    real = batch['x']
    n = real.shape[0]
    k_z, k_sim, k_k, k_s, k_e, k_sd, k_e2, k_e3, k_lab = jax.random.split(rng, 9)
    label = self.labels(batch, k_lab)
    z = rand.normal(k_z, real.shape, real.dtype)
    if self.fake_copies:  # every step's copy learns from its own group of the part
      k = None
      x0 = jax.lax.stop_gradient(self.generate_by_step(gen_params, z, k_sim, label))
    else:
      k = jax.random.randint(k_k, (), 0, self.gen_steps)
      x0 = jax.lax.stop_gradient(self.generate(gen_params, z, k_sim, k, label))
    sigma, _ = self.sample_sigma(k_s, n, full=True)
    x_t = x0 + _bcast(sigma, x0) * rand.normal(k_e, x0.shape, x0.dtype)
    fake_label = self.fake_label(label, k, n)
    d_fake = self.by_step(
        lambda x, s, lab, k: self.fake_denoiser(trainable['fake_score'], x, s, lab,
                                                **self.copy_kw(k)), k, x_t, sigma, fake_label)
    weight = 1.0 / sigma**2 + 1.0 / self.sigma_data**2
    dsm = jnp.mean(weight * _mean_dims((d_fake - x0)**2))
    metrics = {'fake_score_loss': dsm}
    loss = dsm
    if self.disc_head != 'none':
      sd, _ = self.sample_sigma(k_sd, n)
      fake_t = x0 + _bcast(sd, x0) * rand.normal(k_e2, x0.shape, x0.dtype)
      real_t = real + _bcast(sd, real) * rand.normal(k_e3, real.shape, real.dtype)
      logit = lambda x, s, lab, k: self.logit(trainable, x, s, lab, **self.copy_kw(k))
      l_fake = self.by_step(logit, k, fake_t, sd, fake_label)
      l_real = self.by_step(logit, k, real_t, sd, fake_label)
      disc = jnp.mean(jax.nn.softplus(l_fake)) + jnp.mean(jax.nn.softplus(-l_real))
      loss = loss + self.disc_weight * disc
      metrics['disc_loss'] = disc
      metrics['disc_acc'] = 0.5 * (jnp.mean(l_real > 0) + jnp.mean(l_fake < 0))
    return loss, metrics

  def ratio(self, logit, bins, running):
    """r = exp(logit), clamped and clipped, divided by its per-bin running mean."""
    r = jnp.exp(jnp.clip(logit, -self.logit_clamp, self.logit_clamp))
    r = jnp.clip(r, *self.ratio_clip)
    if not self.normalize_ratio:
      return r, running
    one_hot = jax.nn.one_hot(bins, self.ratio_bins, dtype=r.dtype)
    count = jnp.sum(one_hot, 0)
    batch_mean = jnp.sum(one_hot * r[:, None], 0) / jnp.maximum(count, 1.0)
    updated = self.ratio_ema * running + (1.0 - self.ratio_ema) * batch_mean
    running = jnp.where(count > 0, updated, running)
    return r / running[bins], running

  def reg_weight_at(self, step):
    """The paired regression's weight at `step` (method.reg_schedule)."""
    if self.reg_schedule == 'constant' or step is None:
      return jnp.float32(self.reg_weight)
    return optax.cosine_decay_schedule(self.reg_weight, max(self.num_train_steps, 1),
                                       alpha=self.reg_final)(step)

  def generator_loss(self, gen_params, others, batch, rng, extra, step=None):
    """The generator's objective; returns (loss, (metrics, new running ratio means)).
    `step` (the state's, before this update) sets the regression weight's schedule."""
    shape = batch['x'].shape
    n = shape[0]
    k_z, k_sim, k_k, k_s, k_e, k_reg, k_lab = jax.random.split(rng, 7)
    label = self.labels(batch, k_lab)
    z = rand.normal(k_z, shape, jnp.float32)
    k = jax.random.randint(k_k, (), 0, self.gen_steps)
    x0 = self.generate(gen_params, z, k_sim, k, label)
    sigma, bins = self.sample_sigma(k_s, n)
    x_t = x0 + _bcast(sigma, x0) * rand.normal(k_e, shape, x0.dtype)
    x_t_sg = jax.lax.stop_gradient(x_t)
    d_real = jax.lax.stop_gradient(self.teacher.denoiser(x_t_sg, sigma, label,
                                                         self.cfg_scale))
    fake_label = self.fake_label(label, k, n)
    d_fake = jax.lax.stop_gradient(self.fake_denoiser(others['fake_score'], x_t_sg, sigma,
                                                      fake_label, **self.copy_kw(k)))
    metrics = {}
    running = extra['ratio_mean']
    logit = None
    if self.objective == 'f_distill' or self.gan_weight > 0:
      # One evaluation serves both: sg(logit) for r, logit itself for the GAN term.
      logit = self.logit(others, x_t if self.gan_weight > 0 else x_t_sg, sigma, fake_label,
                         **self.copy_kw(k))
    if self.objective == 'f_distill':
      r, running = self.ratio(jax.lax.stop_gradient(logit), bins, running)
      h = self.h_fn(r)
      metrics.update(r_mean=jnp.mean(r), h_mean=jnp.mean(h), h_std=jnp.std(h))
      if self.normalize_h:
        h = h / jnp.mean(h)
    else:
      h = jnp.ones((n,), jnp.float32)
    g = _bcast(h, x0) * (d_fake - d_real)
    if self.dm_normalize:
      scale = _mean_dims(jnp.abs(jax.lax.stop_gradient(x0) - d_real))
      g = g / _bcast(scale + 1e-8, g)
    g = jax.lax.stop_gradient(jnp.nan_to_num(g))
    dm = pseudo_loss(x0, g)
    metrics['dm_loss'] = dm
    loss = dm
    if self.gan_weight > 0:
      gan = jnp.mean(jax.nn.softplus(-logit))
      metrics['gan_gen_loss'] = gan
      loss = loss + self.gan_weight * gan
    if self.reg_weight > 0:
      k_idx, k_chain = jax.random.split(k_reg)
      idx = jax.random.randint(k_idx, (self.reg_batch,), 0, self.num_pairs)
      states = extra['pair_states'][idx] if 'pair_states' in extra else None
      reg = self.regression_loss(gen_params, extra['pair_noise'][idx],
                                 extra['pair_target'][idx], k_chain, states)
      metrics['reg_loss'] = reg
      weight = self.reg_weight_at(step)
      if self.reg_schedule != 'constant':
        metrics['reg_weight'] = weight
      loss = loss + weight * reg
      if self.reg_step == 'online' and self.gen_steps > 1:
        later = self.online_regression_loss(gen_params, jax.random.fold_in(k_reg, 1))
        metrics['reg_loss_later'] = later
        loss = loss + weight * later
    metrics['generator_loss'] = loss
    return loss, (metrics, running)

  def regression_loss(self, gen_params, noise, target, rng, states=None):
    """Mean distance of the student's output on pair noises to their teacher outputs:
    the first step's output, the whole chain's with `rng`'s re-noising, or (states:
    the pairs' ODE points at the chain's levels, [B, gen_steps, ...]) step k's output
    from the point at sigma_k, k uniform per pair (reg_step)."""
    if states is not None:
      k = jax.random.randint(rng, (noise.shape[0],), 0, self.gen_steps)
      x = states[jnp.arange(noise.shape[0]), k]
      pred = self.generator(gen_params, x, jnp.asarray(self.gen_sigmas)[k])
    else:
      k = None if self.reg_step == 'last' else 0
      pred = self.generate(gen_params, noise, rng, k=k, per_example=False)
    return jnp.mean(self.regression_distance(pred, target))

  def online_regression_loss(self, gen_params, rng):
    """reg_step='online': mean distance of step k's output (k uniform in 1 .. gen_steps -
    1 per chain) from the point at sigma_k of the student's own chain to the teacher's
    ODE solution from that point (method.online_steps Heun levels)."""
    n = self.online_batch
    k_z, k_k, k_chain, k_lab = jax.random.split(rng, 4)
    label = self.sample_labels(k_lab, n) if self.conditional else None
    sig = jnp.asarray(self.gen_sigmas)
    x = sig[0] * jax.random.normal(k_z, (n,) + self.data_shape, jnp.float32)
    inputs = []
    for j in range(self.gen_steps - 1):  # the chain's inputs of steps 1 .. gen_steps - 1
      x0 = jax.lax.stop_gradient(self.generator(gen_params, x, sig[j], label))
      x = x0 + sig[j + 1] * jax.random.normal(jax.random.fold_in(k_chain, j), x.shape,
                                              x.dtype)
      inputs.append(x)
    k = jax.random.randint(k_k, (n,), 1, self.gen_steps)
    x_in = jnp.stack(inputs)[k - 1, jnp.arange(n)]
    denoiser = lambda x, s: self.teacher.denoiser(x, s, label, self.cfg_scale)
    target = jax.lax.stop_gradient(teachers.pf_ode_from(
        denoiser, x_in, sig[k], self.online_steps, self.sigma_min, self.rho))
    pred = self.generator(gen_params, x_in, sig[k], label)
    return jnp.mean(self.regression_distance(pred, target))

  def regression_distance(self, pred, target):
    """Per-pair distance of the paired regression (method.reg_loss)."""
    diff = pred - target
    if self.reg_loss == 'l2':
      return _mean_dims(diff**2)
    dim = int(np.prod(diff.shape[1:]))
    c = self.reg_huber_c or 0.00054 * np.sqrt(dim)
    return jnp.sqrt(jnp.sum(diff.reshape(diff.shape[0], -1)**2, axis=1) + c * c) - c

  # ---- the Method interface ------------------------------------------------------

  def make_pairs(self, rng):
    """{'pair_noise', 'pair_target'}: (noise, teacher output) pairs from the teacher's
    deterministic Heun sampler; with reg_step='every' also 'pair_states', the ODE's
    points at the chain's levels [num_pairs, gen_steps, ...]."""
    z = jax.random.normal(rng, (self.num_pairs,) + self.data_shape, jnp.float32)
    if self.reg_step == 'every' and self.gen_steps > 1:
      y, _, states = self.teacher.sample(z, self.sigma_max, self.pair_steps,
                                         stops=np.asarray(self.gen_sigmas))
      return {'pair_noise': z, 'pair_target': y, 'pair_states': jnp.moveaxis(states, 0, 1)}
    return {'pair_noise': z,
            'pair_target': self.teacher.sample(z, self.sigma_max, self.pair_steps)[0]}

  def init(self, rng, batch) -> TrainState:
    x = jnp.asarray(batch['x'], jnp.float32)
    k_gen, k_fake, k_disc, k_pairs = jax.random.split(rng, 4)
    sigma = jnp.ones((x.shape[0],), jnp.float32)
    label = jnp.zeros((x.shape[0],), jnp.int32) if self.conditional else None
    fake_label = self.fake_label(label, 0, x.shape[0])
    if self.from_teacher:
      params = {'generator': self.teacher.params, 'fake_score': self.teacher.params}
      params = jax.tree.map(jnp.array, params)
      if self.fake_copies:
        params['fake_score'] = jax.tree.map(
            lambda p: jnp.stack([p] * self.gen_steps), params['fake_score'])
    else:
      params = {
          'generator': self.gen_net.init(k_gen, x, sigma, label=label)['params'],
          'fake_score': self.fake_net.init(k_fake, x, sigma, label=fake_label)['params'],
      }
    if self.disc_head == 'separate':
      params['discriminator'] = self.disc_net.init(k_disc, x, sigma,
                                                   label=fake_label)['params']
    elif self.disc_head in FEATURE_HEADS:
      shape = jax.eval_shape(lambda p: self.features(p, x, sigma, fake_label, k=0), params)
      params['discriminator'] = self.head.init(k_disc, jnp.zeros(shape.shape, shape.dtype),
                                               sigma)['params']
    opt_state = {name: self.txs[name].init(params[name]) for name in self.net_names}
    ema = {ema_name(d): {'generator': jax.tree.map(jnp.array, params['generator'])}
           for d in self.ema_decays}
    extra = {'ratio_mean': jnp.ones((self.ratio_bins,), jnp.float32)}
    if self.reg_weight > 0:
      extra.update(self.make_pairs(k_pairs))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      ema=ema, extra=extra)

  def _update(self, name, params, opt_state, grads):
    updates, new_opt = self.txs[name].update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt

  def train_step(self, state, batch, rng):
    """K = fake_updates inner updates, each on its own 1/K of `batch`, then the generator
    (on batch_size / K fresh noise draws, with the labels of the first part)."""
    k_fake, k_gen = jax.random.split(rng)
    fake_names = [n for n in self.net_names if n != 'generator']
    gen_params = state.params['generator']
    parts = split_batch(batch, self.fake_updates)

    def fake_update(carry, inputs):
      trainable, opt = carry
      key, part = inputs
      grads, metrics = self.loss_grads(
          lambda p, b, r: self.fake_loss(p, gen_params, b, r), trainable, part, key)
      new, new_opt = {}, {}
      for name in fake_names:
        new[name], new_opt[name] = self._update(name, trainable[name], opt[name],
                                                grads[name])
      metrics['l2_grads_fake'] = optax.global_norm(grads)
      return (new, new_opt), metrics

    carry = ({n: state.params[n] for n in fake_names},
             {n: state.opt_state[n] for n in fake_names})
    # Unrolled, not a lax.scan: K is small (1-5), and XLA:CPU ran a U-Net step inside a
    # scan 6.7x slower than unrolled (digits DMD, K = 1: 4.43 s against 0.66 s a step).
    keys = jax.random.split(k_fake, self.fake_updates)
    fake_metrics = []
    for i in range(self.fake_updates):
      carry, m = fake_update(carry, (keys[i], jax.tree.map(lambda v, i=i: v[i], parts)))
      fake_metrics.append(m)
    trainable, opt = carry
    fake_metrics = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *fake_metrics)
    gen_batch = jax.tree.map(lambda v: v[0], parts)
    grads, (gen_metrics, running) = self.loss_grads(
        lambda p, b, r: self.generator_loss(p, trainable, b, r, state.extra, state.step),
        gen_params,
        gen_batch, k_gen)
    new_gen, gen_opt = self._update('generator', gen_params, state.opt_state['generator'],
                                    grads)
    ema = {name: {'generator': jax.tree.map(lambda e, p, d=float(name): d * e + (1 - d) * p,
                                            tree['generator'], new_gen)}
           for name, tree in state.ema.items()}
    params = {'generator': new_gen, **trainable}
    opt_state = {'generator': gen_opt, **opt}
    extra = dict(state.extra, ratio_mean=running)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema=ema, extra=extra)
    metrics = {**fake_metrics, **gen_metrics}
    metrics['loss'] = gen_metrics['generator_loss'] + fake_metrics['fake_score_loss'] \
        + self.disc_weight * fake_metrics.get('disc_loss', 0.0)
    metrics['l2_grads'] = optax.global_norm(grads)
    metrics['l2_params'] = optax.global_norm(new_gen)
    return new_state, metrics

  @property
  def sample_steps(self) -> int:
    """config.sampler.steps, read when used (`gensuite eval --steps` changes it on a
    loaded run)."""
    return int(self.config.sampler.steps)

  def sampling_sigmas(self) -> np.ndarray:
    """The levels a sample's chain starts its steps at: config.sampler.gen_sigmas when
    set (`gensuite sample/eval --config.sampler.gen_sigmas=(...)` on a trained run),
    else the trained chain (method.gen_sigmas). Backward simulation trains every step
    to output the data's law, so each trained level sees data + sigma noise whatever
    step came before it: a chain of some of the trained levels (e.g. 80, 17.5, 0.17 of
    the default 80, 17.5, 2.50, 0.17) feeds each step the inputs it was trained on.
    Levels the student was not trained at are extrapolation."""
    given = tuple(self.config.sampler.get('gen_sigmas', None) or ())
    if not given:
      return self.gen_sigmas
    return chain_sigmas(self.levels, len(given), given, name='config.sampler.gen_sigmas')

  def check_sampler(self, load_guide: bool = False) -> None:
    super().check_sampler(load_guide)
    if hasattr(self, 'gen_sigmas'):  # the constructor checks it once its levels are known
      self.sampling_sigmas()

  def generator_params(self, state, use_ema=True):
    return state.eval_params(use_ema)['generator']

  def sample_with_labels(self, state, rng, num: int, steps: int | None = None,
                         use_ema=True, label=None):
    """(x, labels): num student samples with `steps` generator evaluations and the
    labels they were drawn for (None when unconditional; label=None draws them from
    the teacher's class prior, an int or [num] array fixes them)."""
    steps = int(steps or self.sample_steps)
    sigmas = self.sampling_sigmas()
    if not 1 <= steps <= len(sigmas):
      where = ('config.sampler.gen_sigmas' if len(sigmas) != self.gen_steps or
               self.config.sampler.get('gen_sigmas', None) else 'method.gen_steps')
      raise ConfigError(f'a distilled student samples with 1..{len(sigmas)} steps '
                        f'({where}), got steps={steps}')
    if label is not None and not self.conditional:
      raise ConfigError('sampling got a label, but this student is unconditional '
                        '(method.class_conditional=False)')
    params = self.generator_params(state, use_ema)
    k_z, k_sim, k_y = jax.random.split(rng, 3)
    if self.conditional:
      label = self.sample_labels(k_y, num) if label is None else jnp.broadcast_to(
          jnp.asarray(label, jnp.int32), (num,))
    z = jax.random.normal(k_z, (num,) + self.data_shape, jnp.float32)
    return self.generate(params, z, k_sim, steps - 1, label, sigmas=sigmas), label

  def sample(self, state, rng, num: int, sampler: str | None = None,
             steps: int | None = None, use_ema=True, label=None, **unused):
    """num student samples with `steps` generator evaluations (1 <= steps <= gen_steps).

    The sampler name is ignored: the student is its own sampler. A conditional student
    takes `label` (an int or [num]; None: drawn from the teacher's class prior).
    """
    del sampler, unused
    return self.sample_with_labels(state, rng, num, steps, use_ema, label)[0]

  def evaluate(self, state, rng, data, workdir=None):
    """NFE, and for a mixture teacher the nearest-mode mass error and modes covered
    (and for a conditional student, label_match: the fraction of samples whose nearest
    mode is their label's).

    With DMD's paired data it also writes the pairs to workdir/dmd_pairs.npz once.
    """
    del data
    scalars = {'nfe': float(self.sample_steps)}
    path = os.path.join(workdir, 'dmd_pairs.npz') if workdir else None
    if self.reg_weight > 0 and path and not os.path.exists(path) and jax.process_index() == 0:
      np.savez(path, noise=np.asarray(state.extra['pair_noise']),
               target=np.asarray(state.extra['pair_target']))
    mixture = getattr(self.teacher, 'mixture', None)
    if mixture is not None:
      num = int(self.config.eval.num_samples)
      x, label = jax.jit(functools.partial(self.sample_with_labels, num=num))(state, rng)
      tv, covered, _ = distances.mode_statistics(x, mixture.means, mixture.weights, mixture.stds)
      scalars.update(mode_mass_tv=tv, modes_covered=covered)
      if label is not None:
        scalars['label_match'] = label_match(x, label, mixture.means)
    return scalars, {}


def label_match(x, label, means):
  """The fraction of samples x [n, d] whose nearest mean is means[label]."""
  x, means = np.asarray(x, np.float64), np.asarray(means, np.float64)
  dist = ((x[:, None, :] - means[None])**2).sum(-1)
  return float(np.mean(np.argmin(dist, axis=1) == np.asarray(label)))
