"""Denoising diffusion (EDM, VP or VE) on toy 2-D distributions.

  gensuite train --config=configs/diffusion/toy2d.py --workdir=runs/edm_toy2d
  gensuite train --config=configs/diffusion/toy2d.py:vp,moons --workdir=runs/vp_moons

The variant is a comma-separated list of tokens, in any order:
  formulation: edm (default; sigma_data = 1, near the data's std), vp, ve
  data:        8gaussians (default), grid, moons, checkerboard, rings, swissroll
  size:        smoke (a few steps of a tiny net, for tests)
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

FORMULATIONS = ('edm', 'vp', 've')
DATA = ('8gaussians', 'grid', 'moons', 'checkerboard', 'rings', 'swissroll')
OTHER = ('smoke',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = '8gaussians'
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=256, depth=3, emb_dim=64))
  c.method = common.method('diffusion', sigma_data=1.0, sigma_max=10.0)
  c.optim.update(lr=2e-3, schedule='cosine', warmup_steps=100, final_lr_fraction=0.05,
                 ema_decays=(0.999,))
  c.train.update(num_steps=5000, batch_size=512, log_every=250, eval_every=2500, ckpt_every=2500)
  c.sampler.update(name='heun', steps=32)
  c.eval.num_samples = 2000
  edits = {
      'edm': common.setter(**{'method.formulation': 'edm'}),
      **{f: common.setter(**{'method.formulation': f, 'sampler.steps': 100})
         for f in ('vp', 've')},
      **{d: common.setter(**{'data.name': d}) for d in DATA},
  }
  return common.apply_variant(
      c, arg, edits, 'diffusion toy2d',
      smoke_edit=lambda c: common.smoke(c, net=dict(hidden=32, depth=2, emb_dim=16)))
