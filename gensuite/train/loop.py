"""The one training loop, shared by every family.

  state = gensuite.train.run(config, workdir)         # trains, resumes if workdir has a run
  exp = build_experiment(config)                      # mesh, data, method, jitted step
  state = exp.init_state(); state, acc = exp.train_step(state, acc, exp.global_batch(0))

The loop builds a 1-D mesh over every device of every host, splits each batch over
it, replicates the state, and jits the method's pure `train_step` with explicit
shardings and a donated state. rng = fold_in(key(seed), step), and batches are a
function of (seed, step), so a resumed run retraces the uninterrupted one exactly.
"""
import concurrent.futures
import dataclasses
import math
import os
import signal
import time
from typing import Any

import logging

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite import methods
from gensuite import metrics as metrics_lib
from gensuite.train import checkpoint as ckpt_lib
from gensuite.train import logging as log_lib
from gensuite.train import parallel

_INIT_TAG, _TRAIN_TAG, _EVAL_TAG = 1, 2, 3
log = logging.getLogger('gensuite')
# Tests set this to SIGKILL the process right after a given step.
_KILL_AT_STEP = os.environ.get('GENSUITE_FAULT_KILL_AT_STEP')


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
    self._init = jax.jit(self.method.init, out_shardings=self.repl)
    self.train_step = jax.jit(self._step_and_accumulate, donate_argnums=(0, 1),
                              out_shardings=(self.repl, self.repl))
    self.bare_step = jax.jit(self._bare_step, donate_argnums=(0,),
                             out_shardings=(self.repl, self.repl))
    self._samplers = {}
    self.skip_nonfinite = bool(self.config.train.get('skip_nonfinite', False))
    self._nan_at_step = int(os.environ.get('GENSUITE_FAULT_NAN_AT_STEP', '0') or 0)

  def global_batch(self, step: int):
    return parallel.to_global(self.data.batch(step), self.batch_sharding)

  def init_state(self):
    return self._init(self.init_rng, self.global_batch(0))

  def abstract_state(self):
    shapes = jax.eval_shape(self.method.init, self.init_rng, self.data.batch(0))
    return ckpt_lib.abstract(shapes, self.repl)

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
    key = (padded, tuple(sorted(kw.items())))
    if key not in self._samplers:
      fn = lambda s, r: self.method.sample(s, r, padded, **kw)
      self._samplers[key] = jax.jit(fn, out_shardings=self.batch_sharding)
    x = parallel.to_host(self._samplers[key](state, rng))[:num]
    data_decode = getattr(self.data, 'decode', None)
    return data_decode(x) if decode and data_decode is not None else x


def build_experiment(config) -> Experiment:
  """Validates the config and builds mesh, data and method (nothing is compiled yet)."""
  config_lib.validate(config)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size, mesh)
  data = data_lib.build(config.data, seed=config.seed,
                        global_batch_size=config.train.batch_size,
                        process_index=jax.process_index(), process_count=jax.process_count())
  method = methods.build(config, data.spec)
  return Experiment(config=config, mesh=mesh, data=data, method=method)


def evaluate(exp: Experiment, state, step: int, writer: log_lib.MetricWriter | None = None,
             workdir: str | None = None, **sample_kw) -> dict[str, float]:
  """Samples with the configured sampler, computes the eval metrics, logs them."""
  ec = exp.config.eval
  k_sample, k_ref, k_metric = jax.random.split(exp.eval_rng, 3)
  kw = dict(sampler=exp.config.sampler.name, steps=exp.config.sampler.steps,
            use_ema=ec.get('use_ema', True))
  kw.update({k: v for k, v in sample_kw.items() if v is not None})
  t0 = time.time()
  chunk = ec.get('sample_batch', 0) or ec.num_samples
  if chunk >= ec.num_samples:
    samples = exp.sample(state, k_sample, ec.num_samples, **kw)
  else:  # bounded memory for large evals (FID over 50k images)
    samples = np.concatenate([
        exp.sample(state, jax.random.fold_in(k_sample, i),
                   min(chunk, ec.num_samples - i * chunk), **kw)
        for i in range(-(-ec.num_samples // chunk))])
  sample_time = time.time() - t0
  reference = exp.data.reference(k_ref, ec.num_samples)
  results = metrics_lib.evaluate(tuple(ec.metrics), k_metric, samples, reference,
                                 log_prob=exp.data.log_prob, workdir=workdir,
                                 **metrics_lib.eval_options(ec))
  results = {f'eval/{k}': float(v) for k, v in results.items()}
  results['eval/sample_seconds'] = sample_time
  images = {}
  # Optional per-method evaluation (ELBO, log Z, a student's teacher gap, ...): the
  # method returns scalars and, optionally, named pictures of its own.
  method_eval = getattr(exp.method, 'evaluate', None)
  if method_eval is not None:
    scalars, images = method_eval(state, jax.random.fold_in(k_metric, 1), exp.data,
                                  workdir=workdir)
    results.update({f'eval/{k}': float(v) for k, v in scalars.items()})
  if writer is not None:
    writer.write_scalars(step, results)
    if exp.config.train.get('log_images', True):
      image = _picture(exp, samples, reference, step)
      if image is not None:
        images = {'samples': image, **images}
      for name, picture in images.items():
        writer.write_image(step, name, picture)
        if workdir and jax.process_index() == 0:
          sub = os.path.join(workdir, 'samples' if name == 'samples' else name)
          os.makedirs(sub, exist_ok=True)
          log_lib.save_png(os.path.join(sub, f'step_{step:08d}.png'), picture)
  return results


def _picture(exp, samples, reference, step):
  if exp.data.spec.kind == 'image' or samples.ndim == 4:  # 4: decoded latents
    return log_lib.image_grid(samples[:64])
  if samples.shape[-1] >= 2:
    return log_lib.scatter_plot(samples[:, :2], reference[:, :2], title=f'step {step}')
  return None


class _Preemption:
  """Turns SIGTERM into a checkpoint at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}:{m:02d}:{s:02d}'


def run(config, workdir: str, *, multihost: bool = False):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the state.

  The checkpoint is restored (and checked against the model) before anything is
  written, so a run that cannot resume leaves its workdir as it found it.
  """
  parallel.maybe_initialize_distributed(multihost)
  config_lib.validate(config)
  if config.train.eval_every:  # before any data is built or prepared
    metrics_lib.check(tuple(config.eval.metrics), **metrics_lib.eval_options(config.eval))
  exp = build_experiment(config)
  resuming = config_lib.check_resume(workdir, config)
  tc = config.train
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  keep = tc.get('keep_checkpoints', 3)
  ckpt, state = None, None
  try:
    if os.path.isdir(ckpt_dir):
      ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=keep, discard_incomplete=True)
      latest = ckpt.latest_step()
      if latest is not None:
        state = ckpt.restore(latest, exp.abstract_state())
        log.info('resumed from %s/checkpoints/%d', workdir, latest)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0 and not resuming:
      config_lib.write(workdir, config)
    if ckpt is None:
      ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=keep, discard_incomplete=True)
    if state is None:
      state = exp.init_state()
    start = int(jax.device_get(state.step))
    writer = log_lib.MetricWriter(workdir)
    try:
      writer.truncate_after(start)
      state = _train(exp, state, start, workdir, ckpt, writer)
    finally:
      writer.close()
  finally:
    if ckpt is not None:
      ckpt.close()
  return state


def _check_finite(exp, acc, step: int, workdir: str, ckpt) -> None:
  """Raises FloatingPointError if a step since the last reset was non-finite (unless
  skipped): called at log time and before every checkpoint save and eval, so a
  non-finite state is never saved."""
  if exp.skip_nonfinite:
    return
  first = int(jax.device_get(acc['first_nonfinite']))
  if first:
    raise FloatingPointError(
        f'non-finite loss or gradients at step {first} (detected by step {step}); stopped '
        f'without saving it; the last good checkpoint is {workdir}/checkpoints/'
        f'{ckpt.latest_step()}; set config.train.skip_nonfinite=True to skip such steps')


def _train(exp, state, start, workdir, ckpt, writer):
  tc = exp.config.train
  num_steps = tc.num_steps
  if start >= num_steps:
    log.info('run in %s is complete (step %d)', workdir, start)
    done = [r for r in log_lib.read_jsonl(workdir) if r['step'] == start and
            any(k.startswith('eval/') for k in r)]
    if tc.eval_every and not done:
      evaluate(exp, state, start, writer, workdir)
    return state
  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(exp.global_batch, start)
  acc = exp.empty_accumulator(state)
  last_time, last_step = time.time(), start
  with _Preemption() as preempt:
    for step in range(start, num_steps):
      batch = future.result()
      if step + 1 < num_steps:
        future = pool.submit(exp.global_batch, step + 1)
      state, acc = exp.train_step(state, acc, batch)
      s = step + 1
      if _KILL_AT_STEP and s == int(_KILL_AT_STEP):  # fault injection for resume tests
        jax.block_until_ready(state)
        os.kill(os.getpid(), signal.SIGKILL)
      if (tc.log_every and s % tc.log_every == 0) or s == num_steps:
        _check_finite(exp, acc, s, workdir, ckpt)
        sums = jax.device_get(acc)
        count = float(sums.pop('count'))
        sums.pop('first_nonfinite')
        skipped = sums.pop('skipped_steps', None)
        scalars = {k: float(v) / count for k, v in sums.items()} if count else {}
        now = time.time()
        rate = (s - last_step) / max(now - last_time, 1e-9)
        last_time, last_step = now, s
        scalars['steps_per_sec'] = rate
        scalars['lr'] = float(exp.method.lr_schedule(step))
        if skipped is not None:
          scalars['skipped_steps'] = float(skipped)
          if skipped:
            log.warning('skipped %d non-finite step(s) in the %d steps up to step %d',
                        int(skipped), int(count + skipped), s)
        if not math.isfinite(scalars.get('loss', 0.0)):
          raise FloatingPointError(
              f'non-finite loss {scalars["loss"]} by step {s}; the last good checkpoint '
              f'is {workdir}/checkpoints/{ckpt.latest_step()}')
        writer.write_scalars(s, scalars)
        log.info('step %d/%d  loss %.5f  %.2f steps/s  ETA %s', s, num_steps,
                 scalars.get('loss', float('nan')), rate, _format_eta((num_steps - s) / rate))
        acc = exp.empty_accumulator(state)
      if tc.ckpt_every and s % tc.ckpt_every == 0:
        _check_finite(exp, acc, s, workdir, ckpt)
        ckpt.save(s, state)
      if tc.eval_every and s % tc.eval_every == 0:
        _check_finite(exp, acc, s, workdir, ckpt)
        results = evaluate(exp, state, s, writer, workdir)
        log.info('eval at step %d: %s', s,
                     '  '.join(f'{k[5:]} {v:.4g}' for k, v in results.items()))
        last_time = time.time()  # evals do not count against steps/s
      if preempt.requested:
        _check_finite(exp, acc, s, workdir, ckpt)
        ckpt.save(s, state, force=True)
        log.warning('SIGTERM: saved checkpoint at step %d, exiting', s)
        raise SystemExit(143)
  pool.shutdown()
  _check_finite(exp, acc, num_steps, workdir, ckpt)
  ckpt.save(num_steps, state, force=True)
  if tc.eval_every and num_steps % tc.eval_every:
    evaluate(exp, state, num_steps, writer, workdir)
  writer.flush()
  return state
