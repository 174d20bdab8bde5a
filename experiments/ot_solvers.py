"""Minibatch OT on device (ot_solver='sinkhorn') vs the exact host assignment.

  python experiments/ot_solvers.py --data=8gaussians --num_steps=800

For coupling independent, ot + exact, ot + sinkhorn on toy2d (batch 512, the default
FiLM MLP): the step time of the jitted train_step (median over --time_steps steps,
after compilation) and its overhead over independent coupling; the transport cost of
each solver's batch plan relative to the exact one (mean over 8 batches); then, after
--num_steps training steps (same seed, same batches), MMD^2 (n = 2000, median
bandwidth, vs a fresh data draw) at 1, 2 and 4 Euler steps, and the straightness
E |x1 - x0 - v(x_t, t)|^2 along the 64-step Euler path (0 for straight paths).
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs.flow_matching import toy2d
from gensuite import data as data_lib
from gensuite.methods import flow_matching as fm
from gensuite.metrics import distances

_DATA = flags.DEFINE_string('data', '8gaussians', 'Toy data name.')
_STEPS = flags.DEFINE_integer('num_steps', 800, 'Training steps of each run.')
_TIME_STEPS = flags.DEFINE_integer('time_steps', 40, 'Steps timed one by one.')
_N = flags.DEFINE_integer('n', 2000, 'Samples for MMD.')
VARIANTS = {'independent': 'independent', 'ot exact': 'ot', 'ot sinkhorn': 'ot,sinkhorn'}


def _straightness(method, state, rng, n):
  traj = method.sample(state, rng, n, sampler='euler', steps=64, return_trajectory=True)
  x0, x1 = traj[0], traj[-1]
  fn = method.velocity_fn(state.eval_params(True))
  ts = jnp.linspace(0.0, 1.0, 65)
  devs = [jnp.mean(jnp.sum((x1 - x0 - fn(traj[i], ts[i]))**2, -1)) for i in range(64)]
  return float(jnp.mean(jnp.stack(devs)))


def main(argv):
  del argv
  rows = []
  key = jax.random.PRNGKey(0)
  for name, tokens in VARIANTS.items():
    c = toy2d.get_config(f'{_DATA.value},{tokens}')
    data = data_lib.build(c.data, seed=0, global_batch_size=c.train.batch_size)
    method = fm.FlowMatching(c, data.spec)
    state = method.init(key, data.batch(0))
    step = jax.jit(method.train_step, donate_argnums=0)
    times = []
    for i in range(_STEPS.value):
      batch = data.batch(i)
      start = time.perf_counter()
      state, _ = step(state, batch, jax.random.fold_in(key, i))
      if i < _TIME_STEPS.value + 1:  # step 0 compiles
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    gaps = []
    if method.coupling == 'ot':
      for j in range(8):
        x1 = jnp.asarray(data.batch(10_000 + j)['x'])
        x0 = jax.random.normal(jax.random.PRNGKey(j), x1.shape)
        cost = lambda p, x0=x0, x1=x1: float(jnp.sum((x1 - x0[p])**2))
        gaps.append(cost(method.assignment(x1, x0)) / cost(fm.ot_assignment(x1, x0)) - 1)
    k_s, k_ref, k_tr = jax.random.split(jax.random.PRNGKey(7), 3)
    ref = data.reference(k_ref, _N.value)
    mmd = [distances.mmd2_unbiased(method.sample(state, k_s, _N.value, sampler='euler',
                                                 steps=s), ref) for s in (1, 2, 4)]
    rows.append((name, 1e3 * float(np.median(times[1:])), np.mean(gaps) if gaps else 0.0,
                 mmd, _straightness(method, state, k_tr, _N.value)))
    print(rows[-1], flush=True)
  base = rows[0][1]
  print(f'| coupling | step (ms) | overhead (ms) | plan cost vs exact | MMD^2 1 step | '
        f'2 steps | 4 steps | straightness |\n|---|---|---|---|---|---|---|---|')
  for name, ms, gap, mmd, straight in rows:
    print(f'| {name} | {ms:.1f} | {ms - base:+.1f} | {100 * gap:+.1f}% | {mmd[0]:.2e} | '
          f'{mmd[1]:.2e} | {mmd[2]:.2e} | {straight:.4f} |')


if __name__ == '__main__':
  app.run(main)
