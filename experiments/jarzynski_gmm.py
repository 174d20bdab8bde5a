"""Jarzynski vs PCD vs CD on the paper's 50-d Gaussian mixture (Carbone et al. 2023).

  PYTHONPATH=. python experiments/jarzynski_gmm.py --seeds=0,1,2 --out=experiments/results
  PYTHONPATH=. python experiments/jarzynski_gmm.py --steps=500 --dim=10 --walkers=2000  # quick

Each (estimator, seed) trains the parametric mixture energy of configs/ebm/gmm.py with
the same EBM.train_step the loop uses, jitted inside a lax.scan over iterations, on a
fixed data set of --data_points draws of the target (drawn per seed). Logged per step:
the model's weight of the component that ends near +6 e1, the exact cross-entropy
mean_data U + log Z (log Z in closed form) and the walkers' estimate of it. Prints a
table (final weights, means, exact cross-entropy against the truth's) and writes a PNG
of the curves to --out.
"""
import argparse
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gensuite import data as data_lib
from gensuite import methods
from gensuite.data import toy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gmm_config(estimator: str, dim: int, walkers: int, steps: int, seed: int):
  spec = importlib.util.spec_from_file_location(
      'gmm_cfg', os.path.join(REPO, 'configs', 'ebm', 'gmm.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f'{estimator},dim{dim},walkers{walkers}')
  c.train.num_steps = steps
  c.seed = seed
  return c


def train(estimator, seed, data_x, args, chunk=250):
  """Returns per-step curves and the final mixture of one run."""
  config = gmm_config(estimator, args.dim, args.walkers, args.steps, seed)
  spec = data_lib.build(config.data, seed=seed, global_batch_size=8).spec
  method = methods.build(config, spec)
  batch = {'x': data_x}
  key = jax.random.PRNGKey(seed)
  state = method.init(jax.random.fold_in(key, 1), batch)
  train_key = jax.random.fold_in(key, 2)

  def mixture(params):
    return method.net.apply({'params': params}, method='mixture')

  def body(state, _):
    rng = jax.random.fold_in(train_key, state.step)
    exact = method.exact_cross_entropy(state.params, data_x)
    state, m = method.train_step(state, batch, rng)
    logits, means, _ = mixture(state.params)
    w = jax.nn.softmax(logits)
    right = jnp.argmax(means[:, 0])
    return state, {'weight_right': w[right], 'exact_ce': exact,
                   'estimated_ce': m['cross_entropy'], 'ess': m['ess'],
                   'num_resamples': m['num_resamples']}

  run_chunk = jax.jit(lambda s: jax.lax.scan(body, s, None, length=chunk))
  curves = []
  t0 = time.time()
  for _ in range(args.steps // chunk):
    state, c = run_chunk(state)
    curves.append(jax.device_get(c))
  seconds = time.time() - t0
  curves = {k: np.concatenate([c[k] for c in curves]) for k in curves[0]}
  logits, means, _ = jax.device_get(mixture(state.params))
  final_ce = float(method.exact_cross_entropy(state.params, data_x))
  return curves, np.asarray(jax.nn.softmax(logits)), np.asarray(means), final_ce, seconds


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--estimators', default='jarzynski,pcd,cd')
  p.add_argument('--steps', type=int, default=8000)
  p.add_argument('--dim', type=int, default=50)
  p.add_argument('--walkers', type=int, default=10000)
  p.add_argument('--data_points', type=int, default=10000)
  p.add_argument('--out', default='experiments/results')
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  estimators = args.estimators.split(',')
  truth = toy.get('gaussian_mixture', means=[[-10.0] + [0.0] * (args.dim - 1),
                                             [6.0] + [0.0] * (args.dim - 1)],
                  stds=1.0, weights=[0.25, 0.75])
  rows, all_curves = [], {e: [] for e in estimators}
  for seed in seeds:
    data_x = truth.sample(jax.random.PRNGKey(10_000 + seed), args.data_points)
    emp_right = float(jnp.mean(data_x[:, 0] > -2.0))
    true_ce = float(-jnp.mean(truth.log_prob(data_x)))
    for est in estimators:
      curves, w, means, ce, secs = train(est, seed, data_x, args)
      right = int(np.argmax(means[:, 0]))
      left = 1 - right
      rows.append(dict(est=est, seed=seed, w_right=float(w[right]), emp_right=emp_right,
                       mean_left=float(means[left, 0]), mean_right=float(means[right, 0]),
                       off_axis=float(np.abs(means[:, 1:]).max()), ce=ce, true_ce=true_ce,
                       resamples=int(curves['num_resamples'][-1]), secs=secs))
      all_curves[est].append(curves)
      r = rows[-1]
      print(f"{est:>15s} seed {seed}: w(+6) {r['w_right']:.4f} (data {emp_right:.4f})  "
            f"means {r['mean_left']:+.3f} {r['mean_right']:+.3f}  CE {ce:.4f} "
            f"(truth {true_ce:.4f})  resamples {r['resamples']}  {secs:.1f}s", flush=True)
      if est == 'jarzynski':
        gap = curves['estimated_ce'] - curves['exact_ce']
        print(f'{"":>15s} walker CE estimate - exact CE: final {gap[-1]:+.4f}, '
              f'max |.| {np.abs(gap).max():.4f} (step {int(np.abs(gap).argmax()) + 1})',
              flush=True)
  print()
  print('| estimator | w(+6e1) mean over seeds | abs error vs data weight (mean, max) '
        '| mean -10 | mean +6 | exact CE - true CE | resamplings |')
  print('|---|---|---|---|---|---|---|')
  for est in estimators:
    rs = [r for r in rows if r['est'] == est]
    err = [abs(r['w_right'] - r['emp_right']) for r in rs]
    print(f"| {est} | {np.mean([r['w_right'] for r in rs]):.4f} | {np.mean(err):.4f}, "
          f"{np.max(err):.4f} | {np.mean([r['mean_left'] for r in rs]):+.3f} | "
          f"{np.mean([r['mean_right'] for r in rs]):+.3f} | "
          f"{np.mean([r['ce'] - r['true_ce'] for r in rs]):.4f} | "
          f"{np.mean([r['resamples'] for r in rs]):.0f} |")
  _plot(all_curves, rows, args)


def _plot(all_curves, rows, args):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = {'jarzynski': 'C0', 'pcd': 'C1', 'cd': 'C2', 'ula_unweighted': 'C3'}
  true_ce = np.mean([r['true_ce'] for r in rows])
  for est, runs in all_curves.items():
    for i, c in enumerate(runs):
      steps = np.arange(1, len(c['weight_right']) + 1)
      label = est if i == 0 else None
      axes[0].plot(steps, c['weight_right'], color=colors.get(est), lw=1, label=label)
      axes[1].plot(steps, c['exact_ce'] - true_ce, color=colors.get(est), lw=1, label=label)
      if est == 'jarzynski':
        axes[1].plot(steps, c['estimated_ce'] - true_ce, color=colors.get(est), lw=1,
                     ls=':', label='jarzynski (walker estimate)' if i == 0 else None)
  axes[0].axhline(0.75, color='k', ls='--', lw=0.8)
  axes[0].set(xlabel='iteration', ylabel='model weight of the +6 e1 mode', ylim=(-0.02, 1.02))
  axes[1].set(xlabel='iteration', ylabel='cross-entropy - truth\'s (nats)', yscale='symlog')
  axes[0].legend()
  axes[1].legend()
  fig.suptitle(f'GMM d={args.dim}, {args.walkers} walkers, seeds {args.seeds}')
  fig.tight_layout()
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f'ebm_jarzynski_gmm_d{args.dim}.png')
  fig.savefig(path, dpi=100)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
