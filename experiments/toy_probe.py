"""Trains one toy-mixture config and prints its few-step quality several times on the way.

  PYTHONPATH=. python experiments/toy_probe.py meanflow train.num_steps=8000 \
      method.adaptive_p=0.0                       # VARIANT [dotted.field=python_value ...]
  PYTHONPATH=. python experiments/toy_probe.py configs/distill/toy2d.py:dmd2 \
      train.num_steps=20000 'optim.ema_decays=(0.999,)' --evals=10

The first argument is a configs/flow_maps/toy2d.py variant, or any config on a Gaussian
mixture as PATH[:VARIANT]; each further argument overrides one config field (the value
is read as a Python literal, or kept as text for string fields). The loop is the
experiment's own jitted train step on the config's batches (no checkpoints, no logs);
--evals times in train.num_steps (4 by default) it samples 4000 points with the EMA
params (the longest decay) and 1, 2 and 4 network calls (a distilled student: 1 and its
method.gen_steps) and prints on_mode, mode_mass_tv (gensuite.metrics.distances), the
mean negative log-density under the true mixture, and the nearest-mode masses minus
the mixture weights, with the wall time so far. This is the probe the toy configs'
choices were measured with (their docstrings and experiments/results/few_step.md and
distill_recipe_unequal8.md quote the lines it printed).
"""
import ast
import sys
import time

import jax
import numpy as np

from gensuite import config as config_lib
from gensuite.experiment import build_experiment
from gensuite.metrics import distances


def load(spec: str, overrides):
  path = spec if '.py' in spec else f'configs/flow_maps/toy2d.py:{spec}'
  c = config_lib.from_file(path)
  c.unlock()
  for item in overrides:
    key, text = item.split('=', 1)
    node = c
    *parents, last = key.split('.')
    for part in parents:
      node = node[part]
    is_text = last in node and isinstance(node[last], str)
    node[last] = text if is_text else ast.literal_eval(text)
  return c


def report(x, mixture) -> str:
  means = np.asarray(mixture.means)
  tv = distances.mode_statistics(x, means, mixture.weights, mixture.stds)[0]
  nll = -float(np.mean(np.asarray(mixture.log_prob(x))))
  nearest = ((x[:, None, :] - means[None])**2).sum(-1).argmin(1)
  excess = np.bincount(nearest, minlength=len(means)) / len(x) - np.asarray(mixture.weights)
  return (f'on={distances.on_mode(x, means, mixture.stds):.3f},tv={tv:.3f},nll={nll:.2f},'
          'mass-w=' + '/'.join(f'{v:+.3f}' for v in excess))


def main(argv):
  evals = 4
  rest = []
  for a in argv[1:]:
    if a.startswith('--evals='):
      evals = int(a.split('=', 1)[1])
    else:
      rest.append(a)
  c = load(rest[0], rest[1:])
  exp = build_experiment(c)
  method, mixture = exp.method, exp.data.dist
  state = method.init(jax.random.PRNGKey(c.seed), exp.data.batch(0))
  step = jax.jit(method.train_step)
  gen_steps = getattr(method, 'gen_steps', None)
  nfes = (1, 2, 4) if gen_steps is None else sorted({1, int(gen_steps)})
  samplers = {s: jax.jit(lambda st, s=s: method.sample(st, jax.random.PRNGKey(7), 4000,
                                                       steps=s)) for s in nfes}
  n = int(c.train.num_steps)
  key = jax.random.PRNGKey(1 + 1000 * int(c.seed))
  t0 = time.time()
  for i in range(n):
    state, metrics = step(state, exp.data.batch(i), jax.random.fold_in(key, i))
    if (i + 1) % max(n // evals, 1) == 0 or i == n - 1:
      jax.block_until_ready(state)
      parts = [f'{s}:' + report(np.asarray(sample(state)), mixture)
               for s, sample in samplers.items()]
      print(i + 1, f'{time.time() - t0:.0f}s', f'loss {float(metrics["loss"]):.3f}',
            ' '.join(parts), flush=True)


if __name__ == '__main__':
  main(sys.argv)
