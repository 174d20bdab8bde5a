"""Data parallelism: 1 vs 4 devices, and 2 processes vs 1, give the same losses and the
same final train state (params, optimizer state, EMA)."""
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env, losses, run_cli

TOY = 'configs/flow_matching/toy2d.py:smoke'


def test_one_and_four_devices_give_the_same_losses(tmp_path):
  one, four = str(tmp_path / 'one'), str(tmp_path / 'four')
  run_cli('train', f'--config={TOY}', f'--workdir={one}', '--config.train.eval_every=0',
          devices=1)
  run_cli('train', f'--config={TOY}', f'--workdir={four}', '--config.train.eval_every=0',
          devices=4)
  a, b = losses(one), losses(four)
  assert sorted(a) == sorted(b)
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)],
                             rtol=2e-5)


def _final_leaves(workdir):
  import jax  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(workdir)
  return run.step, [np.asarray(x) for x in jax.tree.leaves(run.state)]


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


# The replicated case is slow-marked: fsdp4 runs the same two-process data path with the
# state sharded across both processes on top.
@pytest.mark.parametrize('mesh', [pytest.param([], marks=pytest.mark.slow),
                                  ['--config.mesh.fsdp=4']], ids=['replicated', 'fsdp4'])
def test_two_processes_equal_one_process(tmp_path, mesh):
  """2 processes x 2 devices train like 1 process x 4 devices, with the state replicated
  or sharded over all 4 devices (the fsdp axis then spans both processes)."""
  single, multi = str(tmp_path / 'single'), str(tmp_path / 'multi')
  args = [f'--config={TOY}', '--config.train.eval_every=0', *mesh]
  run_cli('train', f'--workdir={single}', *args, devices=4)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'gensuite.cli', 'train', f'--workdir={multi}', *args,
       '--multihost'], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=cli_env(2, JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES=2,
                  JAX_PROCESS_ID=i)) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  a, b = losses(single), losses(multi)
  assert sorted(a) == sorted(b)
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)],
                             rtol=2e-5)
  # Same global batch on 4 devices either way (1 process x 4, or 2 processes x 2):
  # the final state matches leaf for leaf.
  step_a, leaves_a = _final_leaves(single)
  step_b, leaves_b = _final_leaves(multi)
  assert step_a == step_b == 20 and len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
