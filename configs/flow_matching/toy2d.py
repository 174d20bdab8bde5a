"""Flow matching on toy 2-D distributions.

  gensuite train --config=configs/flow_matching/toy2d.py --workdir=runs/fm_toy2d
  gensuite train --config=configs/flow_matching/toy2d.py:moons,ot --workdir=runs/fm_moons_ot

The variant is a comma-separated list of tokens, in any order:
  data:      8gaussians (default), grid, moons, checkerboard, rings, swissroll
  path:      linear (default; rectified flow / CFM), vp, cosine
  coupling:  independent (default), ot (minibatch OT-CFM)
  objective: si (stochastic interpolant, gamma = sqrt(t(1-t)), with a denoiser head)
  size:      smoke (a few steps of a tiny net, for tests)
"""
import ml_collections

from gensuite import config as config_lib

DATA = ('8gaussians', 'grid', 'moons', 'checkerboard', 'rings', 'swissroll')
PATHS = ('linear', 'vp', 'cosine')
COUPLINGS = ('independent', 'ot')
OTHER = ('si', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = '8gaussians'
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=256, depth=3, emb_dim=64))
  c.method = ml_collections.ConfigDict(dict(
      name='flow_matching', path='linear', sigma_min=0.0, coupling='independent',
      gamma='none', gamma_scale=1.0, denoiser_head=False, contrastive_weight=0.0,
      negatives='any', time_sampling='uniform', t_eps=0.0, class_conditional=False,
      label_dropout=0.0))
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
  c.sampler.steps = 50
  c.eval.num_samples = 2000
  for token in filter(None, (arg or '').split(',')):
    if token in DATA:
      c.data.name = token
    elif token in PATHS:
      c.method.path = token
    elif token in COUPLINGS:
      c.method.coupling = token
    elif token == 'si':
      c.method.gamma = 'sqrt'
      c.method.denoiser_head = True
      c.method.t_eps = 1e-3
    elif token == 'smoke':
      c.net.hidden, c.net.depth, c.net.emb_dim = 32, 2, 16
      c.train.num_steps, c.train.batch_size = 20, 64
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 5, 10, 10
      c.optim.warmup_steps = 0
      c.sampler.steps = 8
      c.eval.num_samples = 256
    else:
      allowed = ', '.join(DATA + PATHS + COUPLINGS + OTHER)
      raise ValueError(f'unknown toy2d variant {token!r}; allowed tokens: {allowed}')
  return c
