"""Resume after SIGKILL retraces the uninterrupted run bitwise (CPU).

Kills land after a step (GENSUITE_FAULT_KILL_AT_STEP) or in the middle of a checkpoint
save, after its arrays are written but before the commit
(GENSUITE_FAULT_KILL_IN_SAVE_AT_STEP). A half-written checkpoint, real or simulated, is
never restored, and the resumed run ends with the same params, optimizer state and EMA,
bit for bit, and the same logged losses.
"""
import os
import random
import shutil

import numpy as np
import pytest

from conftest import checkpoint_steps, final_leaves, losses, run_cli

TOY = 'configs/flow_matching/toy2d.py:smoke'
ARGS = [f'--config={TOY}', '--config.train.num_steps=30', '--config.train.ckpt_every=10',
        '--config.train.eval_every=0', '--config.train.keep_checkpoints=5']


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('resume') / 'full')
  run_cli('train', f'--workdir={workdir}', *ARGS)
  return workdir, final_leaves(workdir), losses(workdir)


def _kill_and_resume(workdir, env):
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False, **env)
  assert proc.returncode == -9, proc.stderr[-2000:]
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def _assert_same_as(reference, workdir):
  _, (step_a, leaves_a), losses_a = reference
  run_cli('train', f'--workdir={workdir}', *ARGS)
  step_b, leaves_b = final_leaves(workdir)
  assert step_a == step_b == 30
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bitwise
  assert losses(workdir) == losses_a
  entries = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert not [e for e in entries if 'tmp' in e], entries  # leftovers were discarded
  assert checkpoint_steps(workdir) == [10, 20, 30]


def test_sigkill_after_a_step_then_resume_is_bitwise_equal(reference, tmp_path):
  killed = str(tmp_path / 'killed')
  assert _kill_and_resume(killed, {'GENSUITE_FAULT_KILL_AT_STEP': 17}) == ['10']
  # Simulate what a non-atomic filesystem could leave: a step directory whose commit
  # marker is missing (its arrays partly written) and an orbax temporary directory.
  ckpt_dir = os.path.join(killed, 'checkpoints')
  shutil.copytree(os.path.join(ckpt_dir, '10'), os.path.join(ckpt_dir, '20'))
  os.remove(os.path.join(ckpt_dir, '20', 'commit_success.txt'))
  shutil.copytree(os.path.join(ckpt_dir, '10'),
                  os.path.join(ckpt_dir, '30.orbax-checkpoint-tmp-1234'))
  assert checkpoint_steps(killed) == [10]
  _assert_same_as(reference, killed)


def test_sigkill_during_a_checkpoint_save_then_resume_is_bitwise_equal(reference, tmp_path):
  killed = str(tmp_path / 'killed_in_save')
  entries = _kill_and_resume(killed, {'GENSUITE_FAULT_KILL_IN_SAVE_AT_STEP': 20})
  assert entries[0] == '10' and len(entries) == 2, entries
  assert entries[1].startswith('20.orbax-checkpoint-tmp'), entries  # cut short mid-save
  assert checkpoint_steps(killed) == [10]
  _assert_same_as(reference, killed)


@pytest.mark.slow
def test_ten_random_kill_points_each_resume_bitwise_equal(reference, tmp_path):
  rng = random.Random(20261123)
  points = [('GENSUITE_FAULT_KILL_AT_STEP', s) for s in rng.sample(range(1, 30), 8)]
  points += [('GENSUITE_FAULT_KILL_IN_SAVE_AT_STEP', s) for s in (10, 30)]
  for i, (var, step) in enumerate(points):
    killed = str(tmp_path / f'killed_{i}')
    _kill_and_resume(killed, {var: step})
    # A second kill in the resumed run, later on, before the final resume.
    if var == 'GENSUITE_FAULT_KILL_AT_STEP' and step < 25:
      _kill_and_resume(killed, {var: step + 5})
    _assert_same_as(reference, killed)


def test_sigkill_then_resume_is_bitwise_equal_with_sharded_state(tmp_path):
  """The same kill and resume with the state sharded over 4 (simulated) devices
  (mesh.fsdp = 4): the sharded checkpoint restores onto the same mesh and the resumed
  run ends bitwise equal to the uninterrupted one, logged losses included."""
  args = ARGS + ['--config.mesh.fsdp=4']
  full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
  run_cli('train', f'--workdir={full}', *args, devices=4)
  proc = run_cli('train', f'--workdir={killed}', *args, devices=4, check=False,
                 GENSUITE_FAULT_KILL_AT_STEP=17)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert checkpoint_steps(killed) == [10]
  run_cli('train', f'--workdir={killed}', *args, devices=4)
  (step_a, leaves_a), (step_b, leaves_b) = final_leaves(full), final_leaves(killed)
  assert step_a == step_b == 30 and len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bitwise
  assert losses(killed) == losses(full)
