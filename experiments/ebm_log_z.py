"""Where the walkers' log Z drifts on the 2-D toy, and what removes it.

  PYTHONPATH=. python experiments/ebm_log_z.py --seeds=0,1,2 --steps=3000 \
      --out=experiments/results/ebm_log_z.md
  PYTHONPATH=. python experiments/ebm_log_z.py --variants=coupled,separate --steps=1000  # quick

Each (variant, seed) trains configs/ebm/toy2d.py (8-Gaussians, the neural energy) with
the same EBM.train_step the loop uses, and at --checkpoints compares the walkers' log Z
estimate with the quadrature log Z of the same energy (481 x 481 rectangle rule on
[-12, 12]^2, exact to ~1e-4 here). `default` is the config as it stands (ULA moves for the
training walkers; a separate log-Z population of 2000 that moves by MALA and follows
the parameters' EMA, decay 0.99); the
others start from the settings the first measurements used (ULA_RAW: ULA moves, a
population that follows the trained params) and change:
  coupled           log_z_walkers 0: log Z from the walkers that drive the gradient
  coupled_8000      the same with num_walkers 8000
  coupled_lr3e-4    the same with optim.lr 3e-4
  coupled_h0.003    the same with method.step_size 0.003
  separate          log_z_walkers 2000: a second population, moved and reweighted the
                    same way, that never enters the gradient
  separate_mala     the same with walker_move mala
  separate_8000     the same with log_z_walkers 8000
  separate_ema      the separate population follows the parameters' EMA (decay 0.99,
                    method.log_z_ema), and log Z is that energy's; 999: decay 0.999;
                    _mala: with walker_move mala (both populations); _zmala: the
                    log-Z population only (log_z_move mala; = default); _8000:
                    log_z_walkers 8000
  separate_b1       the separate population, Adam b1 0.9 (the config's is 0)
  separate_cosine   the same with a cosine learning-rate decay to 5%
Each line printed (and the table) also gives the held-out cross-entropy of the energy
whose log Z is estimated (quadrature log Z), so that a variant does not buy its log Z
with a worse fit, and the log-Z population's resamplings so far.
The coupled estimate is biased low by the step's self-interaction: theta' raises the
energy at exactly the walkers its gradient was computed on, so their weight increments
U_theta(X) - U_theta'(X) understate Z_theta' / Z_theta by O(lr / N) every step.
"""
import argparse
import importlib.util
import os
import time

import jax
import numpy as np

from gensuite import data as data_lib
from gensuite import methods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The settings the earlier variants were measured with (the config's defaults before
# method.log_z_ema): ULA moves, a log-Z population that follows the trained params.
ULA_RAW = {'method.walker_move': 'ula', 'method.log_z_ema': 0.0, 'optim.ema_decays': ()}
EMA = {'method.log_z_walkers': 2000, 'method.log_z_ema': 0.99, 'optim.ema_decays': (0.99,)}
VARIANTS = {
    'default': {},
    'coupled': {**ULA_RAW, 'method.log_z_walkers': 0},
    'coupled_8000': {**ULA_RAW, 'method.log_z_walkers': 0, 'method.num_walkers': 8000},
    'coupled_lr3e-4': {**ULA_RAW, 'method.log_z_walkers': 0, 'optim.lr': 3e-4},
    'coupled_h0.003': {**ULA_RAW, 'method.log_z_walkers': 0, 'method.step_size': 0.003},
    'separate': {**ULA_RAW, 'method.log_z_walkers': 2000},
    'separate_mala': {**ULA_RAW, 'method.log_z_walkers': 2000, 'method.walker_move': 'mala'},
    'separate_8000': {**ULA_RAW, 'method.log_z_walkers': 8000},
    'separate_ema': {**ULA_RAW, **EMA},
    'separate_ema_mala': {**ULA_RAW, **EMA, 'method.walker_move': 'mala'},
    'separate_ema_zmala': {**ULA_RAW, **EMA, 'method.log_z_move': 'mala'},
    'separate_ema_8000': {**ULA_RAW, **EMA, 'method.log_z_walkers': 8000},
    'separate_ema999': {**ULA_RAW, **EMA, 'method.log_z_ema': 0.999,
                        'optim.ema_decays': (0.999,)},
    'separate_b1': {**ULA_RAW, 'method.log_z_walkers': 2000, 'optim.b1': 0.9},
    'separate_cosine': {**ULA_RAW, 'method.log_z_walkers': 2000, 'optim.schedule': 'cosine',
                        'optim.final_lr_fraction': 0.05},
}


def toy_config(overrides: dict, seed: int, steps: int):
  spec = importlib.util.spec_from_file_location(
      'toy_cfg', os.path.join(REPO, 'configs', 'ebm', 'toy2d.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(None)
  for path, value in overrides.items():
    section, key = path.split('.')
    c[section][key] = value
  c.train.num_steps, c.seed = steps, seed
  return c


def run(variant: str, seed: int, checkpoints: list[int]) -> dict[int, dict]:
  c = toy_config(VARIANTS[variant], seed, max(checkpoints))
  data = data_lib.build(c.data, seed=seed, global_batch_size=c.train.batch_size)
  method = methods.build(c, data.spec)
  rng = jax.random.PRNGKey(seed)
  state = method.init(jax.random.fold_in(rng, 0), data.batch(0))
  step = jax.jit(method.train_step)
  grid = jax.jit(method.grid_log_partition)
  held_out = np.concatenate([data.batch(10**6 + i)['x'] for i in range(8)])
  mean_energy = jax.jit(lambda p: method.energy_fn(p)(held_out).mean())
  out = {}
  for s in range(max(checkpoints)):
    state, _ = step(state, data.batch(s), jax.random.fold_in(rng, s + 1))
    if s + 1 in checkpoints:
      ex = jax.device_get(state.extra)
      tracked = method.log_z_params(state)  # the EMA's with method.log_z_ema
      quad = float(grid(tracked))
      est = float(method.log_z(ex))
      # The model's cross-entropy on held-out data (quadrature log Z): the fit, so that a
      # variant that helps log Z is not bought with a worse energy.
      out[s + 1] = {'quadrature': quad, 'estimate': est, 'gap': est - quad,
                    'cross_entropy': float(mean_energy(tracked)) + quad,
                    'resamples': int(ex['z_num_resamples' if 'z_num_resamples' in ex
                                        else 'num_resamples'])}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--checkpoints', default='250,500,1000,2000,3000')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  variants = [v for v in args.variants.split(',') if v]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    parser.error(f'unknown variants {unknown}; known: {", ".join(VARIANTS)}')
  seeds = [int(s) for s in args.seeds.split(',')]
  checkpoints = [int(c) for c in args.checkpoints.split(',') if int(c) <= args.steps]
  results = {}
  for v in variants:
    for seed in seeds:
      t0 = time.time()
      results[v, seed] = run(v, seed, checkpoints)
      gaps = ' '.join(f'{k}:{r["gap"]:+.3f} (ce {r["cross_entropy"]:.3f}, '
                      f'{r["resamples"]} resamplings)'
                      for k, r in results[v, seed].items())
      print(f'{v} seed {seed} ({time.time() - t0:.0f} s): gap {gaps}', flush=True)
  lines = ['| variant | ' + ' | '.join(f'gap at {c}' for c in checkpoints)
           + f' | cross-entropy at {checkpoints[-1]} |',
           '|---|' + '---:|' * (len(checkpoints) + 1)]
  for v in variants:
    cells = []
    for c in checkpoints:
      g = np.array([results[v, s][c]['gap'] for s in seeds])
      cells.append(f'{g.mean():+.3f} +- {g.std():.3f}')
    ce = np.array([results[v, s][checkpoints[-1]]['cross_entropy'] for s in seeds])
    cells.append(f'{ce.mean():.3f} +- {ce.std():.3f}')
    lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
  table = '\n'.join(lines)
  print(table)
  if args.out:
    with open(args.out, 'a') as f:
      f.write(f'\n<!-- seeds {seeds}, steps {args.steps} -->\n{table}\n')


if __name__ == '__main__':
  main()
