"""The one training loop, shared by every family.

  state = gensuite.train.run(config, workdir)         # trains, resumes if workdir has a run

It locks the workdir (gensuite.train.workdir: one trainer per directory), builds the
experiment (gensuite.experiment: mesh, data, method, jitted step), restores the newest
checkpoint, and steps: logging (TensorBoard + metrics.jsonl), checkpoints, evaluations
(gensuite.evaluate), SIGTERM as a checkpoint-and-exit (`workdir.Preempted`, exit 143).

Post-hoc EMA (config.optim.phema_stds): the tracked profiles are saved to
DIR/phema/<step>.npz every train.phema_every steps and at the last step
(gensuite.methods.phema); on resume, snapshots later than the restored step are
removed and made again, so the sequence is the uninterrupted run's.

A write that fails for lack of disk space (a checkpoint, metrics.jsonl, the
TensorBoard file, a samples PNG, config.json) stops the run with `workdir.OutOfSpace`
(one line: the path, a checkpoint's estimated size, the free bytes); the last
complete checkpoint is intact and metrics.jsonl is cut back on resume, so running the
same command again once there is space resumes as after a kill. Every exit, normal or
not, closes the TensorBoard file, waits for orbax and releases the lock.
"""
import concurrent.futures
import logging
import math
import os
import signal
import time

import jax

from gensuite import config as config_lib
from gensuite import metrics as metrics_lib
from gensuite import run as run_lib
from gensuite.evaluate import evaluate
from gensuite.experiment import build_experiment
from gensuite.errors import ConfigError
from gensuite.methods import phema as phema_lib
from gensuite.train import checkpoint as ckpt_lib
from gensuite.train import logging as log_lib
from gensuite.train import parallel
from gensuite.train import workdir as workdir_lib

log = logging.getLogger('gensuite')
# Tests set this to SIGKILL the process right after a given step.
_KILL_AT_STEP = os.environ.get('GENSUITE_FAULT_KILL_AT_STEP')
# Tests set this to 'STEP:FILE' to pause after step STEP (logged and saved), creating
# FILE.paused, until FILE exists: a run that holds its workdir's lock while a test
# needs it to.
_PAUSE_AT_STEP = os.environ.get('GENSUITE_FAULT_PAUSE_AT_STEP')


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


def run(config, workdir: str, *, multihost: bool = False, force_unlock: bool = False):
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the state.

  Takes the workdir's lock first (ConfigError if the directory cannot be created or
  written, `workdir.WorkdirLocked` if another run holds it; `force_unlock` takes a
  lock left on another host); then the checkpoint is restored (and checked against
  the model) before anything else is written, so a run that cannot resume leaves
  its workdir as it found it.
  """
  parallel.maybe_initialize_distributed(multihost)
  config_lib.validate(config)
  if config.train.eval_every:  # before any data is built or prepared
    metrics_lib.check(tuple(config.eval.metrics), **metrics_lib.eval_options(config.eval))
  lock = workdir_lib.WorkdirLock(workdir, force=force_unlock,
                                 enabled=jax.process_index() == 0)
  lock.acquire()
  try:
    return _run_locked(config, workdir, lock)
  finally:
    lock.release()


def _run_locked(config, workdir: str, lock):
  exp = build_experiment(config, load_run=run_lib.load_run)
  resuming = config_lib.check_resume(workdir, config)
  tc = config.train
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  keep = tc.get('keep_checkpoints', 3)
  ckpt, state, needed = None, None, None
  abstract = exp.abstract_state()
  _check_phema(exp.config, abstract)
  if tc.eval_every:  # a guide run (autoguidance) loads, and matches, before any write
    exp.method.check_sampler(load_guide=True)
  try:
    if os.path.isdir(ckpt_dir):
      ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=keep, discard_incomplete=True)
      latest, state = ckpt.restore_latest(abstract, move_corrupt=True)
      if latest is not None:
        log.info('resumed from %s/checkpoints/%d', workdir, latest)
    lock.announce()  # a stale lock taken over: said once the run goes on to write
    needed = workdir_lib.tree_nbytes(abstract)
    if jax.process_index() == 0 and not resuming:
      config_lib.write(workdir, config)
    if ckpt is None:
      ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=keep, discard_incomplete=True)
    if state is None:
      state = exp.init_state()
    start = int(jax.device_get(state.step))
    if jax.process_index() == 0 and start < tc.num_steps:
      workdir_lib.warn_if_low(ckpt_dir, needed)  # before the first save
    writer = log_lib.MetricWriter(workdir)
    if jax.process_index() == 0:  # snapshots past the resume point are made again
      phema_lib.drop_snapshots_after(workdir, start)
    try:
      writer.truncate_after(start)
      state = _train(exp, state, start, workdir, ckpt, writer)
    except BaseException:
      writer.close(quiet=True)  # the error in flight is the one to report
      raise
    writer.close()
  except OSError as e:
    if not workdir_lib.is_out_of_space(e):
      raise
    latest = ckpt.latest_step() if ckpt is not None else None
    raise workdir_lib.OutOfSpace(
        e.filename or workdir, needed, workdir_lib.free_bytes(workdir),
        None if latest is None else os.path.join(ckpt_dir, str(latest))) from e
  finally:
    if ckpt is not None:
      ckpt.close()
  return state


def _check_phema(config, abstract_state) -> None:
  """ConfigError unless the state tracks exactly config.optim.phema_stds."""
  wanted = {phema_lib.std_name(s) for s in config.optim.get('phema_stds', ())}
  have = set(getattr(abstract_state, 'phema', None) or {})
  if wanted != have:
    raise ConfigError(f'config.optim.phema_stds asks for post-hoc EMA profiles '
                      f'{sorted(wanted)}, but a {config.method.name} run tracks '
                      f'{sorted(have) or "none"}; this method does not support post-hoc EMA')


def _phema_due(tc, state, step: int) -> bool:
  """A post-hoc EMA snapshot is taken every train.phema_every steps and at the end."""
  every = tc.get('phema_every', 0)
  return bool(state.phema) and every > 0 and (step % every == 0 or step == tc.num_steps)


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
  try:
    return _steps(exp, state, start, workdir, ckpt, writer, pool)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _pause_if_asked(step: int) -> None:
  """Fault injection (GENSUITE_FAULT_PAUSE_AT_STEP=STEP:FILE): waits for FILE."""
  at, _, path = _PAUSE_AT_STEP.partition(':')
  if step == int(at):
    with open(path + '.paused', 'w'):
      pass
    while not os.path.exists(path):
      time.sleep(0.05)


def _steps(exp, state, start, workdir, ckpt, writer, pool):
  tc = exp.config.train
  num_steps = tc.num_steps
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
      if _phema_due(tc, state, s):
        _check_finite(exp, acc, s, workdir, ckpt)
        tracked = jax.tree.map(parallel.to_host, state.phema)  # sharded with mesh.fsdp
        if jax.process_index() == 0:
          phema_lib.save_snapshot(workdir, s, tracked)
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
        raise workdir_lib.Preempted(
            f'SIGTERM: stopped after step {s} and saved {ckpt.directory}/{s}; run the '
            'same command again to resume')
      if _PAUSE_AT_STEP:
        _pause_if_asked(s)
  _check_finite(exp, acc, num_steps, workdir, ckpt)
  ckpt.save(num_steps, state, force=True)
  if tc.eval_every and num_steps % tc.eval_every:
    evaluate(exp, state, num_steps, writer, workdir)
  writer.flush()
  return state
