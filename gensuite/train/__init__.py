"""The training loop: `gensuite.train.run(config, workdir)` trains and resumes.

Below it: gensuite.experiment (mesh, data, method, jitted step), gensuite.evaluate,
and the method library gensuite.methods; beside it: parallel.py, checkpoint.py,
logging.py, which the layers below use without loading the loop.
"""

__all__ = ['run']


def __getattr__(name):
  if name == "run":  # loaded on first use: importing train.checkpoint does not load the loop
    from gensuite.train.loop import run  # pylint: disable=g-import-not-at-top
    return run
  raise AttributeError(name)
