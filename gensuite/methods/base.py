"""What every method shares, below the training loop.

  class Diffusion(Method, SingleNetMethod, FieldSampling):
    def __init__(self, config, data_spec):
      super().__init__(config, data_spec)          # config, spec, data_shape, tx, lr_schedule
      ...
    def loss(self, params, batch, rng)             # SingleNetMethod: init / train_step
    def field(self, params, label, cfg_scale)      # FieldSampling: sample()

`Method` is the whole interface the loop, `load_run`, the evaluator and distillation
teachers use; a family subclasses it and fills in what it has:

  init(rng, batch) -> TrainState
  train_step(state, batch, rng) -> (TrainState, {name: scalar})     pure; the loop jits it
  sample(state, rng, num, sampler=None, steps=None, use_ema=True, **options) -> x
  lr_schedule(step) -> learning rate                                  logged as 'lr'
  evaluate(state, rng, data, workdir=None) -> ({name: float}, {name: uint8 picture})
  denoiser_fn(params, label=None, cfg_scale=1.0) -> D(x, sigma)       VE frame; teachers

Guidance (config.sampler.guidance; gensuite.samplers.guidance) is the sampler-side
layer: a field method hands it its main field `field(params, label)` and the other
one, `other_field(params, label, spec)` (the null label's for CFG, the guide run's for
autoguidance), and `guided_field` returns the combination every sampler runs.

Gradient accumulation (config.train.grad_accum = k) lives in one place,
`Method.loss_grads(loss_fn, params, batch, rng)`: the gradient of loss_fn on the batch,
or, with k > 1, the mean of its gradients (and metrics) on k microbatches, summed in a
`lax.scan` inside the jitted step. A method whose loss draws its per-example noise
through gensuite.methods.rand gets the same update either way and sets
`supports_grad_accum = True`; the others refuse k > 1 with one line. Mixed precision
(config.train.precision) is the nets' business (gensuite.nets.precision); a method
whose nets cannot compute in bfloat16 lists only 'float32' in `precisions`.
"""
import os

import jax
import jax.numpy as jnp

from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite import samplers
from gensuite.errors import ConfigError
from gensuite.methods import optim
from gensuite.methods import rand
from gensuite.methods.state import TrainState, apply_gradients


def accumulate_grads(loss_fn, params, batch: dict, rng, count: int):
  """(grads, metrics) of `loss_fn(params, batch, rng) -> (loss, metrics)`.

  count = 1: jax.grad of loss_fn on the whole batch. count = k > 1: the batch's rows
  are dealt into k microbatches (gensuite.methods.rand.split_rows: row j of microbatch
  i is row j k + i, so each device keeps its own rows), the gradient and metrics of
  each are summed in a lax.scan and divided by k, each microbatch seeing the same
  rng inside `rand.microbatch(i, k)`. For a loss that is a mean over examples whose
  random draws go through gensuite.methods.rand, that is the one-batch gradient up to
  float rounding; metrics are the mean of the microbatches' values (exact for means
  over examples). The caller checks that k divides the batch.
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if count == 1:
    return grad_fn(params, batch, rng)
  micro = jax.tree.map(lambda a: rand.split_rows(a, count), batch)

  def one(index, microbatch):
    with rand.microbatch(index, count):
      grads, metrics = grad_fn(params, microbatch, rng)
    return grads, jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), metrics)

  def body(carry, xs):
    return jax.tree.map(jnp.add, carry, one(*xs)), None

  shapes = jax.eval_shape(one, jnp.zeros((), jnp.int32), jax.tree.map(lambda a: a[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(count, dtype=jnp.int32), micro))
  return jax.tree.map(lambda v: v / count, total)


def choice(section, key: str, allowed, where: str = 'method'):
  """section[key] (or its default) if it is one of `allowed`, else a one-line ConfigError."""
  value = section[key]
  if value not in allowed:
    raise ConfigError(f'unknown {where}.{key} {value!r}; allowed: '
                      + ', '.join(str(a) for a in allowed))
  return value


class Method:
  """The interface of every family (see the module docstring).

  The constructor keeps config, the data spec and shape, and builds the optimizer,
  its schedule and the EMA decays from config.optim (methods with several networks
  build their extra optimizers from the same section). `load_run(workdir)` loads
  another run (a distillation teacher); the experiment that builds the method passes
  it, so methods never import the layer above them.
  """
  # The kind of field this method hands the samplers ('velocity', 'denoiser',
  # 'energy'; None: it samples by itself) and whether its noise is independent of
  # the data; check_sampler() checks config.sampler against them.
  field_kind: str | None = None
  independent_noise: bool = True
  # Whether loss_grads may split the batch (config.train.grad_accum > 1): the loss is
  # a mean over examples and its per-example draws go through gensuite.methods.rand.
  supports_grad_accum: bool = False
  grad_accum_refusal: str = 'a {name} step does not split into microbatches'
  # The config.train.precision values this method's nets can compute in.
  precisions: tuple[str, ...] = config_lib.PRECISIONS

  def __init__(self, config, data_spec, load_run=None):
    self.config = config
    self.load_run = load_run  # workdir -> a loaded run (teachers); given by the experiment
    self.spec = data_spec
    self.data_shape = tuple(data_spec.shape)
    num_steps = int(config.train.num_steps)
    self.lr_schedule = optim.schedule(config.optim, num_steps)
    self.tx = optim.build(config.optim, num_steps)
    self.ema_decays = tuple(config.optim.get('ema_decays', ()))
    self.phema_stds = tuple(float(v) for v in config.optim.get('phema_stds', ()))
    self.grad_accum = int(config.train.get('grad_accum', 1))
    if self.grad_accum > 1 and not self.supports_grad_accum:
      self.refuse_grad_accum(self.grad_accum_refusal.format(name=config.method.name))
    precision = config.train.get('precision', 'float32')
    if precision not in self.precisions:
      raise ConfigError(f'config.train.precision={precision!r}: a {config.method.name} run '
                        f'computes in {", ".join(self.precisions)} only')
    self._guides = {}  # (workdir, step, ema) -> (guide method, params): autoguidance

  def init(self, rng: jax.Array, batch: dict) -> TrainState:
    raise NotImplementedError

  def train_step(self, state, batch: dict, rng: jax.Array):
    raise NotImplementedError

  def loss_grads(self, loss_fn, params, batch: dict, rng: jax.Array):
    """(grads, metrics) of loss_fn(params, batch, rng) over config.train.grad_accum
    microbatches (accumulate_grads); what every train_step calls for its gradient."""
    return accumulate_grads(loss_fn, params, batch, rng, self.grad_accum)

  def sample_labels(self, rng, num: int, label=None):
    """[num] labels to sample with: `label` (an int or [num]) broadcast, or uniform
    draws; None for an unconditional run, which refuses a given label in one line."""
    conditional = getattr(self, 'conditional', False)
    if label is not None and not conditional:
      raise ConfigError(f'sampling got a label, but this {self.config.method.name} run is '
                        'unconditional (method.class_conditional=False)')
    if not conditional:
      return None
    if label is None:
      return jax.random.randint(rng, (num,), 0, self.spec.num_classes)
    return jnp.broadcast_to(jnp.asarray(label, jnp.int32), (num,))

  def refuse_grad_accum(self, why: str) -> None:
    """The one-line ConfigError for config.train.grad_accum > 1, saying `why` not."""
    raise ConfigError(f'config.train.grad_accum={self.grad_accum}: {why}; use '
                      'train.grad_accum=1')

  def sample(self, state, rng: jax.Array, num: int, **sampler_kw) -> jax.Array:
    raise NotImplementedError

  def check_sampler(self, load_guide: bool = False) -> None:
    """ConfigError (one line) unless config.sampler can sample this method's field.

    Called when the method is built, and again (load_guide=True) by `gensuite
    sample/eval` after --config.sampler.* overrides and by the loop before a run with
    evals writes anything: the guidance section is checked (kind, interval, CFG needs
    a class-conditional run trained with label dropout) and an autoguidance guide run
    is loaded and matched against this one (data shape, field, conditioning)."""
    if self.field_kind is not None:
      samplers.check_field_config(self.config.sampler, self.field_kind,
                                  self.independent_noise)
    spec = samplers.guidance.from_config(self.config.sampler)
    if spec.kind == 'none':
      return
    where = f'config.sampler.guidance.kind={spec.kind!r}'
    if self.field_kind not in ('denoiser', 'velocity'):
      raise ConfigError(f'{where} guides a denoiser or velocity field; a '
                        f'{self.config.method.name} run samples without one')
    if spec.kind == 'cfg':
      if not getattr(self, 'conditional', False):
        raise ConfigError(f'{where} needs a class-conditional run (method.class_conditional'
                          '=True); this run is unconditional: use autoguidance (a guide run)')
      if not float(getattr(self, 'label_dropout', 0.0)) > 0.0:
        raise ConfigError(f'{where} needs the null-label model, which this run never '
                          'trained (method.label_dropout = 0)')
    if spec.kind == 'autoguidance' and load_guide:
      self.guide(spec)

  def guide(self, spec):
    """(method, params) of the autoguidance guide run named by `spec`, loaded once
    with self.load_run; ConfigError if it is missing or does not match this run."""
    key = (spec.guide_workdir, spec.guide_step, spec.guide_ema)
    if key in self._guides:
      return self._guides[key]
    workdir = spec.guide_workdir
    if not os.path.exists(os.path.join(workdir, 'config.json')):
      raise ConfigError(f'config.sampler.guidance.guide_workdir={workdir!r} holds no run '
                        '(no config.json)')
    if self.load_run is None:
      raise ConfigError('autoguidance loads its guide run: build the method through '
                        'gensuite.experiment.build_experiment, or pass '
                        'load_run=gensuite.load_run')
    # The data shape from the guide's config first: a guide of other data is refused
    # before its checkpoint is read (which would fail on the other architecture).
    guide_config = config_lib.load(workdir)
    self._check_guide_shape(workdir, data_lib.build(
        guide_config.data, seed=guide_config.seed,
        global_batch_size=guide_config.train.batch_size, load_run=self.load_run).spec.shape)
    with jax.ensure_compile_time_eval():  # also when first asked inside a jit trace
      run = self.load_run(workdir, spec.guide_step or None)
    guide = run.method
    self._check_guide_shape(workdir, run.experiment.data.spec.shape)
    if guide.field_kind != self.field_kind:
      raise ConfigError(f'guide run {workdir} ({run.config.method.name}) has a '
                        f'{guide.field_kind} field, this run a {self.field_kind} field; '
                        'autoguidance combines fields of one kind')
    if getattr(guide, 'conditional', False) and not getattr(self, 'conditional', False):
      raise ConfigError(f'guide run {workdir} is class-conditional and this run is not; '
                        'a guide takes the same labels as the main model (or none)')
    params = run.state.eval_params(spec.guide_ema or True)  # its EMA (default: longest)
    self._guides[key] = (guide, params)
    return self._guides[key]

  def _check_guide_shape(self, workdir, shape) -> None:
    if tuple(shape) != self.data_shape:
      raise ConfigError(f'guide run {workdir} makes data of shape {tuple(shape)}, but this '
                        f'run makes {self.data_shape}; a guide must model the same data')

  def evaluate(self, state, rng, data, workdir=None):
    """Extra eval scalars and pictures of the family's own; none by default."""
    del state, rng, data, workdir
    return {}, {}

  def denoiser_fn(self, params, label=None, cfg_scale: float = 1.0):
    raise ConfigError(f'a {self.config.method.name} run has no denoiser; a teacher must be '
                      'a diffusion or flow-matching run')


class SingleNetMethod:
  """init / train_step of a method that trains one network `self.net` on `self.loss`."""
  supports_grad_accum = True

  def init(self, rng, batch) -> TrainState:
    x = batch['x']
    label = batch.get('label') if self.conditional else None
    t = jnp.zeros((x.shape[0],), x.dtype)
    params = self.net.init({'params': rng, 'dropout': rng}, x, t, label=label)['params']
    return TrainState.create(params, self.tx, self.ema_decays, phema_stds=self.phema_stds)

  def train_step(self, state, batch, rng):
    grads, metrics = self.loss_grads(self.loss, state.params, batch, rng)
    state, norms = apply_gradients(state, grads, self.tx)
    return state, {**metrics, **norms}


class FieldSampling:
  """sample() of a method that exposes a field (`self.field(params, label, cfg_scale)`,
  a gensuite.samplers.Field): fills the sampler defaults from config.sampler, draws
  labels and noise, guides the field (config.sampler.guidance) and hands it to
  gensuite.samplers.sample."""

  def guidance_spec(self, cfg_scale: float = 1.0):
    """config.sampler.guidance, or the legacy cfg_scale (= kind 'cfg' with that weight
    and no interval)."""
    spec = samplers.guidance.from_config(self.config.sampler)
    if float(cfg_scale) == 1.0:
      return spec
    if spec.kind != 'none':
      raise ConfigError(f'cfg_scale={cfg_scale} and config.sampler.guidance.kind='
                        f'{spec.kind!r} both ask for guidance; use one of them')
    return samplers.guidance.Spec(kind='cfg', weight=float(cfg_scale))

  def other_field(self, params, label, spec) -> samplers.Field:
    """The field guidance pulls away from: the null-label model (cfg) or the guide
    run's (autoguidance, with the same labels when the guide is conditional)."""
    if spec.kind == 'cfg':
      if not self.conditional:
        raise ConfigError("classifier-free guidance (kind 'cfg' or cfg_scale != 1) needs "
                          'a class-conditional run; this run is unconditional')
      return self.field(params, jnp.full_like(label, self.spec.num_classes))
    guide, guide_params = self.guide(spec)
    return guide.field(guide_params, label if getattr(guide, 'conditional', False) else None)

  def guided_field(self, params, label, spec) -> samplers.Field:
    """The main field `field(params, label)`, guided as `spec` says."""
    if spec.kind == 'cfg' and not self.conditional:
      self.other_field(params, label, spec)  # the one-line error
    main = self.field(params, label)
    if not spec.active:
      return main
    return samplers.guidance.guide(main, self.other_field(params, label, spec), spec.weight,
                                   spec.sigma_lo, spec.sigma_hi)

  def sample(self, state, rng, num: int, sampler: str | None = None,
             steps: int | None = None, use_ema=True, label=None, cfg_scale: float = 1.0,
             return_trajectory: bool = False, sigmas=None, **options):
    """num samples with the named sampler (default config.sampler's) over `steps`.

    Sampler options (eta, s_churn, snr, ...) come from config.sampler, then `options`;
    `sigmas` replaces the field's noise grid; label picks classes; guidance comes from
    config.sampler.guidance (or cfg_scale, the same as kind 'cfg' without interval).
    """
    name, steps, options = samplers.resolve(self.config.sampler, sampler, steps, options)
    params = state.eval_params(use_ema)
    k_x, k_y, k_s = jax.random.split(rng, 3)
    z = jax.random.normal(k_x, (num,) + self.data_shape)
    field = self.guided_field(params, self.sample_labels(k_y, num, label),
                              self.guidance_spec(cfg_scale))
    return samplers.sample(name, field, z, k_s, steps, sigmas=sigmas,
                           return_trajectory=return_trajectory, **options)
