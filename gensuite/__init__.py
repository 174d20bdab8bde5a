"""gensuite: diffusion, flow matching, score distillation, EBMs and VAEs in one JAX loop.

  import gensuite
  gensuite.train.run(config, workdir)     # train (resumes automatically)
  run = gensuite.load_run(workdir)        # config, restored state, run.sample(...)
"""
__version__ = '0.1.0'


def load_run(workdir: str, step: int | None = None, fsdp: int | None = None):
  from gensuite.run import load_run as _load_run  # pylint: disable=g-import-not-at-top
  return _load_run(workdir, step, fsdp)


def __getattr__(name):
  if name == 'train':
    import gensuite.train as train  # pylint: disable=g-import-not-at-top
    return train
  raise AttributeError(name)
