"""Few-step generators trained from scratch on 2-D Gaussian mixtures (flow maps).

  gensuite train --config=configs/flow_maps/toy2d.py --workdir=runs/meanflow_toy
  gensuite train --config=configs/flow_maps/toy2d.py:scm,8gaussians --workdir=runs/scm
  gensuite sample --workdir=runs/meanflow_toy --steps=2 --num=2000 --out=x.npz

The variant is a comma-separated list of tokens, in any order:
  method: meanflow (default), scm (sCT), scd (sCM distilled from the data's exact
          denoiser, config.teacher.analytic='data'; a trained run instead:
          --config.teacher.analytic= --config.teacher.workdir=DIR), shortcut
  data:   unequal8 (default: 8 modes on a circle of radius 2, std 0.15, weights
          0.04 .. 0.25, as configs/distill/toy2d.py), 8gaussians, grid
  smoke:  a few steps of a tiny net, for tests

Each method keeps its family defaults (gensuite.methods.defaults) except where the
toy data need otherwise: sCM's sigma_data is the data's per-coordinate std (about 1.4
on the rings; 1 here), its tangent warm-up a tenth of training and its net's time
embedding slower (time_scale 10: the tangent differentiates the net in t); shortcut
targets are not clipped (the velocities of data at radius 2 exceed 4). The samples
are evaluated at config.sampler.steps network calls (1; `gensuite eval
--config.sampler.steps=2` for two) with the mixture metrics (on_mode, mode_mass_tv,
modes_covered) beside MMD and the exact NLL.
"""
import ml_collections

from configs import common
from configs.distill.toy2d import unequal8_params
from gensuite import config as config_lib

METHODS = ('meanflow', 'scm', 'shortcut')
# What the toy data change in each method's defaults (see the module docstring).
TOY_METHOD = {
    'meanflow': dict(),
    'scm': dict(sigma_data=1.0, tangent_warmup=1000),
    'shortcut': dict(target_clip=0.0),
}
TOY_NET = {'scm': dict(time_scale=10.0)}


def _use(name):
  def edit(c):
    c.method = common.method(name, **TOY_METHOD[name])
    c.net = _net(**TOY_NET.get(name, {}))
  return edit


def _net(**overrides):
  return ml_collections.ConfigDict(dict(name='mlp', hidden=256, depth=4, emb_dim=64,
                                        **overrides))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_lib.base()
  c.data.update(name='gaussian_mixture', params=unequal8_params())
  c.net = _net()
  c.method = common.method('meanflow', **TOY_METHOD['meanflow'])
  # sCD's teacher (gensuite.methods.teachers): set by the scd token.
  c.teacher = ml_collections.ConfigDict(dict(analytic='', workdir='', params={}))
  c.optim.update(lr=1e-3, schedule='cosine', warmup_steps=200, final_lr_fraction=0.05,
                 ema_decays=(0.999,))
  c.train.update(num_steps=10000, batch_size=1024, log_every=250, eval_every=5000,
                 ckpt_every=5000)
  c.sampler.update(name='euler', steps=1)  # the flow map is its own sampler: steps = NFE
  c.eval.num_samples = 4000
  c.eval.metrics = ('mmd', 'nll', 'on_mode', 'mode_mass_tv', 'modes_covered')
  edits = {
      **{m: _use(m) for m in METHODS},
      'scd': lambda c: (_use('scm')(c), common.setter(**{
          'method.training': 'scd', 'teacher.analytic': 'data'})(c)),
      'unequal8': common.setter(**{'data.name': 'gaussian_mixture',
                                   'data.params': unequal8_params()}),
      '8gaussians': common.setter(**{'data.name': '8gaussians', 'data.params': {}}),
      'grid': common.setter(**{'data.name': 'grid', 'data.params': {}}),
  }

  def smoke(c):
    common.smoke(c, sampler_steps=None, net=dict(hidden=32, depth=2, emb_dim=16))
    if c.method.name == 'scm':
      c.method.tangent_warmup = 10
  return common.apply_variant(c, arg, edits, 'flow_maps toy2d', smoke_edit=smoke)
