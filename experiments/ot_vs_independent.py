"""OT-CFM vs independent coupling: sampler steps needed for the same MMD.

  python experiments/ot_vs_independent.py --workdir=runs/ot_vs_indep [--data=8gaussians]

Trains the toy2d flow-matching config twice with identical settings except
method.coupling ('independent' vs 'ot'), then samples each with Euler at
1, 2, 4, 8, 16, 32, 64 steps and reports MMD^2 (n = 2000, median-heuristic bandwidth
of the data) against fresh data, plus the mean squared straightness
E ||(x1 - x0) - v(x_t, t)||^2 along the Euler trajectory of the 64-step solve.
"""
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import gensuite
import gensuite.config
from gensuite.metrics import distances

_WORKDIR = flags.DEFINE_string('workdir', 'runs/ot_vs_independent', 'Parent directory.')
_DATA = flags.DEFINE_string('data', '8gaussians', 'Toy data name.')
_STEPS = flags.DEFINE_integer('num_steps', 5000, 'Training steps of each run.')
_N = flags.DEFINE_integer('n', 2000, 'Samples for MMD.')
_GRID = (1, 2, 4, 8, 16, 32, 64)


def _config(coupling):
  c = gensuite.config.from_file(f'configs/flow_matching/toy2d.py:{_DATA.value},{coupling}')
  c.train.num_steps = _STEPS.value
  c.train.eval_every = 0
  c.train.ckpt_every = _STEPS.value
  return c


def _straightness(run, rng, n):
  traj = run.experiment.method.sample(run.state, rng, n, sampler='euler', steps=64,
                                      return_trajectory=True)
  x0, x1 = traj[0], traj[-1]
  ts = jnp.linspace(0.0, 1.0, 65)
  fn = run.experiment.method.velocity_fn(run.state.eval_params(True))
  devs = [jnp.mean(jnp.sum((x1 - x0 - fn(traj[i], ts[i]))**2, -1)) for i in range(64)]
  return float(jnp.mean(jnp.stack(devs)))


def main(argv):
  del argv
  rows = {}
  key = jax.random.PRNGKey(7)
  k_ref, k_s, k_traj = jax.random.split(key, 3)
  for coupling in ('independent', 'ot'):
    workdir = os.path.join(_WORKDIR.value, f'{_DATA.value}_{coupling}')
    gensuite.train.run(_config(coupling), workdir)
    run = gensuite.load_run(workdir)
    reference = np.asarray(run.experiment.data.dist.sample(k_ref, _N.value))
    bw = float(distances.median_bandwidth(reference))
    rows[coupling] = [float(distances.mmd2_unbiased(
        run.sample(k_s, _N.value, sampler='euler', steps=s), reference, bw)) for s in _GRID]
    rows[coupling + '_straightness'] = _straightness(run, k_traj, 512)
  print(f'data {_DATA.value}, {_STEPS.value} training steps each, Euler sampler, '
        f'MMD^2 at n={_N.value}')
  print('| Euler steps | ' + ' | '.join(map(str, _GRID)) + ' |')
  print('|---|' + '---|' * len(_GRID))
  for coupling in ('independent', 'ot'):
    print(f'| {coupling} | ' + ' | '.join(f'{v:.2e}' for v in rows[coupling]) + ' |')
  for coupling in ('independent', 'ot'):
    print(f'straightness E|x1 - x0 - v|^2 ({coupling}): {rows[coupling + "_straightness"]:.4f}')


if __name__ == '__main__':
  app.run(main)
