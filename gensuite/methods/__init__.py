"""Methods: one module per family, each exposing a class with the same interface.

  method = gensuite.methods.build(config, data_spec)
  state = method.init(rng, batch)                           # TrainState
  state, metrics = method.train_step(state, batch, rng)     # pure; the loop jits it
  x = method.sample(state, rng, num, sampler='heun', steps=50)

All three are pure functions of their arguments and know nothing about devices.
The whole interface, and what the families share (optimizer/EMA construction, the
one-network train step, sampling through a field), is in gensuite/methods/base.py.
"""
import importlib

from gensuite.errors import lookup

# name -> 'module:Class', imported on use so one family's imports never slow another's.
METHODS = {
    'flow_matching': 'gensuite.methods.flow_matching:FlowMatching',
    'distill': 'gensuite.methods.distill:Distill',
    'diffusion': 'gensuite.methods.diffusion:Diffusion',
    'ebm': 'gensuite.methods.ebm:EBM',
    'vae': 'gensuite.methods.vae:VAE',
    'meanflow': 'gensuite.methods.flow_maps:MeanFlow',
    'scm': 'gensuite.methods.flow_maps:SCM',
    'shortcut': 'gensuite.methods.flow_maps:Shortcut',
}
# The families whose configs live together in configs/flow_maps/.
FLOW_MAPS = ('meanflow', 'scm', 'shortcut')


def get_class(name: str):
  module, cls = lookup('method', name, METHODS).split(':')
  return getattr(importlib.import_module(module), cls)


def build(config, data_spec, load_run=None) -> 'gensuite.methods.base.Method':
  """The method config.method.name; load_run(workdir) loads other runs (teachers)."""
  return get_class(config.method.name)(config, data_spec, load_run=load_run)
