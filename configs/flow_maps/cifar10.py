"""Few-step generators trained from scratch (flow maps) on CIFAR-10, for accelerators.

  gensuite train --config=configs/flow_maps/cifar10.py --workdir=runs/meanflow_cifar10
  gensuite train --config=configs/flow_maps/cifar10.py:scm --workdir=runs/sct_cifar10
  gensuite train --config=configs/flow_maps/cifar10.py:meanflow,cond --workdir=runs/mf_cond
  gensuite eval --workdir=runs/meanflow_cifar10 --metrics=fid --num=50000

Needs CIFAR-10 prepared for tensorflow-datasets in the data dir (`tfds build cifar10`
on a machine with network access, then point $TFDS_DATA_DIR or --config.data.data_dir
at it); nothing is downloaded here. Not run in tests (`smoke` only resolves there).

Network: the DDPM++-style U-Net of configs/diffusion/cifar10.py (channels 128,
channel_mult (1, 2, 2, 2), 2 residual blocks per level, attention at 16x16), dropout
0.2 (the MeanFlow and sCT recipes), with the time embedding at time_scale 10 instead
of 1000 for all three methods: a gensuite choice, not the recipes' (their nets are
EDM's SongUNet / a DiT), carried over from the toy and digits configs, where the
slower embedding trained much better (MeanFlow's target and sCM's tangent
differentiate the net in t). The methods are their own samplers: sampler.steps is the
number of network calls (1; `gensuite eval --config.sampler.steps=2`), the name is not
read. Numbers below are from ALGORITHMS.md §10; "not given" marks a choice made here.

Variants (comma-separated tokens):
  meanflow (default)  py-meanflow's CIFAR-10 recipe (scripts/cifar10_v0.sh, §10.1):
                 batch 1024, Adam lr 6e-4, 200 warm-up epochs (9766 steps at batch
                 1024 over the 50k training images), about 800k iterations, EMA 0.9999,
                 dropout 0.2, adaptive weight p = 0.75, c = 1e-3; (t, r) both
                 logit-normal(-2, 2), sorted, r = t on 75% of the batch (the v0 time
                 sampler). Not implemented: EDM augmentation. Grad clipping is not
                 given (gensuite's default 1 is kept). FID 2.92 at 1 step (paper).
  scm            sCT after FastGen's config_sct_cifar10.py (§10.2): batch 512, dropout
                 0.2, 350k iterations, sigma_data 0.5, log(sigma) ~ N(-1.0, 1.4^2),
                 tangent warm-up 10^4 steps. FastGen's RAdam (0.9, 0.99) is Adam with
                 b2 = 0.99 here (gensuite has no RAdam), and it initialises from EDM
                 while this run starts from scratch. lr and EMA are not given: Adam lr
                 1e-4 (ECT's CIFAR-10 lr) and EMA 0.9999. 2-step FID 2.06 (paper).
  shortcut       no CIFAR-10 recipe exists (§10.3); kvfrans/shortcut-models' training
                 settings: AdamW lr 1e-4, weight decay 0.1, batch 256, self-consistency
                 targets from the EMA of decay 0.999 on 1/8 of the batch (the code's
                 default), clipped to +-4; 400k steps (not given; the ImageNet run is
                 810k); EMA 0.9999 for sampling.
  cond           class-conditional with 10% label dropout. MeanFlow bakes guidance into
                 training with its defaults omega = 1, kappa = 0.5 (effective scale 2,
                 §10.1) and samples unguided; sCM and shortcut runs are conditional only.
  fid            standard FID of 10k samples at every eval (see
                 configs/diffusion/cifar10.py for the Inception weights and statistics).
  smoke          a tiny U-Net for a few steps (still needs the data to run).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

METHODS = ('meanflow', 'scm', 'shortcut')
TOKENS = METHODS + ('cond', 'fid', 'smoke')
CIFAR10_TRAIN_IMAGES = 50_000


def _meanflow(c: ml_collections.ConfigDict) -> None:
  c.method = common.method('meanflow', time_mean=-2.0, time_std=2.0, equal_fraction=0.75,
                           adaptive_p=0.75, adaptive_c=1e-3)
  c.optim.update(name='adam', lr=6e-4, b1=0.9, b2=0.999, weight_decay=0.0,
                 warmup_steps=round(200 * CIFAR10_TRAIN_IMAGES / 1024), ema_decays=(0.9999,))
  c.train.update(num_steps=800_000, batch_size=1024)


def _scm(c: ml_collections.ConfigDict) -> None:
  c.method = common.method('scm', training='sct', sigma_data=0.5, p_mean=-1.0, p_std=1.4,
                           tangent_warmup=10_000)
  c.optim.update(name='adam', lr=1e-4, b1=0.9, b2=0.99, weight_decay=0.0, warmup_steps=0,
                 ema_decays=(0.9999,))
  c.train.update(num_steps=350_000, batch_size=512)


def _shortcut(c: ml_collections.ConfigDict) -> None:
  c.method = common.method('shortcut', bootstrap_every=8, bootstrap_target='ema',
                           target_clip=4.0)
  # The fastest EMA (0.999) gives the self-consistency targets, the slowest samples.
  c.optim.update(name='adamw', lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.1,
                 warmup_steps=0, ema_decays=(0.999, 0.9999))
  c.train.update(num_steps=400_000, batch_size=256)


def _cond(c: ml_collections.ConfigDict) -> None:
  c.method.class_conditional, c.method.label_dropout = True, 0.1
  if c.method.name == 'meanflow':
    c.method.cfg_omega, c.method.cfg_kappa = 1.0, 0.5


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=4, batch_size=8, log_every=2, eval_every=4, ckpt_every=2,
               sampler_steps=None, eval_samples=16,
               net=dict(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=()))
  c.eval.update(metrics=('mmd',), sample_batch=0)
  if c.method.name == 'scm':
    c.method.tangent_warmup = 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'cifar10'
  c.net = ml_collections.ConfigDict(dict(
      name='unet', channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
      attn_resolutions=(16,), dropout=0.2, time_scale=10.0))
  c.optim.update(schedule='constant', eps=1e-8)
  c.train.update(log_every=100, eval_every=10_000, ckpt_every=10_000)
  _meanflow(c)
  c.sampler.update(name='euler', steps=1)  # the flow map is its own sampler: steps = NFE
  c.eval.update(num_samples=10_000, sample_batch=1000, metrics=())
  conditional = []  # applied after the other tokens, to whichever method they chose
  edits = {
      'meanflow': _meanflow,
      'scm': _scm,
      'shortcut': _shortcut,
      'cond': lambda c: conditional.append(True),
      'fid': common.setter(**{'eval.metrics': ('fid',)}),
  }
  c = common.apply_variant(c, arg, edits, 'flow_maps cifar10', smoke_edit=_smoke)
  if conditional:
    _cond(c)
  return c
