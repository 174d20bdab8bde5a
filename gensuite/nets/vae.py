"""Encoders and decoders for VAEs: an MLP pair for vectors, a small conv pair for images.

  encoder, decoder = build_vae_nets(config.net, data_shape=(8, 8, 1), latent_dim=8,
                                    out_channels=1)
  mu, log_var = encoder.apply({'params': pe}, x)          # x [B, *data_shape]
  out = decoder.apply({'params': pd}, z)                  # [B, *data_shape[:-1], out_channels]

`out_channels` is the number of decoder outputs per data channel times the data
channels (the likelihood decides: 1 for a mean or logits, 2 for a mean and a
per-pixel log-scale). Names: 'vae_mlp' (any data shape, flattened) and 'vae_conv'
(images [H, W, C] whose sides are divisible by 2**len(channels)). The conv pair
halves the resolution with each stride-2 3x3 conv: 8x8 -> 4x4 -> 2x2 for digits
with channels=(32, 64), and 28x28 -> 14x14 -> 7x7 for mnist.

These nets do not take a time or a label, so they live in their own small table
(VAE_NETS) beside gensuite.nets.NETS, whose networks all share the signature
(x, t, label, train).
"""
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gensuite.errors import ConfigError, lookup
from gensuite.nets.embeddings import get_activation


class MLPEncoder(nn.Module):
  """x [B, ...] -> (mu, log_var), each [B, latent_dim]."""
  latent_dim: int
  hidden: int = 256
  depth: int = 2
  activation: str = 'silu'

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    act = get_activation(self.activation)
    h = x.reshape(x.shape[0], -1)
    for i in range(self.depth):
      h = act(nn.Dense(self.hidden, name=f'dense_{i}')(h))
    out = nn.Dense(2 * self.latent_dim, name='out')(h)
    mu, log_var = jnp.split(out, 2, axis=-1)
    return mu, log_var


class MLPDecoder(nn.Module):
  """z [B, latent_dim] -> [B, *data_shape[:-1], out_channels]."""
  data_shape: tuple[int, ...]
  out_channels: int
  hidden: int = 256
  depth: int = 2
  activation: str = 'silu'

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    h = z
    for i in range(self.depth):
      h = act(nn.Dense(self.hidden, name=f'dense_{i}')(h))
    shape = tuple(self.data_shape[:-1]) + (self.out_channels,)
    out = nn.Dense(math.prod(shape), name='out')(h)
    return out.reshape((z.shape[0],) + shape)


class ConvEncoder(nn.Module):
  """Images [B, H, W, C] -> (mu, log_var) by stride-2 convs, then two dense layers."""
  latent_dim: int
  channels: tuple[int, ...] = (32, 64)
  hidden: int = 256
  activation: str = 'silu'

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    act = get_activation(self.activation)
    h = x
    for i, ch in enumerate(self.channels):
      h = act(nn.Conv(ch, (3, 3), strides=(2, 2), padding='SAME', name=f'conv_{i}')(h))
    h = act(nn.Dense(self.hidden, name='dense')(h.reshape(h.shape[0], -1)))
    mu, log_var = jnp.split(nn.Dense(2 * self.latent_dim, name='out')(h), 2, axis=-1)
    return mu, log_var


class ConvDecoder(nn.Module):
  """z -> dense -> [H / 2^n, W / 2^n, channels[-1]] -> stride-2 transposed convs."""
  data_shape: tuple[int, ...]
  out_channels: int
  channels: tuple[int, ...] = (32, 64)
  hidden: int = 256
  activation: str = 'silu'

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    act = get_activation(self.activation)
    f = 2**len(self.channels)
    h0, w0 = self.data_shape[0] // f, self.data_shape[1] // f
    top = self.channels[-1]
    h = act(nn.Dense(self.hidden, name='dense')(z))
    h = act(nn.Dense(h0 * w0 * top, name='project')(h)).reshape(z.shape[0], h0, w0, top)
    for i, ch in enumerate(reversed(self.channels)):
      h = act(nn.ConvTranspose(ch, (3, 3), strides=(2, 2), padding='SAME',
                               name=f'deconv_{i}')(h))
    return nn.Conv(self.out_channels, (3, 3), padding='SAME', name='out')(h)


# name -> (encoder class, decoder class)
VAE_NETS = {'vae_mlp': (MLPEncoder, MLPDecoder), 'vae_conv': (ConvEncoder, ConvDecoder)}
_SHARED = ('latent_dim', 'data_shape', 'out_channels', 'parent', 'name')


def allowed_fields(name: str) -> tuple[str, ...]:
  enc, dec = lookup('vae net', name, VAE_NETS)
  fields = [f.name for f in dataclasses.fields(enc)] + [f.name for f in dataclasses.fields(dec)]
  return tuple(dict.fromkeys(f for f in fields if f not in _SHARED))


def _plain(value: Any) -> Any:
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def build_vae_nets(net_config, *, data_shape: tuple, latent_dim: int,
                   out_channels: int) -> tuple[nn.Module, nn.Module]:
  """(encoder, decoder) named by net_config.name ('vae_mlp' or 'vae_conv').

  Raises:
    ConfigError: unknown name or field, or data the net cannot take.
  """
  fields = dict(net_config.items()) if hasattr(net_config, 'items') else dict(net_config)
  name = fields.pop('name', None)
  if not isinstance(name, str) or name not in VAE_NETS:
    raise ConfigError(f'unknown vae net name {name!r}; allowed: {", ".join(sorted(VAE_NETS))}')
  unknown = sorted(set(fields) - set(allowed_fields(name)))
  if unknown:
    raise ConfigError(f'net {name!r} has no field(s) {", ".join(unknown)}; allowed: '
                      f'{", ".join(allowed_fields(name))}')
  shape = tuple(int(d) for d in data_shape)
  kwargs = {k: _plain(v) for k, v in fields.items()}
  if name == 'vae_conv':
    channels = tuple(kwargs.get('channels', (32, 64)))
    f = 2**len(channels)
    if len(shape) != 3 or shape[0] % f or shape[1] % f or not channels:
      raise ConfigError(f"net 'vae_conv' with channels={channels} needs images [H, W, C] "
                        f'with H and W divisible by {f}; the data has shape {shape}; use '
                        "fewer channels or net.name='vae_mlp'")
  enc_cls, dec_cls = VAE_NETS[name]
  enc_fields = {f.name for f in dataclasses.fields(enc_cls)}
  dec_fields = {f.name for f in dataclasses.fields(dec_cls)}
  encoder = enc_cls(latent_dim=int(latent_dim),
                    **{k: v for k, v in kwargs.items() if k in enc_fields})
  decoder = dec_cls(data_shape=shape, out_channels=int(out_channels),
                    **{k: v for k, v in kwargs.items() if k in dec_fields})
  return encoder, decoder
