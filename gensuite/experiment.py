"""An experiment: config, mesh, data and method, with the jitted step and sampler.

  exp = build_experiment(config, load_run=gensuite.load_run)   # nothing compiled yet
  state = exp.init_state()
  state, acc = exp.train_step(state, acc, exp.global_batch(step))
  x = exp.sample(state, rng, 1000, sampler='heun', steps=20)     # numpy, decoded

The training loop (gensuite.train.loop), `load_run` (gensuite.run) and the evaluator
(gensuite.evaluate) all work on one of these. The mesh ('data', 'fsdp') spans every
device of every host (gensuite.train.parallel); each batch is split over all of it,
and the state is replicated (config.mesh.fsdp = 1) or sharded over the 'fsdp' axis
(`state_sharding`, one NamedSharding per leaf, also the target of every restore). The
method's pure `train_step` is jitted with explicit in/out shardings and a donated
state. rng = fold_in(key(seed), step) and batches are a function of (seed, step), so a
resumed run retraces the uninterrupted one exactly.

Scale settings: config.train.precision picks the nets' compute dtype (the method is
built inside gensuite.nets.precision; state, losses and samplers stay float32);
config.train.grad_accum = k makes the method's step average its gradient over k
microbatches (gensuite.methods.base.accumulate_grads); batch_size must be a multiple
of devices x k.
"""
import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite import methods
from gensuite import nets
from gensuite.train import checkpoint as ckpt_lib
from gensuite.train import parallel

_INIT_TAG, _TRAIN_TAG, _EVAL_TAG = 1, 2, 3


@dataclasses.dataclass
class Experiment:
  """Everything a run needs except its state: built once, validated before any compile."""
  config: Any
  mesh: Any
  data: Any
  method: Any

  def __post_init__(self):
    self.repl = parallel.replicated(self.mesh)
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    key = jax.random.PRNGKey(self.config.seed)
    self.init_rng = jax.random.fold_in(key, _INIT_TAG)
    self.train_rng = jax.random.fold_in(key, _TRAIN_TAG)
    self.eval_rng = jax.random.fold_in(key, _EVAL_TAG)
    self._state_shapes = jax.eval_shape(self.method.init, self.init_rng, self.data.batch(0))
    self.state_sharding = parallel.state_shardings(self._state_shapes, self.mesh)
    self._init = jax.jit(self.method.init, out_shardings=self.state_sharding)
    self.train_step = jax.jit(
        self._step_and_accumulate, donate_argnums=(0, 1),
        in_shardings=(self.state_sharding, self.repl, self.batch_sharding),
        out_shardings=(self.state_sharding, self.repl))
    self.bare_step = jax.jit(self._bare_step, donate_argnums=(0,),
                             in_shardings=(self.state_sharding, self.batch_sharding),
                             out_shardings=(self.state_sharding, self.repl))
    self._samplers = {}
    self.skip_nonfinite = bool(self.config.train.get('skip_nonfinite', False))
    self._nan_at_step = int(os.environ.get('GENSUITE_FAULT_NAN_AT_STEP', '0') or 0)

  def global_batch(self, step: int):
    return parallel.to_global(self.data.batch(step), self.batch_sharding)

  def init_state(self):
    return self._init(self.init_rng, self.global_batch(0))

  def abstract_state(self):
    """Shapes, dtypes and this mesh's shardings of the state: a restore's target."""
    return ckpt_lib.abstract(self._state_shapes, self.state_sharding)

  def _bare_step(self, state, batch):
    rng = jax.random.fold_in(self.train_rng, state.step)
    return self.method.train_step(state, batch, rng)

  def _step_and_accumulate(self, state, acc, batch):
    """One step; adds its scalars to running sums so logging never waits on a step.

    A step whose loss or any 'l2_*' norm (grads, updates, params) is NaN or Inf is
    recorded in acc['first_nonfinite'] (its 1-based step number; 0 = none yet), which
    the host reads only at log time and before a checkpoint or an eval. With
    config.train.skip_nonfinite such a step leaves params, optimizer state, EMA and
    extra unchanged (the step counter still advances, so data and rng stay aligned
    with the uninterrupted run) and counts in acc['skipped_steps'].
    """
    if self._nan_at_step:  # fault injection for tests: poison one step's batch
      poison = state.step + 1 == self._nan_at_step
      batch = {**batch, 'x': jnp.where(poison, jnp.nan, 1.0) * batch['x']}
    new, metrics = self._bare_step(state, batch)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    checked = [v for k, v in metrics.items() if k == 'loss' or k.startswith('l2_')]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in checked])) if checked \
        else jnp.asarray(True)
    if acc is None:
      acc = {'count': jnp.zeros(()), 'first_nonfinite': jnp.zeros((), jnp.int32),
             **{k: jnp.zeros_like(v) for k, v in metrics.items()}}
      if self.skip_nonfinite:
        acc['skipped_steps'] = jnp.zeros(())
    step_number = (state.step + 1).astype(jnp.int32)
    first = jnp.where((acc['first_nonfinite'] == 0) & ~finite, step_number,
                      acc['first_nonfinite'])
    out = {'first_nonfinite': first}
    if self.skip_nonfinite:
      kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
      new = kept.replace(step=new.step) if hasattr(kept, 'replace') else kept
      out['count'] = acc['count'] + finite.astype(jnp.float32)
      out['skipped_steps'] = acc['skipped_steps'] + (~finite).astype(jnp.float32)
      out.update({k: acc[k] + jnp.where(finite, v, 0.0) for k, v in metrics.items()})
    else:
      out['count'] = acc['count'] + 1
      out.update({k: acc[k] + v for k, v in metrics.items()})
    return new, out

  def empty_accumulator(self, state):
    shapes = jax.eval_shape(self._step_and_accumulate, state, None, self.data.batch(0))[1]
    return jax.tree.map(lambda s: jax.device_put(jnp.zeros(s.shape, s.dtype), self.repl),
                        shapes)

  def sample(self, state, rng, num: int, decode: bool = True, **kw) -> np.ndarray:
    """num samples on the host, drawn with the batch split over all devices.

    Data that define `decode` (codes of another model, e.g. 'latents') map the
    method's samples back to data space unless decode=False.
    """
    padded = int(math.ceil(num / self.mesh.size) * self.mesh.size)
    # config.sampler (its guidance section too) may change between calls (sample/eval
    # overrides): part of the key, so a changed config never reuses a stale program.
    sampler_config = json.dumps(config_lib.to_dict(self.config.sampler), sort_keys=True)
    key = (padded, tuple(sorted(kw.items())), sampler_config)
    if key not in self._samplers:
      # Loads an autoguidance guide run (once) here, not inside the traced function.
      self.method.check_sampler(load_guide=True)
      fn = lambda s, r: self.method.sample(s, r, padded, **kw)
      self._samplers[key] = jax.jit(fn, out_shardings=self.batch_sharding)
    x = parallel.to_host(self._samplers[key](state, rng))[:num]
    data_decode = getattr(self.data, 'decode', None)
    return data_decode(x) if decode and data_decode is not None else x


def build_experiment(config, load_run=None, fsdp: int | None = None,
                     data=None) -> Experiment:
  """Validates the config and builds mesh, data and method (nothing is compiled yet).

  load_run(workdir) loads the other runs a config may name (a VAE for 'latents' data,
  a distillation teacher): gensuite.load_run, which callers pass down. `fsdp` replaces
  config.mesh.fsdp (a loaded run on another number of devices). `data` replaces the
  data config.data names (a source built for train.batch_size; the accelerator
  benchmark's synthetic images of a dataset's shape).
  """
  config_lib.validate(config)
  mesh = parallel.make_mesh(config_lib.mesh_fsdp(config) if fsdp is None else fsdp)
  parallel.check_batch_size(config.train.batch_size, mesh,
                            config.train.get('grad_accum', 1))
  if data is None:
    data = data_lib.build(config.data, seed=config.seed,
                          global_batch_size=config.train.batch_size,
                          process_index=jax.process_index(),
                          process_count=jax.process_count(), load_run=load_run)
  with nets.precision(config.train.get('precision', 'float32')):
    method = methods.build(config, data.spec, load_run=load_run)
  return Experiment(config=config, mesh=mesh, data=data, method=method)
