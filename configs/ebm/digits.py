"""Jarzynski EBM with a small conv energy on scikit-learn's 8x8 digits (in [-1, 1]).

  gensuite train --config=configs/ebm/digits.py --workdir=runs/ebm_digits
  gensuite sample --workdir=runs/ebm_digits --num=64 --sampler=ula --steps=200 --out=d.npz

Energy U(x) = ConvNet(x) + |x|^2 / (2 prior_std^2) with the last layer zero-initialised:
walkers start as exact draws of N(0, prior_std^2 I). Following the paper's image
setup: Adam with betas (0, 0.999), gradient clipping 1, an E[U^2] regulariser, several
ULA steps (noise sqrt(2h), no clipping, so the weights stay exact) per update, and
resampling when ESS/N falls below the threshold.

Variant tokens (comma-separated): jarzynski (default), pcd, cd, ula_unweighted;
systematic / multinomial; smoke (tiny, for tests).
"""
import ml_collections

from gensuite import config as config_lib

ESTIMATORS = ('jarzynski', 'pcd', 'cd', 'ula_unweighted')
RESAMPLERS = ('systematic', 'multinomial')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = ml_collections.ConfigDict(dict(name='energy_conv', channels=(32, 64),
                                         activation='silu', prior_std=1.0))
  c.method = ml_collections.ConfigDict(dict(
      name='ebm', estimator='jarzynski', num_walkers=512, step_size=1e-3, ula_steps=10,
      cd_steps=20, resampler='systematic', resample_threshold=0.3, energy_reg=1e-2,
      param_lr_scale={}))
  c.optim.name = 'adam'
  c.optim.lr = 1e-4
  c.optim.b1 = 0.0
  c.optim.grad_clip = 1.0
  c.optim.ema_decays = ()
  c.train.num_steps = 3000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.ckpt_every = 1000
  c.sampler = ml_collections.ConfigDict(dict(name='ula', steps=100, step_size=1e-3))
  c.eval.num_samples = 256
  c.eval.metrics = ('mmd', 'sliced_wasserstein')
  c.eval.use_ema = False
  for token in filter(None, (arg or '').split(',')):
    if token in ESTIMATORS:
      c.method.estimator = token
    elif token in RESAMPLERS:
      c.method.resampler = token
    elif token == 'smoke':
      c.net.channels = (4, 8)
      c.method.num_walkers, c.method.ula_steps, c.method.cd_steps = 32, 2, 2
      c.train.num_steps, c.train.batch_size = 6, 16
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 2, 6, 3
      c.sampler.steps = 2
      c.eval.num_samples = 16
    else:
      allowed = ', '.join(ESTIMATORS + RESAMPLERS + ('smoke',))
      raise ValueError(f'unknown ebm digits variant {token!r}; allowed tokens: {allowed}')
  return c
