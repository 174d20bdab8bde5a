"""Cost of one flow-map training step relative to a flow-matching step of the same net.

  PYTHONPATH=. python experiments/bench_flow_maps.py                    # toy and digits
  PYTHONPATH=. python experiments/bench_flow_maps.py --sizes=toy --steps=20 --repeats=5 \
      [--methods=meanflow,scm,shortcut,meanflow_model_tangent] \
      [--out=experiments/results/bench_flow_maps.md]

For each size every method runs with identical net settings, batch, data and optimizer;
only config.method differs:
  toy     configs/flow_maps/toy2d.py's default net and batch (MLP hidden 128, depth 3,
          time_scale 10, batch 256) on the 2-D unequal8 mixture (each flow-map method's section from
          its toy2d variant; the net of the default config for all);
  digits  configs/flow_maps/digits.py's default net and batch if that file exists,
          else configs/flow_matching/digits.py's (the small U-Net, batch 128, 8x8
          digits); method sections from the flow-map file's variants when it has
          them, else the family defaults.
meanflow_model_tangent is MeanFlow with method.tangent='model' (improved MeanFlow's
jvp along the net's own velocity, one more forward). flow_matching is the reference
(gensuite.methods.flow_matching, its defaults: linear path, independent coupling); the
flow maps also run with independent coupling (the toy config pairs MeanFlow's and
shortcut's noise by minibatch OT, whose Sinkhorn would cost flow matching the same). The flow-map nets embed a second time (MeanFlow t - r,
shortcut's step size; sCM has none), which is part of their cost.

What is timed is the jitted train step the training loop runs (Experiment.bare_step:
loss, gradients, optimizer and EMA update, donated state) on one fixed batch. After
ahead-of-time compilation (the `compile s` column) and one warm-up block, blocks of
--steps steps are timed with jax.block_until_ready at their end, interleaved across
methods for --repeats rounds; min and median ms per step over the blocks are
reported, and the ratios to flow matching (the minimum is the figure least disturbed
by other load on the machine).

On 2 shared CPU cores the toy size takes about 2.5 minutes at the defaults; the digits
size about 5 minutes even at --steps=3 --repeats=2 (compiling each U-Net step takes
35 .. 50 s).
"""
import argparse
import importlib.util
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import common  # pylint: disable=g-import-not-at-top
from gensuite import run as run_lib
from gensuite.experiment import build_experiment

FLOW_MAPS = ('meanflow', 'scm', 'shortcut')
# Rows that are a flow map with some of its method fields changed.
VARIANT_ROWS = {'meanflow_model_tangent': ('meanflow', {'tangent': 'model'})}
ROWS = FLOW_MAPS + tuple(VARIANT_ROWS)


def method_section(get_section, row):
  """The method section of a row: its flow map's, with the row's changes."""
  base, changes = VARIANT_ROWS.get(row, (row, {}))
  section = get_section(base).copy_and_resolve_references()
  section.update(changes)
  return section


def load_module(path):
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(path)[0].replace('/', '_'), os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def configs_for(size, methods):
  """(source, {method: config}) with the base config's net, batch, data, optim."""
  if size == 'toy':
    path = 'configs/flow_maps/toy2d.py'
    mod = load_module(path)
    base = mod.get_config()
    sections = {m: method_section(lambda b: mod.get_config(b).method, m) for m in methods}
  elif size == 'digits':
    path = 'configs/flow_maps/digits.py'
    if os.path.exists(os.path.join(REPO, path)):
      mod = load_module(path)
      base = mod.get_config()

      def section(m):
        try:
          return mod.get_config(m).method
        except (ValueError, KeyError):  # no such token: the family defaults
          return common.method(m)
      sections = {m: method_section(section, m) for m in methods}
    else:
      path = 'configs/flow_matching/digits.py'
      base = load_module(path).get_config()
      sections = {m: method_section(common.method, m) for m in methods}
  else:
    raise ValueError(f'unknown size {size!r}; allowed: toy, digits')
  out = {}
  for name in ('flow_matching',) + tuple(methods):
    c = base.copy_and_resolve_references()
    c.method = common.method('flow_matching') if name == 'flow_matching' else sections[name]
    if name != 'flow_matching' and 'coupling' in c.method:
      c.method.coupling = 'independent'  # the step's own cost, as flow matching's row
    c.net = base.net.copy_and_resolve_references()
    c.sampler.update(name='euler', steps=1)  # not read by the step; valid for all
    c.train.update(eval_every=0, ckpt_every=0)
    out[name] = c
  return path, out


def build(config):
  """(compiled step, state, batch, compile seconds)."""
  exp = build_experiment(config, load_run=run_lib.load_run)
  state = exp.init_state()
  batch = exp.global_batch(0)
  t0 = time.perf_counter()
  step = exp.bare_step.lower(state, batch).compile()
  return step, state, batch, time.perf_counter() - t0


def time_block(step, state, batch, n):
  """(state, ms per step) over n steps."""
  t0 = time.perf_counter()
  for _ in range(n):
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  return state, (time.perf_counter() - t0) / n * 1e3


def bench(size, methods, steps, repeats):
  path, configs = configs_for(size, methods)
  built = {}
  for name, c in configs.items():
    step, state, batch, compile_s = build(c)
    state, _ = time_block(step, state, batch, steps)  # warm-up
    built[name] = [step, state, batch, compile_s]
  times = {name: [] for name in configs}
  for _ in range(repeats):
    for name in configs:
      step, state, batch, _ = built[name]
      built[name][1], ms = time_block(step, state, batch, steps)
      times[name].append(ms)
  c = configs['flow_matching']
  net = ', '.join(f'{k}={v}' for k, v in sorted(c.net.items()))
  lines = [f'{size}: net `{net}`, batch {c.train.batch_size}, data {c.data.name} '
           f'(from {path})', '',
           '| method | compile s | ms / step (min) | ms / step (median) | min vs FM | '
           'median vs FM |', '|---|---|---|---|---|---|']
  fm_min, fm_med = min(times['flow_matching']), float(np.median(times['flow_matching']))
  for name in configs:
    lo, med = min(times[name]), float(np.median(times[name]))
    lines.append(f'| {name} | {built[name][3]:.1f} | {lo:.3f} | {med:.3f} | '
                 f'{lo / fm_min:.2f} | {med / fm_med:.2f} |')
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', default='toy,digits')
  p.add_argument('--methods', default='meanflow,scm,shortcut')
  p.add_argument('--steps', type=int, default=20, help='steps per timed block')
  p.add_argument('--repeats', type=int, default=5, help='timed blocks per method')
  p.add_argument('--out', default='', help='also write the tables to this markdown file')
  args = p.parse_args()
  methods = [m for m in args.methods.split(',') if m]
  bad = sorted(set(methods) - set(ROWS))
  if bad:
    p.error(f'unknown methods {bad}; allowed: {", ".join(ROWS)}')
  dev = jax.devices()[0]
  lines = [f'Flow-map train step vs flow matching on {dev.platform} ({dev.device_kind}, '
           f'{jax.device_count()} device(s)); {args.repeats} blocks of {args.steps} steps.',
           '', f'`PYTHONPATH=. python experiments/bench_flow_maps.py {" ".join(sys.argv[1:])}`',
           '']
  print('\n'.join(lines), flush=True)
  for size in [s for s in args.sizes.split(',') if s]:
    table = bench(size, methods, args.steps, args.repeats) + ['']
    print('\n'.join(table), flush=True)
    lines += table
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write('\n'.join(lines))
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
