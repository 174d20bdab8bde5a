"""Digits VAEs: learned decoder variance vs deterministic balancing, and latent FM.

  PYTHONPATH=$PWD python experiments/vae_digits.py --root=runs/vae_digits_exp \\
      [--steps=4000] [--fm_steps=4000] [--variants=learned,balanced]

For each variant token of configs/vae/digits.py (same net, steps, batch and seed)
it trains a VAE (eval only at the end: one-sample ELBO and its parts on the 297
test digits, IWAE bounds K = 1, 64, 1000, NLL = -L_1000, active units), then trains
configs/flow_matching/latent_digits.py on that VAE's posterior means. Runs already
finished in --root are reused. Sample quality of the VAE's prior samples and of the
latent flow's decoded samples: MMD^2 / sliced W2 / energy distance from the loop's
final eval (both against the same 500 training digits), and fd_digits (Fréchet
distance on a digits classifier's features, against all 1500 training digits) when
gensuite.metrics provides it. Prints markdown tables and writes summary.json.
"""
import json
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

import gensuite
from gensuite import config as config_lib
from gensuite import metrics as metrics_lib
from gensuite.data import images
from gensuite.train import logging as log_lib

_ROOT = flags.DEFINE_string('root', 'runs/vae_digits_exp', 'Directory for all runs.')
_STEPS = flags.DEFINE_integer('steps', 4000, 'VAE training steps (each variant).')
_FM_STEPS = flags.DEFINE_integer('fm_steps', 4000, 'Latent flow-matching steps.')
_VARIANTS = flags.DEFINE_list('variants', ['learned', 'balanced'],
                              'configs/vae/digits.py variant tokens to compare.')
_N = flags.DEFINE_integer('n', 1000, 'Samples for fd_digits.')
_SEED = flags.DEFINE_integer('seed', 0, 'config.seed of every run.')

VAE_KEYS = ('elbo', 'recon', 'kl', 'iwae_1', 'iwae_64', 'iwae_1000', 'nll_nats',
            'bits_per_dim', 'active_units', 'balanced_gamma')
SAMPLE_KEYS = ('mmd', 'sliced_wasserstein', 'energy_distance')


def _final_eval(workdir: str) -> dict:
  rows = [r for r in log_lib.read_jsonl(workdir) if any(k.startswith('eval/') for k in r)]
  return {k[5:]: v for k, v in rows[-1].items() if k.startswith('eval/')}


def _last_train_log(workdir: str) -> dict:
  rows = [r for r in log_lib.read_jsonl(workdir) if 'loss' in r]
  return rows[-1]


def _train(spec: str, workdir: str, steps: int, **overrides) -> float:
  config = config_lib.from_file(spec)
  with config.unlocked():
    config.seed = _SEED.value
    config.train.num_steps = steps
    config.train.eval_every = steps
    config.train.ckpt_every = steps
    for path, value in overrides.items():
      section, field = path.split('.')
      config[section][field] = value
  t0 = time.time()
  gensuite.train.run(config, workdir)
  return time.time() - t0


def _fd_digits(x, reference, key, root):
  """fd_digits with one classifier for every run (cached under root/fd_digits)."""
  if 'fd_digits' not in metrics_lib.METRICS:
    return None
  return metrics_lib.evaluate(('fd_digits',), key, x, reference, workdir=root)['fd_digits']


def main(argv):
  del argv
  root = _ROOT.value
  os.makedirs(root, exist_ok=True)
  reference = images.open_image_source('digits', 'train').get(np.arange(1500))['x']
  key = jax.random.PRNGKey(2024)
  summary = {}
  for token in _VARIANTS.value:
    vae_dir = os.path.join(root, f'vae_{token}')
    fm_dir = os.path.join(root, f'latent_fm_{token}')
    vae_seconds = _train(f'configs/vae/digits.py:{token}', vae_dir, _STEPS.value)
    fm_seconds = _train('configs/flow_matching/latent_digits.py', fm_dir, _FM_STEPS.value,
                        **{'data.vae_workdir': vae_dir})
    vae_eval, fm_eval = _final_eval(vae_dir), _final_eval(fm_dir)
    last = _last_train_log(vae_dir)
    entry = {'vae': {k: vae_eval.get(k) for k in VAE_KEYS + SAMPLE_KEYS},
             'train_log': {k: last.get(k) for k in ('step', 'elbo', 'decoder_var',
                                                     'running_mse')},
             'latent_fm': {k: fm_eval.get(k) for k in SAMPLE_KEYS},
             'vae_seconds_this_call': vae_seconds, 'fm_seconds_this_call': fm_seconds}
    for name, workdir in (('vae', vae_dir), ('latent_fm', fm_dir)):
      x = gensuite.load_run(workdir).sample(key, _N.value)
      entry[name]['fd_digits'] = _fd_digits(x, reference, key, root)
    summary[token] = entry
  if 'fd_digits' in metrics_lib.METRICS:  # the floor: held-out real digits
    test = images.open_image_source('digits', 'test').get(np.arange(297))['x']
    summary['test_digits_fd'] = _fd_digits(test, reference, key, root)
  with open(os.path.join(root, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)

  fmt = lambda v: '-' if v is None else f'{v:.4g}'
  print(f'VAE: {_STEPS.value} steps; latent FM: {_FM_STEPS.value} steps; seed {_SEED.value}; '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}\n')
  print('Test split (297 digits):\n')
  print('| variant | ELBO | recon | KL | L_64 | L_1000 | NLL (nats) | bits/dim | '
        'active units | train ELBO | train gamma^2 | train MSE |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for token in _VARIANTS.value:
    v, t = summary[token]['vae'], summary[token]['train_log']
    print(f'| {token} | ' + ' | '.join(fmt(v[k]) for k in (
        'elbo', 'recon', 'kl', 'iwae_64', 'iwae_1000', 'nll_nats', 'bits_per_dim',
        'active_units')) + ' | ' + ' | '.join(
            fmt(t[k]) for k in ('elbo', 'decoder_var', 'running_mse')) + ' |')
  print('\ntrain ELBO: mean over the training batches of the last log interval; '
        'train gamma^2: the decoder variance used in the last step; train MSE: the '
        'running (min-EMA) reconstruction MSE.')
  print('\n| VAE | sampler | MMD^2 | sliced W2 | energy dist | fd_digits |')
  print('|---|---|---|---|---|---|')
  for token in _VARIANTS.value:
    for name, label in (('vae', 'prior z ~ N(0, I)'), ('latent_fm', 'latent FM (heun 20)')):
      v = summary[token][name]
      print(f'| {token} | {label} | ' + ' | '.join(
          fmt(v[k]) for k in SAMPLE_KEYS + ('fd_digits',)) + ' |')
  if 'test_digits_fd' in summary:
    print(f'\nfd_digits of the 297 test digits against the training digits: '
          f'{summary["test_digits_fd"]:.4g}')


if __name__ == '__main__':
  app.run(main)
