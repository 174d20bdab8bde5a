"""Jarzynski EBM with a conv energy on MNIST (28x28x1, in [-1, 1]) for users who have it.

  tfds build mnist   # once, where the data can be downloaded (or set $TFDS_DATA_DIR)
  gensuite train --config=configs/ebm/mnist.py --workdir=runs/ebm_mnist
  gensuite train --config=configs/ebm/mnist.py:pcd --workdir=runs/ebm_mnist_pcd
  gensuite eval --workdir=runs/ebm_mnist --config.eval.ais_temps=2000   # + an AIS log Z

The digits recipe (configs/ebm/digits.py and experiments/results/ebm_digits.md: data
noise 0.1 with Tweedie-denoised samples, a flattened last feature map, Adam with betas
(0.9, 0.999) and a cosine decay to a tenth, gradient clipping 1, an E[U^2] regulariser,
5 ULA steps of h = 3e-3 with exact Jarzynski weights per update, resampling below
ESS/N = 0.3) on a three-stage conv energy (28 -> 14 -> 7), with the log Z estimated from
a separate population of walkers that never enters the gradient, moves by MALA and
follows the parameters' EMA (method.log_z_walkers, log_z_move, log_z_ema; see
experiments/results/ebm_log_z.md): log Z is the EMA energy's. It has not been run on
MNIST here (no network access for the data); the digits runs are where the recipe is
measured.

Variant tokens (comma-separated): jarzynski (default), pcd, cd, ula_unweighted;
systematic / multinomial; smoke (tiny, for tests with tfds mock data).
"""
import ml_collections

from configs import common
from configs.ebm import digits
from gensuite import config as config_lib


def _smoke(c: ml_collections.ConfigDict) -> None:
  common.smoke(c, num_steps=4, batch_size=8, log_every=2, eval_every=4, ckpt_every=2,
               sampler_steps=2, eval_samples=8, net=dict(channels=(4, 8)))
  c.method.num_walkers, c.method.ula_steps, c.method.cd_steps = 16, 2, 2
  c.method.log_z_walkers = 8
  c.eval.metrics = ('mmd',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.name = 'mnist'
  c.net = ml_collections.ConfigDict(dict(name='energy_conv', channels=(32, 64, 128),
                                         activation='silu', prior_std=1.0, pool='flatten'))
  digits.recipe(c)
  c.train.update(num_steps=20000, batch_size=128, log_every=200, eval_every=2000,
                 ckpt_every=2000)
  c.sampler = ml_collections.ConfigDict(dict(name='ula', steps=200, step_size=3e-3))
  c.eval.update(num_samples=1000, metrics=('mmd', 'sliced_wasserstein'), use_ema=False)
  edits = {
      **{e: common.setter(**{'method.estimator': e}) for e in digits.ESTIMATORS},
      **{r: common.setter(**{'method.resampler': r}) for r in digits.RESAMPLERS},
  }
  return common.apply_variant(c, arg, edits, 'ebm mnist', smoke_edit=_smoke)
