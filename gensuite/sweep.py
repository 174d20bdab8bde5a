"""Sweeps: many runs of one config, each with its own overrides and sub-workdir.

  gensuite sweep --config=configs/flow_matching/toy2d.py --sweep=experiments/sweeps/fm_lr.py \
      --workdir=runs/sweep [--parallel=2]

A sweep file is plain Python with `get_sweep()` returning a list of dicts mapping
dotted config paths to values; `product`, `zip_` and `random_search` build them:

  def get_sweep():
    return sweep.product(**{'optim.lr': [1e-3, 3e-3], 'seed': [0, 1]})

Each run trains in a fresh process (`gensuite train`) in DIR/<name from overrides>.
A run that fails (bad override, NaN, crash) is recorded and the others go on.
Re-running the same sweep skips finished runs and resumes the rest from their
checkpoints. DIR/summary.csv holds each run's overrides, status and final metrics,
and each run writes its hparams for TensorBoard's HParams dashboard.
"""
import concurrent.futures
import csv
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np

from gensuite.errors import ConfigError

_STATUS = 'sweep_status.json'


def product(**axes) -> list[dict]:
  """Every combination of the listed values (a grid)."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zip_(**axes) -> list[dict]:
  """The i-th values of every axis together; all axes must have the same length."""
  lengths = {len(v) for v in axes.values()}
  if len(lengths) > 1:
    raise ConfigError(f'zip_ needs axes of equal length, got {sorted(lengths)}')
  keys = list(axes)
  return [dict(zip(keys, values)) for values in zip(*axes.values())]


def random_search(num: int, seed: int = 0, **axes) -> list[dict]:
  """num random points; an axis is a list (uniform choice), ('log', lo, hi) or ('uniform', lo, hi)."""
  rng = np.random.default_rng(seed)
  points = []
  for _ in range(num):
    point = {}
    for key, spec in axes.items():
      if isinstance(spec, tuple) and spec and spec[0] in ('log', 'uniform'):
        lo, hi = float(spec[1]), float(spec[2])
        value = (float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if spec[0] == 'log'
                 else float(rng.uniform(lo, hi)))
        point[key] = float(f'{value:.4g}')
      else:
        point[key] = list(spec)[int(rng.integers(len(spec)))]
    points.append(point)
  return points


def load(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise ConfigError(f'sweep file {path} does not exist')
  spec = importlib.util.spec_from_file_location('_gensuite_sweep', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'sweep file {path} has no get_sweep() function')
  runs = list(module.get_sweep())
  if not runs or not all(isinstance(r, dict) for r in runs):
    raise ConfigError(f'get_sweep() in {path} must return a non-empty list of dicts')
  return runs


def run_name(overrides: dict) -> str:
  if not overrides:
    return 'base'
  parts = [f'{k}={v}' for k, v in sorted(overrides.items())]
  return re.sub(r'[^A-Za-z0-9_.=,+-]', '_', ','.join(parts))


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(_flag_value(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def _final_metrics(workdir: str) -> dict:
  path = os.path.join(workdir, 'metrics.jsonl')
  last = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        last.update({k: v for k, v in row.items() if k != 'step'})
        last['step'] = row['step']
  return last


def _run_one(config_spec, base_overrides, overrides, workdir, env) -> dict:
  status_path = os.path.join(workdir, _STATUS)
  if os.path.exists(status_path):
    with open(status_path) as f:
      status = json.load(f)
    if status.get('status') == 'done':
      return status
  os.makedirs(workdir, exist_ok=True)
  args = [sys.executable, '-m', 'gensuite.cli', 'train', f'--config={config_spec}',
          f'--workdir={workdir}']
  args += [f'--config.{k}={_flag_value(v)}' for k, v in {**base_overrides, **overrides}.items()]
  with open(os.path.join(workdir, 'sweep.log'), 'a') as log:
    proc = subprocess.run(args, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
    log.write(proc.stderr)
  if proc.returncode == 0:
    status = {'status': 'done'}
  else:
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    status = {'status': 'failed', 'exit_code': proc.returncode,
              'error': lines[-1][:300] if lines else ''}
  status['metrics'] = _final_metrics(workdir)
  tmp = status_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(status, f)
  os.replace(tmp, status_path)
  if status['status'] == 'done':
    _write_hparams(workdir, overrides, status['metrics'])
  return status


def _write_hparams(workdir, overrides, metrics):
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
             for k, v in overrides.items()}
  scalars = {f'hparam/{k}': float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and k != 'step'}
  with SummaryWriter(logdir=workdir) as w:
    w.add_hparams(hparams, scalars, name='hparams')


def run(config_spec: str, sweep_path: str, workdir: str, parallel: int = 1,
        base_overrides: dict | None = None) -> list[dict]:
  """Runs (or resumes) the sweep; returns one summary row per run."""
  if parallel < 1:
    raise ConfigError(f'--parallel must be >= 1, got {parallel}')
  runs = load(sweep_path)
  names = [run_name(o) for o in runs]
  if len(set(names)) != len(names):
    raise ConfigError(f'get_sweep() in {sweep_path} lists the same overrides twice')
  os.makedirs(workdir, exist_ok=True)
  env = dict(os.environ)
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    futures = [pool.submit(_run_one, config_spec, base_overrides or {}, o,
                           os.path.join(workdir, n), env) for o, n in zip(runs, names)]
    statuses = [f.result() for f in futures]
  rows = []
  for name, overrides, status in zip(names, runs, statuses):
    rows.append({'run': name, **{k: overrides.get(k) for k in overrides},
                 'status': status['status'], 'error': status.get('error', ''),
                 **status.get('metrics', {})})
  _write_summary(os.path.join(workdir, 'summary.csv'), rows)
  return rows


def _write_summary(path, rows):
  keys = []
  for row in rows:
    keys += [k for k in row if k not in keys]
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


def format_table(rows: list[dict], metrics=('loss', 'eval/mmd')) -> str:
  lines = ['| run | status | ' + ' | '.join(metrics) + ' |',
           '|---|---|' + '---|' * len(metrics)]
  for r in rows:
    vals = [f'{r[m]:.4g}' if isinstance(r.get(m), (int, float)) else '-' for m in metrics]
    lines.append(f"| {r['run']} | {r['status']} | " + ' | '.join(vals) + ' |')
  return '\n'.join(lines)
