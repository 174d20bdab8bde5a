"""Embeddings of a per-example scalar (flow time, noise level) and of class labels.

  e = sinusoidal_embedding(t, 128)                 # t [B] -> [B, 128], fixed features
  c = TimeEmbedding(features=256)(t)               # sinusoid -> MLP, learned
  c = c + LabelEmbedding(num_classes=10, features=256)(label)

Scaling. `sinusoidal_embedding` uses the Transformer frequencies w_k = max_period^(-k/K),
k = 0..K-1 (from 1 down to 1e-4), applied to `scale * t`. The default scale = 1000
makes inputs of either common kind embed well: flow time t in [0, 1] spans ~1000 rad
at the fastest frequency (so nearby times are distinguishable, as DDPM's t*1000
convention) and the slowest frequency still varies smoothly; log-sigma-like inputs
such as EDM's c_noise = ln(sigma)/4 in [-1.5, 1.2], or ln(sigma) in [-5, 5], give
phases within a few thousand rad at the top frequency and the low frequencies are
nearly linear in the input, so no range wraps around on every feature.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gensuite.errors import lookup


def sinusoidal_embedding(t: jax.Array, dim: int, scale: float = 1000.0,
                         max_period: float = 10000.0) -> jax.Array:
  """[B] -> [B, dim]: [sin(scale t w_k), cos(scale t w_k)] (odd dim: zero-padded)."""
  t = jnp.asarray(t, jnp.float32).reshape(-1)
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (scale * t)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimeEmbedding(nn.Module):
  """Sinusoidal features of t followed by a 2-layer MLP (DDPM/ADM style).

  The features are computed in float32; the MLP in `dtype` (params float32).
  """
  features: int
  sinusoid_dim: int | None = None  # default: features
  scale: float = 1000.0
  activation: str = 'silu'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    emb = sinusoidal_embedding(t, self.sinusoid_dim or self.features, self.scale)
    emb = nn.Dense(self.features, dtype=self.dtype, name='dense_0')(emb)
    emb = get_activation(self.activation)(emb)
    return nn.Dense(self.features, dtype=self.dtype, name='dense_1')(emb)


class LabelEmbedding(nn.Module):
  """Class index -> vector, with one extra row (index num_classes) as the null label.

  The null row is what classifier-free guidance trains with label dropout and
  evaluates for the unconditional branch; label=None also selects it.
  """
  num_classes: int
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, label: jax.Array | None, batch: int) -> jax.Array:
    if label is None:
      label = jnp.full((batch,), self.num_classes, jnp.int32)
    label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (batch,))
    # Normal(0.02) init: learned embeddings start small next to the time embedding.
    return nn.Embed(self.num_classes + 1, self.features,
                    embedding_init=nn.initializers.normal(0.02), dtype=self.dtype)(label)


ACTIVATIONS = {
    'silu': nn.silu,
    'swish': nn.silu,
    'relu': nn.relu,
    'gelu': nn.gelu,
    'elu': nn.elu,
    'selu': nn.selu,
    'tanh': jnp.tanh,
}


def get_activation(name: str):
  """Activation function by name; ConfigError lists the allowed names."""
  return lookup('activation', name, ACTIVATIONS)


def broadcast_time(t: jax.Array, batch: int) -> jax.Array:
  """Scalar or [B] time -> [B] float32 (samplers pass a scalar t)."""
  return jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (batch,))
