"""A committed checkpoint whose files no longer read back (bytes flipped, files cut).

The trainer resumes from the newest step that reads back and moves the unreadable
newer ones to checkpoints/corrupt/ (never deletes them); readers (sample, eval,
load_run) fall back to an older step only when no step was asked for, and move
nothing. Neither prints a traceback.
"""
import os
import shutil

import pytest

from conftest import checkpoint_steps, losses, run_cli

TOY = 'configs/flow_matching/toy2d.py:smoke'
# The schedule decays over num_steps, so the reference run is configured for the 30
# steps that the resumed run trains, and killed after step 21: checkpoints at 10 and
# 20, losses logged up to 20.
ARGS = [f'--config={TOY}', '--config.train.num_steps=30', '--config.train.ckpt_every=10',
        '--config.train.eval_every=0']


def corrupt(step_dir: str, truncate: bool = False) -> None:
  """Flips 16 bytes in the middle of (or cuts in half) every OCDBT manifest and data
  file of a saved step, leaving its commit marker and JSON metadata intact."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if 'ocdbt' not in rel and os.path.basename(root) != 'd':
        continue
      size = os.path.getsize(path)
      with open(path, 'r+b') as f:
        if truncate:
          f.truncate(size // 2)
        else:
          f.seek(size // 2)
          data = f.read(16)
          f.seek(size // 2)
          f.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('corrupt') / 'run')
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False,
                 GENSUITE_FAULT_KILL_AT_STEP=21)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']
  assert sorted(losses(workdir)) == [5, 10, 15, 20]
  return workdir


def _copy(trained, tmp_path, truncate=False):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  corrupt(os.path.join(workdir, 'checkpoints', '20'), truncate=truncate)
  return workdir


def test_train_resumes_from_the_newest_readable_step_and_moves_the_bad_one(trained,
                                                                          tmp_path):
  workdir = _copy(trained, tmp_path)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  proc = run_cli('train', f'--workdir={workdir}', *ARGS)
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  warning = [l for l in proc.stderr.splitlines() if 'unreadable' in l]
  assert len(warning) == 1, proc.stderr[-3000:]
  assert f'{ckpt_dir}/20 is unreadable (DATA_LOSS' in warning[0]
  assert f'moved it to {ckpt_dir}/corrupt/20' in warning[0]
  assert f'resumed from {ckpt_dir}/10' in proc.stderr
  assert os.path.isfile(os.path.join(ckpt_dir, 'corrupt', '20', 'commit_success.txt'))
  # Steps 11-20 were retraced exactly; 20 was saved again, beside the moved copy.
  got, want = losses(workdir), losses(trained)
  assert sorted(got) == [5, 10, 15, 20, 25, 30]
  assert {s: got[s] for s in want} == want
  assert checkpoint_steps(workdir) == [10, 20, 30]
  import gensuite  # pylint: disable=g-import-not-at-top
  assert gensuite.load_run(workdir).step == 30


def test_train_refuses_to_restart_when_no_step_reads_back(trained, tmp_path):
  workdir = _copy(trained, tmp_path, truncate=True)
  corrupt(os.path.join(workdir, 'checkpoints', '10'))
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gensuite: error: no readable checkpoint')
  assert 'step 20 is unreadable' in lines[0] and 'step 10 is unreadable' in lines[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']
  assert sorted(losses(workdir)) == [5, 10, 15, 20]  # nothing written


def test_sample_falls_back_with_a_notice_and_moves_nothing(trained, tmp_path):
  workdir = _copy(trained, tmp_path, truncate=True)
  out = str(tmp_path / 'x.npz')
  proc = run_cli('sample', f'--workdir={workdir}', f'--out={out}', '--num=8')
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'checkpoints/20 is unreadable' in lines[0], proc.stderr[-3000:]
  assert 'using step 10 instead' in lines[0]
  assert 'from step 10' in proc.stdout
  import numpy as np  # pylint: disable=g-import-not-at-top
  assert int(np.load(out)['step']) == 10
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']


def test_sample_of_the_unreadable_step_is_one_line_exit_2(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  proc = run_cli('sample', f'--workdir={workdir}', f'--out={tmp_path / "x.npz"}',
                 '--step=20', check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(f'gensuite: error: checkpoint {workdir}/checkpoints/20 is '
                             'unreadable: DATA_LOSS')
  assert not os.path.exists(tmp_path / 'x.npz')
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']


def test_first_line_drops_the_tensorstore_spec_and_keeps_the_cause():
  from gensuite.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  error = ValueError('DATA_LOSS: Error reading "a"' + ' x' * 300 + ': CRC-32C checksum '
                     'verification failed [tensorstore_spec=\'{"driver": "zarr"}\']\nmore')
  line = ckpt_lib.first_line(error)
  assert len(line) <= 300 and '\n' not in line and 'tensorstore_spec' not in line
  assert line.startswith('DATA_LOSS: Error reading') and line.endswith('verification failed')
