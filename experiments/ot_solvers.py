"""Minibatch OT on device (ot_solver='sinkhorn') vs the exact host assignment.

  python experiments/ot_solvers.py --data=8gaussians --num_steps=800 --seeds=3

For coupling independent, ot + exact, ot + sinkhorn on toy2d (batch 512, the default
FiLM MLP): the step time of the jitted train_step (median over --time_steps steps
after compilation, the couplings timed in turn) and its overhead over independent coupling; the transport cost of
each solver's batch plan relative to the exact one (mean over 8 batches); then, after
--num_steps training steps (same seed, same batches), MMD^2 (n = 2000, median
bandwidth, vs a fresh data draw) at 1, 2 and 4 Euler steps, and the straightness
E |x1 - x0 - v(x_t, t)|^2 along the 64-step Euler path (0 for straight paths).
With --seeds=S each coupling is trained from S seeds (init, data and time draws);
quality is mean +- std over them, the step time the median over all timed steps.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from configs.flow_matching import toy2d
from gensuite import data as data_lib
from gensuite.methods import defaults
from gensuite.methods import flow_matching as fm
from gensuite.metrics import distances

_DATA = flags.DEFINE_string('data', '8gaussians', 'Toy data name.')
_STEPS = flags.DEFINE_integer('num_steps', 800, 'Training steps of each run.')
_TIME_STEPS = flags.DEFINE_integer('time_steps', 40, 'Steps timed one by one.')
_N = flags.DEFINE_integer('n', 2000, 'Samples for MMD.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Training seeds per coupling.')
_SWEEP_ITERS = flags.DEFINE_list(
    'sweep_iters', [], 'Instead of training: for each sinkhorn_iters given, the time of '
    'sinkhorn_assignment alone (n = 512, 2-D) and its plan-cost gap to the exact plan '
    'on batches of several sizes and dimensions; then the rounding alone, on row blocks '
    'and over the whole matrix (potentials from the last count given).')
VARIANTS = {'independent': 'independent', 'ot exact': 'ot', 'ot sinkhorn': 'ot,sinkhorn'}


def _straightness(method, state, rng, n):
  traj = method.sample(state, rng, n, sampler='euler', steps=64, return_trajectory=True)
  x0, x1 = traj[0], traj[-1]
  fn = method.velocity_fn(state.eval_params(True))
  ts = jnp.linspace(0.0, 1.0, 65)
  devs = [jnp.mean(jnp.sum((x1 - x0 - fn(traj[i], ts[i]))**2, -1)) for i in range(64)]
  return float(jnp.mean(jnp.stack(devs)))


def _paired_step_times():
  """Median ms of each coupling's jitted train_step, the couplings timed in turn
  (round-robin, --time_steps rounds on one batch) so that machine load hits all alike."""
  steps = {}
  for name, tokens in VARIANTS.items():
    c = toy2d.get_config(f'{_DATA.value},{tokens}')
    data = data_lib.build(c.data, seed=0, global_batch_size=c.train.batch_size)
    method = fm.FlowMatching(c, data.spec)
    state = method.init(jax.random.PRNGKey(0), data.batch(0))
    step = jax.jit(method.train_step)
    batch = data.batch(1)
    jax.block_until_ready(step(state, batch, jax.random.PRNGKey(1)))  # compile
    steps[name] = (step, state, batch)
  times = {name: [] for name in steps}
  for i in range(_TIME_STEPS.value):
    for name, (step, state, batch) in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(state, batch, jax.random.PRNGKey(i)))
      times[name].append(time.perf_counter() - start)
  return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def _sweep_iters(iters_list):
  """Standalone cost and plan-cost gap of sinkhorn_assignment per iteration count."""
  eps = defaults.SECTIONS['flow_matching']['sinkhorn_eps']
  cases = []  # (name, x0, x1, exact cost)
  for name, n, dim in [('8gaussians', 512, 2), ('moons', 512, 2), ('gauss', 256, 2),
                       ('gauss', 128, 5), ('gauss', 256, 64)]:
    for seed in range(3):
      k0, k1 = jax.random.split(jax.random.PRNGKey(seed + 10))
      x0 = jax.random.normal(k0, (n, dim))
      x1 = (data_lib.toy.get(name).sample(k1, n) if name != 'gauss'
            else 1.0 + jax.random.normal(k1, (n, dim)))
      exact = float(jnp.sum((x0 - x1[fm.ot_assignment(x0, x1)])**2))
      cases.append((f'{name} n={n} d={dim}', x0, x1, exact))
  print('| sinkhorn_iters | ms (n=512, 2-D) | worst plan-cost gap per batch kind |\n|---|---|---|')
  for iters in iters_list:
    fn = jax.jit(lambda a, b, iters=iters: fm.sinkhorn_assignment(a, b, eps=eps,
                                                                    iters=iters))
    gaps = {}
    for name, x0, x1, exact in cases:
      gaps.setdefault(name, []).append(float(jnp.sum((x0 - x1[fn(x0, x1)])**2)) / exact - 1)
    times = []
    for _, x0, x1, _ in [c for c in cases if c[1].shape[0] == 512]:
      jax.block_until_ready(fn(x0, x1))
      for _ in range(50):
        start = time.perf_counter()
        jax.block_until_ready(fn(x0, x1))
        times.append(time.perf_counter() - start)
    worst = ', '.join(f'{k}: {100 * max(v):.1f}%' for k, v in gaps.items())
    print(f'| {iters} | {1e3 * np.median(times):.2f} | {worst} |', flush=True)
  # The rounding alone: shrinking row blocks (the default) against rounds over the whole
  # matrix (min_rows above n), timed in turn on the n = 512 batches.
  whole = jax.jit(lambda c, f, g: fm.round_to_permutation(c, f, g, min_rows=10**9))
  blocks = jax.jit(fm.round_to_permutation)
  print('| batch | rounding, row blocks (ms) | rounding, whole matrix (ms) |\n|---|---|---|')
  for name, x0, x1, _ in [c for c in cases if c[1].shape[0] == 512]:
    cost = fm._sq_cost(x0, x1)
    f, g = fm.sinkhorn_potentials(cost, eps, int(iters_list[-1]))
    times = {fn: [] for fn in (blocks, whole)}
    for fn in times:
      jax.block_until_ready(fn(cost, f, g))
    for _ in range(100):
      for fn, t in times.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(cost, f, g))
        t.append(time.perf_counter() - start)
    print(f'| {name} | {1e3 * np.median(times[blocks]):.2f} | '
          f'{1e3 * np.median(times[whole]):.2f} |', flush=True)


def main(argv):
  del argv
  if _SWEEP_ITERS.value:
    _sweep_iters([int(v) for v in _SWEEP_ITERS.value])
    return
  step_ms = _paired_step_times()
  rows = []
  for name, tokens in VARIANTS.items():
    gaps, mmds, straights = [], [], []
    for seed in range(_SEEDS.value):
      key = jax.random.PRNGKey(seed)
      c = toy2d.get_config(f'{_DATA.value},{tokens}')
      data = data_lib.build(c.data, seed=seed, global_batch_size=c.train.batch_size)
      method = fm.FlowMatching(c, data.spec)
      state = method.init(key, data.batch(0))
      step = jax.jit(method.train_step, donate_argnums=0)
      for i in range(_STEPS.value):
        batch = data.batch(i)
        state, _ = step(state, batch, jax.random.fold_in(key, i))
      if method.coupling == 'ot' and seed == 0:
        for j in range(8):
          x1 = jnp.asarray(data.batch(10_000 + j)['x'])
          x0 = jax.random.normal(jax.random.PRNGKey(j), x1.shape)
          cost = lambda p, x0=x0, x1=x1: float(jnp.sum((x1 - x0[p])**2))
          gaps.append(cost(method.assignment(x1, x0)) / cost(fm.ot_assignment(x1, x0)) - 1)
      k_s, k_ref, k_tr = jax.random.split(jax.random.PRNGKey(7), 3)
      ref = data.reference(k_ref, _N.value)
      mmds.append([float(distances.mmd2_unbiased(
          method.sample(state, k_s, _N.value, sampler='euler', steps=s), ref))
                   for s in (1, 2, 4)])
      straights.append(_straightness(method, state, k_tr, _N.value))
      print(name, seed, mmds[-1], straights[-1], flush=True)
    rows.append((name, step_ms[name], np.mean(gaps) if gaps else 0.0,
                 np.array(mmds), np.array(straights)))
  base = rows[0][1]
  pm = lambda v, f: f'{f(np.mean(v))} +- {f(np.std(v))}' if len(v) > 1 else f(v[0])
  print(f'| coupling | step (ms) | overhead (ms) | plan cost vs exact | MMD^2 1 step | '
        f'2 steps | 4 steps | straightness |\n|---|---|---|---|---|---|---|---|')
  for name, ms, gap, mmd, straight in rows:
    e = lambda x: f'{x:.2e}'
    print(f'| {name} | {ms:.1f} | {ms - base:+.1f} ({100 * (ms - base) / base:+.0f}%) | '
          f'{100 * gap:+.1f}% | {pm(mmd[:, 0], e)} | {pm(mmd[:, 1], e)} | '
          f'{pm(mmd[:, 2], e)} | {pm(straight, lambda x: f"{x:.4f}")} |')


if __name__ == '__main__':
  app.run(main)
