"""Few-step generators on toy mixtures and digits: flow maps vs distilled students.

  PYTHONPATH=. python experiments/few_step.py --data=unequal8 --seeds=3 --budget_s=600 \
      --workdir=/tmp/few_step [--out=experiments/results/few_step_unequal8.md]
  PYTHONPATH=. python experiments/few_step.py --smoke --budget_s=15 --seeds=2 --num=500 \
      --workdir=/tmp/few_step_smoke                                  # a quick check
  PYTHONPATH=. python experiments/few_step.py --data=digits --budget_s=240 --num=2000 \
      --teacher=runs/edm_digits --scd_teacher=runs/edm_digits_ts10 --workdir=/tmp/few_step

Rows (--rows picks a subset by name):
  data          exact draws of the mixture (reference: the noise floor of each number);
  teacher       EDM's Heun sampler on the mixture's exact denoiser, 18 levels = 35 NFE
                (gensuite.methods.teachers.AnalyticTeacher; reference);
  meanflow, scm, shortcut
                flow maps trained from scratch (configs/flow_maps/toy2d.py:<method>),
                each sampled with 1, 2 and 4 network calls (method.sample(steps=k));
  fdistill_js, fdistill_fkl, dmd, dmd2
                one-step students of the exact teacher (configs/distill/toy2d.py:
                f_distill,js / f_distill,forward_kl / dmd / dmd2), 1 NFE;
  fdistill_rkl, fdistill_srkl, fdistill_hellinger, fdistill_jeffreys, fdistill_pearson,
  fdistill_neyman, fdistill_alpha
                the other f-divergences' one-step students (reverse KL, softened
                reverse KL, squared Hellinger, Jeffreys, Pearson, Neyman, alpha);
  fdistill_js_4, fdistill_fkl_4, dmd2_4
                4-step students (the `multistep` token: the generator is trained
                for 4 steps with backward simulation), sampled with 4 NFE.
By default the flow maps and the fdistill_js and dmd2 students run (DEFAULT_ROWS).
--data picks the mixture (the configs' tokens unequal8 | wide8 | 8gaussians | grid); --smoke
appends ',smoke' to every config variant (a tiny net and batch).

--data=digits (scikit-learn's 8x8 digits; DIGITS_TRAINED) takes the same methods from
configs/flow_maps/digits.py (meanflow, scm, shortcut: from scratch; scd: sCM distilled
from --scd_teacher, default --teacher, which needs net.time_scale 10, see that config)
and configs/distill/digits.py (fdistill_js, dmd2, and dmd, the digits default: one-step
students of --teacher; dmd_4, its 4-step form, only when asked for: its chain compiles
for minutes). The teacher row samples --teacher with its own sampler (Heun, 35 NFE);
there is no data row (the reference is the whole set once --num >= 1797). The columns
are `gensuite eval`'s digits metrics on --num samples: fd_digits, precision, recall and
class TV on the features of the digits classifier (gensuite/metrics/features.py).
The distilled rows and sCD start from a trained teacher, whose training is not in
their time.

Equal training wall time (--budget_s, per run): the run is trained in a Python loop over
the Experiment API (gensuite.experiment: the jitted step the trainer runs, batches
prefetched on a thread as `gensuite train` does), its step compiled ahead of time (not
counted). First a probe of --probe_s seconds, the same loop on a throwaway state,
measures the step time; train.num_steps is set to budget_s / (probe step time), so the
LR schedule (cosine for the flow maps) and sCM's tangent warm-up (a tenth of training
in its config) are sized for the run. The loop then trains until budget_s of wall time
has passed (checked every --sync_every steps after jax.block_until_ready): a run that
reaches num_steps early goes on at the schedule's final LR, one that is slower than
its probe stops before its schedule ends (`train steps` vs the planned num_steps, in
few_step.json and the log line; on a loaded machine the probe is noisy: in the smoke
check planned steps were 0.6 .. 1.6 x those taken). `train s` is the loop's wall time,
`train steps` the steps it took. --steps=N trains exactly N steps instead (no budget).
A finished run is saved (checkpoint, config.json and few_step.json) under
--workdir/<data>[_smoke]/<budget<B>s | steps<N>>/<row>/seed<s>; running the script
again only evaluates finished runs (--train_only=1,2 trains just those seeds and prints
no table, so several processes can share one row's seeds). A run cut short (killed) has
no few_step.json and is trained again from scratch: resuming would not give equal wall
time.

Evaluation is deterministic: every trained run is sampled with the same key (PRNGKey
--eval_seed) and compared with one fixed draw of --num data points; the EMA params
(the configs' ema_decays) unless --params=raw. Columns, as mean +- std over the
--seeds training seeds (config.seed = 0 .. seeds-1):
  on_mode       fraction of samples within 3 stds of a mode (gensuite.metrics.distances);
  mode_mass_tv  total variation between nearest-mode masses and the mixture weights;
  modes_covered modes holding >= 10% of their expected count within 3 stds;
  nll           mean -log p(x) under the true mixture (the data row is its entropy);
  MMD^2         unbiased, RBF with the data's median bandwidth (wide next to the modes:
                it barely sees samples strewn between modes; on_mode and nll do).
(std with ddof 0, as experiments/distill_divergences.py). The two reference rows have
no training: their +- is over --seeds independent sample draws (keys fold_in(eval
key, s)). Below the table, for on_mode and mode_mass_tv, each row is compared with the
best trained row: 'beyond the spread' when |mean_a - mean_b| > std_a + std_b.

Cost: 5 trained rows x --seeds runs of budget_s each, plus per run the probe (5% of the
budget, 2 .. 30 s), two compiles of the step and the sampling (on 2 CPU cores about
20 .. 40 s per run for the toy nets); the smoke check above takes about 12 minutes.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs.distill import digits as distill_digits  # pylint: disable=g-import-not-at-top
from configs.distill import toy2d as distill_toy2d
from configs.flow_maps import digits as flow_maps_digits
from configs.flow_maps import toy2d as flow_maps_toy2d
from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite import metrics as metrics_lib
from gensuite import run as run_lib
from gensuite.data import toy
from gensuite.experiment import build_experiment
from gensuite.methods import teachers
from gensuite.metrics import distances
from gensuite.train import checkpoint as ckpt_lib

# row -> (config module, variant tokens, NFEs evaluated)
TRAINED = {
    'meanflow': (flow_maps_toy2d, 'meanflow', (1, 2, 4)),
    'scm': (flow_maps_toy2d, 'scm', (1, 2, 4)),
    'shortcut': (flow_maps_toy2d, 'shortcut', (1, 2, 4)),
    'fdistill_js': (distill_toy2d, 'f_distill,js', (1,)),
    'fdistill_fkl': (distill_toy2d, 'f_distill,forward_kl', (1,)),
    'dmd': (distill_toy2d, 'dmd', (1,)),
    'dmd2': (distill_toy2d, 'dmd2', (1,)),
    'fdistill_js_4': (distill_toy2d, 'f_distill,js,multistep', (4,)),
    'fdistill_fkl_4': (distill_toy2d, 'f_distill,forward_kl,multistep', (4,)),
    'dmd2_4': (distill_toy2d, 'dmd2,multistep', (4,)),
    # The other f-divergences of configs/distill/toy2d.py (the divergence table).
    **{f'fdistill_{row}': (distill_toy2d, f'f_distill,{token}', (1,))
       for row, token in [('rkl', 'reverse_kl'), ('srkl', 'softened_reverse_kl'),
                          ('hellinger', 'squared_hellinger'), ('jeffreys', 'jeffreys'),
                          ('pearson', 'pearson'), ('neyman', 'neyman'),
                          ('alpha', 'alpha')]},
}
# The digits rows (--data=digits): the same methods on the digits configs, plus sCD (sCM
# distilled from --scd_teacher) and DMD with the GAN head (the digits default student)
# and its 4-step form. Every distilled row starts from --teacher's weights.
DIGITS_TRAINED = {
    'meanflow': (flow_maps_digits, 'meanflow', (1, 2, 4)),
    'scm': (flow_maps_digits, 'scm', (1, 2, 4)),
    'shortcut': (flow_maps_digits, 'shortcut', (1, 2, 4)),
    'scd': (flow_maps_digits, 'scd', (1, 2, 4)),
    'fdistill_js': (distill_digits, 'f_distill,js', (1,)),
    'dmd': (distill_digits, 'dmd', (1,)),
    'dmd2': (distill_digits, 'dmd2', (1,)),
    'dmd_4': (distill_digits, 'dmd,multistep', (1, 2, 4)),
}
LABELS = {'data': 'data (exact draws)', 'teacher': 'teacher (exact, Heun)',
          'meanflow': 'MeanFlow', 'scm': 'sCM (sCT)', 'shortcut': 'shortcut',
          'fdistill_js': 'f-distill JS (student)', 'fdistill_fkl': 'f-distill fwd KL (student)',
          'dmd': 'DMD (student)', 'dmd2': 'DMD2 (student)',
          'fdistill_js_4': 'f-distill JS, 4-step student',
          'fdistill_fkl_4': 'f-distill fwd KL, 4-step student', 'dmd2_4': 'DMD2, 4-step student',
          'fdistill_rkl': 'f-distill reverse KL (student)',
          'fdistill_srkl': 'f-distill softened reverse KL (student)',
          'fdistill_hellinger': 'f-distill squared Hellinger (student)',
          'fdistill_jeffreys': 'f-distill Jeffreys (student)',
          'fdistill_pearson': 'f-distill Pearson chi^2 (student)',
          'fdistill_neyman': 'f-distill Neyman chi^2 (student)',
          'fdistill_alpha': 'f-distill alpha = 0.5 (student)',
          'scd': 'sCD (sCM distilled)', 'dmd_4': 'DMD, 4-step student',
          'teacher_run': 'teacher (the EDM run, its sampler)'}
ROWS = ('data', 'teacher') + tuple(TRAINED)
DEFAULT_ROWS = ('data', 'teacher', 'meanflow', 'scm', 'shortcut', 'fdistill_js', 'dmd2')
# dmd_4 (its U-Net 4-step chain compiles for about 100 s, twice per run) runs on request.
DIGITS_ROWS = ('teacher',) + tuple(DIGITS_TRAINED)
DIGITS_DEFAULT_ROWS = tuple(r for r in DIGITS_ROWS if r != 'dmd_4')
DATA = ('unequal8', 'wide8', '8gaussians', 'grid', 'digits')
METRICS = ('on_mode', 'mode_mass_tv', 'modes_covered', 'nll', 'mmd2')
DIGITS_METRICS = ('fd_digits', 'precision_digits', 'recall_digits', 'class_tv_digits')
MARKER = 'few_step.json'


# ---- training ----------------------------------------------------------------------


def trained_rows(data):
  """row -> (config module, variant tokens, NFEs evaluated) for this data."""
  return DIGITS_TRAINED if data == 'digits' else TRAINED


def make_config(row, data, seed, smoke, num_steps=None, teachers_of=None):
  """The row's config. On digits `teachers_of` = {'distill': DIR, 'scd': DIR} names the
  teacher runs (the distilled rows' and sCD's)."""
  module, tokens, _ = trained_rows(data)[row]
  variant = ','.join([tokens] + ([] if data == 'digits' else [data]) +
                     (['smoke'] if smoke else []))
  c = module.get_config(variant)
  if data == 'digits' and teachers_of and (module is distill_digits or row == 'scd'):
    c.teacher.workdir = teachers_of['scd' if row == 'scd' else 'distill']
  c.seed = seed
  c.train.eval_every = 0
  c.train.ckpt_every = 0
  if num_steps is not None:
    fit_to_steps(c, num_steps)
  return c


def fit_to_steps(c, num_steps):
  """Sets train.num_steps and scales what the configs size by it: sCM's tangent
  warm-up (a fraction of training) and the LR warm-up (at most a fifth of training)."""
  planned = int(c.train.num_steps)
  num_steps = max(int(num_steps), 1)
  if c.method.name == 'scm' and c.method.tangent_warmup > 0:
    c.method.tangent_warmup = max(1, round(c.method.tangent_warmup * num_steps / planned))
  if c.optim.get('warmup_steps', 0):
    c.optim.warmup_steps = min(int(c.optim.warmup_steps), num_steps // 5)
  c.train.num_steps = num_steps


def _compile(exp, state, batch):
  t0 = time.perf_counter()
  step = exp.bare_step.lower(state, batch).compile()
  return step, time.perf_counter() - t0


def train_loop(exp, step, state, sync_every, keep_going, max_steps=None):
  """Steps `state` with the compiled step, batches prefetched on a thread as the
  trainer does, until keep_going(steps done, seconds) is False (asked every sync_every
  steps, after jax.block_until_ready) or max_steps are done. Returns (state, last
  metrics, steps, seconds, seconds per step of each chunk)."""
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    future = pool.submit(exp.global_batch, 0)
    done, elapsed, chunks = 0, 0.0, []
    t0 = time.perf_counter()
    while keep_going(done, elapsed) and (max_steps is None or done < max_steps):
      c0 = time.perf_counter()
      chunk = sync_every if max_steps is None else min(sync_every, max_steps - done)
      for _ in range(chunk):
        batch = future.result()
        future = pool.submit(exp.global_batch, done + 1)
        state, metrics = step(state, batch)
        done += 1
      jax.block_until_ready((state, metrics))
      now = time.perf_counter()
      elapsed = now - t0
      chunks.append((now - c0) / chunk)
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
  return state, metrics, done, elapsed, chunks


def probe_step_time(config, seconds, sync_every):
  """Seconds per train step of `config` (median over chunks of sync_every steps after
  the first), on a throwaway state, in the same loop as the run."""
  exp = build_experiment(config, load_run=run_lib.load_run)
  state = exp.init_state()
  step, _ = _compile(exp, state, exp.global_batch(0))
  chunks = train_loop(exp, step, state, sync_every,
                      lambda done, elapsed: elapsed < seconds or done < 3 * sync_every)[4]
  return float(np.median(chunks[1:]))


def train_run(row, data, seed, smoke, workdir, budget_s, steps, sync_every, probe_s,
              teachers_of=None):
  """Trains one run (or reads back a finished one): returns its few_step.json dict."""
  marker = os.path.join(workdir, MARKER)
  if os.path.exists(marker):
    with open(marker) as f:
      return json.load(f)
  if os.path.exists(workdir):  # an unfinished run: trained again from scratch
    print(f'  {workdir}: unfinished, training again from scratch', flush=True)
    shutil.rmtree(workdir)
  os.makedirs(workdir)
  probe_ms = None
  if steps:
    num_steps = steps
  else:
    probe = probe_step_time(make_config(row, data, seed, smoke, teachers_of=teachers_of),
                            probe_s, sync_every)
    probe_ms = probe * 1e3
    num_steps = max(1, int(budget_s / probe))
  config = make_config(row, data, seed, smoke, num_steps, teachers_of)
  exp = build_experiment(config, load_run=run_lib.load_run)
  state = exp.init_state()
  step, compile_s = _compile(exp, state, exp.global_batch(0))
  if steps:
    state, metrics, done, elapsed, _ = train_loop(exp, step, state, sync_every,
                                                  lambda done, elapsed: True, steps)
  else:  # past num_steps (a probe that guessed slow) at the schedule's final LR
    state, metrics, done, elapsed, _ = train_loop(exp, step, state, sync_every,
                                                  lambda done, elapsed: elapsed < budget_s)
  loss = float(jax.device_get(metrics['loss']))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=1)
  try:
    ckpt.save(done, state, force=True)
  finally:
    ckpt.close()
  config_lib.write(workdir, config)
  info = dict(row=row, data=data, seed=seed, smoke=smoke,
              budget_s=None if steps else budget_s,
              planned_steps=num_steps, train_steps=done, train_s=elapsed,
              compile_s=compile_s, probe_step_ms=probe_ms, final_loss=loss,
              platform=jax.devices()[0].platform)
  with open(marker + '.tmp', 'w') as f:
    json.dump(info, f, indent=2)
  os.replace(marker + '.tmp', marker)
  return info


# ---- evaluation --------------------------------------------------------------------


def score(x, mixture, ref, bandwidth):
  x = np.asarray(x, np.float64)
  tv, covered, _ = distances.mode_statistics(x, mixture.means, mixture.weights, mixture.stds)
  return dict(on_mode=distances.on_mode(x, mixture.means, mixture.stds), mode_mass_tv=tv,
              modes_covered=float(covered), nll=distances.nll(x, mixture.log_prob),
              mmd2=float(distances.mmd2_unbiased(x, ref, bandwidth)))


def score_digits(x, ref, cache_dir, key):
  """fd / precision / recall / class TV of digits samples against the reference, on the
  features of the digits classifier (cached under cache_dir), as `gensuite eval`."""
  out = metrics_lib.evaluate(DIGITS_METRICS, key, np.asarray(x, np.float32), ref,
                             log_prob=None, workdir=cache_dir)
  return {k: float(out[k]) for k in DIGITS_METRICS}


def teacher_nfe(sampler) -> int:
  """Network calls of a deterministic EDM sampler of `steps` levels (Heun: 2 steps - 1)."""
  return 2 * int(sampler.steps) - 1 if sampler.name == 'heun' else int(sampler.steps)


def summarize(rows):
  """[dict] -> {key: (mean, std)} (std over runs, ddof 0)."""
  keys = rows[0].keys()
  return {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
          for k in keys}


def fmt_cell(key, mean, std):
  if mean is None:
    return '-'
  if key == 'mmd2':
    return f'{mean:.2e} +- {std:.1e}'
  if key in ('modes_covered',):
    return f'{mean:.1f} +- {std:.1f}'
  if key == 'train_steps':
    return f'{mean:.0f} +- {std:.0f}'
  if key == 'train_s':
    return f'{mean:.1f} +- {std:.1f}'
  if key == 'nll':
    return f'{mean:.3f} +- {std:.3f}'
  if key == 'fd_digits':
    return f'{mean:.2f} +- {std:.2f}'
  return f'{mean:.3f} +- {std:.3f}'


COLUMNS = (('on_mode', 'on_mode'), ('mode_mass_tv', 'mode_mass_tv'),
           ('modes_covered', 'modes_covered'), ('nll', 'nll'), ('mmd2', 'MMD^2'),
           ('train_steps', 'train steps'), ('train_s', 'train s'))
DIGITS_COLUMNS = (('fd_digits', 'fd_digits'), ('precision_digits', 'precision'),
                  ('recall_digits', 'recall'), ('class_tv_digits', 'class TV'),
                  ('train_steps', 'train steps'), ('train_s', 'train s'))
# (metric, better) for the spread lines below the table.
SPREAD_KEYS = (('on_mode', max), ('mode_mass_tv', min))
DIGITS_SPREAD_KEYS = (('fd_digits', min), ('class_tv_digits', min))


def table_lines(results, columns=COLUMNS):
  lines = ['| row | NFE | ' + ' | '.join(c[1] for c in columns) + ' |',
           '|---|---|' + '---|' * len(columns)]
  for (row, nfe), stats in results.items():
    cells = [fmt_cell(k, *stats.get(k, (None, None))) for k, _ in columns]
    lines.append(f'| {LABELS[row]} | {nfe if nfe else "-"} | ' + ' | '.join(cells) + ' |')
  return lines


def spread_lines(results, keys=SPREAD_KEYS, trained_names=TRAINED):
  """For each (metric, better) of `keys` (toy: on_mode, higher is better, and
  mode_mass_tv, lower): the best trained row and which rows differ from it by more
  than the sum of their stds."""
  trained = {k: v for k, v in results.items() if k[0] in trained_names}
  lines = []
  if not trained:
    return lines
  for key, better in keys:
    best = better(trained, key=lambda k: trained[k][key][0])
    bm, bs = trained[best][key]
    beyond, within = [], []
    for k, stats in results.items():
      if k == best:
        continue
      m, s = stats[key]
      name = f'{LABELS[k[0]]} {k[1]} NFE' if k[1] else LABELS[k[0]]
      (beyond if abs(m - bm) > s + bs else within).append(f'{name} ({m:.3f})')
    lines.append(
        f'- {key}: best trained row {LABELS[best[0]]} {best[1]} NFE ({bm:.3f} +- {bs:.3f}). '
        f'Beyond the spread (|mean_a - mean_b| > std_a + std_b): '
        f'{", ".join(beyond) or "none"}. Within it: {", ".join(within) or "none"}.')
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default='unequal8', choices=DATA)
  p.add_argument('--seeds', type=int, default=3, help='training seeds (config.seed)')
  p.add_argument('--budget_s', type=float, default=300.0,
                 help='training wall time per run, seconds (compile not counted)')
  p.add_argument('--steps', type=int, default=0,
                 help='train exactly this many steps instead of a wall-time budget')
  p.add_argument('--num', type=int, default=4000, help='evaluation samples')
  p.add_argument('--rows', default=','.join(DEFAULT_ROWS),
                 help='rows to run, comma-separated; allowed on the toys: ' + ', '.join(ROWS) +
                      '; on digits: ' + ', '.join(DIGITS_ROWS))
  p.add_argument('--smoke', action='store_true', help="append ',smoke' to every variant")
  p.add_argument('--params', default='ema', choices=('ema', 'raw'),
                 help='sample with the EMA params (the one each config\'s eval.use_ema '
                      'names: by default the longest of its ema_decays) or the raw ones')
  p.add_argument('--eval_seed', type=int, default=1234)
  p.add_argument('--sync_every', type=int, default=10,
                 help='steps between block_until_ready and the wall-time check')
  p.add_argument('--probe_s', type=float, default=0.0,
                 help='seconds of the step-time probe (default: 5%% of the budget, 2 .. 30)')
  p.add_argument('--workdir', default='/tmp/few_step')
  p.add_argument('--teacher', default='',
                 help='digits: the diffusion run the distilled rows start from and distil '
                      '(the teacher row samples it with its own sampler)')
  p.add_argument('--scd_teacher', default='',
                 help='digits: the diffusion run sCD distils (one with net.time_scale 10, '
                      'configs/flow_maps/digits.py); default --teacher')
  p.add_argument('--out', default='', help='also write the table to this markdown file')
  p.add_argument('--train_only', default='',
                 help='comma-separated seeds: train these seeds of each trained row, print '
                      'no table (spreads one row over several processes; a later run '
                      'without it evaluates every finished seed)')
  args = p.parse_args()
  if args.seeds < 1 or (args.steps <= 0 and args.budget_s <= 0):
    p.error('need --seeds >= 1 and a positive --budget_s or --steps')
  digits = args.data == 'digits'
  allowed = DIGITS_ROWS if digits else ROWS
  if not args.rows:
    p.error(f'--rows is empty; allowed for --data={args.data}: {", ".join(allowed)}')
  rows = [r for r in args.rows.split(',') if r]
  if digits and args.rows == ','.join(DEFAULT_ROWS):
    rows = list(DIGITS_DEFAULT_ROWS)
  unknown = [r for r in rows if r not in allowed]
  if unknown:
    p.error(f'unknown rows {unknown} for --data={args.data}; allowed: {", ".join(allowed)}')
  teachers_of = None
  if digits:
    for name in ('teacher',) + (('scd_teacher',) if args.scd_teacher else ()):
      path = getattr(args, name)
      if not path or not os.path.isfile(os.path.join(path, 'config.json')):
        p.error(f'--data=digits needs --{name}=DIR, a trained diffusion run (a directory '
                f'with config.json), got {path!r}')
    teachers_of = {'distill': args.teacher, 'scd': args.scd_teacher or args.teacher}
  probe_s = args.probe_s or min(max(0.05 * args.budget_s, 2.0), 30.0)
  try:
    train_only = [int(v) for v in args.train_only.split(',') if v.strip()]
  except ValueError:
    p.error(f'--train_only takes comma-separated seeds, got {args.train_only!r}')
  if any(not 0 <= v < args.seeds for v in train_only):
    p.error(f'--train_only seeds must be in 0..{args.seeds - 1} (--seeds), got {train_only}')
  tag = f'steps{args.steps}' if args.steps else f'budget{args.budget_s:g}s'
  root = os.path.join(args.workdir, args.data + ('_smoke' if args.smoke else ''), tag)
  os.makedirs(root, exist_ok=True)
  trained_names = trained_rows(args.data)

  def run_row_seed(row, seed):
    return train_run(row, args.data, seed, args.smoke, os.path.join(root, row, f'seed{seed}'),
                     args.budget_s, args.steps, args.sync_every, probe_s, teachers_of)

  if train_only:
    for row in (r for r in rows if r in trained_names):
      for seed in train_only:
        info = run_row_seed(row, seed)
        print(f'  {row} seed {seed}: {info["train_steps"]} steps in {info["train_s"]:.1f} s',
              flush=True)
    return

  eval_key = jax.random.PRNGKey(args.eval_seed)
  use_ema = args.params == 'ema'
  results = {}
  if digits:
    # The reference: --num digits drawn without replacement (all 1797 when --num is
    # larger), as `gensuite eval` draws them; metrics' classifier cached under root.
    base = make_config('dmd', 'digits', 0, args.smoke)
    source = data_lib.build(base.data, seed=0, global_batch_size=16)
    ref = source.reference(jax.random.fold_in(eval_key, 10**6), args.num)
    score_fn = lambda x: score_digits(x, ref, root, jax.random.fold_in(eval_key, 7))
    if 'teacher' in rows:
      teacher = run_lib.load_run(args.teacher)
      runs = [score_fn(teacher.sample(jax.random.fold_in(eval_key, s), args.num))
              for s in range(args.seeds)]
      results[('teacher_run', teacher_nfe(teacher.config.sampler))] = summarize(runs)
  else:
    base = make_config('meanflow', args.data, 0, args.smoke)
    mixture = toy.get(base.data.name, **config_lib.to_dict(base.data).get('params', {}))
    ref = np.asarray(mixture.sample(jax.random.fold_in(eval_key, 10**6), args.num))
    bandwidth = distances.median_bandwidth(ref)
    score_fn = lambda x: score(x, mixture, ref, bandwidth)
    if 'data' in rows:
      runs = [score_fn(mixture.sample(jax.random.fold_in(eval_key, s), args.num))
              for s in range(args.seeds)]
      results[('data', 0)] = summarize(runs)
    if 'teacher' in rows:
      teacher = teachers.AnalyticTeacher(mixture)
      heun = jax.jit(lambda k: teacher.sample(jax.random.normal(k, (args.num, mixture.dim)),
                                              80.0, 18))
      runs = []
      for s in range(args.seeds):
        x, nfe = heun(jax.random.fold_in(eval_key, s))
        runs.append(score_fn(x))
      results[('teacher', int(nfe))] = summarize(runs)
  for row in rows:
    if row not in trained_names:
      continue
    per_nfe = {nfe: [] for nfe in trained_names[row][2]}
    for seed in range(args.seeds):
      workdir = os.path.join(root, row, f'seed{seed}')
      info = run_row_seed(row, seed)
      print(f'  {row} seed {seed}: {info["train_steps"]} steps in {info["train_s"]:.1f} s '
            f'(compile {info["compile_s"]:.1f} s, planned {info["planned_steps"]}, '
            f'final loss {info["final_loss"]:.4g})', flush=True)
      run = run_lib.load_run(workdir)
      for nfe in per_nfe:
        ema = run.config.eval.get('use_ema', True) if use_ema else False  # the run's EMA
        x = run.sample(eval_key, args.num, steps=nfe, use_ema=ema)
        per_nfe[nfe].append({**score_fn(x),
                             'train_steps': float(info['train_steps']),
                             'train_s': float(info['train_s'])})
    for nfe, runs in per_nfe.items():
      results[(row, nfe)] = summarize(runs)

  budget = (f'{args.steps} training steps per run' if args.steps else
            f'{args.budget_s:g} s of training wall time per run')
  header = [
      f'Few-step generation on `{args.data}`{" (smoke configs)" if args.smoke else ""}: '
      f'{budget}, {args.seeds} training seeds, {args.num} samples, '
      f'{args.params} params, on {jax.devices()[0].platform} '
      f'({jax.device_count()} device(s)).',
      '',
      f'`PYTHONPATH=. python experiments/few_step.py {" ".join(sys.argv[1:])}`',
      '',
      ('The teacher row is --teacher sampled with its own sampler (a reference: no '
       'training, +- over sample draws). The distilled rows and sCD start from a '
       'trained teacher\'s weights; its training is not counted in their time. '
       'One-step students are sampled with 1 NFE, the flow maps and the 4-step student '
       'with 1, 2 and 4.' if digits else
       'Distilled students are sampled with the steps they were trained for (1, or 4 for '
       'the 4-step rows). The data and teacher rows are references '
       '(no training; +- over sample draws).'),
      '']
  if digits:
    lines = (header + table_lines(results, DIGITS_COLUMNS) + [''] +
             spread_lines(results, DIGITS_SPREAD_KEYS, trained_names))
  else:
    lines = header + table_lines(results) + [''] + spread_lines(results)
  text = '\n'.join(lines) + '\n'
  print(text, flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(text)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
