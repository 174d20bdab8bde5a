"""Resume after SIGKILL retraces the uninterrupted run bitwise (CPU)."""
import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env, run_cli

TOY = 'configs/flow_matching/toy2d.py:smoke'


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def _tree_hash(path):
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      p = os.path.join(root, name)
      h.update(p.encode())
      with open(p, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


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
  assert _losses(full) == _losses(killed)
