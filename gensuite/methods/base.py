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
"""
import jax
import jax.numpy as jnp

from gensuite import samplers
from gensuite.errors import ConfigError
from gensuite.methods import optim
from gensuite.methods.state import TrainState, apply_gradients


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

  def __init__(self, config, data_spec, load_run=None):
    self.config = config
    self.load_run = load_run  # workdir -> a loaded run (teachers); given by the experiment
    self.spec = data_spec
    self.data_shape = tuple(data_spec.shape)
    num_steps = int(config.train.num_steps)
    self.lr_schedule = optim.schedule(config.optim, num_steps)
    self.tx = optim.build(config.optim, num_steps)
    self.ema_decays = tuple(config.optim.get('ema_decays', ()))

  def init(self, rng: jax.Array, batch: dict) -> TrainState:
    raise NotImplementedError

  def train_step(self, state, batch: dict, rng: jax.Array):
    raise NotImplementedError

  def sample(self, state, rng: jax.Array, num: int, **sampler_kw) -> jax.Array:
    raise NotImplementedError

  def check_sampler(self) -> None:
    """ConfigError (one line) unless config.sampler can sample this method's field.

    Called when the method is built, and again by `gensuite sample/eval` after
    --config.sampler.* overrides, before anything is sampled or written."""
    if self.field_kind is not None:
      samplers.check_field_config(self.config.sampler, self.field_kind,
                                  self.independent_noise)

  def evaluate(self, state, rng, data, workdir=None):
    """Extra eval scalars and pictures of the family's own; none by default."""
    del state, rng, data, workdir
    return {}, {}

  def denoiser_fn(self, params, label=None, cfg_scale: float = 1.0):
    raise ConfigError(f'a {self.config.method.name} run has no denoiser; a teacher must be '
                      'a diffusion or flow-matching run')


class SingleNetMethod:
  """init / train_step of a method that trains one network `self.net` on `self.loss`."""

  def init(self, rng, batch) -> TrainState:
    x = batch['x']
    label = batch.get('label') if self.conditional else None
    t = jnp.zeros((x.shape[0],), x.dtype)
    params = self.net.init({'params': rng, 'dropout': rng}, x, t, label=label)['params']
    return TrainState.create(params, self.tx, self.ema_decays)

  def train_step(self, state, batch, rng):
    grads, metrics = jax.grad(self.loss, has_aux=True)(state.params, batch, rng)
    state, norms = apply_gradients(state, grads, self.tx)
    return state, {**metrics, **norms}


class FieldSampling:
  """sample() of a method that exposes a field (`self.field(params, label, cfg_scale)`,
  a gensuite.samplers.Field): fills the sampler defaults from config.sampler, draws
  labels and noise, and hands both to gensuite.samplers.sample."""

  def sample_labels(self, rng, num: int, label=None):
    if not self.conditional:
      return None
    if label is None:
      label = jax.random.randint(rng, (num,), 0, self.spec.num_classes)
    return label

  def sample(self, state, rng, num: int, sampler: str | None = None,
             steps: int | None = None, use_ema=True, label=None, cfg_scale: float = 1.0,
             return_trajectory: bool = False, sigmas=None, **options):
    """num samples with the named sampler (default config.sampler's) over `steps`.

    Sampler options (eta, s_churn, snr, ...) come from config.sampler, then `options`;
    `sigmas` replaces the field's noise grid; label/cfg_scale pick classes and guidance.
    """
    name, steps, options = samplers.resolve(self.config.sampler, sampler, steps, options)
    params = state.eval_params(use_ema)
    k_x, k_y, k_s = jax.random.split(rng, 3)
    z = jax.random.normal(k_x, (num,) + self.data_shape)
    field = self.field(params, self.sample_labels(k_y, num, label), cfg_scale)
    return samplers.sample(name, field, z, k_s, steps, sigmas=sigmas,
                           return_trajectory=return_trajectory, **options)
