"""Few-step generators trained from scratch (flow maps) on scikit-learn's 8x8 digits.

  gensuite train --config=configs/flow_maps/digits.py --workdir=runs/meanflow_digits
  gensuite train --config=configs/flow_maps/digits.py:scm --workdir=runs/scm_digits
  gensuite train --config=configs/flow_maps/digits.py:shortcut,cond --workdir=runs/sc_cond
  gensuite sample --workdir=runs/meanflow_digits --steps=2 --num=64 --out=x.npz
  gensuite eval --workdir=runs/meanflow_digits --metrics=fd_digits,kid_digits

Variant tokens (comma-separated, any order):
  method: meanflow (default), scm (sCT), scd (sCM distilled from a trained diffusion /
          flow-matching run: the tangent takes the teacher's PF-ODE velocity; the
          teacher is config.teacher.workdir; the student is the teacher's network
          started from its weights, method.init_from_teacher, trained at lr 1e-4.
          The teacher needs a slow time embedding: with the digits U-Net's
          time_scale 1000 the tangent's time derivative blows up and the one-step
          map stays at the data mean, so the token's default teacher is
          runs/edm_digits_ts10, `gensuite train --config=configs/diffusion/digits.py
          --workdir=runs/edm_digits_ts10 --config.net.time_scale=10`;
          experiments/results/few_step.md; sampled from TrigFlow time
          config.sampler.t_start = 1.53 instead of t_max, which training hardly
          reaches, and the second step from config.sampler.mid_t = 1.3: at its 3000
          steps fd_digits 5.99 +- 0.27 at 2 NFE, 8.12 +- 1.07 at 1 over 3 seeds,
          against the teacher's 3.79 at 35 NFE), shortcut
  dit:    the transformer backbone (gensuite.nets.DiT: 2x2 patches of the 8x8 image, 16
          tokens, width 128, 4 blocks, 4 heads, time_scale 10) instead of the U-Net
  cond:   class-conditional with 10% label dropout. MeanFlow also bakes guidance into
          training (ALGORITHMS.md §10.1): cfg_omega = 1, cfg_kappa = 1/3, an effective
          scale omega / (1 - kappa) = 1.5, milder than the paper's default 2 (omega = 1,
          kappa = 0.5) and the scale configs/distill/digits.py:cond guides with (not
          tuned). sCM and shortcut runs are conditional only: their samplers take no
          guidance.
  one_step: MeanFlow only: (t, r) drawn apart as py-meanflow's CIFAR-10 sampler 'v1'
          does (method.time_pairing = 'separate': t ~ logit-normal(-0.6, 1.6), r ~
          logit-normal(-4, 1.6), r cut to <= t), so most pairs jump to near the data,
          and improved MeanFlow's tangent (method.tangent = 'model'). It trades 2 NFE
          for 1 (3 seeds, 3000 steps, the std-0.1 power EMA, 2000 samples): fd_digits
          4.47 +- 0.38 at 1 NFE against the default's 50.4 +- 19.0, but 6.22 +- 0.69
          at 2 against 3.43 +- 0.78; with the conditional tangent 1 NFE was 5.87 and
          7.58 on seeds 0 and 1 of the same machine (experiments/results/
          few_step.md). Any other method: one line, exit 2
  smoke:  a few steps of a tiny U-Net, for tests

The data are the digits as configs/diffusion/digits.py reads them (pixels in [-1, 1]),
the net its small U-Net with a slower time embedding for all three methods (time_scale
10 instead of 1000: MeanFlow's target and sCM's tangent differentiate the net in t, and
the slower embedding trained much better on the 2-D toys). Each method keeps its family
defaults (gensuite.methods.defaults) except: MeanFlow trains on the plain squared error
(adaptive weight power p = 0; the family default is the JAX code's ImageNet p = 1,
configs/flow_maps/cifar10.py keeps py-meanflow's CIFAR p = 0.75): the weight 1 / (L +
c)^p bounds each example's pull and so drops the hard ones, which at p = 0.75 gave
sharper digits of too few kinds (3 seeds, 3000 steps, 2 NFE: fd_digits 6.32 +- 1.14,
precision 0.83, recall 0.91, class TV 0.058) where p = 0 gives 4.41 +- 0.57 (0.72, 0.93,
0.039; experiments/results/few_step.md), and samples with the power-function EMA (EDM2)
of relative std 0.1 tracked during training (config.optim.phema_stds = (0.05, 0.1),
snapshots every 500 steps for `gensuite phema`, config.eval.use_ema = 'phema_0.1', which
eval, sample and the training-time evals read): the same 3 seeds at 2 NFE 3.36 +- 0.28
against 4.41 +- 0.57 with the 0.999 EMA, lower in every seed, at 4 NFE 2.92 +- 0.26 (1
NFE worse: 56 +- 14 against 48 +- 11; `--config.eval.use_ema=0.999` samples with the
fixed-decay EMA), though against the EDM teacher sampled with the same EMA (35 NFE: 2.17
+- 0.08; 3 seeds each on one machine) MeanFlow's 2 NFE is 1.58x (3.43 +- 0.78), and
improved MeanFlow's tangent (method.tangent = 'model', the jvp along the net's own
velocity) sharpens the digits (precision 0.83 against 0.74) at the same FD (3.23 +-
0.44), so the paper's conditional tangent stays; sCM's
sigma_data 0.5 (its default; the pixels' std is about 0.8, as EDM on digits keeps it)
and a tangent warm-up of a tenth of training. The methods are their own samplers:
config.sampler.steps is the number of network calls (1; `gensuite eval
--config.sampler.steps=2` for two; a shortcut model takes powers of two), the name is
not read; sCM's later steps start at TrigFlow time method.mid_t (1.1, sCM's value),
which `--config.sampler.mid_t=T` changes on a trained run, and its first at t_max unless
config.sampler.t_start says otherwise (the scd token sets both). MeanFlow steps on the
uniform grid from 1 to 0 unless config.sampler.mid_t (in (0, 1), MeanFlow's time) sets
its second step's time (one p = 0.75 run at step 3000, 2 NFE: fd_digits 4.72 at the
uniform 0.5, 4.74 at 0.4, 5.75 at 0.6). The eval logs fd_digits / kid_digits /
precision_digits / recall_digits, as the other digits configs do.
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

METHODS = ('meanflow', 'scm', 'shortcut')
TOKENS = METHODS + ('scd', 'cond', 'dit', 'one_step', 'smoke')
# 3000 steps of batch 128, as configs/diffusion/digits.py: about 1.5 steps/s on 2 CPU
# cores (the JVP costs about a second forward and backward), so about 35 minutes.
NUM_STEPS = 3000
# What the digits change in each method's defaults (see the module docstring).
DIGITS_METHOD = {
    'meanflow': dict(adaptive_p=0.0),
    'scm': dict(sigma_data=0.5, tangent_warmup=NUM_STEPS // 10),
    'shortcut': dict(),
}
# sCD starts from the teacher's weights (method.init_from_teacher), so it fine-tunes at
# a tenth of the from-scratch lr.
SCD_LR = 1e-4
SCD_TEACHER = 'runs/edm_digits_ts10'  # an EDM digits run with net.time_scale = 10
# sCD's sampling times (experiments/results/few_step.md, one seed, 2000 samples, teacher
# 3.79 at 35 NFE). The proposal log sigma ~ N(-1.0, 1.4^2) puts 0.6% of its draws above
# t = 1.53 (sigma 12.2) and almost none near t_max (sigma 80), so the one-step map from
# t_max is untrained: at step 4000 fd_digits 67.2 from t_max against 6.93 from t = 1.53,
# and 2 NFE 6.43 with the second step at 1.3 (15.5 with t_max and sCM's 1.1). Along one
# 8000-step run, 2 NFE from (1.53, 1.3) is best at step 3000 (5.75; 1 NFE 7.91) and
# rises after 3500 (7.90 at step 8000), so sCD keeps the family's 3000 steps.
SCD_SAMPLER = dict(t_start=1.53, mid_t=1.3)
# MeanFlow's training-time guidance with labels: effective scale 1.0 / (1 - 1/3) = 1.5.
COND_GUIDANCE = dict(cfg_omega=1.0, cfg_kappa=1.0 / 3.0)
# The one_step token: MeanFlow's (t, r) drawn apart as py-meanflow's CIFAR-10 'v1'
# sampler does (t ~ logit-normal(-0.6, 1.6), r ~ logit-normal(-4, 1.6), r cut to <= t),
# so most pairs jump to near the data; with the jvp along the net's own velocity
# (improved MeanFlow), sharper one-step digits (1 NFE 4.47 +- 0.38 against 5.87 / 7.58).
ONE_STEP = dict(time_pairing='separate', time_mean=-0.6, time_std=1.6,
                r_time_mean=-4.0, r_time_std=1.6, tangent='model')
# MeanFlow samples with a power-function EMA (EDM2) of relative std 0.1, tracked during
# training beside 0.05 (snapshots every 500 steps let `gensuite phema` rebuild other
# stds): at step 3000, 2 NFE, it beats the 0.999 EMA in every seed (few_step.md).
MEANFLOW_PHEMA_STDS, MEANFLOW_PHEMA_EVERY, MEANFLOW_EMA = (0.05, 0.1), 500, 'phema_0.1'


def _net(**overrides) -> ml_collections.ConfigDict:
  net = common.digits_unet()
  net.time_scale = 10.0
  net.update(overrides)
  return net


def _use(name):
  def edit(c):
    c.method = common.method(name, **DIGITS_METHOD[name])
  return edit


def _scd(c: ml_collections.ConfigDict) -> None:
  _use('scm')(c)
  c.method.update(training='scd', init_from_teacher=True)
  c.teacher.workdir = SCD_TEACHER
  c.optim.lr = SCD_LR
  c.sampler.update(SCD_SAMPLER)


def _cond(c: ml_collections.ConfigDict) -> None:
  c.method.class_conditional, c.method.label_dropout = True, 0.1
  if c.method.name == 'meanflow':
    c.method.update(COND_GUIDANCE)


def _dit(c: ml_collections.ConfigDict) -> None:
  c.net = ml_collections.ConfigDict(dict(name='dit', patch_size=2, hidden=128, depth=4,
                                         num_heads=4, time_scale=10.0))


def _smoke(c: ml_collections.ConfigDict) -> None:
  tiny = (dict(hidden=16, depth=1, num_heads=2) if c.net.name == 'dit'
          else dict(channels=8, num_res_blocks=1))
  common.smoke(c, num_steps=6, batch_size=16, log_every=2, eval_every=6, ckpt_every=3,
               sampler_steps=None, eval_samples=16, net=tiny)
  c.eval.metrics = ('mmd',)
  if c.method.name == 'scm':
    c.method.tangent_warmup = 3


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = _net()
  c.method = common.method('meanflow', **DIGITS_METHOD['meanflow'])
  # sCD's teacher (gensuite.methods.teachers), read only by the scd token's method.
  c.teacher = ml_collections.ConfigDict(dict(analytic='', workdir='runs/edm_digits',
                                             params={}, ema=''))
  # Constant lr after warmup, as configs/diffusion/digits.py: a run can be extended.
  c.optim.update(lr=1e-3, schedule='constant', warmup_steps=200, ema_decays=(0.999,))
  c.train.update(num_steps=NUM_STEPS, batch_size=128, log_every=100, eval_every=500,
                 ckpt_every=500)
  c.sampler.update(name='euler', steps=1)  # the flow map is its own sampler: steps = NFE
  c.eval.update(num_samples=500,
                metrics=('fd_digits', 'kid_digits', 'precision_digits', 'recall_digits'))
  conditional, one_step = [], []  # applied after the other tokens, whatever their order
  edits = {
      **{m: _use(m) for m in METHODS},
      'scd': _scd,
      'cond': lambda c: conditional.append(True),
      'dit': _dit,
      'one_step': lambda c: one_step.append(True),
  }
  c = common.apply_variant(c, arg, edits, 'flow_maps digits', smoke_edit=_smoke)
  if conditional:
    _cond(c)
  if one_step:
    if c.method.name != 'meanflow':
      raise ValueError("flow_maps digits variant 'one_step' sets MeanFlow's (t, r) "
                       f'sampler; it does not apply to {c.method.name!r} (use it with '
                       'meanflow)')
    c.method.update(ONE_STEP)
  if c.method.name == 'meanflow':
    c.optim.phema_stds = MEANFLOW_PHEMA_STDS
    c.train.phema_every = MEANFLOW_PHEMA_EVERY
    del c.eval['use_ema']  # a bool by default: an EMA's name is the wider type
    c.eval.use_ema = MEANFLOW_EMA
  return c
