"""A diffusion transformer (DiT, Peebles & Xie, arXiv 2212.09748) for images.

  net = DiT(out_channels=3, patch_size=2, hidden=384, depth=12, num_heads=6)
  params = net.init({'params': rng, 'dropout': rng}, x, t)['params']   # x [B, H, W, C]
  out = net.apply({'params': params}, x, t, label=None)                 # [B, H, W, 3]
  out, tokens = net.apply({'params': params}, x, t, return_features=True)
  u = net.apply({'params': params}, x, t, second_time=h)                 # flow maps

Structure:
  tokens = Conv(patch x patch, stride patch)(x) + fixed 2-D sin-cos position embedding
  c = TimeEmbedding(t) [+ TimeEmbedding'(second_time)] [+ LabelEmbedding(label)]
  depth blocks, each adaLN-Zero: (shift, scale, gate) x 2 = Dense(SiLU(c)), zero-init;
      tokens += gate_1 * Attention(LN(tokens) * (1 + scale_1) + shift_1)
      tokens += gate_2 * MLP(LN(tokens) * (1 + scale_2) + shift_2)
  final: LN, modulate by Dense(SiLU(c)), Dense(patch * patch * out) zero-init, unpatchify.
The zero-initialised gates and output make the initial net the zero function, as
DiT's adaLN-Zero (and the U-Net's zero-initialised convs) do.

Attention is jax.nn.dot_product_attention: with attention='xla' (the default) it is
plain XLA, which jax.jvp (MeanFlow's target, sCM's tangent) goes through in every
precision; 'cudnn' asks for cuDNN's fused flash attention on GPUs (bf16/fp16). H and W
must be multiples of patch_size (checked with one line). `second_time` (flow maps:
MeanFlow's t - r, a shortcut step size) gets its own embedding, summed into c; init
and apply must agree on whether it is given. With return_features=True the call also
returns the last block's tokens as a [B, H/p, W/p, hidden] map (a discriminator head
can read it like the U-Net's bottleneck). Class labels: index num_classes (or
label=None) is the null label for classifier-free guidance.

Precision: `dtype` is the compute dtype of every dense layer, the patch embedding and
the token stream (bfloat16 under config.train.precision='bfloat16', set by
gensuite.nets.build); parameters stay float32, LayerNorm computes in float32, the
attention logits and softmax are float32 (jax.nn.dot_product_attention promotes
them), and the output (and the features) are returned in float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gensuite.nets.embeddings import LabelEmbedding, TimeEmbedding, broadcast_time

_zeros = nn.initializers.zeros


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
  """[h * w, dim] fixed position embedding: half the features encode the row, half the
  column, each as sin/cos over frequencies 1 .. 1e-4 (dim a multiple of 4)."""
  if dim % 4:
    raise ValueError(f'DiT hidden must be a multiple of 4 for the position embedding, got {dim}')
  quarter = dim // 4
  freqs = 1.0 / 10000.0**(np.arange(quarter) / quarter)

  def encode(pos):
    args = pos[:, None] * freqs[None]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                           indexing='ij')
  return np.concatenate([encode(rows.ravel()), encode(cols.ravel())], axis=1).astype(
      np.float32)


def _modulate(x, shift, scale):
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


ATTENTION = ('xla', 'cudnn')


class Attention(nn.Module):
  num_heads: int
  implementation: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    heads = self.num_heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, name='qkv')(x).reshape(b, n, 3, heads, d // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    return nn.Dense(d, dtype=self.dtype, name='proj')(out.reshape(b, n, d))


class DiTBlock(nn.Module):
  num_heads: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  attention: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c, train: bool):
    d = x.shape[-1]
    mod = nn.Dense(6 * d, kernel_init=_zeros, dtype=self.dtype, name='adaln')(nn.silu(c))
    s1, sc1, g1, s2, sc2, g2 = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6,
                                     dtype=jnp.float32, name=name)
    # The modulated LayerNorm output goes back to the compute dtype before the matmuls.
    h = Attention(self.num_heads, self.attention, self.dtype, name='attn')(
        _modulate(norm('norm_0')(x), s1, sc1).astype(self.dtype))
    x = x + g1[:, None, :] * h
    h = _modulate(norm('norm_1')(x), s2, sc2).astype(self.dtype)
    h = nn.gelu(nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name='mlp_0')(h),
                approximate=True)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Dense(d, dtype=self.dtype, name='mlp_1')(h)
    return x + g2[:, None, :] * h


class DiT(nn.Module):
  """DiT: (x [B,H,W,C], t [B], label [B]) -> [B,H,W,out_channels] (module docstring).

  Attributes:
    out_channels: output channels.
    patch_size: side of the square patches (H and W must be multiples).
    hidden: token width (a multiple of 4 and of num_heads).
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_ratio: MLP width / hidden.
    dropout: dropout in the MLPs, active when train=True.
    num_classes: number of classes for conditioning; None for unconditional.
    time_scale: t is embedded as sin/cos(time_scale * t * w_k); see embeddings.py.
    attention: jax.nn.dot_product_attention's implementation: 'xla' (any device and
      dtype, differentiable by jax.jvp) or 'cudnn' (fused flash attention on NVIDIA
      GPUs, float16/bfloat16 only, no JVP: not for MeanFlow / sCM).
    dtype: compute dtype (module docstring: params, norms, softmax, output float32).
  """
  out_channels: int
  patch_size: int = 2
  hidden: int = 256
  depth: int = 6
  num_heads: int = 4
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  num_classes: int | None = None
  time_scale: float = 1000.0
  attention: str = 'xla'
  dtype: Any = jnp.float32
  # Calls accept return_features=True and second_time (see the module docstring).
  supports_features = True
  supports_second_time = True

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array | None = None,
               train: bool = False, return_features: bool = False,
               second_time: jax.Array | None = None):
    if x.ndim != 4:
      raise ValueError(f'DiT wants images [B, H, W, C], got shape {x.shape}')
    if self.attention not in ATTENTION:
      raise ValueError(f'DiT attention must be one of {", ".join(ATTENTION)}, got '
                       f'{self.attention!r}')
    b, hgt, wid, _ = x.shape
    p = self.patch_size
    if hgt % p or wid % p:
      raise ValueError(f'DiT patch_size={p} does not divide the image size {hgt}x{wid}')
    if self.hidden % self.num_heads:
      raise ValueError(f'DiT hidden={self.hidden} is not a multiple of num_heads='
                       f'{self.num_heads}')
    gh, gw = hgt // p, wid // p
    tokens = nn.Conv(self.hidden, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                     name='patch_embed')(x).reshape(b, gh * gw, self.hidden)
    tokens = tokens + jnp.asarray(sincos_2d(gh, gw, self.hidden), self.dtype)[None]
    c = TimeEmbedding(self.hidden, scale=self.time_scale, dtype=self.dtype, name='time_emb')(
        broadcast_time(t, b))
    if second_time is not None:
      c = c + TimeEmbedding(self.hidden, scale=self.time_scale, dtype=self.dtype,
                            name='time2_emb')(broadcast_time(second_time, b))
    if self.num_classes:
      c = c + LabelEmbedding(self.num_classes, self.hidden, dtype=self.dtype,
                             name='label_emb')(label, b)
    for i in range(self.depth):
      tokens = DiTBlock(self.num_heads, self.mlp_ratio, self.dropout, self.attention,
                        self.dtype, name=f'block_{i}')(tokens, c, train)
    shift, scale = jnp.split(nn.Dense(2 * self.hidden, kernel_init=_zeros, dtype=self.dtype,
                                      name='final_adaln')(nn.silu(c)), 2, axis=-1)
    h = _modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6,
                               dtype=jnp.float32, name='final_norm')(tokens), shift, scale)
    h = nn.Dense(p * p * self.out_channels, kernel_init=_zeros, dtype=self.dtype,
                 name='final')(h.astype(self.dtype))
    out = h.reshape(b, gh, gw, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    out = out.reshape(b, hgt, wid, self.out_channels).astype(jnp.float32)
    if return_features:
      return out, tokens.reshape(b, gh, gw, self.hidden).astype(jnp.float32)
    return out
