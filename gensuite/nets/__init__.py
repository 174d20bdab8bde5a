"""Networks by name, built from the `net` section of a config.

  config.net = ml_collections.ConfigDict(dict(name='unet', channels=64,
                                              channel_mult=(1, 2)))
  net = gensuite.nets.build(config.net, data_shape=(8, 8, 1), out_dim_or_channels=1,
                            num_classes=None)
  params = net.init({'params': rng, 'dropout': rng}, x, t)['params']
  out = net.apply({'params': params}, x, t, label=None, train=False)

Every net has the call signature (x [B, ...], t [B] or scalar, label=None [B] int,
train=False). Networks take explicit typed fields, never the whole config: `build`
passes each field of net_config except `name` as a keyword argument, and the output
size and class count come from the data, not from the net section.

Precision (config.train.precision): the experiment builds its method inside
`with gensuite.nets.precision('bfloat16'):`, and every net `build` makes there
computes in bfloat16 (its `dtype` field; parameters stay float32 and outputs come
back as float32, so methods, losses and samplers never see another dtype). A net
without a `dtype` field (the energy nets) is refused there with one line.
"""
import contextlib
import contextvars
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gensuite.errors import ConfigError, lookup
from gensuite.nets.dit import DiT
from gensuite.nets.embeddings import sinusoidal_embedding
from gensuite.nets.energy import EnergyConv, EnergyMLP, GMMEnergy
from gensuite.nets.mlp import TimeMLP
from gensuite.nets.unet import UNet

__all__ = ['NETS', 'PRECISIONS', 'DiT', 'TimeMLP', 'UNet', 'allowed_fields', 'build',
           'param_count', 'precision', 'sinusoidal_embedding']

NETS = {'mlp': TimeMLP, 'unet': UNet, 'dit': DiT}

# Per net: the field that receives out_dim_or_channels, and the data rank it accepts.
_OUT_FIELD = {'mlp': 'out_dim', 'unet': 'out_channels', 'dit': 'out_channels'}
_DATA_RANK = {'mlp': 1, 'unet': 3, 'dit': 3}
_DATA_KIND = {1: 'vector data [D]', 3: 'image data [H, W, C]'}
_SUGGEST = {1: 'mlp', 3: 'unet'}
# Energy nets U(x) -> [B] (gensuite.nets.energy); the out field is the data's last axis.
NETS.update({'energy_mlp': EnergyMLP, 'energy_conv': EnergyConv, 'gmm_energy': GMMEnergy})
_OUT_FIELD.update({'energy_mlp': 'data_dim', 'energy_conv': 'data_dim', 'gmm_energy': 'data_dim'})
_ENERGY_NETS = ('energy_mlp', 'energy_conv', 'gmm_energy')
_SUGGEST_ENERGY = {1: 'energy_mlp', 3: 'energy_conv'}
_DATA_RANK.update({'energy_mlp': 1, 'energy_conv': 3, 'gmm_energy': 1})
# Set by build (from the data, or the precision), never from the net section.
_RESERVED = ('parent', 'name', 'num_classes', 'dtype')
# config.train.precision -> the compute dtype of the nets `build` makes.
PRECISIONS = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_PRECISION = contextvars.ContextVar('gensuite_net_precision', default='float32')


@contextlib.contextmanager
def precision(name: str):
  """Nets built inside compute in PRECISIONS[name] (ConfigError for another name)."""
  lookup('train.precision', name, PRECISIONS)
  token = _PRECISION.set(name)
  try:
    yield
  finally:
    _PRECISION.reset(token)


def allowed_fields(name: str) -> tuple[str, ...]:
  """The net_config fields (besides `name`) that net `name` accepts."""
  cls = lookup('net', name, NETS)
  skip = set(_RESERVED) | {_OUT_FIELD[name]}
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)


def _plain(value: Any) -> Any:
  # Configs loaded back from JSON hold lists; flax attributes should be hashable.
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  return value


def build(net_config, *, data_shape: tuple, out_dim_or_channels: int,
          num_classes: int | None, data_name: str | None = None,
          second_time: bool = False) -> nn.Module:
  """The network named by net_config.name, for data of shape data_shape.

  Args:
    net_config: ConfigDict (or mapping) with `name` and that net's fields.
    data_shape: shape of one example: (D,) for mlp, (H, W, C) for unet.
    out_dim_or_channels: output features (mlp) or channels (unet).
    num_classes: classes for label conditioning, or None.
    data_name: only used to name the data in error messages.
    second_time: the caller conditions on a second time (flow maps): the net must
      take one (`supports_second_time`).

  Raises:
    ConfigError: unknown net name or field, or a net that cannot take this data.
  """
  fields = dict(net_config.items()) if hasattr(net_config, 'items') else dict(net_config)
  name = fields.pop('name', None)
  if not isinstance(name, str):
    raise ConfigError(f'net.name must be a string naming one of: {", ".join(sorted(NETS))}')
  cls = lookup('net', name, NETS)
  if second_time and not getattr(cls, 'supports_second_time', False):
    takes = sorted(n for n, c in NETS.items() if getattr(c, 'supports_second_time', False))
    raise ConfigError(f'net {name!r} takes no second time input, which this method needs '
                      f'(two times: t and t - r, or t and a step size); use one of: '
                      f'{", ".join(takes)}')
  allowed = allowed_fields(name)
  unknown = sorted(set(fields) - set(allowed))
  if unknown:
    raise ConfigError(f'net {name!r} has no field(s) {", ".join(unknown)}; allowed: '
                      f'{", ".join(allowed)}')
  for field, options in getattr(cls, 'field_choices', {}).items():
    if field in fields and fields[field] not in options:
      raise ConfigError(f'net.{field} must be one of {", ".join(options)} for net '
                        f'{name!r}, got {fields[field]!r}')
  shape = tuple(int(d) for d in data_shape)
  rank = _DATA_RANK[name]
  if len(shape) != rank:
    what = f'data {data_name!r}' if data_name else 'the data'
    suggest = _SUGGEST_ENERGY if name in _ENERGY_NETS else _SUGGEST
    hint = (f"; use net.name='{suggest[len(shape)]}'" if len(shape) in suggest else '')
    raise ConfigError(f'net {name!r} needs {_DATA_KIND[rank]}, but {what} has shape '
                      f'{shape}{hint}')
  kwargs = {k: _plain(v) for k, v in fields.items()}
  kwargs[_OUT_FIELD[name]] = int(out_dim_or_channels)
  kwargs['num_classes'] = int(num_classes) if num_classes else None
  compute = _PRECISION.get()
  if compute != 'float32':
    if 'dtype' not in {f.name for f in dataclasses.fields(cls)}:
      takes = sorted(n for n, c in NETS.items()
                     if 'dtype' in {f.name for f in dataclasses.fields(c)})
      raise ConfigError(f"config.train.precision={compute!r} needs a net that computes in "
                        f"it: one of {', '.join(takes)}; net {name!r} computes in float32 "
                        "only (use precision 'float32')")
    kwargs['dtype'] = PRECISIONS[compute]
  return cls(**kwargs)


def param_count(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
