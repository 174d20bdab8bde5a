"""The training loop: `gensuite.train.run(config, workdir)` trains and resumes."""
from gensuite.train.loop import Experiment, build_experiment, evaluate, run

__all__ = ['Experiment', 'build_experiment', 'evaluate', 'run']
