"""Flow matching on scikit-learn's 8x8 digits (offline) with a small U-Net.

  gensuite train --config=configs/flow_matching/digits.py --workdir=runs/fm_digits
  gensuite train --config=configs/flow_matching/digits.py:cond,ot --workdir=runs/fm_digits_cond
  gensuite train --config=configs/flow_matching/digits.py:dit --workdir=runs/fm_digits_dit

Variant tokens (comma-separated): cond (class-conditional, 10% label dropout for
classifier-free guidance), contrastive (ΔFM, lambda = 0.05, negatives from other
classes; implies cond), ot (minibatch OT coupling), vp / cosine (path), dit (the
transformer backbone instead of the U-Net: gensuite.nets.DiT with 2x2 patches of the 8x8
image = 16 tokens, hidden 128, 4 blocks, 4 heads, 1.3M parameters, as
configs/flow_maps/digits.py:dit), smoke (tiny; with dit a 1-block DiT of width 16).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

TOKENS = ('cond', 'contrastive', 'ot', 'vp', 'cosine', 'linear', 'dit', 'smoke')
DIT = dict(name='dit', patch_size=2, hidden=128, depth=4, num_heads=4)


def _smoke(c: ml_collections.ConfigDict) -> None:
  tiny = (dict(hidden=16, depth=1, num_heads=2) if c.net.name == 'dit'
          else dict(channels=8, num_res_blocks=1))
  common.smoke(c, num_steps=6, batch_size=16, log_every=2, eval_every=6, ckpt_every=3,
               sampler_steps=2, eval_samples=16, net=tiny)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = common.digits_unet()
  c.method = common.method('flow_matching')
  c.optim.update(lr=1e-3, schedule='cosine', warmup_steps=200, final_lr_fraction=0.05,
                 ema_decays=(0.999,))
  c.train.update(num_steps=4000, batch_size=128, log_every=200, eval_every=2000, ckpt_every=2000)
  c.sampler.update(name='heun', steps=20)
  c.eval.update(num_samples=500, metrics=('mmd', 'sliced_wasserstein', 'energy_distance'))
  edits = {
      'cond': common.setter(**{'method.class_conditional': True,
                               'method.label_dropout': 0.1}),
      'contrastive': common.setter(**{'method.class_conditional': True,
                                      'method.contrastive_weight': 0.05,
                                      'method.negatives': 'other_class'}),
      'ot': common.setter(**{'method.coupling': 'ot'}),
      **{p: common.setter(**{'method.path': p}) for p in ('vp', 'cosine', 'linear')},
      'dit': lambda c: setattr(c, 'net', ml_collections.ConfigDict(DIT)),
  }
  return common.apply_variant(c, arg, edits, 'digits', smoke_edit=_smoke)
