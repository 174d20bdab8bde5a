"""Distillation of an exact Gaussian-mixture teacher into a one-step 2-D generator.

  gensuite train --config=configs/distill/toy2d.py --workdir=runs/distill_toy2d
  gensuite train --config=configs/distill/toy2d.py:forward_kl --workdir=runs/fkl
  gensuite train --config=configs/distill/toy2d.py:dmd2,multistep --workdir=runs/dmd2_4
  gensuite sample --workdir=runs/distill_toy2d --steps=1 --num=2000 --out=x.npz

The teacher is the exact noisy denoiser of the data mixture (config.teacher.analytic =
'data'). The variant is a comma-separated list of tokens, in any order:
  data:       unequal8 (default: 8 modes on a circle of radius 2, std 0.15, weights
              0.04 .. 0.25), 8gaussians, grid
  objective:  f_distill (default), dmd, dmd2
  divergence: reverse_kl, softened_reverse_kl, forward_kl, js (default), squared_hellinger,
              jeffreys, pearson, neyman, alpha (method.alpha, default 0.5)
  multistep:  a 4-step student (method.gen_steps = 4, sampled with 4 steps)
  smoke:      a few steps of tiny nets, for tests
"""
import ml_collections

from gensuite import config as config_lib
from gensuite.methods import divergences

UNEQUAL_WEIGHTS = (0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25)
DATA = ('unequal8', '8gaussians', 'grid')
OBJECTIVES = ('f_distill', 'dmd', 'dmd2')
OTHER = ('multistep', 'smoke')


def unequal8_params(radius: float = 2.0, std: float = 0.15) -> dict:
  import math  # pylint: disable=g-import-not-at-top
  means = [[radius * math.cos(2 * math.pi * k / 8), radius * math.sin(2 * math.pi * k / 8)]
           for k in range(8)]
  return dict(means=means, stds=std, weights=list(UNEQUAL_WEIGHTS))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'gaussian_mixture'
  c.data.params = unequal8_params()
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=128, depth=3, emb_dim=32))
  c.teacher = ml_collections.ConfigDict(dict(analytic='data', workdir='', params={}))
  c.method = ml_collections.ConfigDict(dict(
      name='distill', objective='f_distill', divergence='js', alpha=0.5,
      fake_updates=4, disc_head='separate', gan_weight=3e-3, disc_weight=1.0,
      reg_weight=0.0, num_pairs=1024, pair_steps=18, reg_batch=256,
      sigma_min=0.002, sigma_max=80.0, rho=7.0, num_levels=1000, t_range=(0.02, 0.98),
      logit_clamp=10.0, ratio_clip=(0.1, 20.0), ratio_bins=10, ratio_ema=0.0,
      normalize_ratio=True, normalize_h=True, dm_normalize=True, gen_steps=1,
      sigma_data=0.0, lr_generator=1e-4, lr_fake_score=1e-3, lr_discriminator=1e-3))
  c.optim.lr = 1e-3
  c.optim.grad_clip = 10.0
  c.optim.ema_decays = (0.99,)
  c.train.num_steps = 3000
  c.train.batch_size = 256
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.ckpt_every = 1000
  c.sampler.name = 'euler'  # ignored by the student; steps = its NFE at eval
  c.sampler.steps = 1
  c.eval.num_samples = 2000
  for token in filter(None, (arg or '').split(',')):
    if token == 'unequal8':
      c.data.name, c.data.params = 'gaussian_mixture', unequal8_params()
    elif token in DATA:
      c.data.name, c.data.params = token, {}
    elif token in OBJECTIVES:
      c.method.objective = token
      c.method.divergence = 'js' if token == 'f_distill' else 'reverse_kl'
      c.method.fake_updates = {'f_distill': 4, 'dmd': 1, 'dmd2': 5}[token]
      c.method.disc_head = {'f_distill': 'separate', 'dmd': 'none',
                            'dmd2': 'fake_score'}[token]
      c.method.gan_weight = 0.0 if token == 'dmd' else 3e-3
      c.method.disc_weight = 1e-2 if token == 'dmd2' else 1.0
      c.method.reg_weight = 0.25 if token == 'dmd' else 0.0
    elif token in divergences.DIVERGENCES:
      c.method.divergence = token
    elif token == 'multistep':
      c.method.gen_steps = 4
      c.sampler.steps = 4
    elif token == 'smoke':
      c.net.hidden, c.net.depth, c.net.emb_dim = 32, 2, 16
      c.train.num_steps, c.train.batch_size = 20, 64
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 5, 10, 10
      c.method.num_pairs, c.method.pair_steps, c.method.reg_batch = 64, 4, 32
      c.method.fake_updates = min(c.method.fake_updates, 2)
      c.eval.num_samples = 256
    else:
      allowed = ', '.join(DATA + OBJECTIVES + tuple(divergences.DIVERGENCES) + OTHER)
      raise ValueError(f'unknown distill toy2d variant {token!r}; allowed tokens: {allowed}')
  return c
