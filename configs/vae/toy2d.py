"""A VAE on toy 2-D distributions (MLP encoder and decoder, 2-D latent).

  gensuite train --config=configs/vae/toy2d.py --workdir=runs/vae_toy2d
  gensuite train --config=configs/vae/toy2d.py:moons,balanced --workdir=runs/vae_moons

The variant is a comma-separated list of tokens, in any order:
  data:      8gaussians (default), grid, moons, checkerboard, rings, swissroll
  variance:  learned (default; one learned decoder std, Dai & Wipf), pixel (a std per
             dimension from the decoder), fixed (std 0.1), balanced (Asperti & Trentin)
  beta<x>:   KL weight x, e.g. beta4 (beta-VAE); warmup: KL warm-up over 20% of steps
  size:      smoke (a few steps of a tiny net, for tests)
"""
import ml_collections

from gensuite import config as config_lib

DATA = ('8gaussians', 'grid', 'moons', 'checkerboard', 'rings', 'swissroll')
VARIANCE = {'learned': 'learned_scalar', 'pixel': 'learned_pixel', 'fixed': 'fixed',
            'balanced': 'balanced'}
OTHER = ('beta<x>', 'warmup', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = '8gaussians'
  c.net = ml_collections.ConfigDict(dict(name='vae_mlp', hidden=128, depth=2,
                                         activation='silu'))
  c.method = ml_collections.ConfigDict(dict(
      name='vae', latent_dim=2, likelihood='gaussian', variance='learned_scalar',
      fixed_sigma=0.1, beta=1.0, kl_warmup_steps=0, balance_decay=0.99,
      balance_init_mse=1.0, num_bins=256, iwae_k=(1, 64, 1000), iwae_chunk=250,
      eval_examples=1000, eval_batch=250, eval_split=''))
  c.optim.lr = 2e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 100
  c.optim.final_lr_fraction = 0.05
  c.optim.ema_decays = ()  # the NLL is reported for the trained params themselves
  c.train.num_steps = 5000
  c.train.batch_size = 256
  c.train.log_every = 250
  c.train.eval_every = 2500
  c.train.ckpt_every = 2500
  c.eval.num_samples = 2000
  for token in filter(None, (arg or '').split(',')):
    if token in DATA:
      c.data.name = token
    elif token in VARIANCE:
      c.method.variance = VARIANCE[token]
    elif token.startswith('beta') and _is_float(token[4:]):
      c.method.beta = float(token[4:])
    elif token == 'warmup':
      c.method.kl_warmup_steps = c.train.num_steps // 5
    elif token == 'smoke':
      c.net.hidden, c.net.depth = 32, 1
      c.train.num_steps, c.train.batch_size = 20, 64
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 5, 10, 10
      c.optim.warmup_steps = 0
      c.method.iwae_k, c.method.iwae_chunk = (1, 16), 8
      c.method.eval_examples, c.method.eval_batch = 64, 32
      c.eval.num_samples = 256
    else:
      allowed = ', '.join(DATA + tuple(VARIANCE) + OTHER)
      raise ValueError(f'unknown vae toy2d variant {token!r}; allowed tokens: {allowed}')
  return c


def _is_float(s: str) -> bool:
  try:
    float(s)
  except ValueError:
    return False
  return True
