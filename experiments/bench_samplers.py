"""Throughput of the lax.scan samplers vs a Python loop over a jitted step.

  PYTHONPATH=. python experiments/bench_samplers.py [--steps=50] [--batches=256,4096]

Both run the same update with the same NFE: the scan version is
`gensuite.samplers.sample_sigmas` under one jit (the whole trajectory is one XLA
program); the loop version jits one step and calls it from Python once per step
(sigma pairs passed as arrays, so it compiles once), as a sampler written step by
step would. Denoisers: the exact 8-Gaussians denoiser (cheap: dispatch overhead
dominates) and a random 3-layer MLP of width 256 with EDM preconditioning (a small
network). Reports steady-state samples/s (fastest of --repeats timed runs after a
warm-up call: on a shared CPU the minimum is the least noisy estimate), the first-call (compile) seconds, and max |scan - loop|.
"""
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from gensuite import samplers
from gensuite.data import toy
from gensuite.samplers import pf_ode

_STEPS = flags.DEFINE_integer('steps', 50, 'Sampler steps.')
_BATCHES = flags.DEFINE_list('batches', ['256', '4096'], 'Batch sizes.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs (fastest reported).')


def mlp_denoiser(rng, width=256, sigma_data=0.5):
  """EDM-preconditioned random MLP D(x, sigma) on 2-D points."""
  sizes = [(3, width), (width, width), (width, width), (width, 2)]
  keys = jax.random.split(rng, len(sizes))
  params = [(jax.random.normal(k, s) / np.sqrt(s[0]), jnp.zeros(s[1])) for k, s in zip(keys, sizes)]

  def denoiser(x, sigma):
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
    h = jnp.concatenate([c_in * x, jnp.full(x.shape[:1] + (1,), 0.25 * jnp.log(sigma))], -1)
    for w, b in params[:-1]:
      h = jax.nn.silu(h @ w + b)
    w, b = params[-1]
    return c_skip * x + c_out * (h @ w + b)
  return denoiser


def loop_sampler(name, denoiser, sigmas):
  """Python loop over a jitted step; returns fn(x) -> x (ends with x = D at 0)."""
  s0 = [jnp.asarray(s, jnp.float32) for s in sigmas[:-2]]
  s1 = [jnp.asarray(s, jnp.float32) for s in sigmas[1:-1]]
  last = jnp.asarray(sigmas[-2], jnp.float32)
  final = jax.jit(denoiser)
  if name == 'euler':
    step = jax.jit(lambda x, s, sn: x + (sn - s) * (x - denoiser(x, s)) / s)
  elif name == 'heun':
    step = jax.jit(lambda x, s, sn: pf_ode.heun_step(denoiser, x, s, sn))
  elif name == 'dpm_solver_2m':
    @jax.jit
    def step2(x, m1, h1, s, sn):
      m0 = denoiser(x, s)
      h = jnp.log(s / sn)
      phi_1 = jnp.expm1(-h)
      x1 = (sn / s) * x - phi_1 * m0
      d1 = (m0 - m1) / jnp.where(h1 > 0, h1 / h, 1.0)
      return jnp.where(h1 > 0, x1 - 0.5 * phi_1 * d1, x1), m0, h

    def run(x):
      m1, h1 = jnp.zeros_like(x), jnp.zeros(())
      for a, b in zip(s0, s1):
        x, m1, h1 = step2(x, m1, h1, a, b)
      return final(x, last)
    return run
  else:
    raise ValueError(name)

  def run(x):
    for a, b in zip(s0, s1):
      x = step(x, a, b)
    return final(x, last)
  return run


def _time(fn, x, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(x))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t0)
  return first, float(np.min(times))


def main(argv):
  del argv
  steps = _STEPS.value
  sigmas = samplers.karras_sigmas(steps)
  denoisers = {'gmm_exact': toy.eight_gaussians().noisy_denoiser,
               'mlp_256x3': mlp_denoiser(jax.random.key(0))}
  rows = []
  for dname, denoiser in denoisers.items():
    for batch in map(int, _BATCHES.value):
      x = sigmas[0] * jax.random.normal(jax.random.key(1), (batch, 2))
      for name in ('euler', 'heun', 'dpm_solver_2m'):
        scan = jax.jit(lambda x: samplers.sample_sigmas(name, denoiser, x, sigmas)[0])
        nfe = samplers.sample_sigmas(name, denoiser, x, sigmas)[1]['nfe']
        loop = loop_sampler(name, denoiser, sigmas)
        c_scan, t_scan = _time(scan, x, _REPEATS.value)
        c_loop, t_loop = _time(loop, x, _REPEATS.value)
        diff = float(jnp.max(jnp.abs(scan(x) - loop(x))))
        rows.append((dname, batch, name, nfe, batch / t_scan, batch / t_loop, t_loop / t_scan,
                     c_scan, c_loop, diff))
        print(rows[-1], flush=True)
  print(f'\n{steps} steps, device {jax.devices()[0].platform}, fastest of '
        f'{_REPEATS.value} runs\n')
  print('| denoiser | batch | sampler | NFE | scan samples/s | loop samples/s | '
        'scan speed-up | first call scan (s) | first call loop (s) | max abs diff |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3g} | {r[5]:.3g} | {r[6]:.2f}x | '
          f'{r[7]:.2f} | {r[8]:.2f} | {r[9]:.1e} |')


if __name__ == '__main__':
  app.run(main)
