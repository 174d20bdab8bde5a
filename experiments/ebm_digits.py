"""Digits EBM runs side by side: the training curve, and the final energy sampled several
ways, each over several sampling draws.

  gensuite train --config=configs/ebm/digits.py --workdir=runs/ebm_j       # Jarzynski
  gensuite train --config=configs/ebm/digits.py:pcd --workdir=runs/ebm_pcd
  gensuite train --config=configs/ebm/digits.py:cd --workdir=runs/ebm_cd
  PYTHONPATH=. python experiments/ebm_digits.py --runs=runs/ebm_j,runs/ebm_pcd,runs/ebm_cd \
      --num=1000 --draws=3 --out=experiments/results/ebm_digits_runs.md

(or the runs of `gensuite sweep --sweep=experiments/sweeps/ebm_digits.py`). For each run:
fd_digits at each training eval (the run's own, 256 samples), the largest energy scale
sqrt(E_data U^2) and the resamplings, then fd_digits / precision / recall of the last
checkpoint at --num samples, mean +- std over --draws sampling keys, for
  config  the config's sampler (ULA from the walkers; a CD run from N(0, I));
  long    --long_steps MALA steps from the same start: how far the energy's own
          equilibrium is from what the short chains show.
"""
import argparse
import json
import os

import jax
import numpy as np

from gensuite import metrics as metrics_lib
from gensuite import run as run_lib

METRICS = ('fd_digits', 'precision_digits', 'recall_digits')


def curve(workdir: str) -> dict:
  evals, scale, resamples = {}, 0.0, 0
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      r = json.loads(line)
      if 'eval/fd_digits' in r:
        evals[r['step']] = r['eval/fd_digits']
      scale = max(scale, r.get('energy_scale', 0.0))
      resamples = max(resamples, int(r.get('num_resamples', 0)))
  return dict(evals=evals, energy_scale=scale, resamples=resamples)


def final(workdir: str, num: int, draws: int, long_steps: int) -> dict:
  run = run_lib.load_run(workdir)
  exp = run.experiment
  ref = exp.data.reference(jax.random.PRNGKey(123), num)
  out = {'step': run.step}
  for name, kw in (('config', {}), ('long', dict(sampler='mala', steps=long_steps))):
    rows = []
    for d in range(draws):
      x = run.sample(jax.random.PRNGKey(1000 + d), num, use_ema=False, **kw)
      res = metrics_lib.evaluate(METRICS, jax.random.PRNGKey(d), np.asarray(x), ref,
                                 workdir=workdir)
      rows.append([float(res[m]) for m in METRICS])
    rows = np.array(rows)
    out[name] = (rows.mean(0), rows.std(0))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--runs', required=True, help='comma-separated run directories')
  ap.add_argument('--num', type=int, default=1000)
  ap.add_argument('--draws', type=int, default=3)
  ap.add_argument('--long_steps', type=int, default=1000)
  ap.add_argument('--out', default='')
  args = ap.parse_args()
  lines = [f'`PYTHONPATH=. python experiments/ebm_digits.py --runs=... --num={args.num} '
           f'--draws={args.draws} --long_steps={args.long_steps}`', '']
  steps = sorted({s for w in args.runs.split(',') for s in curve(w)['evals']})
  lines += ['| run | estimator | ' + ' | '.join(f'fd@{s}' for s in steps) +
            ' | max energy_scale | resamplings |',
            '|---|---|' + '---|' * len(steps) + '---|---|']
  finals = []
  for w in args.runs.split(','):
    c = curve(w)
    with open(os.path.join(w, 'config.json')) as f:
      est = json.load(f)['method']['estimator']
    lines.append(f'| {os.path.basename(w)} | {est} | ' +
                 ' | '.join(f'{c["evals"][s]:.1f}' if s in c['evals'] else '-'
                            for s in steps) +
                 f' | {c["energy_scale"]:.1f} | {c["resamples"]} |')
    finals.append((w, est, final(w, args.num, args.draws, args.long_steps)))
  lines += ['', f'Last checkpoint, {args.num} samples, mean +- std over {args.draws} '
            'sampling draws:', '',
            '| run | estimator | step | sampler | fd_digits | precision | recall |',
            '|---|---|---|---|---|---|---|']
  for w, est, f in finals:
    for name in ('config', 'long'):
      mean, std = f[name]
      label = 'config (ULA 100)' if name == 'config' else f'MALA {args.long_steps}'
      lines.append(f'| {os.path.basename(w)} | {est} | {f["step"]} | {label} | ' +
                   ' | '.join(f'{m:.3g} +- {s:.2g}' for m, s in zip(mean, std)) + ' |')
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
