"""Jarzynski EBM with a small conv energy on scikit-learn's 8x8 digits (in [-1, 1]).

  gensuite train --config=configs/ebm/digits.py --workdir=runs/ebm_digits
  gensuite sample --workdir=runs/ebm_digits --num=64 --sampler=ula --steps=200 --out=d.npz

Energy U(x) = ConvNet(x) + |x|^2 / (2 prior_std^2) with the last layer zero-initialised:
walkers start as exact draws of N(0, prior_std^2 I). Following the paper's image
setup: Adam with betas (0, 0.999), gradient clipping 1, an E[U^2] regulariser, several
ULA steps (noise sqrt(2h), no clipping, so the weights stay exact) per update, and
resampling when ESS/N falls below the threshold. log Z comes from a second population
of 512 walkers that never enters the gradient, moves by MALA and follows the
parameters' EMA (decay 0.99): it is the EMA energy's log Z, and at step 1000 it reads
59.15 against AIS 59.02 +- 0.06 on that energy (experiments/results/ebm_log_z.md).

Variant tokens (comma-separated): jarzynski (default), pcd, cd, ula_unweighted;
systematic / multinomial; smoke (tiny, for tests).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

ESTIMATORS = ('jarzynski', 'pcd', 'cd', 'ula_unweighted')
RESAMPLERS = ('systematic', 'multinomial')


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=6, batch_size=16, log_every=2, eval_every=6, ckpt_every=3,
               sampler_steps=2, eval_samples=16, net=dict(channels=(4, 8)))
  c.method.num_walkers, c.method.ula_steps, c.method.cd_steps = 32, 2, 2
  c.method.log_z_walkers = 16
  c.eval.metrics = ('mmd',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = ml_collections.ConfigDict(dict(name='energy_conv', channels=(32, 64),
                                         activation='silu', prior_std=1.0))
  c.method = common.method('ebm', num_walkers=512, step_size=1e-3, ula_steps=10,
                           cd_steps=20, resample_threshold=0.3, energy_reg=1e-2,
                           log_z_walkers=512, log_z_ema=0.99, log_z_move='mala')
  c.optim.update(name='adam', lr=1e-4, b1=0.0, grad_clip=1.0, ema_decays=(0.99,))
  c.train.update(num_steps=3000, batch_size=128, log_every=100, eval_every=1000, ckpt_every=1000)
  c.sampler = ml_collections.ConfigDict(dict(name='ula', steps=100, step_size=1e-3))
  c.eval.update(num_samples=256, metrics=('mmd', 'sliced_wasserstein', 'fd_digits'),
                use_ema=False)
  edits = {
      **{e: common.setter(**{'method.estimator': e}) for e in ESTIMATORS},
      **{r: common.setter(**{'method.resampler': r}) for r in RESAMPLERS},
  }
  return common.apply_variant(c, arg, edits, 'ebm digits', smoke_edit=_smoke)
