"""Peer comparisons, re-measured with every `gensuite bench --suite` (docs/benchmarks.md).

  gensuite bench --suite                  # the config table, then this section
  gensuite bench --suite --nopeers        # the config table only
  python -m gensuite.bench_peers --worker fm_step   # one comparison (what the suite runs)

Three comparisons, each in a fresh subprocess with the compilation cache off, each
giving the same work to gensuite and to the package a user would otherwise pick:
  fm_step  one flow-matching training step on 8-Gaussians, batch 512, 4 hidden layers
           of width 256 (SiLU), Adam 1e-3: gensuite with net.conditioning='concat'
           (the plain MLP on [x, t]) and 'film', independent coupling and minibatch OT
           (method.ot_solver = exact, sinkhorn), against torchcfm's I-CFM and OT-CFM
           (POT's exact plan) on the same plain MLP, and the same I-CFM step written
           directly in JAX/flax/optax (the floor for gensuite's). Unit: steps/s.
  sde      Euler–Maruyama down EDM's 64-level grid (karras_sigmas(64)), batch 4096, the
           exact 8-Gaussians score: gensuite's euler_maruyama against diffrax.Euler on
           the same SDE (u = -sigma^2, StepTo on the same grid) with its default
           VirtualBrownianTree and with UnsafeBrownianPath. Unit: samples/s.
  fid      Inception-v3 pool3 features (the FID network, random weights: the cost does
           not depend on them) of 50 images of 32x32x3 resized to 299: gensuite's jitted
           features against pytorch-fid's InceptionV3. Unit: images/s.
Every timing is the best of a few calls after a warm-up (compile) call. A peer that is
not installed gives a row saying so (`pip install -e '.[peers]'`); the core never
imports the peers outside these workers.
"""
import functools
import json
import subprocess
import sys
import time

import numpy as np

_TAG = 'PEER_RESULT '
COMPARISONS = ('fm_step', 'sde', 'fid')
INSTALL = "not installed (pip install -e '.[peers]')"
FM = dict(batch=512, hidden=256, depth=4, lr=1e-3)


def _best_time(fn, repeats: int) -> float:
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return float(best)


# ---- fm_step ---------------------------------------------------------------------------

def gensuite_fm_step(conditioning: str, coupling: str = 'independent', solver: str = 'exact'):
  """(step(i), sync) for gensuite's flow-matching step with FM's plain settings."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs.flow_matching import toy2d  # pylint: disable=g-import-not-at-top
  from gensuite import data as data_lib  # pylint: disable=g-import-not-at-top
  from gensuite.methods import flow_matching as fm  # pylint: disable=g-import-not-at-top
  c = toy2d.get_config(f'8gaussians,{conditioning},{coupling}')
  c.net.update(hidden=FM['hidden'], depth=FM['depth'])
  c.method.ot_solver = solver
  c.optim.update(lr=FM['lr'], schedule='constant', warmup_steps=0, grad_clip=0.0,
                 ema_decays=())
  c.train.batch_size = FM['batch']
  data = data_lib.build(c.data, seed=0, global_batch_size=FM['batch'])
  method = fm.FlowMatching(c, data.spec)
  box = {'state': method.init(jax.random.PRNGKey(0), data.batch(0))}
  step_fn = jax.jit(method.train_step, donate_argnums=0)
  batches = [data.batch(i) for i in range(8)]
  rng = jax.random.PRNGKey(1)

  def step(i):
    box['state'], _ = step_fn(box['state'], batches[i % 8], jax.random.fold_in(rng, i))

  return step, lambda: jax.block_until_ready(box['state'])


def plain_jax_fm_step():
  """(step(i), sync) for the same I-CFM step written directly in JAX/flax/optax: the
  plain MLP on [x, t], x_t = (1 - t) x0 + t x1, target x1 - x0, Adam; no method
  object, no metrics. The floor gensuite's own step is measured against."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from gensuite.data import toy  # pylint: disable=g-import-not-at-top

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x, t):
      h = jnp.concatenate([x, t[:, None]], -1)
      for _ in range(FM['depth']):
        h = nn.silu(nn.Dense(FM['hidden'])(h))
      return nn.Dense(x.shape[-1])(h)

  net, tx = Plain(), optax.adam(FM['lr'])
  dist = toy.eight_gaussians()
  batches = [dist.sample(jax.random.PRNGKey(i), FM['batch']) for i in range(8)]
  params = net.init(jax.random.PRNGKey(0), batches[0], jnp.zeros((FM['batch'],)))
  box = {'state': (params, tx.init(params))}

  @functools.partial(jax.jit, donate_argnums=0)
  def step_fn(state, x1, rng):
    params, opt = state
    k0, k1 = jax.random.split(rng)
    x0 = jax.random.normal(k0, x1.shape)
    t = jax.random.uniform(k1, (x1.shape[0],))
    xt = (1.0 - t[:, None]) * x0 + t[:, None] * x1
    grads = jax.grad(lambda p: jnp.mean((net.apply(p, xt, t) - (x1 - x0))**2))(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  rng = jax.random.PRNGKey(1)

  def step(i):
    box['state'] = step_fn(box['state'], batches[i % 8], jax.random.fold_in(rng, i))

  return step, lambda: jax.block_until_ready(box['state'])


def torchcfm_mlp(torch, hidden: int, depth: int, dim: int = 2):
  """torchcfm's plain MLP on [x, t]: depth Linear+SiLU layers, then the output layer."""
  layers, width = [], dim + 1
  for _ in range(depth):
    layers += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
    width = hidden
  return torch.nn.Sequential(*layers, torch.nn.Linear(width, dim))


def torchcfm_fm_step(kind: str):
  """(step(i), sync) for torchcfm's I-CFM / OT-CFM training step on the same data."""
  import torch  # pylint: disable=g-import-not-at-top
  from torchcfm import conditional_flow_matching as cfm  # pylint: disable=g-import-not-at-top
  from gensuite.data import toy  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = torchcfm_mlp(torch, FM['hidden'], FM['depth'])
  opt = torch.optim.Adam(net.parameters(), lr=FM['lr'])
  matcher = {'icfm': cfm.ConditionalFlowMatcher,
             'otcfm': cfm.ExactOptimalTransportConditionalFlowMatcher}[kind](sigma=0.0)
  dist = toy.eight_gaussians()
  batches = [torch.from_numpy(np.array(dist.sample(jax.random.PRNGKey(i), FM['batch'])))
             for i in range(8)]

  def step(i):
    x1 = batches[i % 8]
    x0 = torch.randn_like(x1)
    t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
    loss = torch.mean((net(torch.cat([xt, t[:, None]], dim=-1)) - ut)**2)
    opt.zero_grad()
    loss.backward()
    opt.step()

  return step, lambda: None


def _steps_per_sec(step, sync, steps: int = 100, repeats: int = 3) -> float:
  step(0)
  sync()

  def run():
    for i in range(1, steps + 1):
      step(i)
    sync()
  return steps / _best_time(run, repeats)


def measure_fm_step() -> list[dict]:
  rows = []
  systems = [('gensuite concat', lambda: gensuite_fm_step('concat')),
             ('gensuite film', lambda: gensuite_fm_step('film')),
             ('plain JAX/flax/optax, same net', plain_jax_fm_step),
             ('torchcfm I-CFM', lambda: torchcfm_fm_step('icfm')),
             ('gensuite concat, OT exact', lambda: gensuite_fm_step('concat', 'ot', 'exact')),
             ('gensuite concat, OT sinkhorn',
              lambda: gensuite_fm_step('concat', 'ot', 'sinkhorn')),
             ('torchcfm OT-CFM', lambda: torchcfm_fm_step('otcfm'))]
  for name, build in systems:
    try:
      step, sync = build()
    except ImportError:
      rows.append(dict(system=name, error=INSTALL))
      continue
    rows.append(dict(system=name, value=_steps_per_sec(step, sync), unit='steps/s'))
  return rows


# ---- sde -------------------------------------------------------------------------------

def gensuite_em(denoiser, sigmas):
  """jit(z, key) -> samples: gensuite's Euler–Maruyama from sigma_max z down `sigmas`."""
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite import samplers  # pylint: disable=g-import-not-at-top

  @jax.jit
  def run(z, key):
    return samplers.sample_sigmas('euler_maruyama', denoiser, sigmas[0] * z, sigmas, key)[0]
  return run


def diffrax_sde(denoiser, sigmas, solver: str = 'euler', path: str = 'virtual'):
  """The same reverse VE SDE through diffrax.diffeqsolve: jit(z, key) -> samples.

  Time u = -sigma^2 (increasing; float32 keeps the small levels apart), drift the score
  s(x, sigma(u)) = (D - x) / sigma^2, unit diffusion, StepTo on the grid's levels, and
  x = D(x, sigma_last) at the end as gensuite's step to 0. solver: euler, sea, shark;
  path: virtual (VirtualBrownianTree, diffrax's default; space-time Levy area for the
  SRK solvers) or unsafe (UnsafeBrownianPath, with ForwardMode, which it requires).
  """
  import diffrax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import lineax  # pylint: disable=g-import-not-at-top
  grid = np.asarray(sigmas, np.float64)
  grid = grid[grid > 0]
  u_grid = -grid**2
  u0, u1, s_last = float(u_grid[0]), float(u_grid[-1]), float(grid[-1])
  tol = float(np.min(np.diff(u_grid))) / 4
  make_solver = {'euler': diffrax.Euler, 'sea': diffrax.SEA, 'shark': diffrax.ShARK}[solver]

  def drift(u, x, args):
    sigma = jnp.sqrt(jnp.maximum(-u, s_last**2)).astype(x.dtype)
    return (denoiser(x, sigma) - x) / sigma**2

  def diffusion(u, x, args):
    return lineax.DiagonalLinearOperator(jnp.ones_like(x))

  @jax.jit
  def run(z, key):
    if path == 'unsafe':
      bm, extra = diffrax.UnsafeBrownianPath(shape=z.shape, key=key), {
          'adjoint': diffrax.ForwardMode()}
    else:
      levy = {'levy_area': diffrax.SpaceTimeLevyArea} if solver != 'euler' else {}
      bm, extra = diffrax.VirtualBrownianTree(u0, u1, tol=tol, shape=z.shape, key=key,
                                              **levy), {}
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    sol = diffrax.diffeqsolve(terms, make_solver(), u0, u1, dt0=None, y0=grid[0] * z,
                              stepsize_controller=diffrax.StepTo(ts=jnp.asarray(u_grid)),
                              saveat=diffrax.SaveAt(t1=True), max_steps=len(u_grid) + 1,
                              **extra)
    x = sol.ys[0]
    return denoiser(x, jnp.asarray(s_last, x.dtype))
  return run


def measure_sde(steps: int = 64, batch: int = 4096) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite import samplers  # pylint: disable=g-import-not-at-top
  from gensuite.data import toy  # pylint: disable=g-import-not-at-top
  denoiser = toy.eight_gaussians().noisy_denoiser
  sigmas = samplers.karras_sigmas(steps)
  z, key = jax.random.normal(jax.random.PRNGKey(1), (batch, 2)), jax.random.PRNGKey(2)
  rows = []
  systems = [('gensuite euler_maruyama', lambda: gensuite_em(denoiser, sigmas)),
             ('diffrax Euler, VirtualBrownianTree', lambda: diffrax_sde(denoiser, sigmas)),
             ('diffrax Euler, UnsafeBrownianPath',
              lambda: diffrax_sde(denoiser, sigmas, path='unsafe'))]
  for name, build in systems:
    try:
      fn = build()
    except ImportError:
      rows.append(dict(system=name, error=INSTALL))
      continue
    jax.block_until_ready(fn(z, key))
    rows.append(dict(system=name, unit='samples/s',
                     value=batch / _best_time(lambda: jax.block_until_ready(fn(z, key)), 3)))
  return rows


# ---- fid -------------------------------------------------------------------------------

def pytorch_fid_net(state: dict):
  """pytorch-fid's InceptionV3 (pool3, its own resize and normalisation) holding the
  numpy `state` (torchvision names, as gensuite.nets.inception.random_state_dict gives),
  built without its weights download; the unused head is filled by torchvision's."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as pf  # pylint: disable=g-import-not-at-top
  torch_state = {k: torch.from_numpy(v) for k, v in state.items()}
  filler = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()  # pylint: disable=protected-access
  for k, v in filler.items():
    torch_state.setdefault(k, v)
  pf.load_state_dict_from_url = lambda *a, **k: torch_state  # no download
  return pf.InceptionV3([3], resize_input=True, normalize_input=True).eval()


def measure_fid(batch: int = 50, size: int = 32) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite.nets import inception  # pylint: disable=g-import-not-at-top
  state = inception.random_state_dict(0)
  params = inception.params_from_arrays(state)
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3)).astype(np.float32)
  fn = jax.jit(inception.pool3_features, static_argnums=2)
  x = jax.device_put(images)
  fn(params, x, 'tf').block_until_ready()
  rows = [dict(system='gensuite pool3 features', unit='images/s',
               value=batch / _best_time(lambda: fn(params, x, 'tf').block_until_ready(), 2))]
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import pytorch_fid  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    rows.append(dict(system='pytorch-fid InceptionV3', error=INSTALL))
    return rows
  net = pytorch_fid_net(state)
  t = torch.from_numpy(images / 255.0).float().permute(0, 3, 1, 2)
  with torch.no_grad():
    net(t)
    best = _best_time(lambda: net(t), 2)
  rows.append(dict(system=f'pytorch-fid InceptionV3 ({torch.get_num_threads()} threads)',
                   unit='images/s', value=batch / best))
  return rows


MEASURE = {'fm_step': measure_fm_step, 'sde': measure_sde, 'fid': measure_fid}
TITLES = {
    'fm_step': 'flow-matching training step, 8-Gaussians, batch 512, 4x256 SiLU MLP, Adam',
    'sde': "Euler–Maruyama, EDM's 64 levels, batch 4096, exact 8-Gaussians score",
    'fid': 'FID Inception-v3 pool3 features, 50 images 32x32 -> 299',
}


def worker_main(name: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_compilation_cache', False)
  for row in MEASURE[name]():
    print(_TAG + json.dumps(dict(row, comparison=name)), flush=True)


def run_peers(names=COMPARISONS, timeout: float = 900.0, log=print) -> list[dict]:
  """Each comparison in a fresh subprocess; rows {comparison, system, value, unit} or
  {comparison, system, error}."""
  from gensuite import bench  # pylint: disable=g-import-not-at-top
  rows = []
  for name in names:
    t0 = time.time()
    cmd = [sys.executable, '-m', 'gensuite.bench_peers', '--worker', name]
    try:
      proc = subprocess.run(cmd, env=bench.worker_env(None), capture_output=True, text=True,
                            timeout=timeout)
    except subprocess.TimeoutExpired:
      rows.append(dict(comparison=name, system='-', error=f'timed out after {timeout:.0f} s'))
      continue
    got = [json.loads(l[len(_TAG):]) for l in proc.stdout.splitlines() if l.startswith(_TAG)]
    if not got:
      lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
      got = [dict(comparison=name, system='-',
                  error=(lines[-1] if lines else f'exit code {proc.returncode}')[:200])]
    rows.extend(got)
    log(f'peers {name}: {time.time() - t0:.0f} s')
  return rows


def format_section(rows: list[dict]) -> str:
  """The markdown section: one table per comparison, with each system's ratio to the
  comparison's first gensuite row."""
  lines = ['## Peers', '',
           'The same work done by gensuite and by the package a user would otherwise pick, '
           'in one run on this machine (`gensuite/bench_peers.py` says what each row runs). '
           '"vs gensuite" is the row\'s rate over the first gensuite row\'s.', '']
  for name in COMPARISONS:
    group = [r for r in rows if r['comparison'] == name]
    if not group:
      continue
    ref = next((r for r in group if r['system'].startswith('gensuite') and 'value' in r), None)
    lines += [f'### {TITLES[name]}', '', '| system | rate | vs gensuite |', '|---|---|---|']
    for r in group:
      if 'error' in r:
        lines.append(f"| {r['system']} | {r['error'].replace('|', '/')} | |")
        continue
      ratio = f"{r['value'] / ref['value']:.2f}" if ref else ''
      lines.append(f"| {r['system']} | {r['value']:.4g} {r['unit']} | {ratio} |")
    lines.append('')
  return '\n'.join(lines)


if __name__ == '__main__':
  if len(sys.argv) == 3 and sys.argv[1] == '--worker' and sys.argv[2] in MEASURE:
    worker_main(sys.argv[2])
  else:
    print(f'usage: python -m gensuite.bench_peers --worker {{{",".join(COMPARISONS)}}}',
          file=sys.stderr)
    sys.exit(2)
