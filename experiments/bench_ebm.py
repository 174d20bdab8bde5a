"""Cost of one EBM training step per estimator, same walker count.

  PYTHONPATH=. python experiments/bench_ebm.py --config=configs/ebm/gmm.py --steps=50
  PYTHONPATH=. python experiments/bench_ebm.py --config=configs/ebm/toy2d.py --walkers=2000

Times the jitted EBM.train_step (the code the loop runs) for each estimator after one
compile-and-warm-up call. The timed blocks of --steps steps are interleaved across
estimators for --repeats rounds, and the minimum and median milliseconds per step are
reported (the minimum is the figure least disturbed by other load on the machine). A Jarzynski step evaluates the energy and its gradient at
the walkers under both the old and the new parameters (for the weight increment); an
unweighted ULA / PCD step only under the old ones.
"""
import argparse
import importlib.util
import os
import time

import jax
import numpy as np

from gensuite import data as data_lib
from gensuite import methods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location('cfg', os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def build_estimator(path, variant, estimator, walkers):
  """(jitted step, state, batch, config) for one estimator, compiled and warmed up."""
  c = load_config(path, ','.join(filter(None, [variant, estimator])))
  if walkers:
    c.method.num_walkers = walkers
  data = data_lib.build(c.data, seed=0, global_batch_size=c.train.batch_size)
  method = methods.build(c, data.spec)
  batch = jax.device_put(data.batch(0))
  state = method.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(method.train_step)
  state, m = step(state, batch, jax.random.PRNGKey(0))
  jax.block_until_ready(m['loss'])
  return step, state, batch, c


def time_block(step, state, batch, n):
  """(state, ms per step) over n steps."""
  t0 = time.perf_counter()
  for i in range(n):
    state, m = step(state, batch, jax.random.PRNGKey(i))
  jax.block_until_ready(m['loss'])
  return state, (time.perf_counter() - t0) / n * 1e3


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='configs/ebm/gmm.py')
  p.add_argument('--variant', default='')
  p.add_argument('--estimators', default='jarzynski,ula_unweighted,pcd,cd')
  p.add_argument('--walkers', type=int, default=0)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args()
  print(f'{args.config}:{args.variant} on {jax.devices()[0].platform} '
        f'({jax.device_count()} device(s))')
  ests = args.estimators.split(',')
  built = {e: build_estimator(args.config, args.variant, e, args.walkers) for e in ests}
  times = {e: [] for e in ests}
  for _ in range(args.repeats):
    for e in ests:
      step, state, batch, c = built[e]
      state, ms = time_block(step, state, batch, args.steps)
      built[e] = (step, state, batch, c)
      times[e].append(ms)
  print('| estimator | walkers | data batch | ms / step (min) | ms / step (median) | '
        'min vs jarzynski |')
  print('|---|---|---|---|---|---|')
  base = min(times[ests[0]])
  for e in ests:
    c = built[e][3]
    print(f'| {e} | {c.method.num_walkers} | {c.train.batch_size} | {min(times[e]):.2f} | '
          f'{float(np.median(times[e])):.2f} | {min(times[e]) / base:.2f} |')


if __name__ == '__main__':
  main()
