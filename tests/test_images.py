"""Tests for gensuite.data.images: digits via a tfds builder, named tfds datasets.

  .venv/bin/pytest -q -n 2 tests/test_images.py

Nothing is downloaded: digits come from scikit-learn, named datasets from
`tfds.testing.mock_data` or from a tiny fake 'mnist' written as ArrayRecord.
"""
import io
import os
import subprocess
import sys
import textwrap
from unittest import mock

from etils import epath
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from gensuite.data import digits_builder
from gensuite.data import images
from gensuite.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory) -> str:
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  images.ensure_digits_prepared(data_dir)
  return data_dir


def _sklearn_scaled():
  x, y = digits_builder.load_arrays()
  return x.astype(np.float32) / 16 * 2 - 1, y


def test_digits_spec_and_split_sizes(digits_dir):
  train = images.open_image_source('digits', 'train', data_dir=digits_dir)
  test = images.open_image_source('digits', 'test', data_dir=digits_dir)
  assert train.shape == test.shape == (8, 8, 1)
  assert train.num_classes == test.num_classes == 10
  assert (len(train), len(test)) == (1500, 297)
  assert len(train) + len(test) == 1797
  for split, size in [('train+test', 1797), ('train[:10%]', 150)]:
    assert len(images.open_image_source('digits', split, data_dir=digits_dir)) == size


def test_digits_match_sklearn(digits_dir):
  want_x, want_y = _sklearn_scaled()
  both = images.open_image_source('digits', 'train+test', data_dir=digits_dir)
  got = both.get(np.arange(len(both)))
  assert got['x'].dtype == np.float32 and got['label'].dtype == np.int32
  np.testing.assert_array_equal(got['x'], want_x)
  np.testing.assert_array_equal(got['label'], want_y)
  assert got['x'].min() == -1 and got['x'].max() == 1
  assert set(np.unique(got['label'])) == set(range(10))

  test = images.open_image_source('digits', 'test', data_dir=digits_dir)
  idx = np.array([296, 0, 5, 5, 17])  # unsorted, with a repeat
  a, b = test.get(idx), test.get(idx)
  np.testing.assert_array_equal(a['x'], b['x'])
  np.testing.assert_array_equal(a['x'], want_x[1500 + idx])
  np.testing.assert_array_equal(a['label'], want_y[1500 + idx])
  with pytest.raises(IndexError):
    test.get(np.array([297]))


def test_digits_concurrent_build_without_tensorflow(tmp_path):
  """Two processes build into one fresh data dir at once; TF is never loaded."""
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from gensuite.data import images
      src = images.open_image_source('digits', 'test', data_dir={str(tmp_path)!r})
      batch = src.get(np.arange(len(src)))
      print(len(src), float(batch['x'].min()), float(batch['x'].max()),
            'tensorflow' in sys.modules)
  """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  procs = [subprocess.Popen([sys.executable, '-c', script], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    last = out.strip().splitlines()[-1]  # tfds prints its build progress first
    assert last.split() == ['297', '-1.0', '1.0', 'False'], (out, err[-3000:])
  built = tmp_path / 'sklearn_digits' / '1.0.0'
  assert sorted(p.name for p in built.iterdir() if 'array_record' in p.name) == [
      'sklearn_digits-test.array_record-00000-of-00001',
      'sklearn_digits-train.array_record-00000-of-00001']


def test_digits_bad_split(digits_dir):
  with pytest.raises(ConfigError, match="bad split 'validation'"):
    images.open_image_source('digits', 'validation', data_dir=digits_dir)


@pytest.mark.parametrize('name, shape',
                         [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_named_dataset_with_tfds_mock_data(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    src = images.open_image_source(name, 'train', data_dir=str(tmp_path))
    assert len(src) == 12 and src.shape == shape and src.num_classes == 10
    batch = src.get(np.array([11, 0, 3, 3]))
  assert batch['x'].shape == (4, *shape) and batch['x'].dtype == np.float32
  assert batch['x'].min() >= -1 and batch['x'].max() <= 1
  assert batch['x'].min() == -1  # a pixel value 0 among 4 * H * W * C random bytes
  assert batch['label'].dtype == np.int32
  assert np.all((batch['label'] >= 0) & (batch['label'] < 10))
  np.testing.assert_array_equal(batch['x'][2], batch['x'][3])
  np.testing.assert_array_equal(src.get(np.array([11]))['x'][0], batch['x'][0])


def _png(x: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(x)[..., 0]).save(buf, format='PNG')
  return buf.getvalue()


class _FakeMnist(mnist.MNIST, skip_registration=True):
  """The real mnist features and name, with 20 + 5 synthetic examples."""
  name = 'mnist'

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # see digits_builder.SklearnDigits.code_path
    return epath.Path(os.path.abspath(__file__))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(20), 'test': self._generate_examples(5)}

  def _generate_examples(self, n):  # pylint: disable=arguments-renamed
    for i in range(n):
      yield i, {'image': np.full((28, 28, 1), 9 * i, np.uint8), 'label': i % 10}


def test_named_array_record_dataset_decodes_images(tmp_path):
  """A prepared ArrayRecord 'mnist' (PNG-encoded Image feature) read without TF."""
  # Encoding an Image feature needs TensorFlow; PIL writes the same PNG bytes.
  with mock.patch.object(tfds.features.Image, 'encode_example',
                         lambda self, x: _png(x)):
    _FakeMnist(data_dir=str(tmp_path)).download_and_prepare(file_format='array_record')
  src = images.open_image_source('mnist', 'train', data_dir=str(tmp_path))
  assert (len(src), src.shape, src.num_classes) == (20, (28, 28, 1), 10)
  for _ in range(2):  # the second pass is served from the in-memory cache
    batch = src.get(np.array([19, 4, 0, 4, 7]))
    assert batch['x'].shape == (5, 28, 28, 1)
    x = batch['x'].reshape(5, -1)
    assert np.all(x == x[:, :1])
    i = np.rint((x[:, 0] + 1) * 127.5 / 9).astype(int)  # the writer's example id
    np.testing.assert_array_equal(x[:, 0], (9 * i).astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(batch['label'], i % 10)
  every = src.get(np.arange(20))
  ids = np.rint((every['x'][:, 0, 0, 0] + 1) * 127.5 / 9).astype(int)
  assert sorted(ids) == list(range(20))


def test_unknown_name():
  with pytest.raises(ConfigError, match=r"unknown image dataset 'no_such_data'.*digits"):
    images.open_image_source('no_such_data')
  assert images.is_image_dataset_name('digits')
  assert images.is_image_dataset_name('mnist')
  assert images.is_image_dataset_name('cifar10')
  assert not images.is_image_dataset_name('no_such_data')


def test_unprepared_dataset(tmp_path):
  with pytest.raises(ConfigError) as err:
    images.open_image_source('mnist', data_dir=str(tmp_path), allowed_hint='moons, rings')
  msg = str(err.value)
  assert '\n' not in msg
  assert f"tfds dataset 'mnist' is not prepared in {tmp_path}" in msg
  assert msg.endswith('choose one of: moons, rings, digits')
  assert not any(tmp_path.iterdir())  # nothing downloaded or created


def test_tfrecord_dataset_without_tensorflow(tmp_path):
  """A TFRecord-prepared dataset asks for TensorFlow (only metadata is written)."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
    pytest.skip('TensorFlow is installed')
  except ImportError:
    pass
  builder = tfds.builder('mnist', data_dir=str(tmp_path), file_format='tfrecord')
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name='mnist', split='train',
      filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name='train', shard_lengths=[10], num_bytes=100, filename_template=template)]))
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  with pytest.raises(ConfigError, match=r"stored as TFRecord.*gensuite\[tensorflow\]"):
    images.open_image_source('mnist', data_dir=str(tmp_path))
