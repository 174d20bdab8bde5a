"""Flow matching in the latent space of a trained digits VAE (Dao et al., latent FM).

  gensuite train --config=configs/vae/digits.py --workdir=runs/vae_digits
  gensuite train --config=configs/flow_matching/latent_digits.py \\
      --config.data.vae_workdir=runs/vae_digits --workdir=runs/latent_fm_digits
  gensuite sample --workdir=runs/latent_fm_digits --num=64 --out=digits.npz  # images

The data are the VAE's posterior means of its 1500 training digits, standardised per
dimension (gensuite/data/latents.py); an MLP velocity field is trained with the
linear path, samples are integrated with Heun in latent space and decoded by the
VAE's decoder, so eval metrics and pictures compare decoded images with real digits.

Variant tokens (comma-separated): sample (train on z = mu + sigma * eps instead of mu),
ot (minibatch OT coupling), cond (class-conditional, 10% label dropout), smoke (tiny).
"""
import ml_collections

from configs import common
from gensuite import config as config_lib

TOKENS = ('sample', 'ot', 'cond', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data = ml_collections.ConfigDict(dict(
      name='latents', vae_workdir='runs/vae_digits', latents='mean', standardize=True,
      use_ema=True, num_examples=10000, params={}, split='train', data_dir=''))
  c.net = ml_collections.ConfigDict(dict(name='mlp', hidden=256, depth=3, emb_dim=64))
  c.method = common.method('flow_matching')
  c.optim.update(lr=2e-3, schedule='cosine', warmup_steps=100, final_lr_fraction=0.05,
                 ema_decays=(0.999,))
  c.train.update(num_steps=4000, batch_size=256, log_every=200, eval_every=2000, ckpt_every=2000)
  c.sampler.update(name='heun', steps=20)
  c.eval.update(num_samples=500, metrics=('mmd', 'sliced_wasserstein', 'energy_distance'))
  edits = {
      'sample': common.setter(**{'data.latents': 'sample'}),
      'ot': common.setter(**{'method.coupling': 'ot'}),
      'cond': common.setter(**{'method.class_conditional': True,
                               'method.label_dropout': 0.1}),
  }
  return common.apply_variant(
      c, arg, edits, 'latent_digits',
      smoke_edit=lambda c: common.smoke(
          c, num_steps=8, batch_size=32, log_every=4, eval_every=8, ckpt_every=4,
          sampler_steps=4, eval_samples=32, net=dict(hidden=32, depth=2, emb_dim=16)))
