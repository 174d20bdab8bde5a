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

from configs import common
from gensuite import config as config_lib
from gensuite.methods import divergences

UNEQUAL_WEIGHTS = (0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25)
DATA = ('unequal8', '8gaussians', 'grid')
OBJECTIVES = ('f_distill', 'dmd', 'dmd2')
OTHER = ('multistep', 'smoke')
# What an objective token sets beyond the defaults it implies (DISTILL_OBJECTIVES):
# DMD keeps disc_weight 1 (unused without a discriminator).
OBJECTIVE_OVERRIDES = {'dmd': dict(disc_weight=1.0)}


def unequal8_params(radius: float = 2.0, std: float = 0.15) -> dict:
  import math  # pylint: disable=g-import-not-at-top
  means = [[radius * math.cos(2 * math.pi * k / 8), radius * math.sin(2 * math.pi * k / 8)]
           for k in range(8)]
  return dict(means=means, stds=std, weights=list(UNEQUAL_WEIGHTS))


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, sampler_steps=None, net=dict(hidden=32, depth=2, emb_dim=16))
  c.method.num_pairs, c.method.pair_steps, c.method.reg_batch = 64, 4, 32
  c.method.fake_updates = min(c.method.fake_updates, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.update(name='gaussian_mixture', params=unequal8_params())
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=128, depth=3, emb_dim=32))
  c.teacher = ml_collections.ConfigDict(dict(analytic='data', workdir='', params={}))
  c.method = common.method('distill', divergence='js', lr_generator=1e-4,
                           lr_fake_score=1e-3, lr_discriminator=1e-3)
  c.optim.update(lr=1e-3, grad_clip=10.0, ema_decays=(0.99,))
  c.train.update(num_steps=3000, batch_size=256, log_every=100, eval_every=1000, ckpt_every=1000)
  c.sampler.update(name='euler', steps=1)  # the student ignores the name; steps = its NFE
  c.eval.num_samples = 2000
  edits = {
      'unequal8': common.setter(**{'data.name': 'gaussian_mixture',
                                   'data.params': unequal8_params()}),
      '8gaussians': common.setter(**{'data.name': '8gaussians', 'data.params': {}}),
      'grid': common.setter(**{'data.name': 'grid', 'data.params': {}}),
      **common.distill_objective_edits(OBJECTIVES, OBJECTIVE_OVERRIDES),
      **{d: common.setter(**{'method.divergence': d}) for d in divergences.DIVERGENCES},
      'multistep': common.setter(**{'method.gen_steps': 4, 'sampler.steps': 4}),
  }
  return common.apply_variant(c, arg, edits, 'distill toy2d', smoke_edit=_smoke)
