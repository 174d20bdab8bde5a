"""A DDPM++-style U-Net for images, conditioned on time/noise level and class.

  net = UNet(out_channels=3, channels=128, channel_mult=(1, 2, 2, 2))
  params = net.init({'params': rng, 'dropout': rng}, x, t)['params']  # x [B,H,W,C]
  out = net.apply({'params': params}, x, t, label=None)                # [B,H,W,3]
  out, mid = net.apply({'params': params}, x, t, return_features=True)  # mid [B,h,w,C]

Structure (Song et al.'s DDPM++ / Ho et al.'s DDPM, simplified):
  emb = MLP(sinusoid(t)) [+ Embed(label)]       one vector per example, width emb_dim
  h = conv3x3(x)
  down: per level, num_res_blocks ResBlocks (+ self-attention where the resolution is
        in attn_resolutions), then a stride-2 conv; every output is kept as a skip
  mid:  ResBlock, attention, ResBlock
  up:   per level, num_res_blocks + 1 ResBlocks, each on concat(h, skip.pop())
        (+ attention), then nearest-neighbour upsample + conv3x3
  out = conv3x3(SiLU(GroupNorm(h)))              zero-initialised
ResBlock: GN, SiLU, conv3x3; GN then scale-shift by Dense(emb) ("adaptive group
norm", h*(1+s)+b); SiLU, dropout, conv3x3 (zero-init); (x + h)/sqrt(2) with a 1x1
conv on x when the width changes. Zero-initialised residual branches and output make
the initial network the zero function plus a well-conditioned identity path, which
is the usual recipe (DDPM++'s init_scale=0, EDM's init_zero).

Resolutions. A level halves the resolution only when H and W are even and the
result is at least 2, so any channel_mult works at any size: 8x8 with (1, 2, 2)
runs at 8, 4, 2; 28x28 with (1, 2, 2, 2) at 28, 14, 7, 7. For 8x8 digits use
channel_mult=(1, 2). attn_resolutions name the H of the levels that get attention.

Features: with return_features=True the call also returns the mid block's output
[B, h, w, C] (the bottleneck: lowest resolution, widest), which DMD2 puts its GAN
classifier on (gensuite.methods.distill pools it in its head). The default output and
the parameter tree are the same either way.

Second time: flow maps (gensuite.methods.flow_maps) condition on two times (MeanFlow's
t and t - r, a shortcut model's t and step size). A call with second_time embeds it
like t (its own `time2_emb`) and adds it to the embedding vector; init and apply must
agree on whether it is given.

Precision: `dtype` is the compute dtype of the convolutions, dense layers and
embeddings (bfloat16 under config.train.precision='bfloat16', set by
gensuite.nets.build); parameters stay float32, GroupNorm computes its statistics and
output in float32, attention takes its softmax in float32, and the output (and the
features) are returned in float32.

Class conditioning: with num_classes set, the label embedding has num_classes + 1
rows; index num_classes (and label=None) is the null label for classifier-free
guidance.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gensuite.nets.embeddings import LabelEmbedding, TimeEmbedding, broadcast_time

_zeros = nn.initializers.zeros


def default_groups(channels: int, groups: int | None = None) -> int:
  """GroupNorm group count: `groups` or min(32, channels // 4), made to divide C."""
  g = groups if groups else min(32, max(1, channels // 4))
  g = max(1, min(g, channels))
  while channels % g:
    g -= 1
  return g


class ResBlock(nn.Module):
  """Residual block with adaptive-GroupNorm time conditioning."""
  out_channels: int
  dropout: float = 0.0
  groups: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    c_in, c_out = x.shape[-1], self.out_channels
    h = nn.GroupNorm(default_groups(c_in, self.groups), dtype=jnp.float32, name='norm_0')(x)
    h = nn.Conv(c_out, (3, 3), dtype=self.dtype, name='conv_0')(nn.silu(h))
    scale, shift = jnp.split(nn.Dense(2 * c_out, dtype=self.dtype, name='emb_proj')(emb), 2,
                             axis=-1)
    h = nn.GroupNorm(default_groups(c_out, self.groups), dtype=jnp.float32, name='norm_1')(h)
    h = h * (1.0 + scale[:, None, None, :]) + shift[:, None, None, :]
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = nn.Conv(c_out, (3, 3), kernel_init=_zeros, dtype=self.dtype, name='conv_1')(h)
    if c_in != c_out:
      x = nn.Conv(c_out, (1, 1), dtype=self.dtype, name='skip')(x)
    # 1/sqrt(2) keeps the variance of the residual stream from doubling per block.
    return (x + h) / np.sqrt(2.0)


class AttnBlock(nn.Module):
  """Multi-head self-attention over the H*W positions, residual."""
  num_heads: int = 1
  groups: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    heads = self.num_heads if c % self.num_heads == 0 else 1
    h = nn.GroupNorm(default_groups(c, self.groups), dtype=jnp.float32, name='norm')(x)
    qkv = nn.Dense(3 * c, dtype=self.dtype, name='qkv')(h).reshape(b, hgt * wid, 3, heads,
                                                                   c // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / np.sqrt(c // heads)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    out = nn.Dense(c, kernel_init=_zeros, dtype=self.dtype, name='proj')(
        out.reshape(b, hgt, wid, c))
    return (x + out) / np.sqrt(2.0)


def _can_halve(hgt: int, wid: int) -> bool:
  return hgt % 2 == 0 and wid % 2 == 0 and hgt // 2 >= 2 and wid // 2 >= 2


class UNet(nn.Module):
  """DDPM++-like U-Net: (x [B,H,W,C], t [B], label [B]) -> [B,H,W,out_channels].

  Attributes:
    out_channels: output channels (e.g. C for a velocity, 2C with an extra head).
    channels: base width; level i has channels * channel_mult[i].
    channel_mult: width multipliers, one per resolution level.
    num_res_blocks: ResBlocks per level on the way down (one more on the way up).
    attn_resolutions: spatial sizes H at which to add self-attention.
    dropout: dropout rate inside ResBlocks, active when train=True.
    emb_dim: width of the time/label embedding (default 4 * channels).
    num_classes: number of classes for conditioning; None for unconditional.
    groups: GroupNorm groups (default min(32, C // 4), adjusted to divide C).
    num_heads: attention heads.
    time_scale: t is embedded as sin/cos(time_scale * t * w_k); see embeddings.py.
    dtype: compute dtype (module docstring: params, norms, softmax, output float32).
  """
  out_channels: int
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  emb_dim: int | None = None
  num_classes: int | None = None
  groups: int | None = None
  num_heads: int = 1
  time_scale: float = 1000.0
  dtype: Any = jnp.float32
  # Calls accept return_features=True and second_time (see the module docstring).
  supports_features = True
  supports_second_time = True

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None,
               train: bool = False, return_features: bool = False,
               second_time: jax.Array | None = None):
    if x.ndim != 4:
      raise ValueError(f'UNet wants images [B, H, W, C], got shape {x.shape}')
    batch = x.shape[0]
    emb_dim = self.emb_dim or 4 * self.channels
    emb = TimeEmbedding(emb_dim, sinusoid_dim=self.channels, scale=self.time_scale,
                        dtype=self.dtype, name='time_emb')(broadcast_time(t, batch))
    if second_time is not None:
      emb = emb + TimeEmbedding(emb_dim, sinusoid_dim=self.channels, scale=self.time_scale,
                                dtype=self.dtype, name='time2_emb')(
                                    broadcast_time(second_time, batch))
    if self.num_classes:
      emb = emb + LabelEmbedding(self.num_classes, emb_dim, dtype=self.dtype,
                                 name='label_emb')(label, batch)
    emb = nn.silu(emb)

    def res(h, width, name):
      return ResBlock(width, self.dropout, self.groups, self.dtype, name=name)(h, emb, train)

    def attn(h, name):
      return AttnBlock(self.num_heads, self.groups, self.dtype, name=name)(h)

    attn_at = set(int(r) for r in self.attn_resolutions)
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype, name='conv_in')(x)
    skips = [h]
    halved = []
    for level, mult in enumerate(self.channel_mult):
      width = self.channels * mult
      for i in range(self.num_res_blocks):
        h = res(h, width, f'down_{level}_res_{i}')
        if h.shape[1] in attn_at:
          h = attn(h, f'down_{level}_attn_{i}')
        skips.append(h)
      last = level == len(self.channel_mult) - 1
      halved.append(not last and _can_halve(h.shape[1], h.shape[2]))
      if halved[-1]:
        h = nn.Conv(width, (3, 3), strides=(2, 2), dtype=self.dtype,
                    name=f'down_{level}_downsample')(h)
      if not last:
        # Pushed even when the level could not halve, so the up path keeps the same
        # number of blocks per level whatever the input size.
        skips.append(h)

    width = h.shape[-1]
    h = res(h, width, 'mid_res_0')
    h = attn(h, 'mid_attn')
    h = res(h, width, 'mid_res_1')
    mid = h

    for level in reversed(range(len(self.channel_mult))):
      width = self.channels * self.channel_mult[level]
      # Mirror of the down path: the extra block consumes the skip taken after the
      # previous level's downsample (conv_in's output at level 0).
      for i in range(self.num_res_blocks + 1):
        h = res(jnp.concatenate([h, skips.pop()], axis=-1), width, f'up_{level}_res_{i}')
        if h.shape[1] in attn_at:
          h = attn(h, f'up_{level}_attn_{i}')
      if level > 0 and halved[level - 1]:
        b, hgt, wid, c = h.shape
        h = jax.image.resize(h, (b, 2 * hgt, 2 * wid, c), method='nearest')
        h = nn.Conv(width, (3, 3), dtype=self.dtype, name=f'up_{level}_upsample')(h)
    assert not skips, len(skips)

    h = nn.silu(nn.GroupNorm(default_groups(h.shape[-1], self.groups), dtype=jnp.float32,
                             name='norm_out')(h))
    out = nn.Conv(self.out_channels, (3, 3), kernel_init=_zeros, dtype=self.dtype,
                  name='conv_out')(h).astype(jnp.float32)
    return (out, mid.astype(jnp.float32)) if return_features else out
