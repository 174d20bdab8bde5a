"""The data sources a run batches from: a toy distribution or a random-access image set.

  ToyData(name, distribution, seed=0, global_batch_size=256)
  ImageData(name, source, seed=0, global_batch_size=128)      # source.get(idx) -> arrays
  data.batch(step); data.spec; data.reference(rng, n)

gensuite.data.build picks one from config.data; latents.py wraps a VAE's codes in an
ImageData.
"""
import dataclasses
import functools
from typing import Callable

import jax
import numpy as np

from gensuite.errors import ConfigError

_DATA_SEED_TAG = 0x5EED


@dataclasses.dataclass(frozen=True)
class DataSpec:
  name: str
  kind: str                      # 'toy', 'image' or 'latent'
  shape: tuple[int, ...]         # one example's shape
  num_classes: int | None = None


def _host_slice(global_batch_size: int, process_index: int, process_count: int):
  if global_batch_size % process_count:
    raise ConfigError(f'train.batch_size={global_batch_size} is not divisible by the '
                      f'number of processes ({process_count})')
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


class ToyData:
  """A toy distribution; example i of step s is drawn with key fold_in(key(s), i)."""

  def __init__(self, name: str, dist, seed: int, global_batch_size: int,
               process_index: int = 0, process_count: int = 1):
    self.dist = dist
    self.spec = DataSpec(name=name, kind='toy', shape=(dist.dim,))
    self.global_batch_size = global_batch_size
    self._slice = _host_slice(global_batch_size, process_index, process_count)
    self._key = jax.random.fold_in(jax.random.PRNGKey(seed), _DATA_SEED_TAG)
    self._draw = jax.jit(self._draw_examples)

  def _draw_examples(self, key, index):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    return jax.vmap(lambda k: self.dist.sample(k, 1)[0])(keys)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    index = np.arange(self.global_batch_size, dtype=np.uint32)[self._slice]
    x = self._draw(jax.random.fold_in(self._key, step), index)
    return {'x': np.asarray(x, np.float32)}

  def reference(self, rng, n: int) -> np.ndarray:
    return np.asarray(self.dist.sample(rng, n), np.float32)

  @property
  def log_prob(self) -> Callable | None:
    return self.dist.log_prob if getattr(self.dist, 'has_log_prob', False) else None


class ImageData:
  """An image source read in a fresh permutation each epoch, seeded by (seed, epoch)."""

  def __init__(self, name: str, source, seed: int, global_batch_size: int,
               process_index: int = 0, process_count: int = 1):
    self.source = source
    self.spec = DataSpec(name=name, kind='image', shape=tuple(source.shape),
                         num_classes=source.num_classes)
    self.global_batch_size = global_batch_size
    self._slice = _host_slice(global_batch_size, process_index, process_count)
    self._seed = seed
    self._n = len(source)
    if self._n == 0:
      raise ConfigError(f'data {name!r} has no examples')

  @functools.lru_cache(maxsize=4)
  def _perm(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, _DATA_SEED_TAG, epoch]).permutation(self._n)

  def indices(self, step: int) -> np.ndarray:
    pos = step * self.global_batch_size + np.arange(self.global_batch_size)[self._slice]
    epoch, within = np.divmod(pos, self._n)
    out = np.empty_like(pos)
    for e in np.unique(epoch):
      sel = epoch == e
      out[sel] = self._perm(int(e))[within[sel]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    b = self.source.get(self.indices(step))
    return {'x': np.asarray(b['x'], np.float32), 'label': np.asarray(b['label'], np.int32)}

  def reference(self, rng, n: int) -> np.ndarray:
    seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
    idx = np.random.default_rng(seed).choice(self._n, size=min(n, self._n), replace=False)
    return np.asarray(self.source.get(np.sort(idx))['x'], np.float32)

  log_prob = None
