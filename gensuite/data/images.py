"""Random-access image sources: scikit-learn digits and prepared tfds datasets.

  src = open_image_source('digits', split='train')   # or 'mnist', 'cifar10', ...
  len(src), src.shape, src.num_classes               # 1500, (8, 8, 1), 10
  batch = src.get(np.array([3, 1, 4]))
  batch['x']      # float32 [3, H, W, C] in [-1, 1]
  batch['label']  # int32 [3]
  is_image_dataset_name('mnist')                     # True

'digits' is scikit-learn's bundled 8x8 digits, served through the tfds builder
`gensuite.data.digits_builder.SklearnDigits` ('sklearn_digits'). The first use
builds it as ArrayRecord into the tfds data dir (about 2 s, offline, no TensorFlow;
several processes may do so at once: a file lock serializes them), and every open
reads the whole split into memory once. Splits: 'train' (rows 0..1499 of
`load_digits()`), 'test' (rows 1500..1796); tfds split strings such as
'train+test' or 'train[:10%]' work too and keep scikit-learn's row order. Pixels
0..16 are scaled as x / 16 * 2 - 1.

Any other name is a tfds image dataset that the user has already prepared in the
data dir (nothing is ever downloaded). ArrayRecord data are read with
`tfds.data_source`, and each example is cached in memory the first time it is read
when the split fits in `CACHE_LIMIT_BYTES`. TFRecord data (the usual format of
older `tfds build` runs) need TensorFlow and are loaded into memory whole with
`tfds.load(batch_size=-1)`. Integer pixels are scaled as x / 127.5 - 1 (uint8).

The data dir is `data_dir`, else $TFDS_DATA_DIR, else tfds's default
(~/tensorflow_datasets).
"""
import contextlib
import fcntl
import os
import re
import threading
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from gensuite.errors import ConfigError

DIGITS = 'digits'
# Named datasets whose split holds at most this many bytes of raw pixels are
# cached in memory as examples are read.
CACHE_LIMIT_BYTES = 2 * 1024**3

_digits_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
_digits_lock = threading.Lock()


class ImageSource:
  """A random-access split of an image dataset (see the module docstring)."""

  def __init__(self, name: str, split: str, size: int, shape: tuple[int, ...],
               num_classes: int | None,
               read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]):
    self.name = name
    self.split = split
    self.shape = tuple(int(d) for d in shape)
    self.num_classes = num_classes
    self._size = int(size)
    self._read = read

  def __len__(self) -> int:
    return self._size

  def __repr__(self) -> str:
    return (f'ImageSource({self.name!r}, split={self.split!r}, len={self._size}, '
            f'shape={self.shape}, num_classes={self.num_classes})')

  def get(self, indices: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """Returns {'x': float32 [n, H, W, C] in [-1, 1], 'label': int32 [n]}."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= self._size):
      raise IndexError(f'indices out of range [0, {self._size}) for {self.name!r} '
                       f'split {self.split!r}')
    x, label = self._read(idx)
    return {'x': np.asarray(x, np.float32), 'label': np.asarray(label, np.int32)}


def is_image_dataset_name(name: str) -> bool:
  """True for 'digits' and for any registered tfds builder name."""
  return name == DIGITS or _builder_base_name(name) in _tfds_builders()


def open_image_source(name: str, split: str = 'train', data_dir: str | None = None,
                      allowed_hint: str | None = None) -> ImageSource:
  """Opens split `split` of the image dataset `name`.

  Args:
    name: 'digits' or a tfds image dataset name, optionally with config/version
      ('mnist', 'cifar10', 'celeb_a:2.1.0', ...).
    split: a split name or tfds split string ('train', 'test[:1000]', ...).
    data_dir: the tfds data dir; defaults to $TFDS_DATA_DIR or tfds's default.
    allowed_hint: the other data names a user could choose, quoted in errors.

  Returns:
    An `ImageSource`.

  Raises:
    ConfigError: unknown name, dataset not prepared, bad split, or a TFRecord
      dataset while TensorFlow is not installed.
  """
  data_dir = resolve_data_dir(data_dir)
  if name == DIGITS:
    return _open_digits(split, data_dir)
  hint = allowed_hint or DIGITS
  if not re.search(rf'\b{DIGITS}\b', hint):
    hint += f', {DIGITS}'
  if not is_image_dataset_name(name):
    raise ConfigError(f'unknown image dataset {name!r}; allowed: {hint}, or any '
                      'tfds image dataset name (tfds.list_builders())')
  return _open_tfds(name, split, data_dir, hint)


def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else $TFDS_DATA_DIR, else tfds's default data dir."""
  data_dir = (data_dir or os.environ.get('TFDS_DATA_DIR')
              or tfds.core.constants.DATA_DIR)
  return os.path.expanduser(os.fspath(data_dir))


# ----------------------------------------------------------------------- digits


def _open_digits(split: str, data_dir: str) -> ImageSource:
  """Builds sklearn_digits on first use; serves `split` from memory."""
  key = (os.path.abspath(data_dir), split)
  with _digits_lock:
    if key not in _digits_cache:
      _digits_cache[key] = _read_digits(split, data_dir)
  x, labels = _digits_cache[key]
  return ImageSource(DIGITS, split, len(x), x.shape[1:], 10,
                     lambda idx: (x[idx], labels[idx]))


def _read_digits(split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (float32 [n, 8, 8, 1] in [-1, 1], int32 [n]) for the split."""
  from gensuite.data import digits_builder  # pylint: disable=g-import-not-at-top
  ensure_digits_prepared(data_dir)
  try:
    ds = tfds.data_source('sklearn_digits', split=split, data_dir=data_dir,
                          download=False, try_gcs=False)
  except (ValueError, KeyError, AssertionError) as e:
    raise ConfigError(f'bad split {split!r} for data digits ({_first_line(e)}); '
                      f"use 'train' (1500 images), 'test' (297) or a tfds split "
                      "string like 'train[:10%]'") from None
  records = ds.__getitems__(list(range(len(ds)))) if len(ds) else []
  if len(records) != len(ds):
    raise RuntimeError(f'sklearn_digits {split!r}: read {len(records)} of {len(ds)} rows')
  images = np.stack([r['image'] for r in records]) if records else np.zeros(
      (0, 8, 8, 1), np.uint8)
  labels = np.array([r['label'] for r in records], np.int32)
  index = np.array([r['index'] for r in records], np.int64)
  # Shuffling is disabled, so any split reads rows in scikit-learn's order.
  if index.size and (np.any(np.diff(index) <= 0) or index[0] < 0
                     or index[-1] >= digits_builder.NUM_EXAMPLES):
    raise RuntimeError(f'sklearn_digits {split!r} in {data_dir} is not in row order; '
                       'delete its folder to rebuild it')
  if split in digits_builder.SPLIT_ROWS:
    start, stop = digits_builder.SPLIT_ROWS[split]
    if not np.array_equal(index, np.arange(start, stop)):
      raise RuntimeError(f'sklearn_digits {split!r} in {data_dir} has the wrong rows; '
                         'delete its folder to rebuild it')
  x = images.astype(np.float32) / digits_builder.MAX_PIXEL * 2 - 1
  return x, labels


def ensure_digits_prepared(data_dir: str | None = None) -> str:
  """Builds sklearn_digits into `data_dir` unless it is there; returns its path.

  Safe to call from several processes at once: a lock file in `data_dir`
  serializes builds, and the row count of every split is checked.
  """
  from gensuite.data import digits_builder  # pylint: disable=g-import-not-at-top
  data_dir = resolve_data_dir(data_dir)
  builder = digits_builder.SklearnDigits(data_dir=data_dir)
  if not builder.is_prepared():
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, '.sklearn_digits.lock')):
      builder = digits_builder.SklearnDigits(data_dir=data_dir)
      if not builder.is_prepared():
        builder.download_and_prepare(
            file_format=digits_builder.FILE_FORMAT,
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        builder = digits_builder.SklearnDigits(data_dir=data_dir)
  for split, (start, stop) in digits_builder.SPLIT_ROWS.items():
    got = builder.info.splits[split].num_examples
    if got != stop - start:
      raise RuntimeError(f'sklearn_digits in {builder.data_dir} has {got} {split!r} '
                         f'rows, expected {stop - start}; delete it to rebuild')
  return os.fspath(builder.data_dir)


@contextlib.contextmanager
def _file_lock(path: str):
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------- tfds


def _tfds_builders() -> set[str]:
  return set(tfds.list_builders(with_community_datasets=False))


def _builder_base_name(name: str) -> str:
  """'cifar10/config:1.0.0' -> 'cifar10'."""
  return name.split(':', 1)[0].split('/', 1)[0]


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0] if lines else type(e).__name__


def _open_tfds(name: str, split: str, data_dir: str, hint: str) -> ImageSource:
  """Opens a prepared tfds dataset; ArrayRecord directly, TFRecord via TF."""
  try:
    ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                          try_gcs=False)
  except NotImplementedError:
    # Raised for any format without random access, which includes a dataset
    # that is not prepared at all (its default format is TFRecord).
    if not tfds.builder(name, data_dir=data_dir, try_gcs=False).is_prepared():
      raise ConfigError(
          f'tfds dataset {name!r} is not prepared in {data_dir}; prepare it with '
          f'`tfds build {name} --data_dir={data_dir} --file_format=array_record` '
          f'or choose one of: {hint}') from None
    return _open_tfds_with_tensorflow(name, split, data_dir)
  except (ValueError, KeyError, AssertionError) as e:
    raise ConfigError(f'cannot open split {split!r} of tfds dataset {name!r} in '
                      f'{data_dir}: {_first_line(e)}') from None
  image_key, shape, dtype, label_key, num_classes = _image_features(
      name, ds.dataset_info.features)
  return _ArrayRecordReader(name, split, ds, image_key, shape, dtype, label_key,
                            num_classes).source()


def _image_features(name: str, features) -> tuple[str, tuple[int, ...], np.dtype,
                                                 str | None, int | None]:
  """(image key, shape, dtype, label key or None, num_classes or None)."""
  if not isinstance(features, tfds.features.FeaturesDict):
    raise ConfigError(f'tfds dataset {name!r} has no image feature')
  items = dict(features.items())
  image_key = 'image' if 'image' in items else next(
      (k for k, f in items.items() if isinstance(f, tfds.features.Image)), None)
  if image_key is None:
    raise ConfigError(f'tfds dataset {name!r} has no image feature '
                      f'(features: {", ".join(sorted(items))})')
  feature = items[image_key]
  shape = tuple(feature.shape)
  if len(shape) != 3 or any(d is None for d in shape):
    raise ConfigError(f'tfds dataset {name!r}: images of shape {shape} are not '
                      'supported; need a fixed (H, W, C)')
  dtype = np.dtype(feature.np_dtype)
  label = items.get('label')
  if isinstance(label, tfds.features.ClassLabel):
    return image_key, shape, dtype, 'label', label.num_classes
  if (label is not None and tuple(label.shape) == ()
      and np.issubdtype(np.dtype(label.np_dtype), np.integer)):
    return image_key, shape, dtype, 'label', None
  return image_key, shape, dtype, None, None


def _scale(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """Integer pixels 0..max -> [-1, 1] (uint8: x / 127.5 - 1); floats in [0, 1] too."""
  if np.issubdtype(dtype, np.integer):
    return x.astype(np.float32) / np.float32(np.iinfo(dtype).max / 2) - 1
  return x.astype(np.float32) * 2 - 1


def _read_records(ds, keys: list[int]) -> list[Any]:
  try:
    return ds.__getitems__(keys)
  except TypeError:
    # tfds.testing.mock_data installs an unbound `__getitems__` on its mock
    # ArrayRecord source, so batch reads fail there; read one at a time.
    return [ds[k] for k in keys]


class _ArrayRecordReader:
  """Reads batches from a tfds data source, caching examples in memory."""

  def __init__(self, name, split, ds, image_key, shape, dtype, label_key,
               num_classes):
    self.name, self.split, self.ds = name, split, ds
    self.image_key, self.shape, self.dtype = image_key, shape, dtype
    self.label_key, self.num_classes = label_key, num_classes
    n = len(ds)
    self.n = n
    self._lock = threading.Lock()
    if n * int(np.prod(shape)) * dtype.itemsize <= CACHE_LIMIT_BYTES:
      # np.zeros maps pages lazily: memory is used as examples arrive.
      self._images = np.zeros((n, *shape), dtype)
      self._labels = np.zeros((n,), np.int64)
      self._have = np.zeros((n,), bool)
    else:
      self._images = None

  def source(self) -> ImageSource:
    return ImageSource(self.name, self.split, self.n, self.shape, self.num_classes,
                       self.read)

  def _fetch(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not keys.size:
      return np.zeros((0, *self.shape), self.dtype), np.zeros((0,), np.int64)
    records = _read_records(self.ds, keys.tolist())
    images = np.stack([np.asarray(r[self.image_key]) for r in records])
    if images.shape[1:] != self.shape:
      images = images.reshape((len(records), *self.shape))
    if self.label_key is None:
      labels = np.zeros((len(records),), np.int64)
    else:
      labels = np.array([r[self.label_key] for r in records], np.int64)
    return images.astype(self.dtype, copy=False), labels

  def read(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self._images is None:
      images, labels = self._fetch(idx)
    else:
      with self._lock:
        missing = np.unique(idx[~self._have[idx]])
        if missing.size:
          self._images[missing], self._labels[missing] = self._fetch(missing)
          self._have[missing] = True
        images, labels = self._images[idx], self._labels[idx]
    return _scale(images, self.dtype), labels


def _open_tfds_with_tensorflow(name: str, split: str, data_dir: str) -> ImageSource:
  """Loads a TFRecord-prepared split into memory with tfds.load (needs TF)."""
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    raise ConfigError(
        f'tfds dataset {name!r} in {data_dir} is stored as TFRecord, which needs '
        "TensorFlow: pip install 'gensuite[tensorflow]', or re-prepare it with "
        f'`tfds build {name} --data_dir={data_dir} --file_format=array_record`'
    ) from None
  builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  image_key, shape, dtype, label_key, num_classes = _image_features(
      name, builder.info.features)
  try:
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  except (ValueError, KeyError) as e:
    raise ConfigError(f'cannot open split {split!r} of tfds dataset {name!r} in '
                      f'{data_dir}: {_first_line(e)}') from None
  images = np.asarray(arrays[image_key]).reshape((-1, *shape))
  if label_key is None:
    labels = np.zeros((len(images),), np.int64)
  else:
    labels = np.asarray(arrays[label_key], np.int64)
  return ImageSource(name, split, len(images), shape, num_classes,
                     lambda idx: (_scale(images[idx], dtype), labels[idx]))
