"""A tensorflow-datasets builder for scikit-learn's bundled 8x8 digits.

  from gensuite.data import digits_builder
  builder = digits_builder.SklearnDigits(data_dir='/tmp/tfds')
  builder.download_and_prepare()          # offline, no TensorFlow needed
  ds = builder.as_data_source(split='test')
  ds[0]  # {'image': uint8 [8, 8, 1] in 0..16, 'label': int64, 'index': int32}

The data come from `sklearn.datasets.load_digits` (1797 images, bundled with
scikit-learn, so nothing is downloaded). The dataset is written as ArrayRecord with
plain `tfds.features.Tensor` features, which can be written and read without
TensorFlow (tfds's `Image` feature and the TFRecord format need TensorFlow to
write).

Features:
  image: uint8 [8, 8, 1], the raw pixel values 0..16 (NOT rescaled to 0..255).
  label: ClassLabel with 10 classes (the digit).
  index: int32, the row of the example in `load_digits()`.

Splits (shuffling is disabled, so both keep scikit-learn's row order):
  train: rows 0..1499 (1500 examples).
  test: rows 1500..1796 (297 examples).
"""
import os
from typing import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TRAIN = 1500
SPLIT_ROWS = {'train': (0, NUM_TRAIN), 'test': (NUM_TRAIN, NUM_EXAMPLES)}
MAX_PIXEL = 16
FILE_FORMAT = 'array_record'


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, 17 gray levels (0..16)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  # tfds 4.9.10's default `code_path` touches `importlib_resources.abc`, a
  # package tfds only declares for Python < 3.9, so building fails with
  # ModuleNotFoundError on a clean install. This file's path is what it computes.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(os.path.abspath(__file__))

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', FILE_FORMAT)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='scikit-learn load_digits(): 8x8 images, pixels 0..16.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
            'index': tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data are bundled with scikit-learn.
    return {name: self._generate_examples(start, stop)
            for name, (start, stop) in SPLIT_ROWS.items()}

  def _generate_examples(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
    images, labels = load_arrays()
    for i in range(start, stop):
      yield i, {'image': images[i], 'label': int(labels[i]), 'index': i}


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Returns scikit-learn's digits as (uint8 [1797, 8, 8, 1], int64 [1797])."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.asarray(digits.images).astype(np.uint8)[..., None]
  return images, np.asarray(digits.target, np.int64)
