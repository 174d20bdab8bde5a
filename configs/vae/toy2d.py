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

from configs import common
from gensuite import config as config_lib

DATA = ('8gaussians', 'grid', 'moons', 'checkerboard', 'rings', 'swissroll')
VARIANCE = {'learned': 'learned_scalar', 'pixel': 'learned_pixel', 'fixed': 'fixed',
            'balanced': 'balanced'}
OTHER = ('beta<x>', 'warmup', 'smoke')


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, sampler_steps=None, net=dict(hidden=32, depth=1))
  c.method.iwae_k, c.method.iwae_chunk = (1, 16), 8
  c.method.eval_examples, c.method.eval_batch = 64, 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = '8gaussians'
  c.net = ml_collections.ConfigDict(dict(name='vae_mlp', hidden=128, depth=2,
                                         activation='silu'))
  c.method = common.method('vae', latent_dim=2, iwae_k=(1, 64, 1000), iwae_chunk=250,
                           eval_examples=1000, eval_batch=250)
  c.optim.update(lr=2e-3, schedule='cosine', warmup_steps=100, final_lr_fraction=0.05,
                 ema_decays=())  # no EMA: the NLL is reported for the trained params
  c.train.update(num_steps=5000, batch_size=256, log_every=250, eval_every=2500, ckpt_every=2500)
  c.eval.num_samples = 2000
  shared, patterns = common.vae_edits()
  edits = {
      **{d: common.setter(**{'data.name': d}) for d in DATA},
      **{k: common.setter(**{'method.variance': v}) for k, v in VARIANCE.items()},
      **shared,
  }
  return common.apply_variant(c, arg, edits, 'vae toy2d', smoke_edit=_smoke,
                              patterns=patterns)
