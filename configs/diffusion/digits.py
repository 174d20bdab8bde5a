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

from gensuite import config as config_lib

TOKENS = ('cond', 'edm', 'vp', 've', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = ml_collections.ConfigDict(dict(
      name='unet', channels=32, channel_mult=(1, 2), num_res_blocks=1,
      attn_resolutions=(4,), dropout=0.0))
  c.method = ml_collections.ConfigDict(dict(
      name='diffusion', formulation='edm', sigma_data=0.5, p_mean=-1.2, p_std=1.2,
      edm_sigma_min=0.002, edm_sigma_max=80.0, rho=7.0,
      beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=20.0,
      t_eps=1e-5, sample_t_eps=1e-3, weighting='default',
      class_conditional=False, label_dropout=0.0))
  # Constant lr after warmup: a run can be extended (train.num_steps may change on
  # resume) without bending its schedule.
  c.optim.lr = 1e-3
  c.optim.schedule = 'constant'
  c.optim.warmup_steps = 200
  c.optim.ema_decays = (0.999,)
  c.train.num_steps = 3000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.ckpt_every = 500
  c.sampler.name = 'heun'
  c.sampler.steps = 18
  c.eval.num_samples = 500
  c.eval.metrics = ('fd_digits', 'kid_digits', 'precision_digits', 'recall_digits')
  for token in filter(None, (arg or '').split(',')):
    if token == 'cond':
      c.method.class_conditional = True
      c.method.label_dropout = 0.1
    elif token in ('edm', 'vp', 've'):
      c.method.formulation = token
      if token != 'edm':
        c.sampler.name, c.sampler.steps = 'euler', 100
    elif token == 'smoke':
      c.net.channels, c.net.num_res_blocks = 8, 1
      c.train.num_steps, c.train.batch_size = 6, 16
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 2, 6, 3
      c.optim.warmup_steps = 0
      c.sampler.steps = 2
      c.eval.num_samples = 16
      c.eval.metrics = ('mmd',)
    else:
      raise ValueError(f'unknown diffusion digits variant {token!r}; allowed tokens: '
                       + ', '.join(TOKENS))
  return c
