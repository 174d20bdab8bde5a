"""Optuna (TPE) against random search, same space and budget, on short moons runs.

  pip install -e '.[optuna]'
  python experiments/optuna_vs_random.py --workdir=runs/optuna_vs_random \
      [--trials=16] [--seeds=0,1,2] [--steps=200] [--batch_size=256] [--parallel=2] \
      [--out=experiments/results/optuna_vs_random.md]

The space is experiments/sweeps/fm_moons_study.py's: learning rate (log 1e-4 ... 3e-2),
EMA decay (1 - decay log-uniform in 1e-3 ... 1e-1) and warm-up steps (0 ... 300),
on `configs/flow_matching/toy2d.py:moons` (the default MLP, 256 wide, 3 deep) cut to
--steps training steps of batch --batch_size, scored by the run's eval MMD (eval/mmd,
the unbiased MMD^2 estimate, which can be negative: one eval at the last step,
--eval_samples samples from the EMA params, Heun with --sampler_steps steps). Small
defaults, so that 16 trials x 2 searches x 3 seeds take about 20-30 minutes on 2 CPU
cores, 2 trials at a time.

Both searches go through `gensuite.sweep.run` with a Study: 'tpe' (Optuna's TPE,
multivariate, the first quarter of the trials random) and 'random' (Optuna's
RandomSampler over the same space), each with --trials trials. "Seed s" of the whole
search is sampler seed s and training seed s (config.seed), the same for both
searches, so TPE's random start-up trials are the random search's first trials (a
paired comparison). Reported per seed: the best eval MMD found (the searches' own
objective); that best trial's final EMA model re-scored against fresh data with
--rescore_samples samples (the minimum of 16 noisy evals is biased low); and the
median over the trials (how much of the budget went to good regions). Then mean +-
std (ddof=1) over seeds, the per-seed paired difference, and whether each
difference of means exceeds the spread (|mean_tpe - mean_random| > the larger of
the two stds). Re-running the same command on the same --workdir trains nothing
more (the studies are complete) and only re-scores and re-tabulates.
"""
import importlib.util
import json
import os
import shlex
import sys

from absl import app
from absl import flags
import numpy as np

from gensuite import sweep

_WORKDIR = flags.DEFINE_string('workdir', 'runs/optuna_vs_random', 'Parent directory.')
_CONFIG = flags.DEFINE_string('config', 'configs/flow_matching/toy2d.py:moons', 'Config spec.')
_TRIALS = flags.DEFINE_integer('trials', 16, 'Trials of each search.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the whole search.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Training steps of each trial.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Batch size of each trial.')
_EVAL_SAMPLES = flags.DEFINE_integer('eval_samples', 1000, 'Samples of the eval MMD.')
_SAMPLER_STEPS = flags.DEFINE_integer('sampler_steps', 25, 'Heun steps of the eval.')
_PARALLEL = flags.DEFINE_integer('parallel', 2, 'Trials at a time.')
_RESCORE_N = flags.DEFINE_integer('rescore_samples', 5000, 'Samples (and reference points) '
                                  'of the re-scoring of each search\'s best trial.')
_OUT = flags.DEFINE_string('out', None, 'Also write the markdown here.')
_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sweeps', 'fm_moons_study.py')
SEARCHES = ('tpe', 'random')


def _study_module():
  spec = importlib.util.spec_from_file_location('fm_moons_study', _STUDY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _base(seed: int) -> dict:
  steps = _STEPS.value
  return {'seed': seed, 'train.num_steps': steps, 'train.log_every': max(1, steps // 4),
          'train.eval_every': steps, 'train.ckpt_every': steps, 'train.log_images': False,
          'train.batch_size': _BATCH.value, 'eval.metrics': ('mmd',),
          'eval.num_samples': _EVAL_SAMPLES.value, 'sampler.steps': _SAMPLER_STEPS.value}


def _mean_std(values):
  values = np.asarray(values, float)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _wall_seconds(workdir: str) -> float:
  """First trial's start to last trial's end, from the files (right for resumed runs)."""
  starts, ends = [], []
  for name in os.listdir(workdir):
    trial = os.path.join(workdir, name)
    if name.startswith('trial_') and os.path.exists(os.path.join(trial, 'launch.json')):
      with open(os.path.join(trial, 'launch.json')) as f:
        starts.append(json.load(f)['started'])
      if os.path.exists(os.path.join(trial, 'sweep_status.json')):
        ends.append(os.path.getmtime(os.path.join(trial, 'sweep_status.json')))
  return max(ends) - min(starts) if starts and ends else float('nan')


def _rescore(trial_dir: str, seed: int) -> float:
  """The trial's final EMA model against fresh data, with many more samples than its
  eval: the best of 16 noisy evals is biased low (and the unbiased MMD^2 estimate can
  be negative), so the searches are compared on this as well."""
  import jax  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite.metrics import distances  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(trial_dir)
  k_sample, k_ref = jax.random.split(jax.random.PRNGKey(10_000 + seed))
  n = _RESCORE_N.value
  x = np.asarray(run.sample(k_sample, n), np.float32)
  ref = np.asarray(run.experiment.data.reference(k_ref, n), np.float32)
  return float(distances.mmd2_unbiased(x, ref, distances.median_bandwidth(ref)))


def _noise_floor(trial_dir: str, n: int, pairs: int) -> float:
  """95% quantile of the same MMD^2 between two independent draws of the data itself:
  below it, a model is indistinguishable from data at that sample size."""
  import jax  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite.metrics import distances  # pylint: disable=g-import-not-at-top
  data = gensuite.load_run(trial_dir).experiment.data
  values = []
  for i in range(pairs):
    k1, k2 = jax.random.split(jax.random.PRNGKey(20_000 + i))
    a, b = (np.asarray(data.reference(k, n), np.float32) for k in (k1, k2))
    values.append(float(distances.mmd2_unbiased(a, b, distances.median_bandwidth(b))))
  return float(np.quantile(values, 0.95))


def main(argv):
  del argv
  module = _study_module()
  seeds = [int(s) for s in _SEEDS.value]
  results = {}
  for seed in seeds:
    for search in SEARCHES:
      study = module.get_study(num_trials=_TRIALS.value, sampler=search, seed=seed)
      workdir = os.path.join(_WORKDIR.value, f'{search}_seed{seed}')
      rows = sweep.run(_CONFIG.value, study, workdir, parallel=_PARALLEL.value,
                       base_overrides=_base(seed))
      values = [r['objective'] for r in rows if isinstance(r.get('objective'), float)]
      best = min(rows, key=lambda r: r['objective'] if isinstance(r.get('objective'), float)
                 else float('inf'))
      results[search, seed] = dict(
          best=min(values), median=float(np.median(values)), failed=len(rows) - len(values),
          seconds=_wall_seconds(workdir), run=best['run'],
          rescored=_rescore(os.path.join(workdir, best['run']), seed),
          best_params={k: best.get(k) for k in ('optim.lr', 'optim.ema_decays',
                                                'optim.warmup_steps')})
      r = results[search, seed]
      print(f'{search} seed {seed}: best eval/mmd {r["best"]:.4g} ({r["run"]}, re-scored '
            f'{r["rescored"]:.4g}), median {r["median"]:.4g}, {r["failed"]} failed, '
            f'{r["seconds"]:.0f} s', file=sys.stderr, flush=True)
  some_trial = os.path.join(_WORKDIR.value, f'tpe_seed{seeds[0]}', results['tpe', seeds[0]]['run'])
  floors = {n: _noise_floor(some_trial, n, pairs) for n, pairs in
            ((_EVAL_SAMPLES.value, 100), (_RESCORE_N.value, 20))}
  text = _markdown(results, seeds) + '\n\nNoise floor (95% quantile of the same MMD^2 ' \
      'between two draws of the data): ' + ', '.join(
          f'{v:.2g} at n = {n}' for n, v in floors.items()) + '.'
  print(text)
  if _OUT.value:
    command = 'python experiments/optuna_vs_random.py ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:])
    with open(_OUT.value, 'w') as f:
      f.write('# Optuna (TPE) vs random search on short moons runs\n\n```\n' + command +
              '\n```\n\n' + (__doc__.split('\n\n', 2)[2].strip()) + '\n\n' + text +
              f'\n\nMachine: {os.cpu_count()} CPU cores, shared with other jobs (load '
              f'average at the end {os.getloadavg()[1]:.1g}); wall times include that.\n')
    print(f'wrote {_OUT.value}', file=sys.stderr)


def _markdown(results, seeds) -> str:
  def stats(search, key):
    return _mean_std([results[search, s][key] for s in seeds])

  lines = ['| search seed | TPE best eval/mmd | random best eval/mmd | TPE - random | '
           'TPE best, re-scored | random best, re-scored | TPE median | random median | '
           'wall (TPE / random) |',
           '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for s in seeds:
    t, r = results['tpe', s], results['random', s]
    lines.append(f'| {s} | {t["best"]:.3g} | {r["best"]:.3g} | {t["best"] - r["best"]:+.2g} | '
                 f'{t["rescored"]:.3g} | {r["rescored"]:.3g} | {t["median"]:.3g} | '
                 f'{r["median"]:.3g} | {t["seconds"]:.0f} s / {r["seconds"]:.0f} s |')
  diff = _mean_std([results['tpe', s]['best'] - results['random', s]['best'] for s in seeds])
  cells = {k: (stats('tpe', k), stats('random', k)) for k in ('best', 'rescored', 'median')}
  fmt = lambda ms: f'{ms[0]:.3g} +- {ms[1]:.2g}'
  lines.append(f'| mean +- std | {fmt(cells["best"][0])} | {fmt(cells["best"][1])} | '
               f'{diff[0]:+.2g} +- {diff[1]:.2g} | {fmt(cells["rescored"][0])} | '
               f'{fmt(cells["rescored"][1])} | {fmt(cells["median"][0])} | '
               f'{fmt(cells["median"][1])} | |')
  lines.append('')
  names = {'best': 'Best eval MMD (the searches\' own objective)',
           'rescored': f'The best trial re-scored ({_RESCORE_N.value} fresh samples)',
           'median': 'Median trial MMD (where the budget went)'}
  for key, name in names.items():
    (tm, ts), (rm, rs) = cells[key]
    spread = max(ts, rs)
    verdict = 'exceeds' if abs(tm - rm) > spread else 'does not exceed'
    lines.append(f'- {name}: TPE - random = {tm - rm:+.2g} (means); the larger std over '
                 f'seeds is {spread:.2g}: the difference {verdict} the spread.')
  lines += ['', 'Failed trials (NaN or error): ' + ', '.join(
      f'{k[0]} seed {k[1]}: {v["failed"]}' for k, v in sorted(results.items())),
            '', 'Best trial of each search (lr, EMA decays, warm-up):', '']
  for (search, s), v in sorted(results.items()):
    p = v['best_params']
    lines.append(f'- {search} seed {s}: {v["run"]}, lr {p["optim.lr"]:.3g}, ema '
                 f'{p["optim.ema_decays"]}, warm-up {p["optim.warmup_steps"]}')
  return '\n'.join(lines)


if __name__ == '__main__':
  app.run(main)
