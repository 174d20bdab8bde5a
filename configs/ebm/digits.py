"""Jarzynski EBM with a small conv energy on scikit-learn's 8x8 digits (in [-1, 1]).

  gensuite train --config=configs/ebm/digits.py --workdir=runs/ebm_digits
  gensuite sample --workdir=runs/ebm_digits --num=64 --sampler=ula --steps=200 --out=d.npz

Energy U(x) = ConvNet(x) + |x|^2 / (2 prior_std^2) with the last layer zero-initialised:
walkers start as exact draws of N(0, prior_std^2 I). The recipe (ablation in
experiments/results/ebm_digits.md):
- data noise 0.1 (method.data_noise): the model is of the digits convolved with
  N(0, 0.01 I), whose curvature the walkers' step h = 3e-3 resolves; samples are
  Tweedie-denoised, x - 0.01 grad U(x);
- the last 4x4x64 feature map flattened into the dense layer (net.pool='flatten'),
  not averaged over positions;
- Adam with betas (0.9, 0.999), lr 3e-4 with a cosine decay to a tenth over the 10000
  steps, gradient clipping 1, an E[U^2] regulariser of weight 1e-2. With b1 = 0 (the
  usual EBM setting) every step moves each weight by about lr whatever its gradient's
  sign noise, the walkers' weights degenerate faster and faster, and the run diverges
  near step 2000;
- 256 walkers, 5 ULA steps of h = 3e-3 (noise sqrt(2h)) per update with their exact
  Jarzynski weights, resampling when ESS/N falls below 0.3.
log Z comes from a second population of 256 walkers that never enters the gradient,
moves by MALA and follows the parameters' EMA (decay 0.99): it is the EMA energy's log Z
(experiments/results/ebm_log_z.md checks it against AIS).

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


def recipe(c: ml_collections.ConfigDict) -> None:
  """The method and optimiser of the image recipe (also configs/ebm/mnist.py's)."""
  c.method = common.method('ebm', num_walkers=256, step_size=3e-3, ula_steps=5,
                           cd_steps=20, resample_threshold=0.3, energy_reg=1e-2,
                           data_noise=0.1, log_z_walkers=256, log_z_ema=0.99,
                           log_z_move='mala')
  c.optim.update(name='adam', lr=3e-4, b1=0.9, grad_clip=1.0, ema_decays=(0.99,),
                 schedule='cosine', final_lr_fraction=0.1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = ml_collections.ConfigDict(dict(name='energy_conv', channels=(32, 64),
                                         activation='silu', prior_std=1.0, pool='flatten'))
  recipe(c)
  c.train.update(num_steps=10000, batch_size=128, log_every=100, eval_every=1000,
                 ckpt_every=1000)
  c.sampler = ml_collections.ConfigDict(dict(name='ula', steps=100, step_size=3e-3))
  c.eval.update(num_samples=256, metrics=('mmd', 'sliced_wasserstein', 'fd_digits'),
                use_ema=False)
  edits = {
      **{e: common.setter(**{'method.estimator': e}) for e in ESTIMATORS},
      **{r: common.setter(**{'method.resampler': r}) for r in RESAMPLERS},
  }
  return common.apply_variant(c, arg, edits, 'ebm digits', smoke_edit=_smoke)
