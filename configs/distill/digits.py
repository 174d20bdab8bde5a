"""One-step distillation of a trained digits diffusion run (8x8 scikit-learn digits).

  gensuite train --config=configs/diffusion/digits.py --workdir=/work/runs/edm_digits
  gensuite train --config=configs/distill/digits.py --workdir=runs/distill_digits \
      --config.teacher.workdir=/work/runs/edm_digits
  gensuite sample --workdir=runs/distill_digits --steps=1 --num=64 --out=x.npz

The teacher is the run in config.teacher.workdir (its own config and EMA weights;
its method must expose denoiser_fn, as diffusion and flow_matching do). Generator
and fake score are the teacher's U-Net, initialised from its weights; the
discriminator is a small separate U-Net whose per-pixel logits are averaged.
Variant tokens (comma-separated): f_distill (default, JS), dmd, dmd2 (two time-scale
rule, separate GAN head), any divergence name, smoke (tiny, for tests; pair it with a
smoke teacher).
"""
import ml_collections

from gensuite import config as config_lib
from gensuite.methods import divergences

OBJECTIVES = ('f_distill', 'dmd', 'dmd2')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  # Only used for the discriminator: generator and fake score take the teacher's net.
  c.net = ml_collections.ConfigDict(dict(
      name='unet', channels=16, channel_mult=(1, 2), num_res_blocks=1,
      attn_resolutions=(), dropout=0.0))
  c.teacher = ml_collections.ConfigDict(dict(analytic='', workdir='/work/runs/edm_digits',
                                             params={}))
  c.method = ml_collections.ConfigDict(dict(
      name='distill', objective='f_distill', divergence='js', alpha=0.5,
      fake_updates=4, disc_head='separate', gan_weight=3e-3, disc_weight=1.0,
      reg_weight=0.0, num_pairs=512, pair_steps=18, reg_batch=64,
      sigma_min=0.002, sigma_max=80.0, rho=7.0, num_levels=1000, t_range=(0.02, 0.98),
      logit_clamp=10.0, ratio_clip=(0.1, 20.0), ratio_bins=10, ratio_ema=0.0,
      normalize_ratio=True, normalize_h=True, dm_normalize=True, gen_steps=1,
      sigma_data=0.0, init_from_teacher=True, lr_generator=2e-5, lr_fake_score=1e-4,
      lr_discriminator=1e-4))
  c.optim.lr = 1e-4
  c.optim.grad_clip = 10.0
  c.optim.ema_decays = (0.99,)
  c.train.num_steps = 1000
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.ckpt_every = 250
  c.sampler.name = 'euler'  # ignored by the student; steps = its NFE at eval
  c.sampler.steps = 1
  c.eval.num_samples = 500
  c.eval.metrics = ('fd_digits', 'kid_digits', 'precision_digits', 'recall_digits')
  for token in filter(None, (arg or '').split(',')):
    if token in OBJECTIVES:
      c.method.objective = token
      c.method.divergence = 'js' if token == 'f_distill' else 'reverse_kl'
      c.method.fake_updates = {'f_distill': 4, 'dmd': 1, 'dmd2': 5}[token]
      c.method.disc_head = 'none' if token == 'dmd' else 'separate'
      c.method.gan_weight = 0.0 if token == 'dmd' else 3e-3
      c.method.reg_weight = 0.25 if token == 'dmd' else 0.0
    elif token in divergences.DIVERGENCES:
      c.method.divergence = token
    elif token == 'smoke':
      c.net.channels = 8
      c.train.num_steps, c.train.batch_size = 4, 16
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 2, 4, 2
      c.method.fake_updates = 1
      c.method.num_pairs, c.method.pair_steps, c.method.reg_batch = 16, 2, 8
      c.eval.num_samples = 16
      c.eval.metrics = ('mmd',)
    else:
      allowed = ', '.join(OBJECTIVES + tuple(divergences.DIVERGENCES) + ('smoke',))
      raise ValueError(f'unknown distill digits variant {token!r}; allowed tokens: {allowed}')
  return c
