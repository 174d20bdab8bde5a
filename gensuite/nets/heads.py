"""A light classifier head on another network's features (a GAN discriminator's logit).

  head = FeatureHead(width=64)
  params = head.init(rng, features, t)['params']     # features [B, C] or [B, h, w, C]
  logit = head.apply({'params': params}, features, t)  # [B]

The features are a network's bottleneck (TimeMLP's last hidden layer, UNet's mid
block; both return them with return_features=True). DMD2 (Yin et al. 2024, §4.2 and
its code's `cls_pred_branch`) puts a small GroupNorm/SiLU conv stack that reduces to
one logit on the fake-score U-Net's bottleneck; FastGen's f-distill puts a light head
on the frozen teacher's features. This head is that stack, kept small:
  image features:  GroupNorm, SiLU, conv3x3 (width), GroupNorm, SiLU, mean over h, w
  vector features: LayerNorm, Dense (width)
  then h <- SiLU(h + Dense(TimeEmbedding(t))), SiLU(Dense(width)), Dense(1)
The time embedding lets one head serve every noise level even when the features
carry the level only weakly; t is what the backbone was given (EDM's c_noise).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from gensuite.nets.embeddings import TimeEmbedding, broadcast_time
from gensuite.nets.unet import default_groups


class FeatureHead(nn.Module):
  """features [B, C] or [B, h, w, C], t [B] -> logit [B]."""
  width: int = 64
  time_scale: float = 1000.0

  @nn.compact
  def __call__(self, features: jax.Array, t: jax.Array) -> jax.Array:
    batch = features.shape[0]
    f = features.astype(jnp.float32)
    if f.ndim == 4:
      h = nn.silu(nn.GroupNorm(default_groups(f.shape[-1]), name='norm_0')(f))
      h = nn.Conv(self.width, (3, 3), name='conv_0')(h)
      h = nn.silu(nn.GroupNorm(default_groups(self.width), name='norm_1')(h))
      h = jnp.mean(h, axis=(1, 2))
    elif f.ndim == 2:
      h = nn.Dense(self.width, name='dense_in')(nn.LayerNorm(name='norm_0')(f))
    else:
      raise ValueError(f'FeatureHead wants features [B, C] or [B, h, w, C], got {f.shape}')
    c = TimeEmbedding(self.width, scale=self.time_scale, name='time_emb')(
        broadcast_time(t, batch))
    h = nn.silu(h + c)
    h = nn.silu(nn.Dense(self.width, name='dense_0')(h))
    return nn.Dense(1, name='out')(h)[:, 0]
