"""Sweeps: many runs of one config, each with its own overrides and sub-workdir.

  gensuite sweep --config=configs/flow_matching/toy2d.py --sweep=experiments/sweeps/fm_lr.py \
      --workdir=runs/sweep [--parallel=2] [--devices_per_run=1] [--launcher=slurm ...]

A sweep file is plain Python with `get_sweep()` returning a list of dicts mapping
dotted config paths to values; `product`, `zip_` and `random_search` build them:

  def get_sweep():
    return sweep.product(**{'optim.lr': [1e-3, 3e-3], 'seed': [0, 1]})

Each run trains in a fresh process (`gensuite train`) in DIR/<name from overrides>.
A run that fails (bad override, NaN, crash) is recorded and the others go on.
Re-running the same sweep skips finished runs and resumes the rest from their
checkpoints. DIR/summary.csv holds each run's overrides, status and final metrics
(and, last, the devices it ran on), and each run writes its hparams for
TensorBoard's HParams dashboard.

Where runs train is the launcher's business (gensuite.launchers): `local` (this host,
`parallel` at a time, `devices_per_run` devices each) or `slurm` (a job array
through submitit, `pip install -e '.[slurm]'`).

Adaptive search (Optuna, `pip install -e '.[optuna]'`): a sweep file may define
`get_study()` instead, returning a `Study` (or a dict of its fields):

  def get_study():
    return sweep.Study(metric='eval/mmd', direction='minimize', num_trials=16,
                       space={'optim.lr': ('log', 1e-4, 1e-2), 'optim.warmup_steps': ('int', 0, 200),
                              'optim.ema_decays': [(0.99,), (0.999,)]})

A space entry is ('log', lo, hi), ('uniform', lo, hi), ('int', lo, hi), ('int_log',
lo, hi) or a list of choices; `overrides=fn(params) -> {field: value}` maps the
searched parameters to config overrides when they are not fields themselves. The
objective is the metric's last value in the trial's metrics.jsonl. Trials train in
DIR/trial_NNNN through the same launcher (`parallel` of them at a time) and the
study lives in DIR/optuna.db (SQLite): a re-run resumes it, finishing trials that
were under way (from their checkpoints) before asking for new ones, until
`num_trials` have been run. `pruner='median'` stops trials whose intermediate values
(each eval of the metric) fall below the median of earlier trials at that step.
"""
import csv
import dataclasses
import importlib.util
import itertools
import math
import os
import re
import time
import warnings
from typing import Any, Callable

import numpy as np

from gensuite import launchers
from gensuite.errors import ConfigError

_STATUS = launchers.STATUS
_RANGES = ('log', 'uniform', 'int', 'int_log')


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


@dataclasses.dataclass
class Study:
  """An adaptive search (Optuna) over `space`, scored by `metric` from metrics.jsonl.

  sampler: 'tpe' (default; the first `startup_trials` are random) or 'random', or an
  optuna sampler. pruner: None, 'median' or an optuna pruner. seed: the sampler's.
  """
  metric: str | None = None
  space: dict = dataclasses.field(default_factory=dict)
  direction: str = 'minimize'
  num_trials: int = 20
  sampler: Any = 'tpe'
  seed: int = 0
  pruner: Any = None
  overrides: Callable[[dict], dict] | None = None
  startup_trials: int | None = None


def _module(path: str):
  if not os.path.exists(path):
    raise ConfigError(f'sweep file {path} does not exist')
  spec = importlib.util.spec_from_file_location('_gensuite_sweep', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_spec(path: str) -> list[dict] | Study:
  """A sweep file's runs (get_sweep) or its checked Study (get_study)."""
  module = _module(path)
  has_sweep, has_study = hasattr(module, 'get_sweep'), hasattr(module, 'get_study')
  if has_sweep and has_study:
    raise ConfigError(f'sweep file {path} defines both get_sweep() and get_study(); keep one')
  if has_study:
    study = module.get_study()
    if isinstance(study, dict):
      try:
        study = Study(**study)
      except TypeError as e:
        raise ConfigError(f'get_study() in {path}: {e}') from None
    if not isinstance(study, Study):
      raise ConfigError(f'get_study() in {path} must return a gensuite.sweep.Study or a dict')
    check_study(study, path)
    return study
  return load(path, module)


def load(path: str, module=None) -> list[dict]:
  module = module or _module(path)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'sweep file {path} has no get_sweep() (nor get_study()) function')
  runs = list(module.get_sweep())
  if not runs or not all(isinstance(r, dict) for r in runs):
    raise ConfigError(f'get_sweep() in {path} must return a non-empty list of dicts')
  return runs


def check_study(study: Study, path: str = 'the study') -> None:
  where = f'get_study() in {path}'
  if not isinstance(study.metric, str) or not study.metric.strip():
    raise ConfigError(f'{where} names no objective metric: set metric= to a name that '
                      'metrics.jsonl holds, e.g. metric="eval/mmd"')
  if study.direction not in ('minimize', 'maximize'):
    raise ConfigError(f'{where}: direction must be minimize or maximize, got '
                      f'{study.direction!r}')
  if not isinstance(study.num_trials, int) or study.num_trials < 1:
    raise ConfigError(f'{where}: num_trials must be a positive integer, got '
                      f'{study.num_trials!r}')
  if not isinstance(study.space, dict) or not study.space:
    raise ConfigError(f'{where}: space must be a non-empty dict of name -> range or choices')
  for name, spec in study.space.items():
    _check_axis(where, name, spec)
  if not (study.sampler in ('tpe', 'random') or hasattr(study.sampler, 'sample_independent')):
    raise ConfigError(f"{where}: sampler must be 'tpe', 'random' or an optuna sampler, got "
                      f'{study.sampler!r}')
  if not (study.pruner in (None, 'none', 'median') or hasattr(study.pruner, 'prune')):
    raise ConfigError(f"{where}: pruner must be None, 'median' or an optuna pruner, got "
                      f'{study.pruner!r}')
  if study.overrides is not None and not callable(study.overrides):
    raise ConfigError(f'{where}: overrides must be a function params -> overrides')


def _is_range(spec) -> bool:
  return isinstance(spec, tuple) and len(spec) > 0 and spec[0] in _RANGES


def _check_axis(where, name, spec):
  if _is_range(spec):
    try:
      kind, lo, hi = spec
      ok = lo < hi and (kind not in ('log', 'int_log') or lo > 0) and (
          not kind.startswith('int') or (isinstance(lo, int) and isinstance(hi, int)))
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f'{where}: space[{name!r}] = {spec!r}: write (kind, lo, hi) with '
                        'lo < hi (lo > 0 for log; integers for int)')
  elif not isinstance(spec, (list, tuple)) or not spec:
    raise ConfigError(f'{where}: space[{name!r}] must be a range (log|uniform|int|int_log, '
                      f'lo, hi) or a non-empty list of choices, got {spec!r}')


def run_name(overrides: dict) -> str:
  if not overrides:
    return 'base'
  parts = [f'{k}={v}' for k, v in sorted(overrides.items())]
  return re.sub(r'[^A-Za-z0-9_.=,+-]', '_', ','.join(parts))


_flag_value = launchers.flag_value
_final_metrics = launchers.final_metrics


def run(config_spec: str, sweep_path, workdir: str, parallel: int | None = None,
        base_overrides: dict | None = None, *, launcher: str = 'local',
        devices_per_run: int | None = None, slurm: dict | None = None,
        config=None) -> list[dict]:
  """Runs (or resumes) the sweep or study; returns one summary row per run.

  sweep_path: a sweep file, or (from Python) a Study or a list of override dicts.

  parallel: runs (trials) at a time; local default 1, slurm default: the whole array
  (a study: 1 trial at a time). slurm: gensuite.launchers.SLURM_SETTINGS. config: the
  resolved base config, if at hand (checks a study's metric against it). Every
  ConfigError is raised before anything is written.
  """
  if parallel is not None and parallel < 1:
    raise ConfigError(f'--parallel must be >= 1, got {parallel}')
  if isinstance(sweep_path, str):
    spec = load_spec(sweep_path)
  elif isinstance(sweep_path, Study):  # from Python: a Study, or a list of overrides
    spec = sweep_path
    check_study(spec)
  else:
    spec = list(sweep_path)
    if not spec or not all(isinstance(r, dict) for r in spec):
      raise ConfigError('a sweep must be a non-empty list of override dicts')
    sweep_path = 'the sweep'
  runner = launchers.make(launcher, workdir, parallel=parallel,
                          devices_per_run=devices_per_run, slurm=slurm)
  base_overrides = dict(base_overrides or {})
  if isinstance(spec, Study):
    optuna = launchers.require('optuna', 'optuna')
    _check_metric_against_config(spec, config, base_overrides)
    os.makedirs(workdir, exist_ok=True)
    try:
      return _run_study(optuna, spec, config_spec, base_overrides, workdir, runner,
                        parallel or 1)
    finally:
      runner.close()
  runs = spec
  names = [run_name(o) for o in runs]
  if len(set(names)) != len(names):
    raise ConfigError(f'get_sweep() in {sweep_path} lists the same overrides twice')
  os.makedirs(workdir, exist_ok=True)
  tasks = [launchers.RunTask(config_spec, {**base_overrides, **o}, os.path.join(workdir, n),
                             hparams=o) for o, n in zip(runs, names)]
  try:
    statuses = runner.run_all(tasks)
  finally:
    runner.close()
  rows = [_row(name, overrides, status) for name, overrides, status in
          zip(names, runs, statuses)]
  _write_summary(os.path.join(workdir, 'summary.csv'), rows)
  return rows


def _row(name: str, overrides: dict, status: dict, extra: dict | None = None) -> dict:
  return {'run': name, **{k: overrides.get(k) for k in overrides},
          'status': status['status'], 'error': status.get('error', ''), **(extra or {}),
          **status.get('metrics', {}), 'devices': status.get('devices', '')}


def _write_summary(path, rows):
  keys = []
  for row in rows:
    keys += [k for k in row if k not in keys]
  if 'devices' in keys:  # last, after every run's metrics
    keys.remove('devices')
    keys.append('devices')
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


# ---- studies ----------------------------------------------------------------------

def _check_metric_against_config(study: Study, config, base_overrides: dict) -> None:
  if config is None or not study.metric.startswith('eval/'):
    return
  del base_overrides  # already in `config`
  if study.overrides is not None or 'train.eval_every' in study.space:
    return  # the trials may set it
  if not config.train.get('eval_every', 0):
    raise ConfigError(f'the study\'s metric {study.metric} is never logged: this config has '
                      'train.eval_every=0 (set --config.train.eval_every=N)')


def _is_plain(value) -> bool:
  return value is None or isinstance(value, (bool, int, float, str))


def _suggest(trial, name: str, spec):
  if _is_range(spec):
    kind, lo, hi = spec
    if kind in ('int', 'int_log'):
      return trial.suggest_int(name, int(lo), int(hi), log=kind == 'int_log')
    return trial.suggest_float(name, float(lo), float(hi), log=kind == 'log')
  choices = list(spec)
  if all(_is_plain(c) for c in choices):
    return trial.suggest_categorical(name, choices)
  key = trial.suggest_categorical(name, [repr(c) for c in choices])  # storable names
  return choices[[repr(c) for c in choices].index(key)]


def _decode(study: Study, params: dict) -> dict:
  """A stored trial's params as values (choices that are not plain are stored as repr)."""
  out = {}
  for name, spec in study.space.items():
    value = params.get(name)
    if not _is_range(spec) and not all(_is_plain(c) for c in spec):
      value = {repr(c): c for c in spec}.get(value, value)
    out[name] = value
  return out


def _trial_overrides(study: Study, params: dict) -> dict:
  if study.overrides is None:
    return dict(params)
  out = study.overrides(dict(params))
  if not isinstance(out, dict):
    raise ConfigError('a Study\'s overrides(params) must return a dict of overrides')
  return out


def _sampler(optuna, study: Study, num_existing: int):
  if not isinstance(study.sampler, str):
    return study.sampler
  # A resumed study must not replay the sequence it drew before it was stopped.
  seed = study.seed if num_existing == 0 else int(
      np.random.SeedSequence([study.seed, num_existing]).generate_state(1)[0])
  if study.sampler == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  startup = study.startup_trials
  if startup is None:
    startup = min(10, max(2, study.num_trials // 4))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)


def _pruner(optuna, study: Study):
  if study.pruner in (None, 'none'):
    return optuna.pruners.NopPruner()
  if study.pruner == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
  return study.pruner


# Exit codes of a trainer that was stopped, not beaten: SIGTERM (checkpoint saved),
# Ctrl-C, killed. Such a trial stays running in the study and resumes on a re-run.
_INTERRUPTED = (143, 130, -2, -9, -15, 137)


def _run_study(optuna, study: Study, config_spec: str, base: dict, workdir: str, runner,
               in_flight_max: int) -> list[dict]:
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  states = optuna.trial.TrialState
  storage = f'sqlite:///{os.path.abspath(os.path.join(workdir, "optuna.db"))}'
  st = optuna.create_study(storage=storage, study_name='gensuite',
                           direction=study.direction, load_if_exists=True)
  if st.direction.name.lower() != study.direction:
    raise ConfigError(f'{workdir}/optuna.db holds a study that {st.direction.name.lower()}s; '
                      f'get_study() says {study.direction}: use another --workdir')
  trials = st.get_trials(deepcopy=False)
  st.sampler = _sampler(optuna, study, len(trials))
  st.pruner = _pruner(optuna, study)
  pruning = study.pruner not in (None, 'none')
  poll_s = 0.3 if isinstance(runner, launchers.LocalLauncher) else runner.poll_s
  flight = {}

  def launch(number: int, trial_id: int, params: dict, reported=None):
    name = f'trial_{number:04d}'
    overrides = _trial_overrides(study, params)
    task = launchers.RunTask(config_spec, {**base, **overrides}, os.path.join(workdir, name),
                             hparams=overrides)
    trial = optuna.trial.Trial(st, trial_id)
    trial.set_user_attr('run', name)
    flight[number] = {'trial': trial, 'task': task, 'handle': runner.start(task),
                      'last_step': max(reported or {}, default=-1), 'stopping': False}

  for t in trials:  # under way when the sweep was stopped: finish them first
    if t.state == states.RUNNING:
      launch(t.number, t._trial_id, _decode(study, t.params), t.intermediate_values)  # pylint: disable=protected-access
  started = sum(t.state != states.WAITING for t in trials)
  while flight or started < study.num_trials:
    while len(flight) < in_flight_max and started < study.num_trials:
      trial = st.ask()
      params = {name: _suggest(trial, name, spec) for name, spec in study.space.items()}
      launch(trial.number, trial._trial_id, params)  # pylint: disable=protected-access
      started += 1
    time.sleep(poll_s)
    for number, f in list(flight.items()):
      if pruning and not f['stopping']:
        _report(f, study.metric)
      if f['handle'].done():
        _tell(st, states, f['trial'], f['handle'].status(), study.metric)
        del flight[number]
  return _study_rows(st, states, study, workdir)


def _report(f: dict, metric: str) -> None:
  for step, value in launchers.metric_series(f['task'].workdir, metric):
    if step > f['last_step'] and math.isfinite(value):
      f['trial'].report(value, step)
      f['last_step'] = step
  if f['last_step'] >= 0 and f['trial'].should_prune():
    with open(os.path.join(f['task'].workdir, launchers.STOP), 'w') as stop:
      stop.write(f'pruned at step {f["last_step"]}\n')
    f['stopping'] = True


def _tell(st, states, trial, status: dict, metric: str) -> None:
  number = trial.number
  if status['status'] == 'done':
    value = status.get('metrics', {}).get(metric)
    if isinstance(value, (int, float)) and math.isfinite(value):
      st.tell(number, float(value))
    else:
      trial.set_user_attr('error', f'{metric} is not in metrics.jsonl')
      st.tell(number, state=states.FAIL)
  elif status['status'] == 'pruned':
    st.tell(number, state=states.PRUNED)
  elif status.get('exit_code') not in _INTERRUPTED:
    st.tell(number, state=states.FAIL)


def _study_rows(st, states, study: Study, workdir: str) -> list[dict]:
  rows = []
  for t in sorted(st.get_trials(deepcopy=False), key=lambda t: t.number):
    if t.state == states.WAITING:
      continue
    name = f'trial_{t.number:04d}'
    try:
      overrides = _trial_overrides(study, _decode(study, t.params))
    except Exception:  # pylint: disable=broad-except
      overrides = dict(t.params)
    status = launchers.read_status(os.path.join(workdir, name)) or {
        'status': 'running' if t.state == states.RUNNING else 'failed'}
    if t.state == states.COMPLETE:
      extra = {'objective': t.value}
    else:
      extra = {'objective': ''}
      if t.state == states.FAIL and status['status'] == 'done':
        status = {**status, 'status': 'failed',
                  'error': f'{study.metric} is not in metrics.jsonl'}
    rows.append(_row(name, overrides, status, extra))
  _write_summary(os.path.join(workdir, 'summary.csv'), rows)
  return rows


def format_table(rows: list[dict], metrics=('loss', 'eval/mmd')) -> str:
  if any('objective' in r for r in rows) and 'objective' not in metrics:
    metrics = ('objective',) + tuple(metrics)
  lines = ['| run | status | ' + ' | '.join(metrics) + ' |',
           '|---|---|' + '---|' * len(metrics)]
  for r in rows:
    vals = [f'{r[m]:.4g}' if isinstance(r.get(m), (int, float)) else '-' for m in metrics]
    lines.append(f"| {r['run']} | {r['status']} | " + ' | '.join(vals) + ' |')
  return '\n'.join(lines)
