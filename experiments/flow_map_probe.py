"""Trains one flow map on a toy mixture and prints 1/2/4-NFE quality four times on the way.

  PYTHONPATH=. python experiments/flow_map_probe.py meanflow train.num_steps=8000 \
      method.adaptive_p=0.0                       # VARIANT [dotted.field=python_value ...]

VARIANT is a configs/flow_maps/toy2d.py variant; each further argument overrides one
config field (the value is read as a Python literal, or kept as text for string
fields). The loop is the experiment's own jitted train step on the config's batches
(no checkpoints, no logs); every quarter of train.num_steps it samples 4000 points
with the EMA params and 1, 2 and 4 network calls and prints on_mode and mode_mass_tv
(gensuite.metrics.distances) with the wall time so far. This is the probe the toy
config's choices were measured with (its docstring and experiments/results/few_step.md
quote the lines it printed).
"""
import ast
import sys
import time

import jax
import numpy as np

from gensuite import config as config_lib
from gensuite.experiment import build_experiment
from gensuite.metrics import distances


def main(argv):
  variant, overrides = argv[1], argv[2:]
  c = config_lib.from_file(f'configs/flow_maps/toy2d.py:{variant}')
  c.unlock()
  for item in overrides:
    key, text = item.split('=', 1)
    node = c
    *parents, last = key.split('.')
    for part in parents:
      node = node[part]
    is_text = last in node and isinstance(node[last], str)
    node[last] = text if is_text else ast.literal_eval(text)
  exp = build_experiment(c)
  method, mixture = exp.method, exp.data.dist
  state = method.init(jax.random.PRNGKey(c.seed), exp.data.batch(0))
  step = jax.jit(method.train_step)
  samplers = {s: jax.jit(lambda st, s=s: method.sample(st, jax.random.PRNGKey(7), 4000,
                                                       steps=s)) for s in (1, 2, 4)}
  n = int(c.train.num_steps)
  t0 = time.time()
  for i in range(n):
    state, metrics = step(state, exp.data.batch(i), jax.random.fold_in(jax.random.PRNGKey(1), i))
    if (i + 1) % max(n // 4, 1) == 0 or i == n - 1:
      jax.block_until_ready(state)
      parts = []
      for s, sample in samplers.items():
        x = np.asarray(sample(state))
        tv = distances.mode_statistics(x, mixture.means, mixture.weights, mixture.stds)[0]
        parts.append(f'{s}:on={distances.on_mode(x, mixture.means, mixture.stds):.3f},'
                     f'tv={tv:.3f}')
      print(i + 1, f'{time.time() - t0:.0f}s', f'loss {float(metrics["loss"]):.3f}',
            ' '.join(parts), flush=True)


if __name__ == '__main__':
  main(sys.argv)
