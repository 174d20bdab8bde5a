"""EDM on scikit-learn's 8x8 digits (offline) with a small U-Net.

  gensuite train --config=configs/diffusion/digits.py --workdir=runs/edm_digits
  gensuite train --config=configs/diffusion/digits.py:cond --workdir=runs/edm_digits_cond
  gensuite eval --workdir=runs/edm_digits --metrics=fd_digits,kid_digits

Pixels are in [-1, 1]; their std is about 0.8, but EDM's sigma_data = 0.5 is kept as
in the paper (the preconditioning is robust to it). Variant tokens (comma-separated):
cond (class-conditional, 10% label dropout for classifier-free guidance), vp / ve
(other formulations, 100 Euler-grid levels), smoke (tiny, for tests). The eval logs
fd_digits / kid_digits / precision_digits / recall_digits on the penultimate features
of a small digits classifier (gensuite.metrics.features), cached in the workdir.
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

TOKENS = ('cond', 'edm', 'vp', 've', 'smoke')


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=6, batch_size=16, log_every=2, eval_every=6, ckpt_every=3,
               sampler_steps=2, eval_samples=16, net=dict(channels=8, num_res_blocks=1))
  c.eval.metrics = ('mmd',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = common.digits_unet()
  c.method = common.method('diffusion', sigma_max=20.0)
  # Constant lr after warmup: a run can be extended (train.num_steps may change on
  # resume) without bending its schedule.
  c.optim.update(lr=1e-3, schedule='constant', warmup_steps=200, ema_decays=(0.999,))
  c.train.update(num_steps=3000, batch_size=128, log_every=100, eval_every=500, ckpt_every=500)
  c.sampler.update(name='heun', steps=18)
  c.eval.update(num_samples=500,
                metrics=('fd_digits', 'kid_digits', 'precision_digits', 'recall_digits'))
  edits = {
      'cond': common.setter(**{'method.class_conditional': True,
                               'method.label_dropout': 0.1}),
      'edm': common.setter(**{'method.formulation': 'edm'}),
      **{f: common.setter(**{'method.formulation': f, 'sampler.name': 'euler',
                             'sampler.steps': 100}) for f in ('vp', 've')},
  }
  return common.apply_variant(c, arg, edits, 'diffusion digits', smoke_edit=_smoke)
