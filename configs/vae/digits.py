"""A VAE on scikit-learn's 8x8 digits (offline) with a small conv encoder and decoder.

  gensuite train --config=configs/vae/digits.py --workdir=runs/vae_digits
  gensuite train --config=configs/vae/digits.py:learned --workdir=runs/vae_digits_learned

Evaluation (every eval) on the 297 test digits: one-sample ELBO and its parts, IWAE
bounds for K = 1, 64, 1000 (NLL = -L_1000 in nats and bits/dim), active latent units,
reconstructions and prior samples.

Variant tokens (comma-separated):
  variance:   balanced (default; Asperti & Trentin), learned (one learned decoder
              std, Dai & Wipf), pixel (a std per pixel), fixed (std 0.1)
  likelihood: bernoulli (binarised pixels), logistic (discretised logistic, 17 levels)
  beta<x>:    KL weight x, e.g. beta2; warmup: KL warm-up over 20% of steps
  mlp:        MLP encoder/decoder instead of the conv pair
  smoke:      a few steps of a tiny net, for tests
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

VARIANCE = {'learned': 'learned_scalar', 'pixel': 'learned_pixel', 'fixed': 'fixed',
            'balanced': 'balanced'}
LIKELIHOOD = ('bernoulli', 'logistic')
OTHER = ('beta<x>', 'warmup', 'mlp', 'smoke')


def _smoke(c: ml_collections.ConfigDict) -> None:
  net = dict(channels=(8, 16), hidden=32) if c.net.name == 'vae_conv' else dict(hidden=32)
  common.smoke(c, num_steps=6, batch_size=16, log_every=2, eval_every=6, ckpt_every=3,
               sampler_steps=None, eval_samples=16, net=net)
  c.method.iwae_k, c.method.iwae_chunk = (1, 8), 4
  c.method.eval_examples, c.method.eval_batch = 16, 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'digits'
  c.net = ml_collections.ConfigDict(dict(name='vae_conv', channels=(32, 64), hidden=256,
                                         activation='silu'))
  c.method = common.method('vae', variance='balanced', num_bins=17, iwae_k=(1, 64, 1000),
                           iwae_chunk=200, eval_examples=297, eval_batch=297,
                           eval_split='test')
  c.optim.update(lr=1e-3, schedule='cosine', warmup_steps=100, final_lr_fraction=0.05,
                 ema_decays=())  # no EMA: the NLL is reported for the trained params
  c.train.update(num_steps=4000, batch_size=128, log_every=200, eval_every=2000, ckpt_every=2000)
  c.eval.update(num_samples=500, metrics=('mmd', 'sliced_wasserstein', 'energy_distance'))
  shared, patterns = common.vae_edits()
  edits = {
      **{k: common.setter(**{'method.variance': v}) for k, v in VARIANCE.items()},
      **{k: common.setter(**{'method.likelihood': k}) for k in LIKELIHOOD},
      'mlp': common.setter(net=ml_collections.ConfigDict(dict(
          name='vae_mlp', hidden=256, depth=2, activation='silu'))),
      **shared,
  }
  return common.apply_variant(c, arg, edits, 'vae digits', smoke_edit=_smoke,
                              patterns=patterns)
