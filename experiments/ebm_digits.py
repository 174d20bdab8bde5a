"""Digits EBM runs side by side: the training curve, and the final energy sampled several
ways, each over several sampling draws.

  gensuite train --config=configs/ebm/digits.py --workdir=runs/ebm_j       # Jarzynski
  gensuite train --config=configs/ebm/digits.py:pcd --workdir=runs/ebm_pcd
  gensuite train --config=configs/ebm/digits.py:cd --workdir=runs/ebm_cd
  PYTHONPATH=. python experiments/ebm_digits.py --runs=runs/ebm_j,runs/ebm_pcd,runs/ebm_cd \
      --num=1000 --draws=3 --out=experiments/results/ebm_digits_runs.md

(or the runs of `gensuite sweep --sweep=experiments/sweeps/ebm_digits.py`). A run given as
DIR@STEP is evaluated at that checkpoint instead of its last. For each run:
fd_digits at each training eval (the run's own, 256 samples), the largest energy scale
sqrt(E_data U^2) and the resamplings, then fd_digits / precision / recall of the last
checkpoint at --num samples, mean +- std over --draws sampling keys, for
  config  the config's sampler (ULA from the walkers; a CD run from N(0, I));
  long    --long_steps MALA steps from the same start: how far the energy's own
          equilibrium is from what the short chains show;
then, per estimator, the mean +- std over its runs (the training seeds) of each run's
draw mean, and which estimators differ by more than that spread.
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


def final(workdir: str, num: int, draws: int, long_steps: int, step: int | None = None) -> dict:
  """The checkpoint's figures; kept in DIR/ebm_digits_eval/ and read back when the same
  checkpoint is asked for with the same settings (runs can be evaluated as they finish)."""
  run = run_lib.load_run(workdir, step)
  cache = os.path.join(workdir, 'ebm_digits_eval',
                       f'step{run.step}_num{num}_draws{draws}_long{long_steps}.json')
  if os.path.exists(cache):
    with open(cache) as f:
      return {k: tuple(np.array(x) for x in v) if k != 'step' else v
              for k, v in json.load(f).items()}
  out = _final(run, workdir, num, draws, long_steps)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  with open(cache, 'w') as f:
    json.dump({k: [np.asarray(x).tolist() for x in v] if k != 'step' else v
               for k, v in out.items()}, f)
  return out


def _final(run, workdir: str, num: int, draws: int, long_steps: int) -> dict:
  exp = run.experiment
  ref = exp.data.reference(jax.random.PRNGKey(123), num)
  out = {'step': run.step}
  samplers = [('config', {})] + ([('long', dict(sampler='mala', steps=long_steps))]
                                 if long_steps else [])
  for name, kw in samplers:
    rows = []
    for d in range(draws):
      x = run.sample(jax.random.PRNGKey(1000 + d), num, use_ema=False, **kw)
      res = metrics_lib.evaluate(METRICS, jax.random.PRNGKey(d), np.asarray(x), ref,
                                 workdir=workdir)
      rows.append([float(res[m]) for m in METRICS])
    rows = np.array(rows)
    out[name] = (rows.mean(0), rows.std(0))
  return out


def seed_summary(finals, long_steps: int) -> list[str]:
  """Per estimator and sampler: mean +- std over runs of the draw means; then the pairs
  of estimators whose fd_digits differ by more than the sum of their spreads."""
  groups = {}
  for _, est, f in finals:
    for name in ('config', 'long')[:2 if long_steps else 1]:
      groups.setdefault((est, name), []).append((f[name][0], f['step']))
  lines = ['', 'Over training seeds (each run\'s draw mean; mean +- std over runs):', '',
           '| estimator | sampler | runs | steps | fd_digits | precision | recall |',
           '|---|---|---|---|---|---|---|']
  stats = {}
  for (est, name), rows in groups.items():
    vals = np.array([r[0] for r in rows])
    mean, std = vals.mean(0), vals.std(0)
    stats[(est, name)] = (mean[0], std[0])
    label = 'config (ULA 100)' if name == 'config' else f'MALA {long_steps}'
    steps = '/'.join(str(s) for s in sorted({r[1] for r in rows}))
    lines.append(f'| {est} | {label} | {len(rows)} | {steps} | ' +
                 ' | '.join(f'{m:.3g} +- {s:.2g}' for m, s in zip(mean, std)) + ' |')
  lines.append('')
  for name in ('config', 'long'):
    ests = sorted(e for e, n in stats if n == name)
    for i, a in enumerate(ests):
      for b in ests[i + 1:]:
        (ma, sa), (mb, sb) = stats[(a, name)], stats[(b, name)]
        verdict = 'beyond' if abs(ma - mb) > sa + sb else 'within'
        lines.append(f'- {name}: {a} {ma:.1f} +- {sa:.1f} vs {b} {mb:.1f} +- {sb:.1f}: '
                     f'{verdict} the seed spread')
  return lines


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--runs', required=True, help='comma-separated run directories')
  ap.add_argument('--num', type=int, default=1000)
  ap.add_argument('--draws', type=int, default=3)
  ap.add_argument('--long_steps', type=int, default=1000, help='0: no long-chain rows')
  ap.add_argument('--out', default='')
  args = ap.parse_args()
  lines = [f'`PYTHONPATH=. python experiments/ebm_digits.py --runs=... --num={args.num} '
           f'--draws={args.draws} --long_steps={args.long_steps}`', '']
  dirs = [spec.partition('@')[0] for spec in args.runs.split(',')]
  steps = sorted({s for w in dirs for s in curve(w)['evals']})
  lines += ['| run | estimator | ' + ' | '.join(f'fd@{s}' for s in steps) +
            ' | max energy_scale | resamplings |',
            '|---|---|' + '---|' * len(steps) + '---|---|']
  finals = []
  for spec in args.runs.split(','):
    w, _, at = spec.partition('@')
    c = curve(w)
    with open(os.path.join(w, 'config.json')) as f:
      est = json.load(f)['method']['estimator']
    lines.append(f'| {os.path.basename(w)} | {est} | ' +
                 ' | '.join(f'{c["evals"][s]:.1f}' if s in c['evals'] else '-'
                            for s in steps) +
                 f' | {c["energy_scale"]:.1f} | {c["resamples"]} |')
    finals.append((w, est, final(w, args.num, args.draws, args.long_steps,
                                 int(at) if at else None)))
  lines += ['', f'The checkpoint (the last, or @STEP), {args.num} samples, mean +- std over {args.draws} '
            'sampling draws:', '',
            '| run | estimator | step | sampler | fd_digits | precision | recall |',
            '|---|---|---|---|---|---|---|']
  for w, est, f in finals:
    for name in ('config', 'long')[:2 if args.long_steps else 1]:
      mean, std = f[name]
      label = 'config (ULA 100)' if name == 'config' else f'MALA {args.long_steps}'
      lines.append(f'| {os.path.basename(w)} | {est} | {f["step"]} | {label} | ' +
                   ' | '.join(f'{m:.3g} +- {s:.2g}' for m, s in zip(mean, std)) + ' |')
  lines += seed_summary(finals, args.long_steps)
  write_report(lines, args.out)


def write_report(lines, out: str = '') -> None:
  """Prints the markdown lines and writes them to `out` when given."""
  text = '\n'.join(lines) + '\n'
  print(text)
  if out:
    with open(out, 'w') as f:
      f.write(text)


if __name__ == '__main__':
  main()
