"""Flow matching on toy 2-D distributions.

  gensuite train --config=configs/flow_matching/toy2d.py --workdir=runs/fm_toy2d
  gensuite train --config=configs/flow_matching/toy2d.py:moons,ot --workdir=runs/fm_moons_ot

The variant is a comma-separated list of tokens, in any order:
  data:      8gaussians (default), grid, moons, checkerboard, rings, swissroll
  path:      linear (default; rectified flow / CFM), vp, cosine
  coupling:  independent (default), ot (minibatch OT-CFM)
  objective: si (stochastic interpolant, gamma = sqrt(t(1-t)), with a denoiser head)
  net:       film (default; FiLM-conditioned residual MLP), concat (plain MLP on [x, t],
             torchcfm's network; experiments/compare_peers.py)
  ot solver: sinkhorn (with ot: on-device entropic OT + rounding instead of the exact
             host-side assignment)
  size:      smoke (a few steps of a tiny net, for tests)
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

DATA = ('8gaussians', 'grid', 'moons', 'checkerboard', 'rings', 'swissroll')
PATHS = ('linear', 'vp', 'cosine')
COUPLINGS = ('independent', 'ot')
CONDITIONING = ('film', 'concat')
OTHER = ('si', 'sinkhorn', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = '8gaussians'
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=256, depth=3, emb_dim=64,
                                                  conditioning='film'))
  c.method = common.method('flow_matching')
  c.optim.update(lr=2e-3, schedule='cosine', warmup_steps=100, final_lr_fraction=0.05,
                 ema_decays=(0.999,))
  c.train.update(num_steps=5000, batch_size=512, log_every=250, eval_every=2500, ckpt_every=2500)
  c.sampler.update(name='heun', steps=50)
  c.eval.num_samples = 2000
  edits = {
      **{d: common.setter(**{'data.name': d}) for d in DATA},
      **{p: common.setter(**{'method.path': p}) for p in PATHS},
      **{k: common.setter(**{'method.coupling': k}) for k in COUPLINGS},
      **{k: common.setter(**{'net.conditioning': k}) for k in CONDITIONING},
      'sinkhorn': common.setter(**{'method.ot_solver': 'sinkhorn'}),
      'si': common.setter(**{'method.gamma': 'sqrt', 'method.denoiser_head': True,
                             'method.t_eps': 1e-3}),
  }
  return common.apply_variant(
      c, arg, edits, 'toy2d',
      smoke_edit=lambda c: common.smoke(c, net=dict(hidden=32, depth=2, emb_dim=16)))
