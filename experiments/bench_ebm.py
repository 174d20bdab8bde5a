"""Cost of one EBM training step per estimator, same walker count.

  PYTHONPATH=. python experiments/bench_ebm.py --config=configs/ebm/gmm.py --steps=50
  PYTHONPATH=. python experiments/bench_ebm.py --config=configs/ebm/toy2d.py --walkers=2000

Times the jitted EBM.train_step (the code the loop runs) for each estimator after one
compile-and-warm-up call, repeating the timed block --repeats times and reporting the
median milliseconds per step. A Jarzynski step evaluates the energy and its gradient at
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


def time_estimator(path, variant, estimator, walkers, steps, repeats):
  c = load_config(path, ','.join(filter(None, [variant, estimator])))
  if walkers:
    c.method.num_walkers = walkers
  data = data_lib.build(c.data, seed=0, global_batch_size=c.train.batch_size)
  method = methods.build(c, data.spec)
  batch = jax.device_put(data.batch(0))
  state = method.init(jax.random.PRNGKey(0), batch)
  step = jax.jit(method.train_step)

  def block(state, n):
    for i in range(n):
      state, m = step(state, batch, jax.random.PRNGKey(i))
    jax.block_until_ready(m['loss'])
    return state

  state = block(state, 1)  # compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state = block(state, steps)
    times.append((time.perf_counter() - t0) / steps * 1e3)
  return float(np.median(times)), c.method.num_walkers, c.train.batch_size


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config', default='configs/ebm/gmm.py')
  p.add_argument('--variant', default='')
  p.add_argument('--estimators', default='jarzynski,ula_unweighted,pcd,cd')
  p.add_argument('--walkers', type=int, default=0)
  p.add_argument('--steps', type=int, default=50)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  print(f'{args.config}:{args.variant} on {jax.devices()[0].platform} '
        f'({jax.device_count()} device(s))')
  print('| estimator | walkers | data batch | ms / step (median of repeats) | vs jarzynski |')
  print('|---|---|---|---|---|')
  base = None
  for est in args.estimators.split(','):
    ms, n, b = time_estimator(args.config, args.variant, est, args.walkers, args.steps,
                              args.repeats)
    base = base or ms
    print(f'| {est} | {n} | {b} | {ms:.2f} | {ms / base:.2f} |', flush=True)


if __name__ == '__main__':
  main()
