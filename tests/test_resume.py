"""Resume after SIGKILL retraces the uninterrupted run bitwise (CPU)."""
import os

import numpy as np

from conftest import losses, run_cli

TOY = 'configs/flow_matching/toy2d.py:smoke'


def _leaves(workdir):
  import jax  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(workdir)
  return run.step, [np.asarray(x) for x in jax.tree.leaves(run.state)]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
  full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
  args = [f'--config={TOY}', '--config.train.num_steps=30', '--config.train.ckpt_every=10',
          '--config.train.eval_every=0']
  run_cli('train', f'--workdir={full}', *args)
  proc = run_cli('train', f'--workdir={killed}', *args, check=False,
                 GENSUITE_FAULT_KILL_AT_STEP=17)
  assert proc.returncode == -9
  assert sorted(os.listdir(os.path.join(killed, 'checkpoints'))) == ['10']
  run_cli('train', f'--workdir={killed}', *args)
  step_a, leaves_a = _leaves(full)
  step_b, leaves_b = _leaves(killed)
  assert step_a == step_b == 30
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bitwise
  assert losses(full) == losses(killed)
