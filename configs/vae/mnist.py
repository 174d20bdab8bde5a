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

from gensuite import config as config_lib

VARIANCE = {'learned': 'learned_scalar', 'pixel': 'learned_pixel', 'fixed': 'fixed',
            'balanced': 'balanced'}
LIKELIHOOD = ('bernoulli', 'gaussian', 'logistic')
OTHER = ('beta<x>', 'warmup', 'smoke')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'mnist'
  c.net = ml_collections.ConfigDict(dict(name='vae_conv', channels=(32, 64), hidden=512,
                                         activation='silu'))
  c.method = ml_collections.ConfigDict(dict(
      name='vae', latent_dim=16, likelihood='bernoulli', variance='learned_scalar',
      fixed_sigma=0.1, beta=1.0, kl_warmup_steps=0, balance_decay=0.99,
      balance_init_mse=1.0, num_bins=256, iwae_k=(1, 64, 1000), iwae_chunk=100,
      eval_examples=1000, eval_batch=100, eval_split='test'))
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'
  c.optim.warmup_steps = 500
  c.optim.final_lr_fraction = 0.05
  c.optim.ema_decays = ()  # the NLL is reported for the trained params themselves
  c.train.num_steps = 30000
  c.train.batch_size = 128
  c.train.log_every = 500
  c.train.eval_every = 30000
  c.train.ckpt_every = 5000
  c.eval.num_samples = 1000
  c.eval.metrics = ('mmd', 'sliced_wasserstein', 'energy_distance')
  for token in filter(None, (arg or '').split(',')):
    if token in VARIANCE:
      c.method.likelihood = 'gaussian'
      c.method.variance = VARIANCE[token]
    elif token in LIKELIHOOD:
      c.method.likelihood = token
    elif token.startswith('beta') and _is_float(token[4:]):
      c.method.beta = float(token[4:])
    elif token == 'warmup':
      c.method.kl_warmup_steps = c.train.num_steps // 5
    elif token == 'smoke':
      c.net.channels, c.net.hidden = (4, 8), 32
      c.method.latent_dim = 4
      c.train.num_steps, c.train.batch_size = 4, 8
      c.train.log_every, c.train.eval_every, c.train.ckpt_every = 2, 4, 4
      c.optim.warmup_steps = 0
      c.method.iwae_k, c.method.iwae_chunk = (1, 4), 4
      c.method.eval_examples, c.method.eval_batch = 8, 8
      c.eval.num_samples = 8
    else:
      allowed = ', '.join(tuple(VARIANCE) + LIKELIHOOD + OTHER)
      raise ValueError(f'unknown vae mnist variant {token!r}; allowed tokens: {allowed}')
  return c


def _is_float(s: str) -> bool:
  try:
    float(s)
  except ValueError:
    return False
  return True
