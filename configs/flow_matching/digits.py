"""Flow matching on scikit-learn's 8x8 digits (offline) with a small U-Net.

  gensuite train --config=configs/flow_matching/digits.py --workdir=runs/fm_digits
  gensuite train --config=configs/flow_matching/digits.py:cond,ot --workdir=runs/fm_digits_cond

Variant tokens (comma-separated): cond (class-conditional, 10% label dropout for
classifier-free guidance), contrastive (ΔFM, lambda = 0.05, negatives from other
classes; implies cond), ot (minibatch OT coupling), vp / cosine (path), smoke (tiny).
"""
import ml_collections

from gensuite import config as config_lib

TOKENS = ('cond', 'contrastive', 'ot', 'vp', 'cosine', 'linear', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = ml_collections.ConfigDict(dict(
      name='unet', channels=32, channel_mult=(1, 2), num_res_blocks=1,
      attn_resolutions=(4,), dropout=0.0))
  c.method = ml_collections.ConfigDict(dict(
      name='flow_matching', path='linear', sigma_min=0.0, coupling='independent',
      gamma='none', gamma_scale=1.0, denoiser_head=False, contrastive_weight=0.0,
      negatives='any', time_sampling='uniform', t_eps=0.0, class_conditional=False,
      label_dropout=0.0))
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 200
  c.optim.final_lr_fraction = 0.05
  c.optim.ema_decays = (0.999,)
  c.train.num_steps = 4000
  c.train.batch_size = 128
  c.train.log_every = 200
  c.train.eval_every = 2000
  c.train.ckpt_every = 2000
  c.sampler.name = 'heun'
  c.sampler.steps = 20
  c.eval.num_samples = 500
  c.eval.metrics = ('mmd', 'sliced_wasserstein', 'energy_distance')
  for token in filter(None, (arg or '').split(',')):
    if token == 'cond':
      c.method.class_conditional = True
      c.method.label_dropout = 0.1
    elif token == 'contrastive':
      c.method.class_conditional = True
      c.method.contrastive_weight = 0.05
      c.method.negatives = 'other_class'
    elif token == 'ot':
      c.method.coupling = 'ot'
    elif token in ('vp', 'cosine', 'linear'):
      c.method.path = token
    elif token == 'smoke':
      c.net.channels, c.net.num_res_blocks = 8, 1
      c.train.num_steps, c.train.batch_size = 6, 16
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 2, 6, 3
      c.optim.warmup_steps = 0
      c.sampler.steps = 2
      c.eval.num_samples = 16
    else:
      raise ValueError(f'unknown digits variant {token!r}; allowed tokens: '
                       + ', '.join(TOKENS))
  return c
