"""A digits EBM's log Z two ways, the walkers' and AIS's, and where their populations differ.

  PYTHONPATH=. python experiments/ebm_log_z_digits.py --runs=runs/ebm_j,runs/ebm_pcd \
      --temps=40000 --chains=128 --out=experiments/results/ebm_log_z_digits.md

For each run's last checkpoint, on the energy the walkers' estimate is of (the EMA of
method.log_z_ema, EBM.log_z_params):
  walkers  the run's log-Z population (method.log_z_walkers): its estimate, its weights'
           ESS, and its weighted points;
  AIS      --temps temperatures from the Gaussian fitted to the data (eval.ais_base
           'data'), --chains chains: its estimate, standard error, ESS and weighted
           final points;
and for each weighted point set (with a Jarzynski run's training walkers too): the mean
energy, and the class masses that the digits
classifier gives the Tweedie-denoised points (x - data_noise^2 grad U), beside the data's.
Both estimates are logs of unbiased estimates of Z, so both are low in expectation;
a population that has not found some of the energy's mass misses it in its estimate,
and its class masses show where.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments.ebm_digits import write_report
from gensuite import run as run_lib
from gensuite.metrics import features
from gensuite.samplers import smc


def weighted(values, log_w):
  w = np.exp(np.asarray(log_w, np.float64) - np.max(log_w))
  return np.sum(w[:, None] * values, 0) / np.sum(w)


def class_masses(extractor, x, log_w):
  onehot = np.eye(10)[extractor.classify(x)]
  return weighted(onehot, log_w)


def measure(workdir, temps, chains, seed, extractor):
  run = run_lib.load_run(workdir)
  method, state = run.experiment.method, run.state
  params = jax.device_get(method.log_z_params(state))
  energy = method.energy_fn(params)
  ex = jax.device_get(state.extra)
  data = run.experiment.data
  ec = method.config.eval
  ec.unlock()
  ec.update(ais_base='data', ais_temps=temps, ais_chains=chains)
  out = jax.device_get(method.ais_log_partition(params, jax.random.PRNGKey(seed), data))
  ref = np.asarray(data.reference(jax.random.PRNGKey(11), 10000))
  walkers, walker_w = ex['z_walkers'], ex['z_log_weights']
  rows = {}
  sets = [('walkers', walkers, walker_w), ('AIS', out['samples'], out['log_weights'])]
  if method.estimator == 'jarzynski':  # the population that drives the gradient
    sets.append(('training walkers', ex['walkers'], ex['log_weights']))
  for name, x, log_w in sets:
    u = np.asarray(energy(jnp.asarray(x)))
    clean = np.asarray(method.denoise(params, jnp.asarray(x)))
    rows[name] = dict(energy=float(weighted(u[:, None], log_w)[0]),
                      ess=float(smc.ess(jnp.asarray(log_w))),
                      n=int(x.shape[0]), masses=class_masses(extractor, clean, log_w))
  rows['walkers']['log_z'] = float(method.log_z(ex))
  rows['AIS'].update(log_z=float(out['log_z']), stderr=float(out['stderr']))
  data_masses = np.bincount(extractor.classify(ref), minlength=10) / len(ref)
  return run.step, method.estimator, rows, data_masses


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--runs', required=True, help='comma-separated run directories')
  ap.add_argument('--temps', type=int, default=40000)
  ap.add_argument('--chains', type=int, default=128)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--out', default='')
  args = ap.parse_args()
  extractor = features.digits_extractor(args.runs.split(',')[0])
  lines = [f'`PYTHONPATH=. python experiments/ebm_log_z_digits.py --runs=... '
           f'--temps={args.temps} --chains={args.chains} --seed={args.seed}`', '',
           '| run | step | estimator | walkers log Z (ESS) | AIS log Z +- se (ESS) | '
           'gap in se | mean U walkers / AIS |', '|---|---|---|---|---|---|---|']
  masses = []
  for w in args.runs.split(','):
    step, est, rows, data_masses = measure(w, args.temps, args.chains, args.seed, extractor)
    wk, a = rows['walkers'], rows['AIS']
    gap = (wk['log_z'] - a['log_z']) / a['stderr']
    lines.append(f'| {w.rstrip("/").split("/")[-1]} | {step} | {est} | {wk["log_z"]:.2f} '
                 f'({wk["ess"]:.0f}/{wk["n"]}) | {a["log_z"]:.2f} +- {a["stderr"]:.2f} '
                 f'({a["ess"]:.0f}/{a["n"]}) | {gap:+.1f} | {wk["energy"]:.2f} / '
                 f'{a["energy"]:.2f} |')
    masses.append((w.rstrip('/').split('/')[-1], rows, data_masses))
  lines += ['', 'Class masses (digits classifier on the Tweedie-denoised weighted points):',
            '', '| run | set | ' + ' | '.join(str(k) for k in range(10)) + ' |',
            '|---|---|' + '---|' * 10]
  for name, rows, data_masses in masses:
    for label, m in [('data', data_masses)] + [(k, r['masses']) for k, r in rows.items()]:
      lines.append(f'| {name} | {label} | ' + ' | '.join(f'{v:.3f}' for v in m) + ' |')
  write_report(lines, args.out)


if __name__ == '__main__':
  main()
