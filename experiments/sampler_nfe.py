"""Sampler error vs NFE on a 2-D Gaussian mixture with its exact denoiser (no training).

  PYTHONPATH=. python experiments/sampler_nfe.py [--n=6000] [--out=experiments/results]

Target: the 8-Gaussians ring (radius 2, std 0.15), whose noisy denoiser is exact
(gensuite.data.toy.GaussianMixture.noisy_denoiser). Every sampler starts from
x = 80 z and runs on EDM's rho = 7 grid (sigma 80 -> 0.002, then 0), with the steps
chosen so that its NFE is at most each budget in --budgets. Errors:
  ode_err   RMS distance to the PF-ODE solution from the same start (dopri5,
            rtol = atol = 1e-6, then the same final x = D(x, 0.002) step): the pure
            discretization error, with no Monte Carlo floor (deterministic samplers).
  mmd2      unbiased MMD^2 to n exact samples (RBF, bandwidth 0.3, about twice one
            mode's std, so it sees the shape of each mode).
  sw2       sliced W_2^2 to n exact samples (256 directions).
  nll_gap   mean -log p_data(samples) minus the same for exact samples (0 is perfect;
            > 0 means mass off the modes).
The MC floor of mmd2 / sw2 / nll_gap (two independent exact sample sets) is printed
too. Writes sampler_nfe.md (table) and sampler_nfe.png under --out.
"""
import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from gensuite import samplers
from gensuite.data import toy
from gensuite.metrics import distances
from gensuite.samplers import ode

_N = flags.DEFINE_integer('n', 6000, 'Samples per sampler (and exact reference samples).')
_BUDGETS = flags.DEFINE_list('budgets', ['5', '10', '20', '35', '50', '100'], 'NFE budgets.')
_OUT = flags.DEFINE_string('out', 'experiments/results', 'Output folder.')
_BANDWIDTH = 0.3
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

# name: (sampler, options, steps for an NFE budget, deterministic)
SAMPLERS = {
    'euler': ('euler', {}, lambda b: b, True),
    'heun': ('heun', {}, lambda b: (b + 1) // 2, True),
    'rk4': ('rk4', {}, lambda b: (b + 3) // 4, True),
    'ddim': ('ddim', {}, lambda b: b, True),
    'dpm_solver_2m': ('dpm_solver_2m', {}, lambda b: b, True),
    'dpm_solver_3m': ('dpm_solver_3m', {}, lambda b: b, True),
    'ddim_eta1': ('ddim', {'eta': 1.0}, lambda b: b, False),
    'euler_maruyama': ('euler_maruyama', {}, lambda b: b, False),
    'pc': ('pc', {'snr': 0.16, 'corrector_steps': 1}, lambda b: max(b // 2, 1), False),
    'edm_stochastic': ('edm_stochastic', {'s_churn': 10.0, 's_min': 0.05, 's_max': 50.0},
                       lambda b: (b + 1) // 2, False),
}


def reference_ode(dist, x):
  velocity = lambda x, s: (x - dist.noisy_denoiser(x, s)) / s
  x_end, _ = ode.dopri5(velocity, x, SIGMA_MAX, SIGMA_MIN, rtol=1e-6, atol=1e-6,
                        max_steps=20000)
  return dist.noisy_denoiser(x_end, SIGMA_MIN)


def main(argv):
  del argv
  dist = toy.eight_gaussians()
  n = _N.value
  k_z, k_data, k_data2, k_run, k_sw = jax.random.split(jax.random.key(0), 5)
  z = jax.random.normal(k_z, (n, 2))
  x_start = SIGMA_MAX * z
  exact = dist.sample(k_data, n)
  exact2 = dist.sample(k_data2, n)
  ref = jax.jit(lambda x: reference_ode(dist, x))(x_start)
  nll_exact = distances.nll(exact, dist.log_prob)

  def scores(x):
    return (distances.mmd2_unbiased(x, exact, _BANDWIDTH),
            distances.sliced_wasserstein(k_sw, x, exact),
            distances.nll(x, dist.log_prob) - nll_exact)

  floor = scores(exact2)
  rows = []
  for label, (name, options, steps_for, deterministic) in SAMPLERS.items():
    for budget in map(int, _BUDGETS.value):
      steps = steps_for(budget)
      sigmas = samplers.karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)
      run = jax.jit(lambda x, rng: samplers.sample_sigmas(name, dist.noisy_denoiser, x,
                                                          sigmas, rng, **options))
      t0 = time.time()
      x, info = run(x_start, k_run)
      x = jax.block_until_ready(x)
      seconds = time.time() - t0
      ode_err = (float(jnp.sqrt(jnp.mean(jnp.sum((x - ref)**2, -1))))
                 if deterministic else float('nan'))
      mmd2, sw2, nll_gap = scores(x)
      rows.append(dict(sampler=label, budget=budget, steps=steps, nfe=int(info['nfe']),
                       ode_err=ode_err, mmd2=mmd2, sw2=sw2, nll_gap=nll_gap,
                       seconds=seconds))
      print(f'{label:15s} budget {budget:3d} steps {steps:3d} nfe {int(info["nfe"]):3d} '
            f'ode_err {ode_err:.2e} mmd2 {mmd2:.2e} sw2 {sw2:.2e} nll_gap {nll_gap:+.3f}',
            flush=True)

  lines = [f'n = {n}; MC floor (two exact sample sets): mmd2 {floor[0]:.2e}, '
           f'sw2 {floor[1]:.2e}, nll_gap {floor[2]:+.4f}', '',
           '| sampler | budget | steps | NFE | ode_err | MMD^2 (bw 0.3) | SW_2^2 | NLL gap |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    err = '-' if np.isnan(r['ode_err']) else f'{r["ode_err"]:.2e}'
    lines.append(f'| {r["sampler"]} | {r["budget"]} | {r["steps"]} | {r["nfe"]} | {err} | '
                 f'{r["mmd2"]:.2e} | {r["sw2"]:.2e} | {r["nll_gap"]:+.3f} |')

  def err_at(label, budget):
    return next(r['ode_err'] for r in rows if r['sampler'] == label and r['budget'] == budget)

  budgets = list(map(int, _BUDGETS.value))
  if 20 in budgets and 100 in budgets:
    lines += ['', 'Claim "Heun and DPM-Solver++ reach at 20 NFE the error Euler needs 100 '
              'NFE for" (ode_err):',
              f'euler@100 {err_at("euler", 100):.2e}; heun@20 {err_at("heun", 20):.2e}; '
              f'dpm_solver_2m@20 {err_at("dpm_solver_2m", 20):.2e}; '
              f'dpm_solver_3m@20 {err_at("dpm_solver_3m", 20):.2e}']
  table = '\n'.join(lines)
  print(table)
  os.makedirs(_OUT.value, exist_ok=True)
  with open(os.path.join(_OUT.value, 'sampler_nfe_table.md'), 'w') as f:
    f.write(table + '\n')
  with open(os.path.join(_OUT.value, 'sampler_nfe.json'), 'w') as f:
    json.dump({'floor': floor, 'rows': rows}, f, indent=1)

  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
  for ax, key, title, fl in zip(axes, ('ode_err', 'mmd2', 'sw2'),
                                ('RMS error vs reference ODE solution', 'MMD^2 (bw 0.3)',
                                 'sliced W_2^2'), (None, floor[0], floor[1])):
    for label in SAMPLERS:
      rs = [r for r in rows if r['sampler'] == label and np.isfinite(r[key])]
      if rs:
        ax.plot([r['nfe'] for r in rs], [max(r[key], 1e-5) for r in rs], marker='o',
                label=label, ls='-' if SAMPLERS[label][3] else '--')
    if fl is not None:  # values below the MC noise level are clipped to 1e-5
      ax.axhline(max(abs(fl), 1e-5), color='k', lw=0.8, ls=':', label='|MC floor|')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('NFE')
    ax.set_title(title)
  axes[1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(_OUT.value, 'sampler_nfe.png'), dpi=110)


if __name__ == '__main__':
  app.run(main)
