"""One-step students of an exact 8-mode Gaussian-mixture teacher, one per divergence.

  PYTHONPATH=. python experiments/distill_divergences.py --steps=2000 \
      --workdir=/tmp/distill/divergences [--only=js,reverse_kl,dmd]

The data is configs/distill/toy2d.py's default: 8 modes on a circle of radius 2, std
0.15, weights 0.04 .. 0.25. The teacher is the mixture's exact noisy denoiser. Each
student trains through gensuite.train.run (configs/distill/toy2d.py:<variant>) and is
sampled with one generator evaluation; the teacher row is EDM's Heun sampler on the
exact denoiser (18 levels, 35 NFE). Printed per row, as mean +- std over --seeds
draws of --num samples each:
  mmd2      unbiased MMD^2 to fresh data (RBF, median bandwidth of the data), as the
            loop's eval computes it;
  mode_tv   total variation between nearest-mode masses and the true weights;
  covered   modes holding >= 10% of their expected count within 3 stds;
  on_mode   fraction of samples within 3 stds of some mode's mean (data: 0.989);
  nll       mean -log p(x) under the true mixture (the data's own entropy is the floor).
The MMD's median bandwidth (about 2.8 here) is wide next to the modes' std 0.15, so it
barely sees samples strewn between modes; on_mode and nll do.
The `data` row compares two independent data draws: the noise floor of each number.
Scatter plots go to --workdir/<name>.png.
"""
import argparse
import os
import time

import jax
import numpy as np

from configs.distill import toy2d
from gensuite import run as run_lib
from gensuite import train
from gensuite.data import toy
from gensuite.methods import distill, teachers
from gensuite.metrics import distances
from gensuite import pictures

VARIANTS = {  # row name -> toy2d variant tokens
    'reverse_kl': 'f_distill,reverse_kl', 'softened_reverse_kl': 'f_distill,softened_reverse_kl',
    'forward_kl': 'f_distill,forward_kl', 'js': 'f_distill,js',
    'squared_hellinger': 'f_distill,squared_hellinger', 'jeffreys': 'f_distill,jeffreys',
    'pearson': 'f_distill,pearson', 'neyman': 'f_distill,neyman', 'alpha_0.5': 'f_distill,alpha',
    'dmd': 'dmd', 'dmd2': 'dmd2', 'js_fake_score_head': 'f_distill,js,fake_score_head',
    # Class-conditional students (classes = the mixture's components), sampled with
    # labels drawn from the weights: the marginal is compared with the data.
    'cond_js': 'f_distill,js,cond', 'cond_dmd2': 'dmd2,cond',
}


def scores(mixture, sampler, num, seeds):
  """Mean and std over seeds of (mmd2, mode_tv, covered, on_mode, nll)."""
  rows = []
  for seed in range(seeds):
    key = jax.random.PRNGKey(1000 + seed)
    x = np.asarray(sampler(jax.random.fold_in(key, 0), num))
    ref = np.asarray(mixture.sample(jax.random.fold_in(key, 1), num))
    mmd = distances.mmd2_unbiased(x, ref, distances.median_bandwidth(ref))
    tv, covered, _ = distances.mode_statistics(x, mixture.means, mixture.weights, mixture.stds)
    dist = np.sqrt(((x[:, None, :] - np.asarray(mixture.means)[None])**2).sum(-1))
    radius = 3.0 * np.asarray(mixture.stds)[:, 0]
    on_mode = float(np.mean(np.any(dist <= radius[None], axis=1)))
    nll = -float(np.mean(np.asarray(mixture.log_prob(x))))
    rows.append((float(mmd), tv, covered, on_mode, nll))
  rows = np.array(rows)
  return rows.mean(0), rows.std(0), x, ref


def fmt(name, nfe, mean, std, extra=''):
  return (f'| {name:20s} | {nfe:3d} | {mean[0]:.2e} +- {std[0]:.1e} | {mean[1]:.3f} +- '
          f'{std[1]:.3f} | {mean[2]:.1f} | {mean[3]:.3f} | {mean[4]:.2f} | {extra}')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--workdir', default='/tmp/distill/divergences')
  parser.add_argument('--only', default='')
  parser.add_argument('--num', type=int, default=4000)
  parser.add_argument('--seeds', type=int, default=5)
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  base = toy2d.get_config()
  mixture = toy.get(base.data.name, **base.data.params)
  teacher = teachers.AnalyticTeacher(mixture)
  print('| row | NFE | MMD^2 to data | mode mass TV | modes covered | on_mode | nll | train s |')
  print('|---|---|---|---|---|---|---|---|')
  mean, std, x, ref = scores(mixture, lambda k, n: mixture.sample(k, n), args.num, args.seeds)
  print(fmt('data (null)', 0, mean, std), flush=True)
  heun = jax.jit(lambda k, n=args.num: teacher.sample(jax.random.normal(k, (n, 2)), 80.0, 18)[0])
  mean, std, x, ref = scores(mixture, lambda k, n: heun(k), args.num, args.seeds)
  print(fmt('teacher heun', 35, mean, std), flush=True)
  pictures.save_png(os.path.join(args.workdir, 'teacher_heun35.png'),
                   pictures.scatter_plot(x, ref, title='teacher, Heun 35 NFE'))
  names = [n for n in args.only.split(',') if n] or list(VARIANTS)
  for name in names:
    config = toy2d.get_config(VARIANTS[name])
    config.train.num_steps = args.steps
    config.train.eval_every = 0
    config.train.ckpt_every = args.steps
    config.train.log_every = 500
    workdir = os.path.join(args.workdir, name)
    t0 = time.time()
    train.run(config, workdir)
    seconds = time.time() - t0
    run = run_lib.load_run(workdir)
    mean, std, x, ref = scores(
        mixture, lambda k, n: run.sample(k, n, steps=1), args.num, args.seeds)
    print(fmt(name, 1, mean, std, f'{seconds:.0f} |'), flush=True)
    pictures.save_png(os.path.join(args.workdir, f'{name}.png'),
                     pictures.scatter_plot(x, ref, title=f'{name}, 1 NFE, {args.steps} steps'))


if __name__ == '__main__':
  main()
