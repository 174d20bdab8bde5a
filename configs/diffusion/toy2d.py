"""Denoising diffusion (EDM, VP or VE) on toy 2-D distributions.

  gensuite train --config=configs/diffusion/toy2d.py --workdir=runs/edm_toy2d
  gensuite train --config=configs/diffusion/toy2d.py:vp,moons --workdir=runs/vp_moons

The variant is a comma-separated list of tokens, in any order:
  formulation: edm (default; sigma_data = 1, near the data's std), vp, ve
  data:        8gaussians (default), grid, moons, checkerboard, rings, swissroll
  size:        smoke (a few steps of a tiny net, for tests)
"""
import ml_collections

from gensuite import config as config_lib

FORMULATIONS = ('edm', 'vp', 've')
DATA = ('8gaussians', 'grid', 'moons', 'checkerboard', 'rings', 'swissroll')
OTHER = ('smoke',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = '8gaussians'
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=256, depth=3, emb_dim=64))
  c.method = ml_collections.ConfigDict(dict(
      name='diffusion', formulation='edm', sigma_data=1.0, p_mean=-1.2, p_std=1.2,
      edm_sigma_min=0.002, edm_sigma_max=80.0, rho=7.0,
      beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=10.0,
      t_eps=1e-5, sample_t_eps=1e-3, weighting='default',
      class_conditional=False, label_dropout=0.0))
  c.optim.lr = 2e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.05
  c.optim.ema_decays = (0.999,)
  c.train.num_steps = 5000
  c.train.batch_size = 512
  c.train.log_every = 250
  c.train.eval_every = 2500
  c.train.ckpt_every = 2500
  c.sampler.name = 'heun'
  c.sampler.steps = 32
  c.eval.num_samples = 2000
  for token in filter(None, (arg or '').split(',')):
    if token in FORMULATIONS:
      c.method.formulation = token
      if token == 'vp':
        c.sampler.steps = 100
      elif token == 've':
        c.sampler.steps = 100
    elif token in DATA:
      c.data.name = token
    elif token == 'smoke':
      c.net.hidden, c.net.depth, c.net.emb_dim = 32, 2, 16
      c.train.num_steps, c.train.batch_size = 20, 64
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 5, 10, 10
      c.optim.warmup_steps = 0
      c.sampler.steps = 8
      c.eval.num_samples = 256
    else:
      allowed = ', '.join(FORMULATIONS + DATA + OTHER)
      raise ValueError(f'unknown diffusion toy2d variant {token!r}; allowed tokens: {allowed}')
  return c
