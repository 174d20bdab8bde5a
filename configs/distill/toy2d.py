"""Distillation of an exact Gaussian-mixture teacher into a one-step 2-D generator.

  gensuite train --config=configs/distill/toy2d.py --workdir=runs/distill_toy2d
  gensuite train --config=configs/distill/toy2d.py:forward_kl --workdir=runs/fkl
  gensuite train --config=configs/distill/toy2d.py:dmd2,multistep --workdir=runs/dmd2_4
  gensuite train --config=configs/distill/toy2d.py:cond --workdir=runs/distill_cond
  gensuite sample --workdir=runs/distill_toy2d --steps=1 --num=2000 --out=x.npz

The teacher is the exact noisy denoiser of the data mixture (config.teacher.analytic =
'data'). The variant is a comma-separated list of tokens, in any order:
  data:       unequal8 (default: 8 modes on a circle of radius 2, std 0.15, weights
              0.04 .. 0.25), wide8 (radius 3, the weights reordered: heavy and light
              modes alternate), 8gaussians, grid
  objective:  f_distill (default), dmd, dmd2
  divergence: reverse_kl, softened_reverse_kl, forward_kl, js (default), squared_hellinger,
              jeffreys, pearson, neyman, alpha (method.alpha, default 0.5)
  head:       fake_score_head (the discriminator is a head on the fake score's last
              hidden layer, DMD2's choice, instead of a separate MLP)
  cond:       a class-conditional student; the classes are the mixture's components
              (the teacher's p(x | c) is one Gaussian, and unlabelled data get labels
              drawn from p(c | x0)); the teacher is guided with scale
              method.teacher_cfg_scale (1: none). The label reaches the generator
              through a small embedding, so its lr is 1e-3 here: at 1e-4 a DMD
              student puts only 41% of its samples on their label's mode after 600
              steps, at 1e-3 99.8%
  multistep:  a 4-step student (method.gen_steps = 4, sampled with 4 steps; its fake score
              and discriminator are per step, method.fake_per_step)
  smoke:      a few steps of tiny nets, for tests

Each of the method.fake_updates = K inner updates of a step takes its own 1/K of the
batch, so train.batch_size is K x PER_UPDATE_BATCH (set after the tokens: 512 for
f-distill, 128 for DMD, 640 for DMD2; smoke: K x 32).

The recipe (all objectives): generator, fake score and discriminator at lr 1e-3, Adam
with b1 = 0, 20000 steps, generator EMAs 0.99 and 0.999 (sampling and eval use the
longest, 0.999), and for f-distill and DMD2 the GAN term at weight 0.1 and DMD's paired
regression on 8192 (noise, teacher ODE output) pairs at a weight that decays from 1 to
0.2 on a half cosine over training (a multi-step student: its first step's output, at a
constant weight 1). Measured over 3 training seeds in
experiments/results/distill_recipe_unequal8.md (the probes that chose it are listed
there) and distill_recipe_wide8.md (wide8 was not tuned on).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib
from gensuite.methods import divergences

UNEQUAL_WEIGHTS = (0.04, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.25)
# wide8: the same weights reordered so heavy and light modes alternate, on a wider ring.
WIDE_WEIGHTS = (0.25, 0.04, 0.20, 0.06, 0.15, 0.08, 0.12, 0.10)
DATA = ('unequal8', 'wide8', '8gaussians', 'grid')
OBJECTIVES = ('f_distill', 'dmd', 'dmd2')
OTHER = ('cond', 'multistep', 'smoke')
HEAD_TOKENS = {'fake_score_head': 'fake_score'}
# The recipe (experiments/results/distill_recipe_unequal8.md): the GAN term at 0.1 instead of
# FastGen's 3e-3 sharpens the student, Adam with b1 = 0 keeps the three nets from
# collapsing onto one mode at generator lr 1e-3.
GAN_WEIGHT = 0.1
PER_UPDATE_BATCH, SMOKE_PER_UPDATE_BATCH = 128, 32
# The one-step students keep sharpening long after 3000 steps (on_mode 0.79 -> 0.96 for
# f-distill JS between steps 2000 and 20000); the evaluated EMA is the longest, 0.999,
# which averages out the mass that sloshes between neighbouring modes.
NUM_STEPS = 20000
# What an objective token sets beyond the defaults it implies (DISTILL_OBJECTIVES):
# DMD keeps disc_weight 1 (unused without a discriminator).
# f-distill and DMD2 also keep DMD's paired regression, at weight REG_WEIGHT, on
# NUM_PAIRS teacher pairs: it pins each mode's mass, which the GAN-sharpened one-step map
# otherwise lets slosh between neighbouring modes (distill_recipe_unequal8.md).
# The regression's weight decays on a half cosine to REG_FINAL of itself by the last
# step (method.reg_schedule): early it fixes how the noise is shared among the modes,
# late the distribution-matching and GAN terms sharpen each mode, which the regression
# onto the teacher's fixed outputs otherwise holds back (unequal8, 3 seeds, 1 NFE: nll
# 1.11-1.14 against 1.22-1.24 at a constant weight, on_mode 0.950-0.952; one DMD2 seed
# decayed to 0 instead of 0.2: TV 0.028, the masses slosh again).
REG_WEIGHT, NUM_PAIRS, REG_SCHEDULE, REG_FINAL = 1.0, 8192, 'cosine', 0.2
REG = dict(reg_weight=REG_WEIGHT, reg_schedule=REG_SCHEDULE, reg_final=REG_FINAL)
OBJECTIVE_OVERRIDES = {'dmd': dict(disc_weight=1.0, reg_schedule='constant'),
                       'f_distill': dict(gan_weight=GAN_WEIGHT, **REG),
                       'dmd2': dict(gan_weight=GAN_WEIGHT, **REG)}


def unequal8_params(radius: float = 2.0, std: float = 0.15,
                    weights: tuple = UNEQUAL_WEIGHTS) -> dict:
  import math  # pylint: disable=g-import-not-at-top
  means = [[radius * math.cos(2 * math.pi * k / 8), radius * math.sin(2 * math.pi * k / 8)]
           for k in range(8)]
  return dict(means=means, stds=std, weights=list(weights))


def wide8_params() -> dict:
  """8 modes on a circle of radius 3 (neighbours 2.3 apart against unequal8's 1.53),
  std 0.15, weights WIDE_WEIGHTS: a mixture the recipes were not tuned on."""
  return unequal8_params(radius=3.0, weights=WIDE_WEIGHTS)


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, batch_size=SMOKE_PER_UPDATE_BATCH, sampler_steps=None,
               net=dict(hidden=32, depth=2, emb_dim=16))
  c.method.num_pairs, c.method.pair_steps, c.method.reg_batch = 64, 4, 32
  c.method.fake_updates = min(c.method.fake_updates, 2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.update(name='gaussian_mixture', params=unequal8_params())
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=128, depth=3, emb_dim=32))
  c.teacher = ml_collections.ConfigDict(dict(analytic='data', workdir='', params={},
                                             ema=''))
  c.method = common.method('distill', divergence='js', lr_generator=1e-3,
                           lr_fake_score=1e-3, lr_discriminator=1e-3, gan_weight=GAN_WEIGHT,
                           num_pairs=NUM_PAIRS, **REG)
  c.optim.update(lr=1e-3, b1=0.0, grad_clip=10.0, ema_decays=(0.99, 0.999))
  c.train.update(num_steps=NUM_STEPS, batch_size=PER_UPDATE_BATCH, log_every=100, eval_every=2000,
                 ckpt_every=2000)
  c.sampler.update(name='euler', steps=1)  # the student ignores the name; steps = its NFE
  c.eval.num_samples = 2000
  heads = []  # applied after every other token, so an objective token cannot undo them
  edits = {
      'unequal8': common.setter(**{'data.name': 'gaussian_mixture',
                                   'data.params': unequal8_params()}),
      'wide8': common.setter(**{'data.name': 'gaussian_mixture',
                                'data.params': wide8_params()}),
      '8gaussians': common.setter(**{'data.name': '8gaussians', 'data.params': {}}),
      'grid': common.setter(**{'data.name': 'grid', 'data.params': {}}),
      **common.distill_objective_edits(OBJECTIVES, OBJECTIVE_OVERRIDES),
      **{d: common.setter(**{'method.divergence': d}) for d in divergences.DIVERGENCES},
      **{token: (lambda c, h=head: heads.append(h)) for token, head in HEAD_TOKENS.items()},
      'cond': common.setter(**{'method.class_conditional': True, 'method.lr_generator': 1e-3}),
      'multistep': common.setter(**{'method.gen_steps': 4, 'sampler.steps': 4}),
  }
  c = common.apply_variant(c, arg, edits, 'distill toy2d', smoke_edit=_smoke)
  for head in heads:  # disc_weight follows the head again (gensuite.methods.defaults)
    common.rebuild_method(c, drop=('disc_weight',), disc_head=head)
  if c.method.gen_steps > 1 and c.method.objective != 'dmd':
    # A few-step student regresses its first step (method.reg_step) at the full weight
    # throughout (DMD2, 3 seeds, 4 NFE: on_mode 0.983 +- 0.001, TV 0.037 +- 0.012,
    # against 0.965 +- 0.016 and 0.074 +- 0.021 without the regression;
    # distill_multistep_unequal8.md).
    c.method.reg_schedule = 'constant'
  c.train.batch_size *= c.method.fake_updates  # one part per inner update
  return c
