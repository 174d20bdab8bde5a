"""A time- (and label-) conditioned MLP for vector data (2-D toy flows and the like).

  net = TimeMLP(out_dim=2, hidden=256, depth=3)   # conditioning='film' (default)
  net = TimeMLP(out_dim=2, hidden=256, depth=4, conditioning='concat')  # plain MLP on [x, t]
  params = net.init(rng, x, t)['params']          # x [B, d], t [B] (or a scalar)
  v = net.apply({'params': params}, x, t)          # [B, out_dim]
  v, h = net.apply({'params': params}, x, t, return_features=True)  # h [B, hidden]
  u = net.apply({'params': params}, x, t, second_time=h_t)  # flow maps: two times

Design: the condition c = TimeEmbedding(t) (+ LabelEmbedding(label)) modulates every
hidden layer by FiLM, h <- act(Dense(h) * (1 + scale(c)) + shift(c)). Feeding the
condition to each layer, not only to the input, matters for flow matching: the
velocity field changes shape with t (a near-linear map at t = 0, a sharp field at
t = 1), and a multiplicative gate lets one set of hidden units serve all times.
Hidden layers after the first are residual, so depth can grow without hurting
optimization at the small widths toy problems use.

conditioning='concat' is the plain network of the flow-matching literature
(torchcfm's MLP): the input is [x, t] (t itself, one feature; plus the second
time, and the label embedding when there are classes), followed by `depth`
Dense+act layers, no FiLM, no residuals, then the output layer. Parameters:
dense_0..dense_{depth-1} and out (and label_emb), no time_emb / film_*; dense_0
takes d + 1 inputs. It is cheaper per step (no embedding MLP, no FiLM matmuls) and
is what the peer comparison (experiments/compare_peers.py) runs against torchcfm.
'film' keeps its parameter tree and outputs exactly as before this field existed.

Second time: flow maps (gensuite.methods.flow_maps) condition on two times, e.g.
MeanFlow's (t, t - r) and a shortcut model's (t, step size). With second_time given,
it gets its own embedding (same recipe as t), summed into the condition vector; the
parameter tree then has `time2_emb` as well, so a net is initialised and applied
either always with it or always without.

Features: with return_features=True the call also returns the last hidden layer h
[B, hidden] (the input of the output layer), which a classifier head can read (the
distillation discriminator's "bottleneck" for vector data, gensuite.methods.distill).
The default output and the parameter tree are the same either way.

Precision: `dtype` is the compute dtype of every layer (bfloat16 under
config.train.precision='bfloat16', set by gensuite.nets.build); the parameters stay
float32 and the output (and the features) are returned in float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gensuite.nets.embeddings import (LabelEmbedding, TimeEmbedding, broadcast_time,
                                      get_activation)


class TimeMLP(nn.Module):
  """MLP v(x, t[, label]) -> [B, out_dim] with FiLM conditioning on each layer.

  Attributes:
    out_dim: output features.
    hidden: width of the hidden layers and of the condition vector.
    depth: number of hidden layers (>= 1).
    emb_dim: sinusoidal features of t before the embedding MLP.
    num_classes: if set, labels 0..num_classes-1 condition the output and index
      num_classes (or label=None) is the null label for classifier-free guidance.
    activation: 'silu', 'relu', 'gelu', 'elu', 'selu' or 'tanh'.
    time_scale: t is embedded as sin/cos(time_scale * t * w_k); see embeddings.py.
    dropout: dropout rate on hidden layers, active when train=True.
    dtype: compute dtype (params float32; output float32).
    conditioning: 'film' (the condition modulates every layer) or 'concat' ([x, t]
      at the input of a plain MLP); see the module docstring.
  """
  out_dim: int
  hidden: int = 256
  depth: int = 3
  emb_dim: int = 128
  num_classes: int | None = None
  activation: str = 'silu'
  time_scale: float = 1000.0
  dropout: float = 0.0
  dtype: Any = jnp.float32
  conditioning: str = 'film'
  # Calls accept return_features=True and second_time (see the module docstring).
  supports_features = True
  supports_second_time = True
  # String fields with a closed set of values (checked by gensuite.nets.build).
  field_choices = {'conditioning': ('film', 'concat')}

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None,
               train: bool = False, return_features: bool = False,
               second_time: jax.Array | None = None):
    act = get_activation(self.activation)
    batch = x.shape[0]
    if self.conditioning == 'concat':
      return self._concat(x, t, label, train, return_features, second_time, act, batch)
    if self.conditioning != 'film':
      raise ValueError(f"TimeMLP.conditioning must be 'film' or 'concat', got "
                       f'{self.conditioning!r}')
    c = TimeEmbedding(self.hidden, sinusoid_dim=self.emb_dim, scale=self.time_scale,
                      activation=self.activation, dtype=self.dtype, name='time_emb')(
                          broadcast_time(t, batch))
    if second_time is not None:
      c = c + TimeEmbedding(self.hidden, sinusoid_dim=self.emb_dim, scale=self.time_scale,
                            activation=self.activation, dtype=self.dtype,
                            name='time2_emb')(broadcast_time(second_time, batch))
    if self.num_classes:
      c = c + LabelEmbedding(self.num_classes, self.hidden, dtype=self.dtype,
                             name='label_emb')(label, batch)
    c = act(c)
    h = x.reshape(batch, -1)
    for i in range(max(self.depth, 1)):
      z = nn.Dense(self.hidden, dtype=self.dtype, name=f'dense_{i}')(h)
      scale, shift = jnp.split(nn.Dense(2 * self.hidden, dtype=self.dtype,
                                            name=f'film_{i}')(c), 2, axis=-1)
      z = act(z * (1.0 + scale) + shift)
      z = nn.Dropout(self.dropout, deterministic=not train)(z)
      # The first layer changes width (d -> hidden), so it cannot be residual.
      h = z if i == 0 else h + z
    out = nn.Dense(self.out_dim, dtype=self.dtype, name='out')(h).astype(jnp.float32)
    return (out, h.astype(jnp.float32)) if return_features else out

  def _concat(self, x, t, label, train, return_features, second_time, act, batch):
    """The plain MLP on [x, t (, second time, label embedding)] (module docstring)."""
    parts = [x.reshape(batch, -1), broadcast_time(t, batch)[:, None].astype(x.dtype)]
    if second_time is not None:
      parts.append(broadcast_time(second_time, batch)[:, None].astype(x.dtype))
    if self.num_classes:
      parts.append(LabelEmbedding(self.num_classes, self.hidden, dtype=self.dtype,
                                  name='label_emb')(label, batch).astype(x.dtype))
    h = jnp.concatenate(parts, axis=-1)
    for i in range(max(self.depth, 1)):
      h = act(nn.Dense(self.hidden, dtype=self.dtype, name=f'dense_{i}')(h))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    out = nn.Dense(self.out_dim, dtype=self.dtype, name='out')(h).astype(jnp.float32)
    return (out, h.astype(jnp.float32)) if return_features else out
