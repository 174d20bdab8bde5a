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

from gensuite import config as config_lib

ESTIMATORS = ('jarzynski', 'pcd', 'cd', 'ula_unweighted')
RESAMPLERS = ('systematic', 'multinomial')


def mixture_params(dim: int, modes=(-10.0, 6.0), weights=(0.25, 0.75)) -> dict:
  means = [[m] + [0.0] * (dim - 1) for m in modes]
  return dict(means=means, stds=1.0, weights=list(weights))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  dim, h = 50, 0.1
  c.data.name = 'gaussian_mixture'
  c.net = ml_collections.ConfigDict(dict(
      name='gmm_energy', num_components=2, init_noise=0.01, init_log_std=0.0,
      learn_log_stds=False, freeze_first_logit=True))
  c.method = ml_collections.ConfigDict(dict(
      name='ebm', estimator='jarzynski', num_walkers=10000, step_size=h, ula_steps=1,
      cd_steps=4, resampler='systematic', resample_threshold=1.0 / 1.2, energy_reg=0.0,
      param_lr_scale={'means': 0.2}))
  c.optim = ml_collections.ConfigDict(dict(
      name='sgd', lr=h / 8, schedule='constant', warmup_steps=0, grad_clip=0.0,
      ema_decays=()))
  c.train.num_steps = 8000
  c.train.batch_size = 10000
  c.train.log_every = 100
  c.train.eval_every = 2000
  c.train.ckpt_every = 2000
  c.sampler = ml_collections.ConfigDict(dict(name='mala', steps=20, step_size=h))
  c.eval.num_samples = 2000
  c.eval.metrics = ('sliced_wasserstein', 'nll')
  c.eval.use_ema = False
  for token in filter(None, (arg or '').split(',')):
    if token in ESTIMATORS:
      c.method.estimator = token
    elif token in RESAMPLERS:
      c.method.resampler = token
    elif token.startswith('dim') and token[3:].isdigit():
      dim = int(token[3:])
    elif token.startswith('walkers') and token[7:].isdigit():
      c.method.num_walkers = int(token[7:])
    elif token == 'smoke':
      dim = min(dim, 5)
      c.method.num_walkers = 256
      c.train.num_steps, c.train.batch_size = 20, 256
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 5, 10, 10
      c.sampler.steps = 4
      c.eval.num_samples = 256
    else:
      allowed = ', '.join(ESTIMATORS + RESAMPLERS + ('dim<N>', 'walkers<N>', 'smoke'))
      raise ValueError(f'unknown ebm gmm variant {token!r}; allowed tokens: {allowed}')
  c.data.params = mixture_params(dim)
  return c
