"""One-step distillation of a trained digits diffusion run (8x8 scikit-learn digits).

  gensuite train --config=configs/diffusion/digits.py --workdir=runs/edm_digits
  gensuite train --config=configs/distill/digits.py --workdir=runs/distill_digits \
      --config.teacher.workdir=runs/edm_digits
  gensuite sample --workdir=runs/distill_digits --steps=1 --num=64 --out=x.npz
  gensuite train --config=configs/diffusion/digits.py:cond --workdir=runs/edm_digits_cond
  gensuite train --config=configs/distill/digits.py:cond --workdir=runs/distill_cond

The teacher is the run in config.teacher.workdir (its own config and EMA weights;
its method must expose denoiser_fn, as diffusion and flow_matching do). Generator
and fake score are the teacher's U-Net, initialised from its weights.

The default is DMD with DMD2's GAN term (one fake-score update per generator update,
paired regression weight 0.25 on 512 teacher Heun-35 pairs, a classifier head on the
fake score's U-Net bottleneck trained on noisy real vs student samples, generator GAN
weight 1e-2; generator EMAs 0.99 / 0.995 / 0.998, sampled with 0.998) for NUM_STEPS =
2500 steps: about 0.9 steps/s on 2 CPU cores shared with another run, 47 minutes. Over
3 training seeds its one-step fd_digits is 3.60 +- 0.29 against the teacher's 3.21 at 35 NFE
(2000 samples); at GAN weight 3e-3 (EMA 0.99) it was 4.69 +- 0.54, without the GAN term
(--config.method.disc_head=none --config.method.gan_weight=0) 6.71 +- 0.94
(experiments/results/distill_digits.md).
Variant tokens (comma-separated): dmd (the default), f_distill (JS; a separate
discriminator U-Net whose per-pixel logits are averaged, 4 fake-score updates), dmd2
(two time-scale rule, separate GAN head), any divergence name; fake_score_head /
teacher_head (the discriminator is a light head on the fake score's / the frozen
teacher's U-Net bottleneck, DMD2's / FastGen's choice, instead of a separate U-Net);
cond (a class-conditional student of a class-conditional teacher,
configs/diffusion/digits.py:cond in runs/edm_digits_cond, unguided:
method.teacher_cfg_scale = 1; seeds 0 / 1 / 2 at 2500 steps: fd_digits 2.68 +- 0.24 at
1 NFE against the teacher's 2.87 at 35 NFE, 2000 samples; guided at 1.5 the student kept one
or two renderings per class, 14.67); multistep (a 4-step student:
method.gen_steps = 4 with backward simulation and one fake-score copy per step, sampled
with 4 steps; its later steps regress onto the teacher's ODE from their own inputs,
method.reg_step = 'online' (MULTISTEP_REG_STEP); 3 seeds at 2500 steps, 2000 samples:
fd_digits 2.92 +- 0.68 at 4 NFE, 3.45 +- 0.55 at 2, 4.09 +- 0.35 at 1, teacher 3.12;
with reg_step = 'first', the first step's regression alone, 4.46 +- 1.36 at 4 NFE: its
step at sigma 2.5 adds 2.4-3.3 points of 1s in every seed where the teacher's ODE from
the same inputs adds none, see experiments/distill_chain_classes.py; about half the
steps/s of 'first'; with cond, 6000 steps (COND_MULTISTEP_STEPS) and reg_step
'first', 3 seeds: 2.88 +- 0.13 at 4 NFE and 2.47 +- 0.39 at 2, teacher 3.01); smoke
(tiny, for tests; pair it with a smoke teacher).

Each of the method.fake_updates = K inner updates of a step takes its own 1/K of the
batch, so train.batch_size is K x PER_UPDATE_BATCH (set after the tokens; smoke: K x 16).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib
from gensuite.methods import divergences

OBJECTIVES = ('f_distill', 'dmd', 'dmd2')
HEAD_TOKENS = {'fake_score_head': 'fake_score', 'teacher_head': 'teacher_features'}
PER_UPDATE_BATCH, SMOKE_PER_UPDATE_BATCH = 64, 16
# The generator's EMAs; eval and sample use the longest (0.998) unless told otherwise
# (--config.eval.use_ema=0.99). Over 3 seeds at 2500 steps, 2000 samples: fd_digits
# 3.76 +- 0.23 / 3.70 +- 0.23 / 3.60 +- 0.29 with decays 0.99 / 0.995 / 0.998
# (experiments/results/distill_digits.md).
EMA_DECAYS = (0.99, 0.995, 0.998)
NUM_STEPS = 2500
# A class-conditional few-step student (cond,multistep) trains longer: its 4-NFE
# fd_digits kept falling after 2500 steps, 3.37 (one seed) at 2500, 3.04 / 3.04 at 4500
# and 2.82 / 3.03 / 2.79 at 6000 over seeds 0 / 1 / 2, against the teacher's 3.01
# (2000 samples; experiments/results/distill_digits.md).
COND_MULTISTEP_STEPS = 6000
# The unconditional few-step student's later steps regress onto the teacher's PF-ODE
# solution from their own chain's inputs (distill.REG_STEPS). Over 3 seeds at 2500
# steps, 4 NFE: 3.46 / 3.14 / 2.16 against 4.64 / 5.72 / 3.02 with 'first', lower in
# every seed (experiments/results/distill_digits.md). The conditional student met its
# target with 'first' and keeps it (not measured with 'online').
MULTISTEP_REG_STEP = 'online'
# What an objective token sets beyond the defaults it implies (DISTILL_OBJECTIVES):
# DMD adds DMD2's GAN term (a head on the fake score's bottleneck, head weight 1e-2) to
# its one fake-score update and paired regression. At DMD2's generator weight 3e-3 it
# took the one-step fd_digits from 6.71 +- 0.94 to 4.69 +- 0.54 over 3 seeds (2000
# samples); at 1e-2 over the same seeds, 3.76 +- 0.23 (EMA 0.99)
# (experiments/results/distill_digits.md). DMD2 keeps the separate discriminator (not a
# head on the fake score), so its disc_weight stays 1.
DMD_GAN = dict(disc_head='fake_score', gan_weight=1e-2, disc_weight=1e-2)
OBJECTIVE_OVERRIDES = {'dmd': DMD_GAN, 'dmd2': dict(disc_head='separate')}


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=4, batch_size=SMOKE_PER_UPDATE_BATCH, log_every=2, eval_every=4,
               ckpt_every=2, sampler_steps=None, eval_samples=16, net=dict(channels=8))
  c.method.fake_updates = 1
  c.method.num_pairs, c.method.pair_steps, c.method.reg_batch = 16, 2, 8
  c.eval.metrics = ('mmd',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  # Only used for the discriminator: generator and fake score take the teacher's net.
  c.net = ml_collections.ConfigDict(dict(
      name='unet', channels=16, channel_mult=(1, 2), num_res_blocks=1,
      attn_resolutions=(), dropout=0.0))
  c.teacher = ml_collections.ConfigDict(dict(analytic='', workdir='runs/edm_digits',
                                             params={}, ema=''))
  c.method = common.method('distill', objective='dmd', divergence='reverse_kl',
                           num_pairs=512, reg_batch=64, lr_generator=2e-5,
                           lr_fake_score=1e-4, lr_discriminator=1e-4, **DMD_GAN)
  c.optim.update(lr=1e-4, grad_clip=10.0, ema_decays=EMA_DECAYS)
  c.train.update(num_steps=NUM_STEPS, batch_size=PER_UPDATE_BATCH, log_every=50, eval_every=500,
                 ckpt_every=250)
  c.sampler.update(name='euler', steps=1)  # the student ignores the name; steps = its NFE
  c.eval.update(num_samples=500,
                metrics=('fd_digits', 'kid_digits', 'precision_digits', 'recall_digits'))
  heads = []  # applied after every other token, so an objective token cannot undo them
  edits = {
      **common.distill_objective_edits(OBJECTIVES, OBJECTIVE_OVERRIDES),
      **{d: common.setter(**{'method.divergence': d}) for d in divergences.DIVERGENCES},
      **{token: (lambda c, h=head: heads.append(h)) for token, head in HEAD_TOKENS.items()},
      'multistep': common.setter(**{'method.gen_steps': 4, 'sampler.steps': 4}),
      'cond': common.setter(**{'method.class_conditional': True,
                               'method.teacher_cfg_scale': 1.0,
                               'teacher.workdir': 'runs/edm_digits_cond'}),
  }
  c = common.apply_variant(c, arg, edits, 'distill digits', smoke_edit=_smoke)
  if c.method.class_conditional and c.method.gen_steps > 1 and c.train.num_steps == NUM_STEPS:
    c.train.num_steps = COND_MULTISTEP_STEPS  # not under smoke, which sets its own
  if c.method.gen_steps > 1 and not c.method.class_conditional:
    c.method.reg_step = MULTISTEP_REG_STEP
  for head in heads:  # disc_weight follows the head again (gensuite.methods.defaults)
    common.rebuild_method(c, drop=('disc_weight',), disc_head=head)
  c.train.batch_size *= c.method.fake_updates  # one part per inner update
  return c
