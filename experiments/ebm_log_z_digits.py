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

--jumps=S1,S2,... also measures whether a data-driven move could carry the log-Z
population between modes: an independence Metropolis-Hastings step whose proposal is
the kernel density estimate of the data, x' = d_j + S z (d_j a uniformly drawn
training digit, z ~ N(0, I)), accepted with probability
min(1, exp(U(x) - U(x')) q(x) / q(x')); it leaves exp(-U) invariant, so it would keep
the walkers' weights exact. For each bandwidth S the script reports its acceptance
rate from the weighted log-Z walkers (resampled), and the root-mean-square distance
from those walkers, and from noisy data points, to the nearest training digit.
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


def kde_jumps(energy, walkers, log_w, ref, bandwidths, data_noise, seed, steps=20):
  """Acceptance of independence-MH steps with the data-KDE proposal, from the weighted
  walkers resampled; also their and the noisy data's distance to the nearest digit."""
  ref = jnp.asarray(ref)
  flat = ref.reshape(ref.shape[0], -1)

  def sq_dists(x):  # (len(x), len(ref)) squared distances to the digits
    return jnp.sum((x.reshape(x.shape[0], 1, -1) - flat[None]) ** 2, -1)

  def nearest(x):
    return float(jnp.sqrt(jnp.mean(jnp.min(sq_dists(x), 1))))

  def log_q(x, s):  # up to the same constant for x and x'
    return jax.scipy.special.logsumexp(-sq_dists(x) / (2 * s * s), 1)

  key = jax.random.PRNGKey(seed)
  idx = jax.random.categorical(key, jnp.asarray(log_w), shape=(walkers.shape[0],))
  x0 = jnp.asarray(walkers)[idx]
  noisy = ref + data_noise * jax.random.normal(jax.random.fold_in(key, 1),
                                                            ref.shape)
  out = {'walker_nearest': nearest(x0), 'noisy_data_nearest': nearest(noisy[:500]),
         'walker_energy': float(jnp.mean(energy(x0))),
         'noisy_data_energy': float(jnp.mean(energy(noisy[:500]))), 'acceptance': {}}
  for s in bandwidths:
    x, accepted = x0, []
    for i in range(steps):
      k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 100 + i), 3)
      j = jax.random.randint(k1, (x.shape[0],), 0, ref.shape[0])
      xp = ref[j] + s * jax.random.normal(k2, x.shape)
      log_a = energy(x) - energy(xp) + log_q(x, s) - log_q(xp, s)
      acc = jnp.log(jax.random.uniform(k3, log_a.shape)) < log_a
      accepted.append(float(jnp.mean(acc)))
      x = jnp.where(acc.reshape((-1,) + (1,) * (x.ndim - 1)), xp, x)
    out['acceptance'][s] = float(np.mean(accepted))
  return out


def measure(workdir, temps, chains, seed, extractor, bandwidths=()):
  run = run_lib.load_run(workdir)
  method, state = run.experiment.method, run.state
  params = jax.device_get(method.log_z_params(state))
  energy = method.energy_fn(params)
  ex = jax.device_get(state.extra)
  data = run.experiment.data
  ec = method.config.eval
  ec.unlock()
  ec.update(ais_base='data', ais_temps=temps, ais_chains=chains)
  out = (jax.device_get(method.ais_log_partition(params, jax.random.PRNGKey(seed), data))
         if temps else None)
  ref = np.asarray(data.reference(jax.random.PRNGKey(11), 10000))
  walkers, walker_w = ex['z_walkers'], ex['z_log_weights']
  rows = {}
  sets = [('walkers', walkers, walker_w)]
  if out is not None:
    sets.append(('AIS', out['samples'], out['log_weights']))
  if method.estimator == 'jarzynski':  # the population that drives the gradient
    sets.append(('training walkers', ex['walkers'], ex['log_weights']))
  for name, x, log_w in sets:
    u = np.asarray(energy(jnp.asarray(x)))
    clean = np.asarray(method.denoise(params, jnp.asarray(x)))
    rows[name] = dict(energy=float(weighted(u[:, None], log_w)[0]),
                      ess=float(smc.ess(jnp.asarray(log_w))),
                      n=int(x.shape[0]), masses=class_masses(extractor, clean, log_w))
  rows['walkers']['log_z'] = float(method.log_z(ex))
  if out is not None:
    rows['AIS'].update(log_z=float(out['log_z']), stderr=float(out['stderr']))
  data_masses = np.bincount(extractor.classify(ref), minlength=10) / len(ref)
  if bandwidths:
    digits = np.unique(ref.reshape(ref.shape[0], -1), axis=0).reshape((-1,) + ref.shape[1:])
    rows['walkers']['jumps'] = kde_jumps(energy, walkers, walker_w, digits, bandwidths,
                                         method.data_noise, seed)
  return run.step, method.estimator, rows, data_masses


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--runs', required=True, help='comma-separated run directories')
  ap.add_argument('--temps', type=int, default=40000, help='AIS temperatures; 0: no AIS')
  ap.add_argument('--chains', type=int, default=128)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--jumps', default='',
                  help='comma-separated KDE bandwidths for the data-driven MH move check')
  ap.add_argument('--out', default='')
  args = ap.parse_args()
  extractor = features.digits_extractor(args.runs.split(',')[0])
  lines = [f'`PYTHONPATH=. python experiments/ebm_log_z_digits.py --runs=... '
           f'--temps={args.temps} --chains={args.chains} --seed={args.seed}'
           + (f' --jumps={args.jumps}' if args.jumps else '') + '`', '',
           '| run | step | estimator | walkers log Z (ESS) | AIS log Z +- se (ESS) | '
           'gap in se | mean U walkers / AIS |', '|---|---|---|---|---|---|---|']
  masses = []
  bandwidths = tuple(float(b) for b in args.jumps.split(',') if b)
  for w in args.runs.split(','):
    step, est, rows, data_masses = measure(w, args.temps, args.chains, args.seed, extractor,
                                           bandwidths)
    name = w.rstrip('/').split('/')[-1]
    wk, a = rows['walkers'], rows.get('AIS')
    if a is None:  # --temps=0: no AIS
      ais = '- | - | ' + f'{wk["energy"]:.2f} / -'
    else:
      gap = (wk['log_z'] - a['log_z']) / a['stderr']
      ais = (f'{a["log_z"]:.2f} +- {a["stderr"]:.2f} ({a["ess"]:.0f}/{a["n"]}) | {gap:+.1f} | '
             f'{wk["energy"]:.2f} / {a["energy"]:.2f}')
    lines.append(f'| {name} | {step} | {est} | {wk["log_z"]:.2f} ({wk["ess"]:.0f}/{wk["n"]}) | '
                 f'{ais} |')
    masses.append((name, rows, data_masses))
  lines += ['', 'Class masses (digits classifier on the Tweedie-denoised weighted points):',
            '', '| run | set | ' + ' | '.join(str(k) for k in range(10)) + ' |',
            '|---|---|' + '---|' * 10]
  for name, rows, data_masses in masses:
    for label, m in [('data', data_masses)] + [(k, r['masses']) for k, r in rows.items()]:
      lines.append(f'| {name} | {label} | ' + ' | '.join(f'{v:.3f}' for v in m) + ' |')
  if bandwidths:
    lines += ['', 'Data-driven independence MH for the log-Z walkers (proposal: training '
              'digit + S N(0, I)); RMS distance to the nearest digit and mean energy:', '',
              '| run | walkers: distance / U | noisy data: distance / U | ' +
              ' | '.join(f'acceptance S={b:g}' for b in bandwidths) + ' |',
              '|---|---|---|' + '---|' * len(bandwidths)]
    for name, rows, _ in masses:
      j = rows['walkers']['jumps']
      lines.append(f'| {name} | {j["walker_nearest"]:.2f} / {j["walker_energy"]:.2f} | '
                   f'{j["noisy_data_nearest"]:.2f} / {j["noisy_data_energy"]:.2f} | ' +
                   ' | '.join(f'{j["acceptance"][b]:.4f}' for b in bandwidths) + ' |')
  write_report(lines, args.out)


if __name__ == '__main__':
  main()
