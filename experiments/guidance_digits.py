"""Guidance and post-hoc EMA on class-conditional EDM digits: fd_digits vs the knobs.

  PYTHONPATH=. python experiments/guidance_digits.py --workdir=/tmp/guidance \
      --out=experiments/results/guidance_digits.md              # about 1.5 h on 2 CPU cores
  PYTHONPATH=. python experiments/guidance_digits.py --smoke --workdir=/tmp/guidance_smoke
  PYTHONPATH=. python experiments/guidance_digits.py --from_table=FILE.md --figure=FILE.png

Three runs are trained (each skipped when its workdir already holds a finished run):
  main    configs/diffusion/digits.py:cond (10% label dropout), --steps steps, with
          post-hoc EMA profiles optim.phema_stds = (0.05, 0.10) snapshotted every
          steps / 40, and a checkpoint kept every steps / 8 (the early guide);
  small   the same config with a U-Net of half the channels trained for steps / 4:
          autoguidance's "smaller, less trained" guide (Karras et al. 2024);
  early   no training: the main run's checkpoint at step steps / 8 as the guide.
Then every setting below is evaluated on the main run (its 0.999 EMA, Heun 18 levels =
35 NFE per unguided sample, twice that guided) with --num samples for --seeds sampling
seeds (the experiment's eval key folded with the seed), through gensuite.evaluate
(fd_digits, precision_digits, recall_digits; the same code `gensuite eval` runs):
  none                       the unguided model;
  cfg w                      classifier-free guidance at every noise level;
  cfg w, interval            CFG only for sigma in (--sigma_lo, --sigma_hi], unguided
                             elsewhere (Kynkaanniemi et al. 2024);
  autoguidance w (small)     D_guide = the small run;
  autoguidance w (early)     D_guide = the main run at step steps / 8;
for w in --weights. Last, the post-hoc EMA curve: for each relative std in --stds the
EMA is reconstructed from the snapshots (`gensuite phema`, EDM2's least squares) and
the unguided model evaluated with it.

Every row is mean +- std over the sampling seeds (one trained network per row: the
spread is that of sampling and of the metric's reference draw, not of training).

--figure writes the two curves as a PNG: the first metric against guidance weight for
each kind (unguided dashed), and against the post-hoc EMA std (the fixed decay dashed);
--from_table redraws it from a table this script wrote, without training or sampling.
"""
import argparse
import os
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import common  # pylint: disable=g-import-not-at-top
from configs.diffusion import digits as diffusion_digits
from gensuite import evaluate as evaluate_lib
from gensuite import run as run_lib
from gensuite.train import loop

METRICS = ('fd_digits', 'precision_digits', 'recall_digits')


def train(workdir, steps, smoke, channels=None, phema=False, keep_every=0):
  """Trains configs/diffusion/digits.py:cond (or reads back the finished run)."""
  config = diffusion_digits.get_config('cond,smoke' if smoke else 'cond')
  config.train.num_steps = steps
  config.train.eval_every = 0
  if channels:
    config.net.channels = channels
  if phema:
    config.optim.phema_stds = (0.05, 0.10)
    config.train.phema_every = max(steps // 40, 1)
  if keep_every:
    config.train.ckpt_every = keep_every
    config.train.keep_checkpoints = steps // keep_every + 1
  if smoke:
    config.optim.ema_decays = (0.9,)
  loop.run(config, workdir)
  return workdir


def evaluate(run, guidance, seeds, num, use_ema=None):
  """{metric: (mean, std)} of the run with config.sampler.guidance = guidance."""
  values = per_seed(run, guidance, seeds, num, use_ema)
  return {m: (float(np.mean(v)), float(np.std(v))) for m, v in values.items()}


def per_seed(run, guidance, seeds, num, use_ema=None):
  """{metric: [value of sampling seed 0, 1, ...]}: seed s draws the model's samples and
  the metric's reference with the run's eval key folded with s, the same for every
  setting, so two settings' values of one seed are a paired comparison."""
  gc = run.config.sampler.guidance
  defaults = dict(kind='none', weight=1.0, sigma_lo=0.0, sigma_hi=1e9, guide_workdir='',
                  guide_step=0, guide_ema='')
  for key, value in dict(defaults, **guidance).items():
    gc[key] = value
  run.config.eval.num_samples = num
  run.config.eval.metrics = METRICS
  run.method.check_sampler(load_guide=True)
  exp = run.experiment
  base = exp.eval_rng
  values = {m: [] for m in METRICS}
  try:
    for seed in range(seeds):
      exp.eval_rng = jax.random.fold_in(base, seed)
      results = evaluate_lib.evaluate(exp, run.state, run.step, None, run.workdir,
                                      use_ema=use_ema)
      for m in METRICS:
        values[m].append(results[f'eval/{m}'])
  finally:
    exp.eval_rng = base
  return values


def paired(run, specs, main_dir, small_dir, early_step, args):
  """Per-seed values of the first metric for each `kind:value` in specs and for the
  unguided model, and each one's paired difference to it (mean +- std over seeds).
  kinds: cfg, cfg_interval, auto_small, auto_early (value: the weight) and phema (value:
  the relative std, reconstructed first if missing)."""
  metric = METRICS[0]
  base = per_seed(run, {}, args.seeds, args.num)[metric]
  lines = [f'Paired against the unguided model (its {metric} per seed: '
           + ', '.join(f'{v:.3f}' for v in base) + '):', '',
           f'| setting | {metric} per seed | difference to unguided (mean +- std) |',
           '|---|---|---|']
  for spec in specs:
    kind, value = spec.split(':')
    use_ema, guidance = None, {}
    if kind == 'phema':
      name = f'phema_{float(value):g}'
      if name not in run.state.ema:
        subprocess.run([sys.executable, '-m', 'gensuite.cli', 'phema', f'--workdir={main_dir}',
                        f'--std={value}'], check=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=REPO))
        run = run_lib.load_run(main_dir)
      use_ema = name
    else:
      guidance = {'cfg': dict(kind='cfg', weight=float(value)),
                  'cfg_interval': dict(kind='cfg', weight=float(value),
                                       sigma_lo=args.sigma_lo, sigma_hi=args.sigma_hi),
                  'auto_small': dict(kind='autoguidance', weight=float(value),
                                     guide_workdir=small_dir),
                  'auto_early': dict(kind='autoguidance', weight=float(value),
                                     guide_workdir=main_dir, guide_step=early_step)}[kind]
    got = per_seed(run, guidance, args.seeds, args.num, use_ema)[metric]
    diff = np.asarray(got) - np.asarray(base)
    lines.append(f'| {spec} | ' + ', '.join(f'{v:.3f}' for v in got) +
                 f' | {diff.mean():+.3f} +- {diff.std(ddof=1) if len(diff) > 1 else 0.0:.3f} |')
    print(lines[-1], flush=True)
  return '\n'.join(lines) + '\n'


def fmt(stats):
  return ' | '.join(f'{stats[m][0]:.3f} +- {stats[m][1]:.3f}' for m in METRICS)


def _mean(cell: str) -> float:
  return float(cell.split('+-')[0])


def read_table(path):
  """(rows, curve, fixed) of a table this script wrote: rows [(kind, weight, interval,
  first metric mean)], curve [(std, mean)], fixed (the 0.999 EMA's mean)."""
  rows, curve, fixed = [], [], None
  with open(path) as f:
    for line in f:
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      if not line.startswith('|') or cells[0] in ('guidance', 'relative std') or \
          cells[0].startswith('---'):
        continue
      if len(cells) == 3 + len(METRICS):
        rows.append((cells[0], cells[1], cells[2], _mean(cells[3])))
      elif cells[0] == 'fixed decay 0.999':
        fixed = _mean(cells[1])
      elif len(cells) == 1 + len(METRICS):
        curve.append((float(cells[0]), _mean(cells[1])))
  return rows, curve, fixed


def figure(rows, curve, fixed, path):
  """The guidance and post-hoc EMA curves of the first metric (module docstring)."""
  from gensuite import pictures  # pylint: disable=g-import-not-at-top
  by_kind = {}
  for kind, weight, interval, value in rows:
    if kind == 'none':
      continue
    name = kind + (f' {interval}' if interval not in ('all', '-') else '')
    by_kind.setdefault(name, ([], []))
    by_kind[name][0].append(float(weight))
    by_kind[name][1].append(value)
  unguided = next(v for k, _, _, v in rows if k == 'none')
  left = pictures.line_plot(by_kind, xlabel='guidance weight', ylabel=METRICS[0],
                            title='guidance (main run, 0.999 EMA)',
                            hlines={'unguided': unguided})
  curves = {'post-hoc EMA': ([c[0] for c in curve], [c[1] for c in curve])}
  right = pictures.line_plot(curves, xlabel='relative EMA std', ylabel=METRICS[0],
                             title='post-hoc EMA, unguided',
                             hlines={'fixed decay 0.999': fixed} if fixed else None)
  pictures.save_png(path, pictures.side_by_side([left, right]))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='/tmp/guidance')
  p.add_argument('--steps', type=int, default=3000, help='training steps of the main run')
  p.add_argument('--weights', default='1.25,1.5,2,3')
  p.add_argument('--sigma_lo', type=float, default=0.3)
  p.add_argument('--sigma_hi', type=float, default=3.0)
  p.add_argument('--stds', default='0.02,0.035,0.05,0.075,0.1,0.15,0.2')
  p.add_argument('--seeds', type=int, default=3, help='sampling seeds per setting')
  p.add_argument('--num', type=int, default=500, help='samples per evaluation')
  p.add_argument('--smoke', action='store_true', help='tiny nets and runs: a quick check')
  p.add_argument('--out', default='')
  p.add_argument('--figure', default='', help='PNG of the guidance and EMA curves')
  p.add_argument('--from_table', default='', help='redraw --figure from this table only')
  p.add_argument('--paired', default='', help='only these settings against the unguided '
                 'model, per seed: kind:value,... with kind cfg, cfg_interval, auto_small, '
                 'auto_early (value: weight) or phema (value: std); appended to --out')
  args = p.parse_args()
  if args.from_table:
    if not args.figure:
      p.error('--from_table needs --figure')
    figure(*read_table(args.from_table), args.figure)
    return
  weights = [float(w) for w in args.weights.split(',') if w]
  stds = [float(s) for s in args.stds.split(',') if s]
  if args.steps < 8 or args.seeds < 1 or args.num < 2 or not weights:
    p.error('need --steps >= 8, --seeds >= 1, --num >= 2 and at least one weight')
  if args.smoke:
    METRICS_SMOKE = ('mmd',)  # the digits feature net is not part of a smoke check
    globals()['METRICS'] = METRICS_SMOKE

  main_dir = os.path.join(args.workdir, 'main')
  early_step = args.steps // 8
  train(main_dir, args.steps, args.smoke, phema=True, keep_every=early_step)
  small_dir = train(os.path.join(args.workdir, 'small'), max(args.steps // 4, 1), args.smoke,
                    channels=max(common.digits_unet().channels // 2, 4) if not args.smoke
                    else None)
  run = run_lib.load_run(main_dir)
  if args.paired:
    text = paired(run, [x for x in args.paired.split(',') if x], main_dir, small_dir,
                  early_step, args)
    print(text)
    if args.out:
      with open(args.out, 'a') as f:
        f.write('\n' + f'`PYTHONPATH=. python experiments/guidance_digits.py '
                f'{" ".join(sys.argv[1:])}`\n\n' + text)
    return

  rows = [('none', '-', '-', evaluate(run, {}, args.seeds, args.num))]
  print(rows[-1], flush=True)
  guides = {'small': dict(guide_workdir=small_dir),
            'early': dict(guide_workdir=main_dir, guide_step=early_step)}
  for w in weights:
    settings = [
        ('cfg', 'all', dict(kind='cfg', weight=w)),
        ('cfg', f'({args.sigma_lo:g}, {args.sigma_hi:g}]',
         dict(kind='cfg', weight=w, sigma_lo=args.sigma_lo, sigma_hi=args.sigma_hi)),
        *[(f'autoguidance ({name})', 'all', dict(kind='autoguidance', weight=w, **g))
          for name, g in guides.items()]]
    for kind, interval, guidance in settings:
      rows.append((kind, f'{w:g}', interval, evaluate(run, guidance, args.seeds, args.num)))
      print(rows[-1], flush=True)

  curve = []
  for std in stds:
    subprocess.run([sys.executable, '-m', 'gensuite.cli', 'phema', f'--workdir={main_dir}',
                    f'--std={std}'], check=True, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=REPO))
    phema_run = run_lib.load_run(main_dir)
    curve.append((std, evaluate(phema_run, {}, args.seeds, args.num,
                                use_ema=f'phema_{std:g}')))
    print(curve[-1], flush=True)
  fixed = evaluate(run_lib.load_run(main_dir), {}, args.seeds, args.num)

  head = '| ' + ' | '.join(METRICS) + ' |'
  lines = [
      f'Guidance and post-hoc EMA on class-conditional EDM digits'
      f'{" (smoke)" if args.smoke else ""}: main run {args.steps} steps, {args.num} samples '
      f'x {args.seeds} sampling seeds per row, on {jax.devices()[0].platform}.', '',
      f'`PYTHONPATH=. python experiments/guidance_digits.py {" ".join(sys.argv[1:])}`', '',
      '| guidance | weight | sigma interval ' + head, '|---|---|---|' + '---|' * len(METRICS)]
  lines += [f'| {k} | {w} | {i} | {fmt(s)} |' for k, w, i, s in rows]
  best = {}
  for k, w, i, s in rows[1:]:
    name = k + (' interval' if i not in ('all', '-') else '')
    if name not in best or s[METRICS[0]][0] < best[name][1][METRICS[0]][0]:
      best[name] = (w, s)
  lines += ['', f'Best {METRICS[0]} per kind (unguided: {rows[0][3][METRICS[0]][0]:.3f}):', '']
  lines += [f'- {name}: weight {w}, {s[METRICS[0]][0]:.3f} +- {s[METRICS[0]][1]:.3f}'
            for name, (w, s) in best.items()]
  lines += ['', 'Post-hoc EMA (unguided), reconstructed from the snapshots of the 0.05 and '
            '0.10 profiles:', '', '| relative std ' + head, '|---|' + '---|' * len(METRICS)]
  lines += [f'| {std:g} | {fmt(s)} |' for std, s in curve]
  lines += [f'| fixed decay 0.999 | {fmt(fixed)} |']
  if curve:
    std, s = min(curve, key=lambda c: c[1][METRICS[0]][0])
    lines += ['', f'Best relative std: {std:g} ({METRICS[0]} {s[METRICS[0]][0]:.3f}).']
  text = '\n'.join(lines) + '\n'
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  if args.figure:
    figure([(k, w, i, st[METRICS[0]][0]) for k, w, i, st in rows],
           [(std, st[METRICS[0]][0]) for std, st in curve], fixed[METRICS[0]][0], args.figure)


if __name__ == '__main__':
  main()
