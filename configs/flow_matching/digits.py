"""Flow matching on scikit-learn's 8x8 digits (offline) with a small U-Net.

  gensuite train --config=configs/flow_matching/digits.py --workdir=runs/fm_digits
  gensuite train --config=configs/flow_matching/digits.py:cond,ot --workdir=runs/fm_digits_cond

Variant tokens (comma-separated): cond (class-conditional, 10% label dropout for
classifier-free guidance), contrastive (ΔFM, lambda = 0.05, negatives from other
classes; implies cond), ot (minibatch OT coupling), vp / cosine (path), smoke (tiny).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

TOKENS = ('cond', 'contrastive', 'ot', 'vp', 'cosine', 'linear', 'smoke')


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
  }
  return common.apply_variant(
      c, arg, edits, 'digits',
      smoke_edit=lambda c: common.smoke(
          c, num_steps=6, batch_size=16, log_every=2, eval_every=6, ckpt_every=3,
          sampler_steps=2, eval_samples=16, net=dict(channels=8, num_res_blocks=1)))
