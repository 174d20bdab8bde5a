"""The faults a shared cluster throws at a run: a second trainer on the same workdir,
a lock left by a killed run (here or on another host), a full disk, a workdir that
cannot be written, and the one-line exits they end in.

Each fault is injected where the real one strikes: GENSUITE_FAULT_ENOSPC_IN_SAVE_AT_STEP
raises OSError(ENOSPC) inside the checkpoint save (arrays written, not committed),
GENSUITE_FAULT_ENOSPC_IN_METRICS_AT_STEP after half a metrics.jsonl line is written,
GENSUITE_FAULT_PAUSE_AT_STEP holds a run (and its lock) until a file exists. The slow
tests fill a real 3 MB tmpfs (root only).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, cli_env, final_leaves, losses, run_cli, tree_hash

TOY = 'configs/flow_matching/toy2d.py:smoke'
# As in test_resume: checkpoints at 10, 20 and 30, every one kept.
ARGS = [f'--config={TOY}', '--config.train.num_steps=30', '--config.train.ckpt_every=10',
        '--config.train.eval_every=0', '--config.train.keep_checkpoints=5']


def _ckpt_entries(workdir):
  return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


def _error_line(proc, code):
  """The single stderr line of a failed command (the last, with --verbose)."""
  assert proc.returncode == code, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert lines and lines[-1].startswith('gensuite: error: '), proc.stderr[-3000:]
  return lines[-1]


def _only_line(proc, code):
  """The error line, checking that nothing else was printed but gensuite's own log
  lines (`HH:MM:SS step 5/30 ...`): no traceback, no library's report."""
  line = _error_line(proc, code)
  others = proc.stderr.strip().splitlines()[:-1]
  assert all(re.match(r'\d\d:\d\d:\d\d ', l) for l in others), proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return line


def _wait_for(path, proc, timeout=120):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      raise AssertionError(f'{path} never appeared: {proc.communicate()[1][-3000:]}')
    time.sleep(0.05)


def _assert_same_as_reference(reference, workdir):
  _, (step_a, leaves_a), losses_a = reference
  step_b, leaves_b = final_leaves(workdir)
  assert step_a == step_b == 30
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # bitwise
  assert losses(workdir) == losses_a
  assert _ckpt_entries(workdir) == ['10', '20', '30']
  assert not os.path.exists(os.path.join(workdir, '.lock'))  # released at exit


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('faults') / 'alone')
  run_cli('train', f'--workdir={workdir}', *ARGS)
  return workdir, final_leaves(workdir), losses(workdir)


# ---- two trainers, stale locks ------------------------------------------------------

def test_second_train_on_a_busy_workdir_exits_2_and_the_first_is_unharmed(reference,
                                                                          tmp_path):
  workdir = str(tmp_path / 'busy')
  go = str(tmp_path / 'go')
  first = subprocess.Popen(
      [sys.executable, '-m', 'gensuite.cli', 'train', f'--workdir={workdir}', *ARGS],
      cwd=REPO, env=cli_env(GENSUITE_FAULT_PAUSE_AT_STEP=f'15:{go}'),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    lock = os.path.join(workdir, '.lock')
    _wait_for(go + '.paused', first)  # after step 15: logged, checkpoint 10 saved
    with open(lock) as f:
      holder = json.load(f)
    assert holder['pid'] == first.pid and holder['host'] == socket.gethostname()
    before = tree_hash(workdir)  # the first run is paused after step 15
    proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False)
    line = _only_line(proc, 2)
    assert f'workdir {workdir} is in use by another run' in line, line
    assert f'pid {first.pid}' in line and f'host {holder["host"]}' in line, line
    assert f'since {holder["since"]}' in line, line
    assert tree_hash(workdir) == before  # it wrote nothing, not even error.log
  finally:
    with open(go, 'w'):
      pass
    _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  assert 'gensuite: error' not in err
  _assert_same_as_reference(reference, workdir)


def test_disk_full_at_a_save_then_a_killed_resume_then_resume_is_bitwise(reference,
                                                                          tmp_path):
  workdir = str(tmp_path / 'full')
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False,
                 GENSUITE_FAULT_ENOSPC_IN_SAVE_AT_STEP=20)
  line = _only_line(proc, 1)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  assert line.startswith(f'gensuite: error: no space left on device writing {ckpt_dir}/20'
                         '.orbax-checkpoint-tmp'), line
  assert 'a checkpoint needs about' in line and 'bytes) free' in line, line
  assert f'the last complete checkpoint is {ckpt_dir}/10' in line, line
  assert _ckpt_entries(workdir) == ['10']  # the half-written save is gone, 10 intact
  assert not os.path.exists(os.path.join(workdir, '.lock'))
  with open(os.path.join(workdir, 'error.log')) as f:
    log = f.read()
  assert 'Traceback' in log and 'OutOfSpace' in log and 'No space left on device' in log
  assert '$ gensuite train' in log and line in log
  # Space is back: resume, killed after step 25 (its lock stays, naming it) ...
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False,
                 GENSUITE_FAULT_KILL_AT_STEP=25)
  assert proc.returncode == -9, proc.stderr[-3000:]
  with open(os.path.join(workdir, '.lock')) as f:
    dead = json.load(f)
  # ... and resume again: the stale lock is taken over with one line naming the dead run.
  proc = run_cli('train', f'--workdir={workdir}', *ARGS)
  notes = [l for l in proc.stderr.splitlines() if 'lock' in l]
  assert len(notes) == 1 and 'took over the stale lock' in notes[0], proc.stderr[-3000:]
  assert f'pid {dead["pid"]}' in notes[0] and f'host {dead["host"]}' in notes[0]
  assert 'Traceback' not in proc.stderr
  _assert_same_as_reference(reference, workdir)


def test_disk_full_in_metrics_verbose_then_a_foreign_lock_and_force_unlock(reference,
                                                                            tmp_path):
  workdir = str(tmp_path / 'metrics_full')
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, '--verbose', check=False,
                 GENSUITE_FAULT_ENOSPC_IN_METRICS_AT_STEP=15)
  line = _error_line(proc, 1)
  assert 'Traceback' in proc.stderr and 'OutOfSpace' in proc.stderr  # --verbose
  path = os.path.join(workdir, 'metrics.jsonl')
  assert line.startswith(f'gensuite: error: no space left on device writing {path}: '), line
  assert f'checkpoint is {workdir}/checkpoints/10' in line
  with open(path) as f:
    text = f.read()
  assert text.endswith('\n')  # the half line was cut off again
  assert sorted(losses(workdir)) == [5, 10]
  assert _ckpt_entries(workdir) == ['10']
  with open(os.path.join(workdir, 'error.log')) as f:
    assert 'Traceback' in f.read()
  # A lock naming another host: respected (nothing here can tell whether it runs) ...
  foreign = {'host': 'node-elsewhere', 'pid': 4242, 'since': '2026-01-02T03:04:05'}
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    json.dump(foreign, f)
  before = tree_hash(workdir)
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, check=False)
  line = _only_line(proc, 2)
  assert 'locked by a run on another host (host node-elsewhere, pid 4242, since ' \
      '2026-01-02T03:04:05' in line and '--force_unlock' in line, line
  assert tree_hash(workdir) == before
  # ... until --force_unlock, which says so in one line and resumes bitwise.
  proc = run_cli('train', f'--workdir={workdir}', *ARGS, '--force_unlock')
  notes = [l for l in proc.stderr.splitlines() if 'lock' in l]
  assert len(notes) == 1 and '--force_unlock: took over the lock' in notes[0], notes
  assert 'node-elsewhere' in notes[0]
  _assert_same_as_reference(reference, workdir)


# ---- workdirs that cannot be written -------------------------------------------------

def test_workdir_under_a_regular_file_is_one_line_exit_2(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  proc = run_cli('train', f'--config={TOY}', f'--workdir={blocker}/run', check=False)
  line = _only_line(proc, 2)
  assert line == (f'gensuite: error: workdir {blocker}/run cannot be created: {blocker} '
                  'is not a directory')
  assert blocker.read_text() == 'not a directory'


def test_read_only_workdir_checks(tmp_path):
  from gensuite.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from gensuite.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match='exists and is not a directory'):
    workdir_lib.make_workdir(__file__)
  if os.geteuid() == 0:
    return  # root writes through permission bits; see the slow read-only mount test
  locked = tmp_path / 'ro'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    with pytest.raises(ConfigError, match='is not writable: Permission denied'):
      workdir_lib.WorkdirLock(str(locked)).acquire()
  finally:
    locked.chmod(0o700)


# ---- the lock and the space checks, in process -------------------------------------

def test_lock_refuses_a_live_holder_and_takes_over_stale_ones(tmp_path, caplog):
  from gensuite.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  lock = workdir_lib.WorkdirLock(workdir)
  lock.acquire()  # makes the directory
  record = workdir_lib.holder(workdir)
  assert record['pid'] == os.getpid() and record['host'] == socket.gethostname()
  with pytest.raises(workdir_lib.WorkdirLocked, match=f'pid {os.getpid()}') as e:
    workdir_lib.WorkdirLock(workdir).acquire()  # a second flock, even in one process
  assert e.value.holder['pid'] == os.getpid()
  lock.release()
  assert not os.path.exists(workdir)  # it made the directory and nothing else was written
  # A dead holder on this host: its flock is gone; taken over with one warning.
  os.makedirs(workdir)
  dead = subprocess.Popen(['true'])
  dead.wait()
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': dead.pid, 'since': 'then'}, f)
  with caplog.at_level('WARNING', logger='gensuite'):
    with workdir_lib.WorkdirLock(workdir):
      pass
  assert [r.getMessage() for r in caplog.records] == [
      f'took over the stale lock of {workdir} left by host {socket.gethostname()}, pid '
      f'{dead.pid}, since then (no longer running)']
  assert os.listdir(workdir) == []
  # Another host: refused, its record kept; --force_unlock takes it.
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    json.dump({'host': 'elsewhere', 'pid': 1, 'since': 'then'}, f)
  with pytest.raises(workdir_lib.WorkdirLocked, match='another host'):
    workdir_lib.WorkdirLock(workdir).acquire()
  assert workdir_lib.holder(workdir)['host'] == 'elsewhere'
  with workdir_lib.WorkdirLock(workdir, force=True):
    assert workdir_lib.holder(workdir)['pid'] == os.getpid()


def test_space_estimate_warning_and_out_of_space_detection(tmp_path, monkeypatch, caplog):
  import collections  # pylint: disable=g-import-not-at-top
  import errno  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  tree = {'a': np.zeros((10, 10), np.float32), 'b': jax.ShapeDtypeStruct((4,), np.int64)}
  assert workdir_lib.tree_nbytes(tree) == 400 + 32
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(shutil, 'disk_usage', lambda p: usage(10**9, 0, 1000))
  with caplog.at_level('WARNING', logger='gensuite'):
    assert not workdir_lib.warn_if_low(str(tmp_path), 500)
    assert workdir_lib.warn_if_low(str(tmp_path), 501)
  assert len(caplog.records) == 1 and 'low disk space: 1.0 kB (1000 bytes) free' in \
      caplog.records[0].getMessage()
  assert workdir_lib.is_out_of_space(OSError(errno.ENOSPC, 'No space left on device'))
  assert workdir_lib.is_out_of_space(OSError(errno.EDQUOT, 'Disk quota exceeded'))
  assert workdir_lib.is_out_of_space(ValueError(
      'RESOURCE_EXHAUSTED: Error writing "a/0": Failed to write 1835008 bytes to file 20: '
      "No space left on device [os_error_code='28']"))
  assert not workdir_lib.is_out_of_space(ValueError('RESOURCE_EXHAUSTED: out of memory'))
  assert not workdir_lib.is_out_of_space(OSError(errno.EIO, 'I/O error'))


def test_metrics_write_failure_leaves_no_half_line(tmp_path, monkeypatch):
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('GENSUITE_FAULT_ENOSPC_IN_METRICS_AT_STEP', '2')
  writer = log_lib.MetricWriter(str(tmp_path), enabled=True)
  writer.write_scalars(1, {'loss': 1.0})
  with pytest.raises(OSError) as e:
    writer.write_scalars(2, {'loss': 0.5})
  assert e.value.errno == 28 and e.value.filename == writer.jsonl_path
  writer.close(quiet=True)
  assert [r['step'] for r in log_lib.read_jsonl(str(tmp_path))] == [1]


# ---- real filesystems (root: mounts a tmpfs) -----------------------------------------

def _mount(target, options):
  os.makedirs(target, exist_ok=True)
  proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(target)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {proc.stderr.strip()}')


@pytest.mark.slow
def test_real_full_tmpfs_then_more_space_resumes_bitwise(tmp_path):
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root')
  args = ARGS + ['--config.net.hidden=128']  # a 1.6 MB state: one checkpoint fits in 3 MB
  alone = str(tmp_path / 'alone')
  run_cli('train', f'--workdir={alone}', *args)
  mnt = tmp_path / 'mnt'
  _mount(mnt, 'size=3m')
  try:
    workdir = str(mnt / 'run')
    proc = run_cli('train', f'--workdir={workdir}', *args, check=False)
    line = _only_line(proc, 1)
    assert [l for l in proc.stderr.splitlines() if 'low disk space' in l]
    assert f'no space left on device writing {workdir}/checkpoints/20.orbax-checkpoint-tmp' \
        in line and f'{workdir}/checkpoints/10;' in line, line
    assert _ckpt_entries(workdir) == ['10']
    subprocess.run(['mount', '-o', 'remount,size=16m', str(mnt)], check=True)
    run_cli('train', f'--workdir={workdir}', *args)
    (step_a, leaves_a), (step_b, leaves_b) = final_leaves(alone), final_leaves(workdir)
    assert step_a == step_b == 30
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_array_equal(x, y)
    assert losses(workdir) == losses(alone)
  finally:
    subprocess.run(['umount', str(mnt)], check=False)


@pytest.mark.slow
def test_read_only_mount_and_sigterm(tmp_path):
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root')
  mnt = tmp_path / 'ro'
  _mount(mnt, 'ro,size=1m')
  try:
    proc = run_cli('train', f'--config={TOY}', f'--workdir={mnt}/run', check=False)
    assert _only_line(proc, 2) == (f'gensuite: error: workdir {mnt}/run cannot be created: '
                                   'Read-only file system')
  finally:
    subprocess.run(['umount', str(mnt)], check=False)
  # SIGTERM: a checkpoint, one line, exit 143, the lock released.
  workdir = str(tmp_path / 'term')
  go = str(tmp_path / 'go')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'gensuite.cli', 'train', f'--workdir={workdir}', *ARGS],
      cwd=REPO, env=cli_env(GENSUITE_FAULT_PAUSE_AT_STEP=f'12:{go}'),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for(go + '.paused', proc)
  proc.terminate()
  time.sleep(0.5)  # the handler runs before the pause can see the file
  with open(go, 'w'):
    pass
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  assert 'Traceback' not in err
  assert err.strip().splitlines()[-1] == (
      f'gensuite: error: SIGTERM: stopped after step 13 and saved {workdir}/checkpoints/13; '
      'run the same command again to resume')
  assert not os.path.exists(os.path.join(workdir, '.lock'))
