"""Batches are a pure function of (seed, step), and hosts' shards tile the global batch."""
import ml_collections
import numpy as np
import pytest

from gensuite import data as data_lib
from gensuite.errors import ConfigError


def _cfg(name, **params):
  return ml_collections.ConfigDict(dict(name=name, params=params, split='train',
                                        data_dir=''))


def test_toy_batches_are_deterministic_and_shard_over_hosts():
  one = data_lib.build(_cfg('8gaussians'), seed=3, global_batch_size=8)
  again = data_lib.build(_cfg('8gaussians'), seed=3, global_batch_size=8)
  np.testing.assert_array_equal(one.batch(5)['x'], again.batch(5)['x'])
  assert not np.array_equal(one.batch(5)['x'], one.batch(6)['x'])
  other_seed = data_lib.build(_cfg('8gaussians'), seed=4, global_batch_size=8)
  assert not np.array_equal(one.batch(5)['x'], other_seed.batch(5)['x'])
  hosts = [data_lib.build(_cfg('8gaussians'), seed=3, global_batch_size=8,
                          process_index=i, process_count=2) for i in range(2)]
  np.testing.assert_array_equal(
      np.concatenate([h.batch(5)['x'] for h in hosts]), one.batch(5)['x'])
  assert one.batch(0)['x'].shape == (8, 2) and one.spec.shape == (2,)


class _FakeSource:
  shape = (1, 1, 1)
  num_classes = 3

  def __len__(self):
    return 10

  def get(self, idx):
    idx = np.asarray(idx)
    return {'x': idx.reshape(-1, 1, 1, 1).astype(np.float32), 'label': idx % 3}


def test_image_order_is_a_fresh_permutation_each_epoch_and_shards_tile():
  src = _FakeSource()
  data = data_lib.ImageData('fake', src, seed=0, global_batch_size=4)
  seen = np.concatenate([data.batch(s)['x'].ravel() for s in range(5)])  # 2 epochs
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  assert not np.array_equal(seen[:10], seen[10:])
  hosts = [data_lib.ImageData('fake', src, seed=0, global_batch_size=4, process_index=i,
                              process_count=2) for i in range(2)]
  for step in (0, 2, 7):
    np.testing.assert_array_equal(
        np.concatenate([h.batch(step)['x'] for h in hosts]), data.batch(step)['x'])
  fresh = data_lib.ImageData('fake', src, seed=0, global_batch_size=4)
  np.testing.assert_array_equal(fresh.batch(3)['x'], data.batch(3)['x'])  # resume order


def test_digits_batches_in_range_with_the_right_shape():
  data = data_lib.build(_cfg('digits'), seed=0, global_batch_size=32)
  b = data.batch(0)
  assert b['x'].shape == (32, 8, 8, 1) and b['x'].dtype == np.float32
  assert b['x'].min() >= -1.0 and b['x'].max() <= 1.0
  assert b['label'].shape == (32,) and set(b['label']) <= set(range(10))
  assert data.spec.num_classes == 10


def test_unknown_data_name_lists_allowed():
  with pytest.raises(ConfigError, match='8gaussians.*digits'):
    data_lib.build(_cfg('moonz'), seed=0, global_batch_size=8)
  with pytest.raises(ConfigError, match='divisible'):
    data_lib.build(_cfg('moons'), seed=0, global_batch_size=7, process_count=2)
