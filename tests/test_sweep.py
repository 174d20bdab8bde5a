"""Sweeps: grids, failures recorded without stopping the others, re-runs skip finished runs."""
import csv
import os

import pytest

from conftest import run_cli, tree_hash
from gensuite import sweep
from gensuite.errors import ConfigError


def test_grid_helpers():
  assert sweep.product(a=[1, 2], b=['x']) == [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
  assert sweep.zip_(a=[1, 2], b=[3, 4]) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(ConfigError):
    sweep.zip_(a=[1, 2], b=[3])
  points = sweep.random_search(50, seed=1, lr=('log', 1e-4, 1e-2), depth=[2, 3])
  assert points == sweep.random_search(50, seed=1, lr=('log', 1e-4, 1e-2), depth=[2, 3])
  assert all(1e-4 <= p['lr'] <= 1e-2 and p['depth'] in (2, 3) for p in points)
  assert sweep.run_name({'seed': 0, 'optim.lr': 0.001}) == 'optim.lr=0.001,seed=0'


def test_sweep_records_failures_and_resumes(tmp_path):
  sweep_file = tmp_path / 'sw.py'
  sweep_file.write_text('from gensuite import sweep\n'
                        'def get_sweep():\n'
                        "  return sweep.product(**{'optim.lr': [1e-3, 3e-3]}) + "
                        "[{'train.batch_size': 'abc'}]\n")
  workdir = str(tmp_path / 'sweep')
  args = ['sweep', '--config=configs/flow_matching/toy2d.py:smoke', f'--sweep={sweep_file}',
          f'--workdir={workdir}', '--config.train.eval_every=0']
  proc = run_cli(*args)
  assert 'optim.lr=0.001 | done' in proc.stdout
  with open(os.path.join(workdir, 'summary.csv')) as f:
    rows = {r['run']: r for r in csv.DictReader(f)}
  assert rows['optim.lr=0.001']['status'] == 'done'
  assert rows['optim.lr=0.003']['status'] == 'done'
  assert rows['train.batch_size=abc']['status'] == 'failed'
  assert 'batch_size' in rows['train.batch_size=abc']['error']
  assert float(rows['optim.lr=0.001']['step']) == 20
  assert rows['optim.lr=0.001']['loss'] != rows['optim.lr=0.003']['loss']
  done = os.path.join(workdir, 'optim.lr=0.001')
  before = tree_hash(done)
  run_cli(*args)
  assert tree_hash(done) == before  # finished runs are skipped, not retrained


# ---- devices per run, launchers, studies ------------------------------------------

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import signal  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position
import time  # pylint: disable=g-import-not-at-top,wrong-import-position

from conftest import REPO, cli_env  # pylint: disable=g-import-not-at-top,wrong-import-position
from gensuite import launchers  # pylint: disable=g-import-not-at-top,wrong-import-position

SMOKE = 'configs/flow_matching/toy2d.py:smoke'
# A short run: what these tests check is where runs train, not what they learn.
SHORT = ('--config.train.eval_every=0', '--config.train.num_steps=6',
         '--config.train.log_every=3', '--config.train.ckpt_every=0')


def _sweep_file(tmp_path, body, name='sw.py'):
  path = tmp_path / name
  path.write_text('from gensuite import sweep\n' + body)
  return str(path)


def _launch(workdir):
  with open(os.path.join(workdir, 'launch.json')) as f:
    return json.load(f)


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.csv')) as f:
    return list(csv.DictReader(f))


def test_device_pool_queue_and_visibility_units():
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=4 --x=1'}
  pool = launchers.detect_devices(env)
  assert pool == launchers.Devices('cpu', ['0', '1', '2', '3'])
  assert launchers.detect_devices({'JAX_PLATFORMS': 'cpu'}).ids == ['0']
  assert launchers.detect_devices({'JAX_PLATFORMS': 'cuda',
                                   'CUDA_VISIBLE_DEVICES': '2,3,5'}).ids == ['2', '3', '5']
  assert launchers.visibility_env('cpu', ['2', '3'], 1, env) == {
      'XLA_FLAGS': '--xla_force_host_platform_device_count=2 --x=1'}
  assert launchers.visibility_env('gpu', ['4', '5'], 2, {}) == {'CUDA_VISIBLE_DEVICES': '4,5'}
  tpu = launchers.visibility_env('tpu', ['2', '3'], 1, {})
  assert tpu['TPU_VISIBLE_CHIPS'] == '2,3' and tpu['TPU_CHIPS_PER_PROCESS_BOUNDS'] == '1,2,1'
  assert tpu['TPU_PROCESS_BOUNDS'] == '1,1,1'
  # defaults: every device for one run; one device per run in parallel on accelerators
  gpus = launchers.Devices('gpu', ['0', '1', '2', '3'])
  assert launchers.resolve_devices_per_run(gpus, None, 1) is None
  assert launchers.resolve_devices_per_run(gpus, None, 2) == 1
  assert launchers.resolve_devices_per_run(pool, None, 2) is None  # CPU: shared, as before
  for bad in (0, 5):
    with pytest.raises(ConfigError):
      launchers.resolve_devices_per_run(gpus, bad, 2)
  with pytest.raises(ConfigError):
    launchers.resolve_devices_per_run(launchers.Devices('tpu', list('01234567')), 3, 2)
  # aligned blocks, first come first served, freed blocks reused
  queue = launchers.DeviceQueue(['0', '1', '2', '3', '4'], 2)
  assert queue.blocks == [['0', '1'], ['2', '3']]
  a, b = queue.acquire(), queue.acquire()
  assert {tuple(a[1]), tuple(b[1])} == {('0', '1'), ('2', '3')}
  queue.release(a[0])
  assert queue.acquire() == a
  assert [launchers.parse_minutes(t) for t in ('90', '1:30:00', '1-00:00:00', '10:30')] == \
      [90, 90, 1440, 11]


def test_parallel_runs_get_disjoint_devices(tmp_path):
  sweep_file = _sweep_file(tmp_path, "def get_sweep():\n  return [{'seed': 0}, {'seed': 1}]\n")
  workdir = str(tmp_path / 'sweep')
  run_cli('sweep', f'--config={SMOKE}', f'--sweep={sweep_file}', f'--workdir={workdir}',
          '--parallel=2', '--devices_per_run=2', *SHORT, devices=4)
  rows = {r['run']: r for r in _summary(workdir)}
  held, spans = [], []
  for name in ('seed=0', 'seed=1'):
    run_dir = os.path.join(workdir, name)
    launch = _launch(run_dir)
    # the child itself saw exactly its 2 devices: its environment and jax.devices()
    assert '--xla_force_host_platform_device_count=2' in launch['env']['XLA_FLAGS']
    assert len(launch['jax_devices']) == 2 and launch['platform'] == 'cpu'
    assert rows[name]['status'] == 'done' and rows[name]['devices'] == launch['devices']
    held.append(set(launch['devices'].split(':')[1].split(',')))
    spans.append((launch['started'], os.path.getmtime(os.path.join(run_dir,
                                                                   'sweep_status.json'))))
  assert held[0].isdisjoint(held[1]) and held[0] | held[1] == {'0', '1', '2', '3'}
  assert max(s for s, _ in spans) < min(e for _, e in spans)  # they trained at once
  assert list(_summary(workdir)[0])[-1] == 'devices'


def test_failed_run_frees_its_devices_and_the_queue_goes_on(tmp_path):
  # 2 devices, 2 per run: one run at a time; the first one fails at once.
  sweep_file = _sweep_file(tmp_path, "def get_sweep():\n  return [{'train.batch_size': 'abc'}, "
                                     "{'seed': 1}]\n")
  workdir = str(tmp_path / 'sweep')
  run_cli('sweep', f'--config={SMOKE}', f'--sweep={sweep_file}', f'--workdir={workdir}',
          '--parallel=2', '--devices_per_run=2', *SHORT, devices=2)
  rows = {r['run']: r for r in _summary(workdir)}
  assert rows['train.batch_size=abc']['status'] == 'failed'
  assert rows['seed=1']['status'] == 'done'
  bad, good = (os.path.join(workdir, n) for n in ('train.batch_size=abc', 'seed=1'))
  assert _launch(bad)['devices'] == _launch(good)['devices'] == 'cpu:0,1'
  spans = sorted((_launch(d)['started'], os.path.getmtime(os.path.join(d, 'sweep_status.json')))
                 for d in (bad, good))
  assert spans[0][1] <= spans[1][0]  # the second took the devices the first gave back


def _comparable(rows):
  return [{k: v for k, v in r.items() if k != 'steps_per_sec'} for r in rows]


def test_submitit_local_array_matches_the_local_launcher(tmp_path):
  pytest.importorskip('submitit')
  sweep_file = _sweep_file(tmp_path, "def get_sweep():\n"
                                     "  return sweep.product(**{'optim.lr': [1e-3, 3e-3]})\n")
  local, slurm = str(tmp_path / 'local'), str(tmp_path / 'slurm')
  common = (f'--config={SMOKE}', f'--sweep={sweep_file}', '--parallel=2', *SHORT)
  run_cli('sweep', *common, f'--workdir={local}')
  proc = run_cli('sweep', *common, f'--workdir={slurm}', '--launcher=slurm',
                 '--slurm.executor=local', '--slurm.time=10')
  assert 'optim.lr=0.001 | done' in proc.stdout
  with open(os.path.join(local, 'summary.csv')) as f:
    header = f.readline()
  with open(os.path.join(slurm, 'summary.csv')) as f:
    assert f.readline() == header
  assert _comparable(_summary(slurm)) == _comparable(_summary(local))
  with open(os.path.join(slurm, '.submitit', 'jobs.json')) as f:
    jobs = json.load(f)
  assert len(jobs) == 2
  for run_dir in jobs:  # each task trained in its own run directory, with its hparams
    assert os.path.isdir(os.path.join(run_dir, 'checkpoints', '6'))
    assert any('hparams' in root and any(n.startswith('events.out') for n in files)
               for root, _, files in os.walk(run_dir))
  before = tree_hash(os.path.join(slurm, 'optim.lr=0.001'))
  run_cli('sweep', *common, f'--workdir={slurm}', '--launcher=slurm', '--slurm.executor=local')
  assert tree_hash(os.path.join(slurm, 'optim.lr=0.001')) == before  # finished: not resubmitted
  with open(os.path.join(slurm, '.submitit', 'jobs.json')) as f:
    assert json.load(f) == jobs


def _wait_for(predicate, timeout=300, what=''):
  deadline = time.time() + timeout
  while not predicate():
    if time.time() > deadline:
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.1)


def test_submitit_task_checkpoints_and_requeues_on_sigterm(tmp_path):
  """SLURM preemption: SIGTERM reaches the trainer, which checkpoints; the task requeues."""
  pytest.importorskip('submitit')
  sweep_file = _sweep_file(tmp_path, "def get_sweep():\n  return [{'seed': 3}]\n")
  workdir = str(tmp_path / 'sweep')
  gate = str(tmp_path / 'gate')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'gensuite.cli', 'sweep', f'--config={SMOKE}',
       f'--sweep={sweep_file}', f'--workdir={workdir}', '--launcher=slurm',
       '--slurm.executor=local', '--config.train.eval_every=0'],
      cwd=REPO, env=cli_env(1, GENSUITE_FAULT_PAUSE_AT_STEP=f'10:{gate}'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    _wait_for(lambda: os.path.exists(gate + '.paused'), what='the run to reach step 10')
    run_dir = os.path.join(workdir, 'seed=3')
    first = _launch(run_dir)['pid']
    os.kill(first, signal.SIGTERM)
    open(gate, 'w').close()
    out, err = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 0, err[-3000:]
  assert 'seed=3 | done' in out
  with open(os.path.join(run_dir, 'sweep.log')) as f:
    log = f.read()
  assert 'SIGTERM: stopped after step 11' in log and 'resumed from' in log
  assert _launch(run_dir)['pid'] != first  # the requeued task started a new trainer
  assert _summary(workdir)[0]['step'] == '20'


STUDY = """
def get_study():
  return sweep.Study(metric='loss', direction='minimize', num_trials=4, sampler='random',
                     seed=5, space={'seed': ('int', 0, 10**6)})
"""


@pytest.mark.slow  # about 40 s: six trial runs and a killed study; the grid sweep's
# resume is checked by test_sweep_records_failures_and_resumes
def test_study_killed_after_two_trials_resumes_to_four(tmp_path):
  optuna = pytest.importorskip('optuna')
  sweep_file = _sweep_file(tmp_path, STUDY)
  workdir = str(tmp_path / 'study')
  args = ['sweep', f'--config={SMOKE}', f'--sweep={sweep_file}', f'--workdir={workdir}',
          '--parallel=2', *SHORT]
  proc = subprocess.Popen([sys.executable, '-m', 'gensuite.cli', *args], cwd=REPO,
                          env=cli_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  done = lambda n: (launchers.read_status(os.path.join(workdir, f'trial_{n:04d}')) or {}).get(
      'status') == 'done'
  try:
    _wait_for(lambda: done(0) and done(1) or proc.poll() is not None, what='two trials')
  finally:
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its trainers, wherever they are
    proc.wait()
  assert not done(3)
  finished = {n: tree_hash(os.path.join(workdir, f'trial_{n:04d}')) for n in (0, 1)}
  out = run_cli(*args).stdout
  study = optuna.load_study(study_name='gensuite', storage=f'sqlite:///{workdir}/optuna.db')
  trials = study.get_trials()
  assert [t.number for t in trials] == [0, 1, 2, 3]
  assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), (
      [(t.number, t.state.name, t.user_attrs,
        launchers.read_status(os.path.join(workdir, f'trial_{t.number:04d}')))
       for t in trials], out)
  assert len({t.params['seed'] for t in trials}) == 4  # no point drawn twice
  assert sorted(n for n in os.listdir(workdir) if n.startswith('trial_')) == \
      [f'trial_{n:04d}' for n in range(4)]
  for n, digest in finished.items():  # finished trials were not run again
    assert tree_hash(os.path.join(workdir, f'trial_{n:04d}')) == digest
  rows = _summary(workdir)
  assert [r['status'] for r in rows] == ['done'] * 4
  assert [float(r['objective']) for r in rows] == [t.value for t in trials]
  assert 'trial_0003 | done' in out


def _one_line_exit_2(proc, workdir):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gensuite: error: '), proc.stderr[-2000:]
  assert not os.path.exists(workdir)
  return lines[0]


def test_bad_sweep_input_is_one_line_exit_2_nothing_written(tmp_path):
  grid = _sweep_file(tmp_path, "def get_sweep():\n  return [{'seed': 0}]\n")
  no_metric = _sweep_file(tmp_path, "def get_study():\n"
                                    "  return sweep.Study(space={'seed': ('int', 0, 9)})\n",
                          'nometric.py')
  workdir = str(tmp_path / 'w')
  base = ('sweep', f'--config={SMOKE}', f'--workdir={workdir}')
  line = _one_line_exit_2(run_cli(*base, f'--sweep={grid}', '--devices_per_run=5',
                                  devices=4, check=False), workdir)
  assert '--devices_per_run=5 is more than the 4 cpu devices' in line
  line = _one_line_exit_2(run_cli(*base, f'--sweep={grid}', '--launcher=pbs', check=False),
                          workdir)
  assert 'launcher' in line and 'local|slurm' in line
  line = _one_line_exit_2(run_cli(*base, f'--sweep={no_metric}', check=False), workdir)
  assert 'names no objective metric' in line
  with pytest.raises(ConfigError, match='unknown launcher'):
    sweep.run(SMOKE, grid, workdir, launcher='pbs')
  assert not os.path.exists(workdir)


def test_missing_extras_name_the_extra(tmp_path):
  # optuna / submitit that cannot be imported, as on an install without the extras
  blocker = tmp_path / 'blocked'
  for name in ('optuna', 'submitit'):
    (blocker / name).mkdir(parents=True)
    (blocker / name / '__init__.py').write_text('raise ImportError("not installed")\n')
  study = _sweep_file(tmp_path, STUDY)
  grid = _sweep_file(tmp_path, "def get_sweep():\n  return [{'seed': 0}]\n", 'grid.py')
  workdir = str(tmp_path / 'w')
  env = {'PYTHONPATH': f'{blocker}{os.pathsep}{REPO}'}
  line = _one_line_exit_2(run_cli('sweep', f'--config={SMOKE}', f'--workdir={workdir}',
                                  f'--sweep={study}', check=False, **env), workdir)
  assert "'optuna' extra" in line and "pip install -e '.[optuna]'" in line
  line = _one_line_exit_2(run_cli('sweep', f'--config={SMOKE}', f'--workdir={workdir}',
                                  f'--sweep={grid}', '--launcher=slurm', check=False, **env),
                          workdir)
  assert "'slurm' extra" in line


def test_pruning_reports_evals_and_stops_the_run(tmp_path):
  run_dir = tmp_path / 'trial_0000'
  run_dir.mkdir()
  (run_dir / 'metrics.jsonl').write_text(
      '{"step": 5, "loss": 1.0}\n{"step": 10, "eval/mmd": 0.5}\n{"step": 20, "eval/mmd": 0.4}\n')

  class Trial:
    reported = []

    def report(self, value, step):
      self.reported.append((step, value))

    def should_prune(self):
      return self.reported[-1][0] >= 20

  task = launchers.RunTask(SMOKE, {}, str(run_dir))
  flight = {'trial': Trial(), 'task': task, 'last_step': 10, 'stopping': False}
  sweep._report(flight, 'eval/mmd')  # pylint: disable=protected-access
  assert Trial.reported == [(20, 0.4)] and flight['stopping']  # step 10 was reported before
  assert (run_dir / launchers.STOP).exists()
  # a run told to stop is stopped (SIGTERM) and recorded as pruned, not failed
  status = task()
  assert status['status'] == 'pruned'
  assert launchers.read_status(str(run_dir))['status'] == 'pruned' and task.finished()
