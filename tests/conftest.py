"""Shared test setup: a persistent JAX compilation cache and helpers to run the CLI."""
import hashlib
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, '.jax_cache')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# Tests run tiny programs many times: XLA's CPU backend compiles them about 3x faster
# without its LLVM optimisation passes (a smoke U-Net's init: 15 s -> 5 s here), and
# the programs are too small for the slower code to matter. Every test process and
# every CLI process a test starts uses the same setting, so comparisons between them
# (resume vs uninterrupted, 1 vs 4 devices) compare like with like.
FAST_COMPILE = '--xla_backend_optimization_level=0'
if FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + FAST_COMPILE).strip()


def cli_env(devices: int = 1, **extra) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}'
  env['JAX_PLATFORMS'] = 'cpu'
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_cli(*args, devices: int = 1, check: bool = True, timeout: float = 600, **env):
  """Runs `python -m gensuite.cli ARGS` in a fresh process; returns CompletedProcess."""
  proc = subprocess.run([sys.executable, '-m', 'gensuite.cli', *args], cwd=REPO,
                        env=cli_env(devices, **env), capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'gensuite {args} exited {proc.returncode}:\n{proc.stderr[-4000:]}')
  return proc


def losses(workdir):
  """{step: loss} from a run's metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def tree_hash(path):
  """A hash of every file's path and bytes below `path`."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      p = os.path.join(root, name)
      h.update(p.encode())
      with open(p, 'rb') as f:
        h.update(f.read())
  return h.hexdigest()


def final_leaves(workdir):
  """(step, the restored state's leaves as numpy) of a run's newest checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(workdir)
  return run.step, [np.asarray(x) for x in jax.tree.leaves(run.state)]


def checkpoint_steps(workdir):
  """The committed checkpoint steps of a run."""
  from gensuite.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()
