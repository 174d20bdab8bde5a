"""gensuite vs torchcfm on 2-D toys: wall-clock time to a data-like sample, and steps/s.

  pip install -e '.[peers]'    # torch (a CPU build) and torchcfm; the core never needs them
  python experiments/compare_peers.py --data=8gaussians,moons
  python experiments/compare_peers.py --systems=film,concat   # the gensuite side only

Four systems, one training setup: batch 512, Adam (lr --lr, constant, no clipping,
no EMA), sigma = 0 (rectified flow: x_t = (1 - t) x0 + t x1, target x1 - x0), the
same data batches (gensuite's toy data, drawn the way gensuite's loop draws them, for
every system):
  film     gensuite flow matching, net.conditioning='film' (the FiLM MLP)
  concat   gensuite flow matching, net.conditioning='concat' (a plain SiLU MLP on [x, t])
  concat_ot  the same with minibatch OT on device (method.coupling='ot',
           method.ot_solver='sinkhorn'), gensuite's counterpart of OT-CFM
  icfm     torchcfm ConditionalFlowMatcher (I-CFM), a plain SiLU MLP on [x, t]
  otcfm    torchcfm ExactOptimalTransportConditionalFlowMatcher (OT-CFM, POT's exact plan)
Every net has --depth hidden layers of width --hidden (concat and the torch nets have
the same layers and parameter count).

Criterion (the project's, gensuite.metrics.distances.mmd2_null_quantile): MMD^2 at
n = --n between a model sample (Euler, --euler_steps steps, from N(0, I)) and a fresh
data draw, median-heuristic bandwidth, below the 95th percentile of the MMD^2 of two
independent data draws (--null_pairs pairs). Every --eval_every steps the clock stops
and the model is evaluated; the time to criterion is the training wall-clock up to
the first evaluation that passes (including gensuite's jit compile, which is in the
first step; data drawing is in every system's clock). steps/s leaves the first step out.

With --compile_cache=DIR the gensuite systems use a persistent compilation cache (the
CLI's default behaviour); the first run fills it, a second run of the same command
measures the warm case (compile read from disk).

Prints a markdown table; --out writes it (with the command and the machine's load).
"""
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from configs.flow_matching import toy2d
from gensuite import bench_peers
from gensuite import data as data_lib
from gensuite.methods import flow_matching as fm
from gensuite.metrics import distances

SYSTEMS = ('film', 'concat', 'concat_ot', 'icfm', 'otcfm')
PEERS = ('icfm', 'otcfm')
INSTALL = ("experiments/compare_peers.py: torch and torchcfm are missing; install the "
           "extra with `pip install -e '.[peers]'` (a CPU build of torch first), or run "
           "--systems=film,concat")

_DATA = flags.DEFINE_list('data', ['8gaussians', 'moons'], 'Toy data names.')
_SYSTEMS = flags.DEFINE_list('systems', list(SYSTEMS), f'Some of {SYSTEMS}.')
_LR = flags.DEFINE_float('lr', 1e-3, 'Adam learning rate (all systems).')
_BATCH = flags.DEFINE_integer('batch', 512, 'Batch size.')
_HIDDEN = flags.DEFINE_integer('hidden', 256, 'Width of the hidden layers.')
_DEPTH = flags.DEFINE_integer('depth', 4, 'Number of hidden layers.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 3000, 'Give up after this many steps.')
_EVAL_EVERY = flags.DEFINE_integer('eval_every', 100, 'Steps between evaluations.')
_N = flags.DEFINE_integer('n', 2000, 'Sample size of the MMD criterion.')
_NULL_PAIRS = flags.DEFINE_integer('null_pairs', 100, 'Pairs for the null quantile.')
_EULER = flags.DEFINE_integer('euler_steps', 100, 'Euler steps when sampling.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed.')
_OUT = flags.DEFINE_string('out', '', 'Markdown file to write the table to.')
_CACHE = flags.DEFINE_string('compile_cache', '', 'A persistent JAX compilation cache '
                             'directory for the gensuite systems (as `gensuite train` uses '
                             'by default): a second run of the same command reads its step '
                             'from the cache instead of compiling it.')


class GensuiteSystem:
  """gensuite's flow matching on toy2d, net.conditioning = film | concat."""

  def __init__(self, data_name, conditioning):
    variant = 'concat,ot,sinkhorn' if conditioning == 'concat_ot' else conditioning
    c = toy2d.get_config(f'{data_name},{variant}')
    c.net.update(hidden=_HIDDEN.value, depth=_DEPTH.value)
    c.optim.update(lr=_LR.value, schedule='constant', warmup_steps=0, grad_clip=0.0,
                   ema_decays=())
    c.train.batch_size = _BATCH.value
    self.data = data_lib.build(c.data, seed=_SEED.value, global_batch_size=_BATCH.value)
    self.method = fm.FlowMatching(c, self.data.spec)
    self.state = self.method.init(jax.random.PRNGKey(_SEED.value), self.data.batch(0))
    self._step = jax.jit(self.method.train_step, donate_argnums=0)
    self._rng = jax.random.PRNGKey(_SEED.value + 1)

  def step(self, i, batch):
    self.state, _ = self._step(self.state, batch, jax.random.fold_in(self._rng, i))

  def sync(self):
    jax.block_until_ready(self.state)

  def sample(self, rng, n):
    return np.asarray(self.method.sample(self.state, rng, n, sampler='euler',
                                         steps=_EULER.value, use_ema=False))


class TorchCFMSystem:
  """torchcfm's I-CFM or OT-CFM with a plain SiLU MLP on [x, t] (its training loop)."""

  def __init__(self, data_name, kind):
    import torch  # pylint: disable=g-import-not-at-top
    from torchcfm import conditional_flow_matching as cfm  # pylint: disable=g-import-not-at-top
    self.torch = torch
    torch.manual_seed(_SEED.value)
    self.net = bench_peers.torchcfm_mlp(torch, _HIDDEN.value, _DEPTH.value)
    self.opt = torch.optim.Adam(self.net.parameters(), lr=_LR.value)
    matcher = {'icfm': cfm.ConditionalFlowMatcher,
               'otcfm': cfm.ExactOptimalTransportConditionalFlowMatcher}[kind]
    self.matcher = matcher(sigma=0.0)
    self.data = data_lib.build(toy2d.get_config(data_name).data, seed=_SEED.value,
                               global_batch_size=_BATCH.value)

  def step(self, i, batch):
    del i
    torch = self.torch
    x1 = torch.from_numpy(np.array(batch['x']))  # a writable copy
    x0 = torch.randn_like(x1)
    t, xt, ut = self.matcher.sample_location_and_conditional_flow(x0, x1)
    vt = self.net(torch.cat([xt, t[:, None]], dim=-1))
    loss = torch.mean((vt - ut)**2)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()

  def sync(self):
    pass

  def sample(self, rng, n):
    torch = self.torch
    gen = torch.Generator().manual_seed(int(jax.random.randint(rng, (), 0, 2**31 - 1)))
    x = torch.randn(n, 2, generator=gen)
    dt = 1.0 / _EULER.value
    with torch.no_grad():
      for k in range(_EULER.value):
        t = torch.full((n, 1), k * dt)
        x = x + dt * self.net(torch.cat([x, t], dim=-1))
    return x.numpy()


def _build(system, data_name):
  if system in PEERS:
    return TorchCFMSystem(data_name, system)
  return GensuiteSystem(data_name, system)


def run_one(system, data_name, null95):
  """Trains until the criterion passes (or max_steps): a row of the table."""
  model = _build(system, data_name)
  data = model.data
  key = jax.random.PRNGKey(_SEED.value + 7)
  train_s, first_s, passed_at, mmd = 0.0, 0.0, None, float('nan')
  steps = 0
  while steps < _MAX_STEPS.value and passed_at is None:
    start = time.perf_counter()
    for i in range(steps, steps + _EVAL_EVERY.value):
      model.step(i, data.batch(i))
      if i == 0:
        model.sync()
        first_s = time.perf_counter() - start
    model.sync()
    train_s += time.perf_counter() - start
    steps += _EVAL_EVERY.value
    k_model, k_ref = jax.random.split(jax.random.fold_in(key, steps))
    mmd = distances.mmd2_unbiased(model.sample(k_model, _N.value),
                                  data.reference(k_ref, _N.value))
    print(f'  {data_name} {system} step {steps}: MMD^2 {mmd:.2e} (null95 {null95:.2e}), '
          f'train {train_s:.1f} s', flush=True)
    if mmd < null95:
      passed_at = (steps, train_s)
  rate = (steps - 1) / max(train_s - first_s, 1e-9)
  return dict(system=system, data=data_name, steps_per_s=rate, first_step_s=first_s,
              passed=passed_at, final_mmd=mmd, steps=steps)


def _table(rows, nulls):
  lines = ['| data | system | null95 MMD^2 | steps to criterion | time to criterion (s) | '
           'steps/s | first step (s) | MMD^2 at stop |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    steps, secs = r['passed'] if r['passed'] else (f'> {r["steps"]}', None)
    secs = f'{secs:.1f}' if secs is not None else 'not reached'
    lines.append(f'| {r["data"]} | {r["system"]} | {nulls[r["data"]]:.2e} | {steps} | {secs} '
                 f'| {r["steps_per_s"]:.1f} | {r["first_step_s"]:.2f} | '
                 f'{r["final_mmd"]:.2e} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  unknown = sorted(set(_SYSTEMS.value) - set(SYSTEMS))
  if unknown:
    print(f'experiments/compare_peers.py: unknown systems {unknown}; choose from {SYSTEMS}',
          file=sys.stderr)
    sys.exit(2)
  if set(_SYSTEMS.value) & set(PEERS):
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      import torchcfm  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      print(INSTALL, file=sys.stderr)
      sys.exit(2)
  if _CACHE.value:
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  load_before = os.getloadavg()
  rows, nulls = [], {}
  for data_name in _DATA.value:
    source = data_lib.build(toy2d.get_config(data_name).data, seed=_SEED.value,
                            global_batch_size=_BATCH.value)
    nulls[data_name] = distances.mmd2_null_quantile(
        source.dist.sample, jax.random.PRNGKey(_SEED.value + 3), _N.value, q=0.95,
        num_pairs=_NULL_PAIRS.value)
    for system in _SYSTEMS.value:
      rows.append(run_one(system, data_name, nulls[data_name]))
  table = _table(rows, nulls)
  print(table)
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      f.write(f'`python {" ".join(sys.argv)}`\n\n{table}\n\nLoad average (1, 5, 15 min) '
              f'before: {load_before}, after: {os.getloadavg()} on {os.cpu_count()} cores.\n')


if __name__ == '__main__':
  app.run(main)
