"""Jarzynski EBM on the paper's Gaussian mixture (Carbone et al., arXiv 2305.19414).

  gensuite train --config=configs/ebm/gmm.py --workdir=runs/ebm_gmm
  gensuite train --config=configs/ebm/gmm.py:pcd --workdir=runs/ebm_gmm_pcd
  gensuite sample --workdir=runs/ebm_gmm --num=1000 --sampler=mala --out=gmm.npz

Target: d = 50, two unit-covariance Gaussians at -10 e1 and +6 e1 with weights 1/4 and
3/4. Model: the parametric mixture energy (net 'gmm_energy') with learnable means and
logits, the first logit frozen (gauge), means initialised at +-0.1 e1 plus 0.01 noise
and equal weights; 10^4 walkers drawn exactly from it. h = 0.1, plain gradient
descent with lr = h/8 for the logits and 0.2 h/8 for the means, 8000 iterations, one
ULA step per iteration. Each step draws a fresh batch of 10^4 data points.

Variant tokens (comma-separated): jarzynski (default), pcd, cd, ula_unweighted
(estimator); systematic / multinomial (resampler); dim<N> (dimension, e.g. dim10);
walkers<N> (e.g. walkers2000); smoke (tiny, for tests).
The modes, weights and dimension live in data.params / net.data_dim; the walker count
in method.num_walkers.
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

ESTIMATORS = ('jarzynski', 'pcd', 'cd', 'ula_unweighted')
RESAMPLERS = ('systematic', 'multinomial')


def mixture_params(dim: int, modes=(-10.0, 6.0), weights=(0.25, 0.75)) -> dict:
  means = [[m] + [0.0] * (dim - 1) for m in modes]
  return dict(means=means, stds=1.0, weights=list(weights))


def _set_dim(c: ml_collections.ConfigDict, dim: int) -> None:
  c.data.params = mixture_params(dim)


def _set_walkers(c: ml_collections.ConfigDict, num: int) -> None:
  c.method.num_walkers = num


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=20, batch_size=256, sampler_steps=4, eval_samples=256)
  dim = len(c.data.params.means[0])  # 50 or a dim<N> token's
  c.data.params = mixture_params(min(dim, 5))
  c.method.num_walkers = 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  dim, h = 50, 0.1
  c.data.update(name='gaussian_mixture', params=mixture_params(dim))
  c.net = ml_collections.ConfigDict(dict(
      name='gmm_energy', num_components=2, init_noise=0.01, init_log_std=0.0,
      learn_log_stds=False, freeze_first_logit=True))
  c.method = common.method('ebm', num_walkers=10000, step_size=h, cd_steps=4,
                           resample_threshold=1.0 / 1.2, param_lr_scale={'means': 0.2})
  c.optim = ml_collections.ConfigDict(dict(
      name='sgd', lr=h / 8, schedule='constant', warmup_steps=0, grad_clip=0.0,
      ema_decays=()))
  c.train.update(num_steps=8000, batch_size=10000, log_every=100, eval_every=2000,
                 ckpt_every=2000)
  c.sampler = ml_collections.ConfigDict(dict(name='mala', steps=20, step_size=h))
  c.eval.update(num_samples=2000, metrics=('sliced_wasserstein', 'nll'), use_ema=False)
  edits = {
      **{e: common.setter(**{'method.estimator': e}) for e in ESTIMATORS},
      **{r: common.setter(**{'method.resampler': r}) for r in RESAMPLERS},
  }
  patterns = {'dim<N>': common.numbered('dim', _set_dim),
              'walkers<N>': common.numbered('walkers', _set_walkers)}
  return common.apply_variant(c, arg, edits, 'ebm gmm', smoke_edit=_smoke,
                              patterns=patterns)
