"""Benchmarks: the full training loop against the bare jitted step.

  gensuite bench --config=configs/flow_matching/digits.py --steps=100
  python -m gensuite.bench --config=...      (same)

`loop_vs_bare` times (a) `steps` calls of the bare jitted train_step on one fixed,
already-sharded batch, and (b) the full loop of `gensuite train` (data pipeline,
prefetch, metric accumulation, logging) over the same number of steps after one
warm-up interval, with checkpoints and evals off. It prints steps/s of both and the
loop's efficiency (b / a).
"""
import json
import tempfile
import time

import jax

from gensuite.train import logging as log_lib
from gensuite.train import loop


def _time_bare(exp, steps: int) -> float:
  state = exp.init_state()
  batch = exp.global_batch(0)
  state, m = exp.bare_step(state, batch)  # compile
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = exp.bare_step(state, batch)
  jax.block_until_ready((state, m))
  return steps / (time.perf_counter() - t0)


def _time_loop(config, steps: int, repeats: int) -> list[float]:
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.num_steps = steps * (repeats + 1)
    config.train.log_every = steps
    config.train.eval_every = 0
    config.train.ckpt_every = 0
  with tempfile.TemporaryDirectory() as workdir:
    loop.run(config, workdir)
    rows = log_lib.read_jsonl(workdir)
  return [r['steps_per_sec'] for r in rows[1:]]  # the first interval holds the compile


def loop_vs_bare(config, steps: int = 50, repeats: int = 3) -> dict:
  exp = loop.build_experiment(config)
  bare = _time_bare(exp, steps)
  rates = _time_loop(config, steps, repeats)
  looped = sorted(rates)[len(rates) // 2]
  result = {
      'config': f'{config.data.name}/{config.net.name}/{config.method.name}',
      'batch_size': config.train.batch_size,
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'bare_steps_per_sec': round(bare, 2),
      'loop_steps_per_sec': round(looped, 2),
      'loop_efficiency': round(looped / bare, 3),
  }
  print('| config | batch | devices | bare step/s | loop step/s | loop / bare |')
  print('|---|---|---|---|---|---|')
  print(f"| {result['config']} | {result['batch_size']} | {result['devices']} | "
        f"{result['bare_steps_per_sec']} | {result['loop_steps_per_sec']} | "
        f"{result['loop_efficiency']:.1%} |")
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  from gensuite import cli  # pylint: disable=g-import-not-at-top
  cli.main(['gensuite', 'bench'] + sys.argv[1:])
