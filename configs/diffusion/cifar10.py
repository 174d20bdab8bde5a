"""Diffusion on CIFAR-10 at paper scale, for accelerators (not run in tests).

  gensuite train --config=configs/diffusion/cifar10.py --workdir=runs/edm_cifar10
  gensuite train --config=configs/diffusion/cifar10.py:vp --workdir=runs/vp_cifar10
  gensuite train --config=configs/diffusion/cifar10.py:edm,cond --workdir=runs/edm_cifar10_cond
  gensuite train --config=configs/diffusion/cifar10.py:dit --workdir=runs/edm_cifar10_dit \
                 --config.train.precision=bfloat16 --config.mesh.fsdp=8

Needs CIFAR-10 prepared for tensorflow-datasets in the data dir (`tfds build cifar10`
on a machine with network access, then point $TFDS_DATA_DIR or --config.data.data_dir
at it); nothing is downloaded here.

Network: gensuite's DDPM++-style U-Net with channels 128, channel_mult (1, 2, 2, 2),
2 residual blocks per level and attention at 16x16 (38.3M parameters, the size of
Ho et al.'s CIFAR-10 model).
Variants (comma-separated tokens):
  edm (default)  Karras et al.'s CIFAR-10 recipe: batch 512, Adam lr 1e-3 with a 10 Mimg
                 linear ramp-up (20k steps at batch 512), no grad clipping, dropout
                 0.13, EMA half-life 0.5 Mimg (decay 0.9993 per step at batch 512),
                 200 Mimg (390k steps); Heun with N = 18 (35 NFE). EDM's x-flip /
                 non-leaky augmentation is not implemented.
  vp             score_sde's DDPM++ (VP) recipe: batch 128, Adam lr 2e-4, 5000 warmup
                 steps, grad clip 1, EMA 0.9999, dropout 0.1, 1.3M steps; sampled
                 with Euler-Maruyama on 1000 levels.
  cond           class-conditional with 10% label dropout (classifier-free guidance).
  dit            the transformer backbone instead of the U-Net: DiT-B/2 (gensuite.nets.DiT,
                 2x2 patches of the 32x32 image = 256 tokens, hidden 768, 12 blocks, 12
                 heads; 130M parameters), with DiT's optimizer settings (Peebles & Xie:
                 Adam lr 1e-4, no dropout) in place of the recipe's lr and dropout;
                 applied after the other tokens, whatever their order. The rest of the
                 chosen recipe (batch, warm-up, EMA, steps, sampler) is kept; not tuned.
  fid            standard FID of 10k samples at every eval (against EDM's published
                 train-set statistics, or the reference images' own); needs the FID
                 Inception-v3 weights as a file, e.g.
                   --config.eval.inception_weights=pt_inception-2015-12-05-6726825d.pth
                   --config.eval.fid_stats=cifar10-32x32.npz
                 Papers report FID over 50k samples:
                   gensuite eval --workdir=DIR --metrics=fid --num=50000
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

TOKENS = ('edm', 'vp', 'cond', 'dit', 'fid')
# DiT-B/2 (Peebles & Xie, arXiv 2212.09748, table 1) at 32x32: patch 2, width 768, 12
# blocks of 12 heads; their lr (Adam 1e-4, constant) and no dropout.
DIT_B2 = dict(name='dit', patch_size=2, hidden=768, depth=12, num_heads=12, dropout=0.0)
DIT_LR = 1e-4


def _vp(c: ml_collections.ConfigDict) -> None:
  c.method.formulation = 'vp'
  c.net.dropout = 0.1
  c.optim.lr, c.optim.warmup_steps, c.optim.grad_clip = 2e-4, 5000, 1.0
  c.optim.ema_decays = (0.9999,)
  c.train.batch_size, c.train.num_steps = 128, 1_300_000
  c.train.eval_every = c.train.ckpt_every = 50_000
  c.sampler.name, c.sampler.steps = 'euler_maruyama', 1000


def _dit(c: ml_collections.ConfigDict) -> None:
  c.net = ml_collections.ConfigDict(DIT_B2)
  c.optim.lr = DIT_LR


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'cifar10'
  c.net = ml_collections.ConfigDict(dict(
      name='unet', channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
      attn_resolutions=(16,), dropout=0.13))
  c.method = common.method('diffusion')
  c.optim.update(name='adam', lr=1e-3, schedule='constant', warmup_steps=20_000, grad_clip=0.0)
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
  c.optim.ema_decays = (0.9993,)
  c.train.update(num_steps=390_000, batch_size=512, log_every=100, eval_every=10_000,
                 ckpt_every=10_000)
  c.sampler.update(name='heun', steps=18)
  c.eval.update(num_samples=10_000, sample_batch=1000, metrics=())
  # No smoke variant: paper scale only (tests use configs/diffusion/digits.py:smoke).
  edits = {
      'edm': common.setter(**{'method.formulation': 'edm'}),
      'vp': _vp,
      'cond': common.setter(**{'method.class_conditional': True,
                               'method.label_dropout': 0.1}),
      'dit': lambda c: backbone.append(_dit),
      'fid': common.setter(**{'eval.metrics': ('fid',)}),
  }
  backbone = []  # applied after the other tokens: vp's lr and dropout are the U-Net's
  c = common.apply_variant(c, arg, edits, 'diffusion cifar10')
  for edit in backbone:
    edit(c)
  return c
