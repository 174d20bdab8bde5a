"""gensuite's Euler–Maruyama against diffrax's SDE solvers: samples/s at equal accuracy.

  pip install diffrax        # part of the `peers` extra; the core never imports it
  python experiments/compare_diffrax.py [--batch=4096] [--steps=16,32,64,128,256]
      [--out=experiments/results/sde_diffrax.md]

The problem: the reverse VE SDE of EDM's noise ladder (ALGORITHMS.md §3), written with
u = -sigma^2 as the (increasing) time,

  dx = s(x, sigma(u)) du + dW_u,       s = (D(x, sigma) - x) / sigma^2,

from x = sigma_max z on the EDM grid (`karras_sigmas(N)`: rho = 7, 80 -> 0.002, then 0)
mapped to u. Its Euler–Maruyama step in u is gensuite's reverse-diffusion step
x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z, so both sides integrate the same SDE on the
same grid with the same score, and both end with x = D(x, 0.002) (the step to 0).

Systems (one jitted function each, whole batch, same grid):
  gensuite  euler_maruyama       gensuite.samplers.sample_sigmas('euler_maruyama', ...)
  diffrax   euler/virtual        diffrax.Euler, VirtualBrownianTree (diffrax's default
                                 path for SDEs: any time can be queried, reproducible)
  diffrax   euler/unsafe         diffrax.Euler, UnsafeBrownianPath (fixed steps only)
  diffrax   sea/virtual          diffrax.SEA (additive-noise SRK, 1 eval per step,
                                 space-time Levy area)
  diffrax   shark/virtual        diffrax.ShARK (additive-noise SRK, 2 evals per step)

Scores: `gmm`, the exact noisy denoiser of 8 Gaussians on a ring (cheap: the cost is
the solver's own), and `mlp`, a random EDM-preconditioned 3x256 SiLU MLP (a small
network). Accuracy is measured on `gmm`, where exact samples exist: MMD^2 (RBF,
bandwidth 0.3) between the batch and as many exact draws, averaged over --seeds
sampler seeds. "At equal accuracy" compares, for each gensuite row, the fastest
diffrax configuration whose MMD^2 is at most gensuite's (any solver, any N).
samples/s is the best of --repeats timed calls after a compiling call.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from experiments.bench_samplers import mlp_denoiser
from gensuite import samplers
from gensuite.bench_peers import diffrax_sde
from gensuite.bench_peers import gensuite_em
from gensuite.data import toy
from gensuite.metrics import distances

INSTALL = ('experiments/compare_diffrax.py needs diffrax: `pip install diffrax` (or the '
           "peers extra, `pip install -e '.[peers]'`)")
BANDWIDTH = 0.3


def evals_per_step(system):
  return 2 if system == 'diffrax shark/virtual' else 1


def time_fn(fn, z, key, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(z, key))
  first = time.perf_counter() - t0
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(z, key))
    best = min(best, time.perf_counter() - t0)
  return first, best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=4096)
  parser.add_argument('--steps', default='16,32,64,128,256')
  parser.add_argument('--systems', default='gensuite,euler/virtual,euler/unsafe,sea/virtual,'
                      'shark/virtual')
  parser.add_argument('--scores', default='gmm,mlp')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  try:
    import diffrax  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise SystemExit(INSTALL)
  target = toy.eight_gaussians()
  scores = {'gmm': target.noisy_denoiser, 'mlp': mlp_denoiser(jax.random.key(0))}
  systems = [s.strip() for s in args.systems.split(',')]
  rows = []
  for score_name in args.scores.split(','):
    denoiser = scores[score_name]
    for n in map(int, args.steps.split(',')):
      sigmas = samplers.karras_sigmas(n)
      for system in systems:
        if system == 'gensuite':
          name, fn = 'gensuite euler_maruyama', gensuite_em(denoiser, sigmas)
        else:
          solver, path = system.split('/')
          name, fn = f'diffrax {system}', diffrax_sde(denoiser, sigmas, solver, path)
        z = jax.random.normal(jax.random.key(1), (args.batch, 2))
        first, best = time_fn(fn, z, jax.random.key(2), args.repeats)
        mmd = []
        if score_name == 'gmm':
          for seed in range(args.seeds):
            kz, ks, kd = jax.random.split(jax.random.key(100 + seed), 3)
            x = fn(jax.random.normal(kz, (args.batch, 2)), ks)
            finite = bool(jnp.all(jnp.isfinite(x)))
            mmd.append(distances.mmd2_unbiased(x, target.sample(kd, args.batch), BANDWIDTH)
                       if finite else np.inf)
        nfe = n * evals_per_step(name)
        row = dict(score=score_name, system=name, steps=n, nfe=nfe,
                   samples_s=args.batch / best, first_s=first,
                   mmd=float(np.mean(mmd)) if mmd else None,
                   mmd_sd=float(np.std(mmd, ddof=1)) if len(mmd) > 1 else None)
        rows.append(row)
        print(row, flush=True)
  text = format_markdown(rows, args)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


def format_markdown(rows, args):
  lines = ['| score | system | steps | NFE | samples/s | first call (s) | MMD^2 (mean +- sd) |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    mmd = '' if r['mmd'] is None else f"{r['mmd']:.2e} +- {r['mmd_sd']:.1e}"
    lines.append(f"| {r['score']} | {r['system']} | {r['steps']} | {r['nfe']} | "
                 f"{r['samples_s']:.4g} | {r['first_s']:.1f} | {mmd} |")
  lines += ['', 'Equal accuracy (gmm): for each gensuite row, the fastest diffrax row with '
            'MMD^2 at most gensuite\'s, and gensuite\'s speed-up over it, on the gmm score '
            'and on the mlp score at the same system and step count.', '',
            '| gensuite steps | MMD^2 | fastest diffrax at <= that MMD^2 | its samples/s (gmm) | '
            'speed-up (gmm) | speed-up (mlp, same diffrax row) |', '|---|---|---|---|---|---|']
  gmm = [r for r in rows if r['score'] == 'gmm']
  mlp = {(r['system'], r['steps']): r for r in rows if r['score'] == 'mlp'}
  for g in [r for r in gmm if r['system'].startswith('gensuite')]:
    rivals = [r for r in gmm if r['system'].startswith('diffrax') and r['mmd'] is not None
              and r['mmd'] <= g['mmd']]
    if not rivals:
      lines.append(f"| {g['steps']} | {g['mmd']:.2e} | none reached it | | | |")
      continue
    best = max(rivals, key=lambda r: r['samples_s'])
    ratio_mlp = ''
    g_mlp, b_mlp = mlp.get((g['system'], g['steps'])), mlp.get((best['system'], best['steps']))
    if g_mlp and b_mlp:
      ratio_mlp = f"{g_mlp['samples_s'] / b_mlp['samples_s']:.1f}x"
    lines.append(f"| {g['steps']} | {g['mmd']:.2e} | {best['system']}, {best['steps']} steps "
                 f"({best['mmd']:.2e}) | {best['samples_s']:.4g} | "
                 f"{g['samples_s'] / best['samples_s']:.1f}x | {ratio_mlp} |")
  load = os.getloadavg()[0]
  lines += ['', f'batch {args.batch}, device {jax.devices()[0].platform}, best of '
            f'{args.repeats} timed calls, {args.seeds} sampler seeds for MMD^2, load average '
            f'{load:.1f} at the end.', '']
  return '\n'.join(lines)


if __name__ == '__main__':
  main()
