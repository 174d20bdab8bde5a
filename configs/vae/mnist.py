"""A VAE on MNIST (28x28x1) for users who have prepared it with tfds.

  tfds build mnist   # once, where the data can be downloaded (or set $TFDS_DATA_DIR)
  gensuite train --config=configs/vae/mnist.py --workdir=runs/vae_mnist
  gensuite train --config=configs/vae/mnist.py:gaussian,balanced --workdir=runs/vae_mnist_bal

Default: binarised pixels (Bernoulli decoder, the usual MNIST NLL benchmark), a conv
encoder/decoder (28 -> 14 -> 7), 16 latents, IWAE NLL with K = 1000 on 1000 test
images at the end of training.

Variant tokens (comma-separated):
  likelihood: bernoulli (default), gaussian, logistic (discretised, 256 levels)
  variance (gaussian): balanced, learned, pixel, fixed
  beta<x>, warmup, smoke (a few steps of a tiny net, for tests)
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

VARIANCE = {'learned': 'learned_scalar', 'pixel': 'learned_pixel', 'fixed': 'fixed',
            'balanced': 'balanced'}
LIKELIHOOD = ('bernoulli', 'gaussian', 'logistic')
OTHER = ('beta<x>', 'warmup', 'smoke')


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=4, batch_size=8, log_every=2, eval_every=4, ckpt_every=4,
               sampler_steps=None, eval_samples=8, net=dict(channels=(4, 8), hidden=32))
  c.method.latent_dim = 4
  c.method.iwae_k, c.method.iwae_chunk = (1, 4), 4
  c.method.eval_examples, c.method.eval_batch = 8, 8


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'mnist'
  c.net = ml_collections.ConfigDict(dict(name='vae_conv', channels=(32, 64), hidden=512,
                                         activation='silu'))
  c.method = common.method('vae', latent_dim=16, likelihood='bernoulli',
                           iwae_k=(1, 64, 1000), eval_examples=1000, eval_split='test')
  c.optim.update(lr=1e-3, schedule='cosine', warmup_steps=500, final_lr_fraction=0.05,
                 ema_decays=())  # no EMA: the NLL is reported for the trained params
  c.train.update(num_steps=30000, batch_size=128, log_every=500, eval_every=30000,
                 ckpt_every=5000)
  c.eval.update(num_samples=1000, metrics=('mmd', 'sliced_wasserstein', 'energy_distance'))
  shared, patterns = common.vae_edits()
  edits = {
      # A variance token implies the Gaussian decoder it is the variance of.
      **{k: common.setter(**{'method.likelihood': 'gaussian', 'method.variance': v})
         for k, v in VARIANCE.items()},
      **{k: common.setter(**{'method.likelihood': k}) for k in LIKELIHOOD},
      **shared,
  }
  return common.apply_variant(c, arg, edits, 'vae mnist', smoke_edit=_smoke,
                              patterns=patterns)
