"""A finished (or running) run, loaded back for notebooks and scripts.

  run = gensuite.load_run('runs/toy2d')
  run.config, run.step, run.state
  x = run.sample(jax.random.PRNGKey(0), 1000, sampler='heun', steps=20)  # numpy

The state is restored onto this process's devices whatever mesh wrote it: the mesh
keeps the run's config.mesh.fsdp where it divides the device count, else takes their
greatest common divisor (1 device: everything on it); `load_run(DIR, fsdp=2)` picks
the fsdp axis's size.

Samples with the EMA params by default (`use_ema=False` for the raw ones, or an EMA's
name: '0.999', or 'phema_0.05' once `gensuite phema --std=0.05` has reconstructed that
post-hoc EMA; the reconstructions in DIR/phema/reconstructed/ join run.state.ema).
"""
import math
import os

import jax
import numpy as np

from gensuite import config as config_lib
from gensuite.errors import ConfigError
from gensuite import evaluate as evaluate_lib
from gensuite import experiment as experiment_lib
from gensuite.methods import phema as phema_lib
from gensuite.train import checkpoint as ckpt_lib


class Run:

  def __init__(self, workdir: str, step: int | None = None, fsdp: int | None = None):
    self.workdir = workdir
    self.config = config_lib.load(workdir)
    if fsdp is None:
      fsdp = math.gcd(config_lib.mesh_fsdp(self.config), jax.device_count())
    self.experiment = experiment_lib.build_experiment(self.config, load_run=load_run,
                                                      fsdp=fsdp)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
    try:
      steps = ckpt.all_steps()
      if not steps:
        raise ConfigError(f'no checkpoint in {workdir}/checkpoints yet')
      if step is None:  # the newest readable step, with a warning for newer ones
        step, self.state = ckpt.restore_latest(self.experiment.abstract_state())
      elif step not in steps:
        raise ConfigError(f'no checkpoint for step {step} in {workdir}; have {sorted(steps)}')
      else:
        self.state = ckpt.restore(step, self.experiment.abstract_state())
    finally:
      ckpt.close()
    self.step = step
    repl = self.experiment.repl
    self.state = phema_lib.merge(workdir, self.state,
                                 put=lambda tree: jax.device_put(tree, repl))

  @property
  def method(self):
    return self.experiment.method

  def sample(self, rng, num: int, sampler: str | None = None, steps: int | None = None,
             use_ema=True, **kw) -> np.ndarray:
    kw = dict(kw, sampler=sampler or self.config.sampler.name,
              steps=int(steps or self.config.sampler.steps), use_ema=use_ema)
    return self.experiment.sample(self.state, rng, num, **kw)

  def evaluate(self, **sample_kw) -> dict[str, float]:
    return evaluate_lib.evaluate(self.experiment, self.state, self.step, **sample_kw)


def load_run(workdir: str, step: int | None = None, fsdp: int | None = None) -> Run:
  return Run(workdir, step, fsdp)
