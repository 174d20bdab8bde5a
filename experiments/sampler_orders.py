"""Measured convergence orders of the sigma samplers and the bias of the SDE samplers.

  PYTHONPATH=. python experiments/sampler_orders.py [--n=200000]

Orders: endpoint error (max over 9 starting points) against a dopri5 solution
(rtol = atol = 1e-12, float64) of dx/dsigma = (x - D)/sigma from sigma = 10 to 0.05,
for a 1-D three-component Gaussian mixture with its exact denoiser, on EDM's rho = 7
grid with N = 8 ... 128 steps; the ratio of successive errors is ~2^order. The
multistep DPM-Solver++ rows are run twice: on the plain grid (its order-1 and
order-2 start-up steps limit the global order), and with two start-up steps of
1e-6 in front (the start-up error then vanishes and the asymptotic order shows).

SDE bias: mean and variance error of the samples for N(1.5, 0.5^2) data with the
exact denoiser, started from the exact marginal at sigma = 80, vs the number of steps.
"""
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from gensuite import samplers
from gensuite.data import toy
from gensuite.samplers import ode

_N = flags.DEFINE_integer('n', 200_000, 'Samples for the SDE bias table.')

MEANS = np.array([-2.0, 0.5, 3.0])
STDS = np.array([0.3, 0.6, 0.4])
WEIGHTS = np.array([0.3, 0.5, 0.2])
GMM = toy.get('gaussian_mixture', means=MEANS[:, None], stds=STDS, weights=WEIGHTS)


def gmm_denoiser(x, sigma):
  """E[x_data | x] for the 1-D mixture above, in the dtype of x (float64 here)."""
  return GMM.noisy_denoiser(x[..., None], sigma)[..., 0]


def orders():
  print('| sampler | grid | errors at N = 8, 16, 32, 64, 128 | ratios |')
  print('|---|---|---|---|')
  with jax.enable_x64(True):
    x = jnp.linspace(-3.0, 3.0, 9) * 10.0
    velocity = lambda x, s: (x - gmm_denoiser(x, s)) / s
    ref, _ = ode.dopri5(velocity, x, 10.0, 0.05, rtol=1e-12, atol=1e-12, max_steps=100000)
    cases = [(n, False) for n in ('euler', 'heun', 'rk4', 'dpm_solver_2m', 'dpm_solver_3m')]
    cases += [('dpm_solver_2m', True), ('dpm_solver_3m', True)]
    for name, warm in cases:
      errs = []
      for n in (8, 16, 32, 64, 128):
        sigmas = samplers.karras_sigmas(n + 1, 0.05, 10.0, append_zero=False)
        if warm:
          sigmas = np.concatenate([[10.0, 10.0 - 1e-6, 10.0 - 2e-6], sigmas[1:]])
        out, _ = samplers.sample_sigmas(name, gmm_denoiser, x, sigmas)
        errs.append(float(jnp.max(jnp.abs(out - ref))))
      ratios = np.array(errs[:-1]) / np.array(errs[1:])
      print(f'| {name} | {"tiny start-up" if warm else "rho=7"} | '
            f'{", ".join(f"{e:.2e}" for e in errs)} | {", ".join(f"{r:.2f}" for r in ratios)} |')


def sde_bias(n):
  mu, s = 1.5, 0.5
  den = lambda x, sigma: mu + s**2 / (s**2 + sigma**2) * (x - mu)
  print(f'\nn = {n}; SE(mean) = {s / np.sqrt(n):.1e}, SE(var) = {s**2 * np.sqrt(2 / n):.1e}')
  print('| sampler | options | steps | mean - mu | var - s^2 |')
  print('|---|---|---|---|---|')
  cases = [('ddim', {'eta': 1.0}), ('euler_maruyama', {}),
           ('pc', {'snr': 0.3, 'corrector_steps': 10}),
           ('edm_stochastic', {'s_churn': 40.0, 's_min': 0.05, 's_max': 50.0})]
  for name, opt in cases:
    for steps in (50, 100, 200, 400, 800):
      sig = samplers.karras_sigmas(steps, 0.002, 80.0)
      x = mu + np.sqrt(s**2 + sig[0]**2) * jax.random.normal(jax.random.key(0), (n,))
      out, _ = jax.jit(lambda x: samplers.sample_sigmas(name, den, x, sig, jax.random.key(1),
                                                        **opt))(x)
      print(f'| {name} | {opt} | {steps} | {float(jnp.mean(out)) - mu:+.4f} | '
            f'{float(jnp.var(out)) - s**2:+.4f} |', flush=True)


def main(argv):
  del argv
  orders()
  sde_bias(_N.value)


if __name__ == '__main__':
  app.run(main)
