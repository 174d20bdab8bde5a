"""Training data: toy 2-D (or n-D) distributions and image datasets.

  data = gensuite.data.build(config.data, seed=0, global_batch_size=256)
  batch = data.batch(step)         # {'x': np.ndarray [local_batch, ...], 'label': ...}
  data.spec.shape, data.spec.num_classes
  ref = data.reference(rng, 2000)  # fresh draws (toy) or a fixed subset (images) for eval

Batches are a pure function of (seed, step): resuming at step k continues the exact
data order, and each host builds only its own slice of the global batch, so a run on
several hosts sees the same global batch as a run on one.
"""
from gensuite.data import toy
from gensuite.data.sources import DataSpec, ImageData, ToyData
from gensuite.errors import ConfigError

__all__ = ['DataSpec', 'ImageData', 'ToyData', 'build', 'names_hint']


def names_hint() -> str:
  return ', '.join(sorted(toy.NAMES)) + ', digits, or a prepared tfds image dataset name'


def build(data_config, *, seed: int, global_batch_size: int, process_index: int = 0,
          process_count: int = 1, load_run=None):
  """Builds the dataset named by `data_config.name` (see module docstring).

  load_run(workdir) loads another run, for data made by one ('latents': a VAE run);
  gensuite.experiment passes gensuite.load_run.
  """
  name = data_config.name
  kw = dict(seed=seed, global_batch_size=global_batch_size,
            process_index=process_index, process_count=process_count)
  if name in toy.NAMES:
    params = dict(data_config.get('params', {}) or {})
    return ToyData(name, toy.get(name, **params), **kw)
  if name == 'latents':  # a trained VAE run's codes (gensuite/data/latents.py)
    from gensuite.data import latents  # pylint: disable=g-import-not-at-top
    return latents.build(data_config, load_run=load_run, **kw)
  from gensuite.data import images  # pylint: disable=g-import-not-at-top
  if images.is_image_dataset_name(name):
    source = images.open_image_source(name, split=data_config.get('split', 'train'),
                                      data_dir=data_config.get('data_dir', None) or None,
                                      allowed_hint=names_hint())
    return ImageData(name, source, **kw)
  raise ConfigError(f'unknown data name {name!r}; allowed: {names_hint()}')
