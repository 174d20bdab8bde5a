"""Where a sweep's runs train: processes on this host, each on its own devices, or
SLURM jobs through submitit.

  task = RunTask('configs/flow_matching/toy2d.py', {'optim.lr': 1e-3}, 'runs/sw/optim.lr=0.001')
  launcher = LocalLauncher(parallel=2, devices_per_run=1)        # this host
  launcher = SlurmLauncher('runs/sw', partition='gpu', gpus_per_run=1, time='4:00:00')
  statuses = launcher.run_all([task, ...])        # blocks; one status dict per task
  handle = launcher.start(task); handle.done(); handle.status()   # one at a time (studies)

Every run trains in a fresh `gensuite train` process (started through this module's
`python -m gensuite.launchers train ...`, which first writes DIR/launch.json: the
devices the run was given, the visibility variables it saw, and what `jax.devices()`
returns inside it). `RunTask` writes DIR/sweep_status.json when the process ends
(done / failed / pruned, its final metrics, its devices) and skips a run whose status
is already done.

Devices on one host (`LocalLauncher`). The pool is what the host has: the GPUs
`nvidia-smi` lists (or those of CUDA_VISIBLE_DEVICES), the TPU chips of /dev/accel*
or /dev/vfio (or TPU_VISIBLE_CHIPS), or on CPU the `--xla_force_host_platform_device_count`
of XLA_FLAGS (1 without it); JAX_PLATFORMS, when set, chooses the platform. With
`devices_per_run=k` the pool is cut into aligned blocks of k devices; a run waits
(first come, first served) for a free block, holds it while it trains and frees it
when its process ends, whatever the end (done, error, crash, killed). A run sees only
its block:
  * GPU: CUDA_VISIBLE_DEVICES=<its GPUs>. JAX preallocates a fraction (75%, or
    XLA_PYTHON_CLIENT_MEM_FRACTION) of each *visible* GPU only, so no run touches
    another's memory; set XLA_PYTHON_CLIENT_PREALLOCATE=false yourself to allocate on
    demand instead.
  * TPU: TPU_VISIBLE_CHIPS (and the older name TPU_VISIBLE_DEVICES) = its chips,
    TPU_CHIPS_PER_PROCESS_BOUNDS for k = 1, 2 or 4 chips (1,1,1 / 1,2,1 / 2,2,1),
    TPU_PROCESS_BOUNDS=1,1,1 and a mesh-controller port of its own per block. These
    follow the JAX team's published recipe for independent processes on one TPU VM;
    they have not been tried on a TPU here, and other chip counts (or hosts whose
    chips are not laid out 2x2) may need other bounds.
  * CPU: JAX has no visibility variable on CPU. The run gets
    `--xla_force_host_platform_device_count=k` in its XLA_FLAGS, so its
    `jax.devices()` holds k (virtual) devices, and the ids of the parent's pool that
    it holds are recorded (launch.json, summary.csv) so that no two concurrent runs
    hold the same ids. The host's cores are still shared: this is bookkeeping that
    lets tests exercise the queue, not isolation.
Without `devices_per_run` a single run (`parallel=1`) gets every device, and so do
parallel runs on CPU (as before); parallel runs on GPU/TPU get one device each.

SLURM (`SlurmLauncher`, `pip install 'gensuite[slurm]'`): the runs of a grid go out as
one job array (a study's trials as single jobs), each task a `RunTask` running
`gensuite train` in its run directory with `--slurm.gpus_per_run` GPUs. submitit's
pre-timeout signal (USR2, `signal_delay_s` before the time limit) makes the task stop
its trainer with SIGTERM (it checkpoints at the next step) and requeue itself; a
SIGTERM from SLURM itself (preemption) reaches the trainer directly, which checkpoints
and exits 143, and the task then requeues the job the same way. A requeued task
resumes the run from its checkpoint. The job ids are kept in DIR/.submitit/jobs.json:
re-running the sweep waits for runs whose job is still queued or running, skips
finished runs and resubmits the others. `executor='local'` runs the same tasks through
submitit's LocalExecutor on this machine (one process per task, no queue): a way to
try the SLURM path without a cluster.
"""
import collections
import concurrent.futures
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from gensuite.errors import ConfigError

STATUS = 'sweep_status.json'
LAUNCH = 'launch.json'
STOP = 'sweep_stop'          # a file the sweep writes to stop a run (a pruned trial)
DEVICES_ENV = 'GENSUITE_SWEEP_DEVICES'
LAUNCHERS = ('local', 'slurm')
_FORCE_COUNT = re.compile(r'--xla_force_host_platform_device_count=(\d+)')
# Variables that decide which devices a process sees; recorded in launch.json.
VISIBILITY_VARS = ('CUDA_VISIBLE_DEVICES', 'TPU_VISIBLE_CHIPS', 'TPU_VISIBLE_DEVICES',
                   'TPU_CHIPS_PER_PROCESS_BOUNDS', 'TPU_PROCESS_BOUNDS', 'XLA_FLAGS',
                   'XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_PREALLOCATE',
                   'JAX_PLATFORMS', 'SLURM_JOB_ID', 'SLURM_ARRAY_TASK_ID')
# TPU chips per process -> TPU_CHIPS_PER_PROCESS_BOUNDS (a 2x2 host: v4, v5p, 4-chip v5e/v6e).
_TPU_BOUNDS = {1: '1,1,1', 2: '1,2,1', 4: '2,2,1'}
_TPU_BASE_PORT = 8476

Devices = collections.namedtuple('Devices', 'platform ids')


def require(module: str, extra: str):
  """Imports an optional dependency, or raises a one-line ConfigError naming its extra."""
  try:
    return __import__(module)
  except ImportError:
    raise ConfigError(f'{module} is not installed; it comes with the {extra!r} extra: '
                      f"pip install -e '.[{extra}]'") from None


# ---- devices ------------------------------------------------------------------------

def _nvidia_gpus() -> list[str]:
  if not shutil.which('nvidia-smi'):
    return []
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return []
  return [l.strip() for l in out.stdout.splitlines() if l.strip().isdigit()] \
      if out.returncode == 0 else []


def _tpu_chips() -> list[str]:
  chips = glob.glob('/dev/accel[0-9]*') or [p for p in glob.glob('/dev/vfio/*')
                                             if os.path.basename(p).isdigit()]
  return [str(i) for i in range(len(chips))]


def _listed(text: str | None) -> list[str] | None:
  if text is None:
    return None
  return [t.strip() for t in text.split(',') if t.strip() and t.strip() != '-1']


def detect_devices(env=None) -> Devices:
  """The devices of this host that runs can be given: Devices(platform, ids).

  Reads no JAX backend (a backend would take GPU memory in the sweep's own process).
  """
  env = os.environ if env is None else env
  wanted = (env.get('JAX_PLATFORMS') or '').split(',')[0].strip().lower()
  if wanted in ('cuda', 'gpu', 'rocm'):
    platform = 'gpu'
  elif wanted in ('tpu', 'cpu'):
    platform = wanted
  elif _tpu_chips():
    platform = 'tpu'
  elif _nvidia_gpus():
    platform = 'gpu'
  else:
    platform = 'cpu'
  if platform == 'gpu':
    ids = _listed(env.get('CUDA_VISIBLE_DEVICES'))
    return Devices('gpu', ids if ids is not None else _nvidia_gpus())
  if platform == 'tpu':
    ids = _listed(env.get('TPU_VISIBLE_CHIPS') or env.get('TPU_VISIBLE_DEVICES'))
    return Devices('tpu', ids if ids is not None else _tpu_chips())
  match = _FORCE_COUNT.search(env.get('XLA_FLAGS', ''))
  return Devices('cpu', [str(i) for i in range(int(match.group(1)) if match else 1)])


def label(platform: str, ids) -> str:
  return f'{platform}:{",".join(ids)}'


def resolve_devices_per_run(pool: Devices, devices_per_run: int | None,
                            parallel: int) -> int | None:
  """k devices per run, or None: every run sees every device (nothing is set)."""
  if devices_per_run is None:
    if parallel > 1 and pool.platform in ('gpu', 'tpu') and pool.ids:
      return 1  # one accelerator each (runs queue for them), never two runs on one
    return None
  if devices_per_run < 1:
    raise ConfigError(f'--devices_per_run must be >= 1, got {devices_per_run}')
  n = len(pool.ids)
  if devices_per_run > n:
    raise ConfigError(f'--devices_per_run={devices_per_run} is more than the {n} '
                      f'{pool.platform} device{"s" if n != 1 else ""} of this host')
  if pool.platform == 'tpu' and devices_per_run != n and devices_per_run not in _TPU_BOUNDS:
    raise ConfigError(f'--devices_per_run={devices_per_run} on TPU: use 1, 2 or 4 chips '
                      f'(or all {n})')
  return devices_per_run


def visibility_env(platform: str, ids, slot: int, env) -> dict:
  """The variables that make a process see only `ids` (None: remove the variable)."""
  ids = list(ids)
  if platform == 'gpu':
    return {'CUDA_VISIBLE_DEVICES': ','.join(ids)}
  if platform == 'tpu':
    port = _TPU_BASE_PORT + slot
    return {'TPU_VISIBLE_CHIPS': ','.join(ids), 'TPU_VISIBLE_DEVICES': ','.join(ids),
            'TPU_CHIPS_PER_PROCESS_BOUNDS': _TPU_BOUNDS[len(ids)],
            'TPU_PROCESS_BOUNDS': '1,1,1', 'TPU_PROCESS_PORT': str(port),
            'TPU_PROCESS_ADDRESSES': f'localhost:{port}', 'CLOUD_TPU_TASK_ID': '0',
            'TPU_MESH_CONTROLLER_ADDRESS': f'localhost:{port}',
            'TPU_MESH_CONTROLLER_PORT': str(port)}
  flags = _FORCE_COUNT.sub('', env.get('XLA_FLAGS', '')).split()
  return {'XLA_FLAGS': ' '.join([f'--xla_force_host_platform_device_count={len(ids)}']
                                + flags)}


class DeviceQueue:
  """Aligned blocks of k devices, handed out first come, first served."""

  def __init__(self, ids, k: int):
    ids = list(ids)
    self.blocks = [ids[i * k:(i + 1) * k] for i in range(len(ids) // k)]
    self._free = list(range(len(self.blocks)))
    self._cond = threading.Condition()
    self._next_ticket = 0
    self._serving = 0

  def acquire(self) -> tuple[int, list[str]]:
    with self._cond:
      ticket = self._next_ticket
      self._next_ticket += 1
      while ticket != self._serving or not self._free:
        self._cond.wait()
      self._serving += 1
      slot = self._free.pop(0)
      self._cond.notify_all()
      return slot, self.blocks[slot]

  def release(self, slot: int) -> None:
    with self._cond:
      self._free.append(slot)
      self._free.sort()
      self._cond.notify_all()


# ---- one run --------------------------------------------------------------------------

def read_status(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, STATUS)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def final_metrics(workdir: str) -> dict:
  """The last value of every scalar in DIR/metrics.jsonl, and the last step."""
  last = {}
  for row in _jsonl(workdir):
    last.update({k: v for k, v in row.items() if k != 'step'})
    last['step'] = row['step']
  return last


def metric_series(workdir: str, name: str) -> list[tuple[int, float]]:
  """[(step, value)] of one scalar in DIR/metrics.jsonl, in file order."""
  return [(int(r['step']), float(r[name])) for r in _jsonl(workdir)
          if isinstance(r.get(name), (int, float))]


def _jsonl(workdir: str):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict) and 'step' in row:
        yield row


def flag_value(value, nested: bool = False) -> str:
  """A value as --config.a.b=<text>: strings bare at the top, quoted inside tuples."""
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(flag_value(v, True) for v in value) + (
        ',)' if len(value) == 1 else ')')
  return repr(value) if nested and isinstance(value, str) else str(value)


def _write_hparams(workdir, overrides, metrics):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
             for k, v in overrides.items()}
  scalars = {f'hparam/{k}': float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and k != 'step'}
  with SummaryWriter(logdir=workdir) as w:
    w.add_hparams(hparams, scalars, name='hparams')


def _preempt_signal():
  return getattr(signal, 'SIG' + os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2'))


class RunTask:
  """One run: `gensuite train` in `workdir` with `overrides`, to the end; its status.

  Picklable (submitit ships it to a SLURM node). `env`: variables to set (None:
  remove) on top of the environment it runs in; `devices`: the label of the devices
  given to it (default: what its host shows). `requeue`: under submitit, a trainer
  that stopped on SIGTERM (exit 143, checkpoint saved) requeues the job.
  """

  def __init__(self, config_spec: str, overrides: dict, workdir: str, *,
               hparams: dict | None = None, env: dict | None = None,
               devices: str | None = None, requeue: bool = False):
    self.config_spec = config_spec
    self.overrides = dict(overrides)
    self.workdir = workdir
    self.hparams = dict(self.overrides if hparams is None else hparams)
    self.env = dict(env or {})
    self.devices = devices
    self.requeue = requeue
    self._proc = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_proc'] = None
    return state

  def copy(self, **changes) -> 'RunTask':
    new = RunTask(self.config_spec, self.overrides, self.workdir, hparams=self.hparams,
                  env=self.env, devices=self.devices, requeue=self.requeue)
    new.__dict__.update(changes)
    return new

  def finished(self) -> dict | None:
    """The status of a run that is over for good (done or pruned), else None."""
    status = read_status(self.workdir)
    return status if status and status.get('status') in ('done', 'pruned') else None

  def __call__(self) -> dict:
    status = self.finished()
    if status:
      return status
    os.makedirs(self.workdir, exist_ok=True)
    env = dict(os.environ)
    for k, v in self.env.items():
      if v is None:
        env.pop(k, None)
      else:
        env[k] = v
    devices = self.devices or label(*detect_devices(env))
    env[DEVICES_ENV] = devices
    env['PYTHONUNBUFFERED'] = '1'  # the log in the order things happened
    args = [sys.executable, '-m', 'gensuite.launchers', 'train',
            f'--config={self.config_spec}', f'--workdir={self.workdir}']
    args += [f'--config.{k}={flag_value(v)}' for k, v in self.overrides.items()]
    stop_path = os.path.join(self.workdir, STOP)
    log_path = os.path.join(self.workdir, 'sweep.log')
    stopped = False
    with open(log_path, 'a') as log:
      start = log.tell()
      self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
      while self._proc.poll() is None:
        if not stopped and os.path.exists(stop_path):
          self._proc.send_signal(signal.SIGTERM)  # checkpoints at its next step, exit 143
          stopped = True
        time.sleep(0.2)
      code = self._proc.returncode
    with open(log_path, errors='replace') as f:
      f.seek(start)
      lines = [l for l in f.read().splitlines() if l.strip()]
    if stopped:
      status = {'status': 'pruned'}
    elif code == 0:
      status = {'status': 'done'}
    else:
      status = {'status': 'failed', 'exit_code': code,
                'error': lines[-1][:300] if lines else f'exit code {code}'}
    status['devices'] = devices
    status['metrics'] = final_metrics(self.workdir)
    _write_json(os.path.join(self.workdir, STATUS), status)
    if status['status'] == 'done':
      _write_hparams(self.workdir, self.hparams, status['metrics'])
    if code == 143 and self.requeue and not stopped:
      self._requeue()
    return status

  def _requeue(self) -> None:
    """Preempted (SIGTERM from SLURM reached the trainer, which saved a checkpoint):
    raise submitit's own preemption signal in this task, whose handler calls
    `checkpoint` below, requeues the job and exits. Outside submitit it does nothing."""
    sig = _preempt_signal()
    if signal.getsignal(sig) in (signal.SIG_DFL, signal.SIG_IGN, None):
      return
    try:
      os.kill(os.getpid(), sig)
      time.sleep(1.0)  # the handler runs here and exits the process
    except Exception:  # pylint: disable=broad-except
      pass  # e.g. `scontrol requeue` refused a cancelled job: the status says failed

  def checkpoint(self, *args, **kwargs):
    """submitit's hook before a requeue: stop the trainer (SIGTERM: it checkpoints at
    its next step and exits) and hand back a fresh copy of this task to run again."""
    del args, kwargs
    proc, deadline = self._proc, time.time() + 75
    if proc is not None and proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
      while proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    submitit = require('submitit', 'slurm')
    return submitit.helpers.DelayedSubmission(self.copy())


def _child_main(argv: list[str]) -> None:
  """`python -m gensuite.launchers train ARGS`: `gensuite train ARGS`, after writing
  DIR/launch.json with the devices this process was given and sees."""
  # submitit's pre-timeout signal is for the task process, which then stops this
  # trainer with SIGTERM; its default action here would kill it without a checkpoint.
  signal.signal(_preempt_signal(), signal.SIG_IGN)
  workdir = next((a.split('=', 1)[1] for a in argv if a.startswith('--workdir=')), None)
  record = {'devices': os.environ.get(DEVICES_ENV), 'host': socket.gethostname(),
            'pid': os.getpid(), 'started': time.time(),
            'env': {k: os.environ[k] for k in VISIBILITY_VARS if k in os.environ}}
  from gensuite.train import parallel  # pylint: disable=g-import-not-at-top
  if not parallel.launched_multihost():  # jax.distributed.initialize must come first
    try:
      import jax  # pylint: disable=g-import-not-at-top
      devices = jax.devices()
      record['platform'] = devices[0].platform
      record['jax_devices'] = [f'{d.platform}:{d.id}' for d in devices]
    except Exception as e:  # pylint: disable=broad-except
      record['jax_error'] = str(e).strip().splitlines()[0][:300] if str(e).strip() else repr(e)
  if workdir and os.path.isdir(workdir):
    _write_json(os.path.join(workdir, LAUNCH), record)
  # The CLI is run as a module, not imported: it imports gensuite.sweep, which imports
  # this module, and the package keeps its imports free of circles.
  import runpy  # pylint: disable=g-import-not-at-top
  sys.argv = ['gensuite', *argv]
  runpy.run_module('gensuite.cli', run_name='__main__', alter_sys=True)


# ---- launchers ----------------------------------------------------------------------

class _FutureHandle:
  def __init__(self, future):
    self._future = future

  def done(self) -> bool:
    return self._future.done()

  def status(self) -> dict:
    try:
      return self._future.result()
    except Exception as e:  # pylint: disable=broad-except
      return {'status': 'failed', 'error': f'{type(e).__name__}: {e}'[:300]}


class LocalLauncher:
  """Runs on this host, `parallel` at a time, each on its own devices (module doc)."""

  def __init__(self, parallel: int = 1, devices_per_run: int | None = None, env=None):
    if parallel < 1:
      raise ConfigError(f'--parallel must be >= 1, got {parallel}')
    self.parallel = parallel
    self.pool = detect_devices(env)
    self.devices_per_run = resolve_devices_per_run(self.pool, devices_per_run, parallel)
    self._queue = (DeviceQueue(self.pool.ids, self.devices_per_run)
                   if self.devices_per_run is not None else None)
    self._executor = None

  def _run(self, task: RunTask) -> dict:
    done = task.finished()
    if done:
      return done
    if self._queue is None:
      return task.copy(devices=label(*self.pool))()
    slot, ids = self._queue.acquire()
    try:
      env = visibility_env(self.pool.platform, ids, slot, os.environ)
      return task.copy(devices=label(self.pool.platform, ids), env={**task.env, **env})()
    finally:
      self._queue.release(slot)  # whatever ended the run

  def start(self, task: RunTask) -> _FutureHandle:
    if self._executor is None:
      self._executor = concurrent.futures.ThreadPoolExecutor(self.parallel)
    return _FutureHandle(self._executor.submit(self._run, task))

  def run_all(self, tasks) -> list[dict]:
    handles = [self.start(t) for t in tasks]
    return [h.status() for h in handles]

  def close(self) -> None:
    if self._executor is not None:
      self._executor.shutdown(wait=True)
      self._executor = None


def parse_minutes(text) -> int:
  """SLURM's time formats (MM, HH:MM:SS, D-HH[:MM[:SS]], MM:SS) -> whole minutes."""
  text = str(text).strip()
  m = re.fullmatch(r'(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?', text)
  if not m:
    raise ConfigError(f'--slurm.time={text!r}: use minutes, HH:MM:SS or D-HH:MM:SS')
  days, a, b, c = m.groups()
  if days is not None:  # D-HH[:MM[:SS]]
    seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
  elif c is not None:  # HH:MM:SS
    seconds = int(a) * 3600 + int(b) * 60 + int(c)
  elif b is not None:  # MM:SS
    seconds = int(a) * 60 + int(b)
  else:
    seconds = int(a) * 60
  if seconds <= 0:
    raise ConfigError(f'--slurm.time={text!r} must be positive')
  return max(1, math.ceil(seconds / 60))


_ALIVE = ('PENDING', 'RUNNING', 'REQUEUED', 'CONFIGURING', 'COMPLETING', 'RESIZING',
          'SUSPENDED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'SIGNALING', 'STAGE_OUT', 'UNKNOWN')


class _JobHandle:
  def __init__(self, job, task: RunTask):
    self.job, self.task = job, task

  def done(self) -> bool:
    try:
      return self.job.done()
    except Exception:  # pylint: disable=broad-except
      return False

  def status(self) -> dict:
    error = ''
    try:
      result = self.job.result()
    except Exception as e:  # pylint: disable=broad-except
      result, error = None, ' '.join(str(e).split())[-300:]
    status = read_status(self.task.workdir)
    if status is None:
      status = result if isinstance(result, dict) else {
          'status': 'failed', 'error': error or 'the job ended without a status'}
    return status


class SlurmLauncher:
  """A sweep's runs as SLURM jobs through submitit (module doc); one array per grid."""

  def __init__(self, workdir: str, *, executor: str = 'slurm', partition: str | None = None,
               gpus_per_run: int = 1, time='60', cpus_per_run: int | None = None,
               mem_gb: float | None = None, account: str | None = None,
               qos: str | None = None, constraint: str | None = None, setup=(),
               parallel: int | None = None, poll_s: float | None = None):
    self._submitit = require('submitit', 'slurm')
    if executor not in ('slurm', 'local'):
      raise ConfigError(f'unknown --slurm.executor {executor!r}; allowed: slurm, local')
    if gpus_per_run is not None and gpus_per_run < 0:
      raise ConfigError(f'--slurm.gpus_per_run must be >= 0, got {gpus_per_run}')
    if parallel is not None and parallel < 1:
      raise ConfigError(f'--parallel must be >= 1, got {parallel}')
    if executor == 'slurm' and not (shutil.which('sbatch') and shutil.which('srun')):
      raise ConfigError('--launcher=slurm: sbatch/srun are not on PATH (run it on a SLURM '
                        'login node; --slurm.executor=local runs the same tasks here)')
    self.minutes = parse_minutes(time)
    self.folder = os.path.join(os.path.abspath(workdir), '.submitit')
    self.kind = executor
    self.parallel = parallel
    self.poll_s = poll_s if poll_s is not None else (1.0 if executor == 'local' else 30.0)
    params = {'timeout_min': self.minutes, 'gpus_per_node': gpus_per_run or 0,
              'tasks_per_node': 1, 'nodes': 1}
    if cpus_per_run:
      params['cpus_per_task'] = cpus_per_run
    if mem_gb:
      params['mem_gb'] = mem_gb
    slurm = {'slurm_partition': partition, 'slurm_account': account, 'slurm_qos': qos,
             'slurm_constraint': constraint,
             'slurm_setup': list(setup) if setup else None,
             'slurm_array_parallelism': parallel}
    self._params = params
    self._slurm_params = {k: v for k, v in slurm.items() if v is not None}
    self._executor = None

  def _ex(self):
    if self._executor is None:
      submitit = self._submitit
      cluster = 'local' if self.kind == 'local' else 'slurm'
      ex = submitit.AutoExecutor(folder=self.folder, cluster=cluster)
      params = dict(self._params, name='gensuite-sweep')
      if cluster == 'slurm':
        params.update(self._slurm_params)
      else:  # submitit's LocalExecutor sets CUDA_VISIBLE_DEVICES=0..gpus_per_node-1
        params.pop('nodes')
        if detect_devices().platform != 'gpu':
          params['gpus_per_node'] = 0
      ex.update_parameters(**params)
      self._executor = ex
    return self._executor

  # job ids, so that a re-run waits for jobs still queued or running
  def _jobs_path(self):
    return os.path.join(self.folder, 'jobs.json')

  def _read_jobs(self) -> dict:
    try:
      with open(self._jobs_path()) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def _record(self, tasks, jobs) -> None:
    known = self._read_jobs()
    known.update({t.workdir: j.job_id for t, j in zip(tasks, jobs)})
    os.makedirs(self.folder, exist_ok=True)
    _write_json(self._jobs_path(), known)

  def _alive(self, task: RunTask):
    """The recorded job of `task`, if it is still queued or running on SLURM."""
    job_id = self._read_jobs().get(task.workdir)
    if not job_id or self.kind != 'slurm':
      return None  # submitit's local jobs end with the process that started them
    job = self._submitit.SlurmJob(folder=self.folder, job_id=job_id)
    try:
      state = job.state
    except Exception:  # pylint: disable=broad-except
      return None
    return job if str(state).split()[0].upper() in _ALIVE else None

  def _prepare(self, task: RunTask) -> RunTask:
    spec, sep, variant = task.config_spec.partition(':')
    spec = os.path.abspath(spec) + (sep + variant if sep else '')
    return task.copy(config_spec=spec, workdir=os.path.abspath(task.workdir), requeue=True)

  def start(self, task: RunTask) -> _JobHandle:
    task = self._prepare(task)
    job = self._alive(task)
    if job is None:
      job = self._ex().submit(task)
      self._record([task], [job])
    return _JobHandle(job, task)

  def run_all(self, tasks) -> list[dict]:
    tasks = [self._prepare(t) for t in tasks]
    handles, submit = {}, []
    for i, task in enumerate(tasks):
      done = task.finished()
      if done:
        handles[i] = done
        continue
      job = self._alive(task)
      if job is not None:
        handles[i] = _JobHandle(job, task)
      else:
        submit.append(i)
    if submit:
      ex = self._ex()
      with ex.batch():  # one job array
        jobs = [ex.submit(tasks[i]) for i in submit]
      self._record([tasks[i] for i in submit], jobs)
      for i, job in zip(submit, jobs):
        handles[i] = _JobHandle(job, tasks[i])
    pending = [h for h in handles.values() if isinstance(h, _JobHandle)]
    while not all(h.done() for h in pending):
      time.sleep(self.poll_s)
    return [h if isinstance(h, dict) else h.status() for _, h in sorted(handles.items())]

  def close(self) -> None:
    pass


def make(kind: str, workdir: str, *, parallel: int | None = None,
         devices_per_run: int | None = None, slurm: dict | None = None):
  """The launcher `kind` (ConfigError for bad settings), before anything is written.

  parallel: runs at a time (local; default 1) or the array's parallelism (slurm;
  default: SLURM's). slurm: SlurmLauncher's settings (partition, gpus_per_run, time,
  cpus_per_run, mem_gb, account, qos, constraint, setup, executor).
  """
  if kind not in LAUNCHERS:
    raise ConfigError(f'unknown launcher {kind!r}; allowed: {", ".join(LAUNCHERS)}')
  slurm = {k: v for k, v in (slurm or {}).items() if v is not None}
  if kind == 'local':
    if slurm:
      raise ConfigError(f'--slurm.{sorted(slurm)[0]} is for --launcher=slurm')
    return LocalLauncher(1 if parallel is None else parallel, devices_per_run)
  if devices_per_run is not None:
    raise ConfigError('--devices_per_run is for --launcher=local; with --launcher=slurm '
                      'use --slurm.gpus_per_run')
  unknown = sorted(set(slurm) - set(SLURM_SETTINGS))
  if unknown:
    raise ConfigError(f'unknown SLURM setting {unknown[0]!r}; allowed: '
                      + ', '.join(SLURM_SETTINGS))
  return SlurmLauncher(workdir, parallel=parallel, **slurm)


SLURM_SETTINGS = ('partition', 'gpus_per_run', 'time', 'cpus_per_run', 'mem_gb', 'account',
                  'qos', 'constraint', 'setup', 'executor')


if __name__ == '__main__':
  if sys.argv[1:2] != ['train']:
    sys.exit('usage: python -m gensuite.launchers train --config=... --workdir=... [...]')
  _child_main(sys.argv[1:])
