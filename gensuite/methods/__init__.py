"""Methods: one module per family, each exposing a class with the same interface.

  method = gensuite.methods.build(config, data_spec)
  state = method.init(rng, batch)                           # TrainState
  state, metrics = method.train_step(state, batch, rng)     # pure; the loop jits it
  x = method.sample(state, rng, num, sampler='heun', steps=50)

All three are pure functions of their arguments and know nothing about devices.
"""
import importlib
from typing import Any, Protocol

import jax

from gensuite.errors import lookup

# name -> 'module:Class', imported on use so one family's imports never slow another's.
METHODS = {
    'flow_matching': 'gensuite.methods.flow_matching:FlowMatching',
    'distill': 'gensuite.methods.distill:Distill',
    'diffusion': 'gensuite.methods.diffusion:Diffusion',
    'ebm': 'gensuite.methods.ebm:EBM',
    'vae': 'gensuite.methods.vae:VAE',
}


class Method(Protocol):

  def init(self, rng: jax.Array, batch: dict) -> Any:
    ...

  def train_step(self, state: Any, batch: dict, rng: jax.Array) -> tuple[Any, dict]:
    ...

  def sample(self, state: Any, rng: jax.Array, num: int, **sampler_kw) -> jax.Array:
    ...

  # Optional: extra eval scalars and pictures, called by the loop at every eval with
  # the host-side data object:
  #   def evaluate(self, state, rng, data, workdir=None)
  #       -> tuple[dict[str, float], dict[str, np.ndarray (H, W, C) uint8 image]]


def get_class(name: str):
  module, cls = lookup('method', name, METHODS).split(':')
  return getattr(importlib.import_module(module), cls)


def build(config, data_spec) -> Method:
  return get_class(config.method.name)(config, data_spec)
