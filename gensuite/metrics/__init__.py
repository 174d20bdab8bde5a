"""Evaluation metrics on samples: a registry and one entry point.

  results = metrics.evaluate(('mmd', 'nll'), rng, samples, reference,
                             log_prob=dist.log_prob)   # {'mmd': ..., 'nll': ..., ...}
  sorted(metrics.METRICS)    # energy_distance, mmd, nll, sliced_wasserstein

Samples and reference are [n, ...] arrays (flattened to [n, d]). The metrics:
  mmd                 unbiased MMD^2, RBF kernel whose bandwidth is the median
                      heuristic on the reference alone (so it does not move with
                      the model's samples);
  sliced_wasserstein  SW_2^2 with 256 directions (both sets cut to the smaller size);
  energy_distance     U-statistic energy distance;
  nll                 mean -log p(samples) under the true density `log_prob`
                      (inf when some sample has zero density); it also adds
                      'nll_finite_fraction'. Skipped when log_prob is None.
  fd_digits, kid_digits, precision_digits, recall_digits
                      Fréchet distance, KID (unbiased, cubic kernel) and k-NN
                      precision/recall (k = 3) on the features of a small digits
                      classifier (metrics/features.py), cached under `workdir`
                      (or ~/.cache/gensuite when workdir is None).
  class_tv_digits     the total variation between the class proportions of samples
                      and reference, as that classifier labels them.
  on_mode, mode_mass_tv, modes_covered
                      for data drawn from a Gaussian mixture (toy.GaussianMixture,
                      passed as `mixture`; skipped for other data): the fraction of
                      samples within 3 stds of a mode, the total variation between
                      the nearest-mode masses and the weights, and the modes holding
                      at least 10% of their expected count (distances.mode_statistics).
  fid                 standard FID on the 2048 pool3 features of the FID Inception-v3
                      (nets/inception.py) read from a local weights file, option
                      `inception_weights` (config.eval.inception_weights); against
                      the (mu, sigma) .npz `fid_stats` when given, else against the
                      reference images, whose statistics are cached in workdir/fid/.
                      `inception_resize`: 'tf' (TTUR's graph, default) or
                      'pytorch_fid'. Samples are [n, h, w, 1 or 3] in [-1, 1].
Each metric gets its own key, fold_in(rng, its index in METRICS), so a value does not
depend on which other metrics were asked for. Importing this package pulls in only
JAX and numpy.
"""
from typing import Callable, Sequence

import jax
import numpy as np

from gensuite.errors import ConfigError, lookup
from gensuite.metrics import distances

MetricFn = Callable[[jax.Array, np.ndarray, np.ndarray, Callable | None], float | None]


def _flat(x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x.reshape(x.shape[0], -1)


def _mmd(rng, samples, reference, log_prob):
  del rng, log_prob
  return distances.mmd2_unbiased(samples, reference,
                                 distances.median_bandwidth(reference))


def _sliced_wasserstein(rng, samples, reference, log_prob):
  del log_prob
  n = min(samples.shape[0], reference.shape[0])
  return distances.sliced_wasserstein(rng, samples[:n], reference[:n])


def _energy_distance(rng, samples, reference, log_prob):
  del rng, log_prob
  return distances.energy_distance(samples, reference)


def _nll(rng, samples, reference, log_prob):
  del rng, reference
  if log_prob is None:
    return None
  return distances.nll(samples, log_prob)


def _fid(rng, samples, reference, log_prob, workdir=None, image_shape=None,
         inception_weights='', fid_stats='', inception_resize='tf'):
  del rng, log_prob
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  shape = (-1,) + tuple(image_shape or ())
  return features.fid(samples.reshape(shape), reference.reshape(shape), inception_weights,
                      fid_stats=fid_stats, resize=inception_resize, cache_dir=workdir)


def _digits_features(samples, reference, workdir):
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  extractor = features.digits_extractor(workdir)
  return extractor.features(samples), extractor.features(reference)


def _fd_digits(rng, samples, reference, log_prob, workdir=None):
  del rng, log_prob
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  return features.frechet_distance_of_features(*_digits_features(samples, reference, workdir))


def _kid_digits(rng, samples, reference, log_prob, workdir=None):
  del log_prob
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  return features.kid(*_digits_features(samples, reference, workdir), rng)[0]


def _precision_digits(rng, samples, reference, log_prob, workdir=None):
  del rng, log_prob
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  fake, real = _digits_features(samples, reference, workdir)
  return features.precision_recall(real, fake)[0]


def _recall_digits(rng, samples, reference, log_prob, workdir=None):
  del rng, log_prob
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  fake, real = _digits_features(samples, reference, workdir)
  return features.precision_recall(real, fake)[1]


def _class_tv_digits(rng, samples, reference, log_prob, workdir=None):
  del rng, log_prob
  from gensuite.metrics import features  # pylint: disable=g-import-not-at-top
  extractor = features.digits_extractor(workdir)
  return features.class_proportions_tv(extractor.classify(samples),
                                       extractor.classify(reference))


def _is_mixture(mixture) -> bool:
  return all(hasattr(mixture, a) for a in ('means', 'stds', 'weights'))


def _on_mode(rng, samples, reference, log_prob, mixture=None):
  del rng, reference, log_prob
  if not _is_mixture(mixture):
    return None
  return distances.on_mode(samples, mixture.means, mixture.stds)


def _mode_mass_tv(rng, samples, reference, log_prob, mixture=None):
  del rng, reference, log_prob
  if not _is_mixture(mixture):
    return None
  return distances.mode_statistics(samples, mixture.means, mixture.weights, mixture.stds)[0]


def _modes_covered(rng, samples, reference, log_prob, mixture=None):
  del rng, reference, log_prob
  if not _is_mixture(mixture):
    return None
  return distances.mode_statistics(samples, mixture.means, mixture.weights, mixture.stds)[1]


METRICS: dict[str, MetricFn] = {
    'mmd': _mmd,
    'sliced_wasserstein': _sliced_wasserstein,
    'energy_distance': _energy_distance,
    'nll': _nll,
    'fd_digits': _fd_digits,
    'kid_digits': _kid_digits,
    'precision_digits': _precision_digits,
    'recall_digits': _recall_digits,
    'fid': _fid,
    'on_mode': _on_mode,
    'mode_mass_tv': _mode_mass_tv,
    'modes_covered': _modes_covered,
    'class_tv_digits': _class_tv_digits,  # appended: the keys of the others stay
}
# Keywords, beyond (rng, samples, reference, log_prob), that a metric takes: where it
# caches what it builds (`workdir`), the samples' shape before flattening, and the
# `config.eval` options named in FID_OPTIONS.
FID_OPTIONS = ('inception_weights', 'fid_stats', 'inception_resize')
_KEYWORDS = {
    'fd_digits': ('workdir',), 'kid_digits': ('workdir',),
    'precision_digits': ('workdir',), 'recall_digits': ('workdir',),
    'class_tv_digits': ('workdir',),
    'fid': ('workdir', 'image_shape') + FID_OPTIONS,
    'on_mode': ('mixture',), 'mode_mass_tv': ('mixture',), 'modes_covered': ('mixture',),
}


def eval_options(eval_config) -> dict:
  """The FID_OPTIONS set in a `config.eval` section (older runs may lack them)."""
  return {k: eval_config[k] for k in FID_OPTIONS if k in eval_config}


def check(names: Sequence[str], **options) -> None:
  """Raises a one-line ConfigError for an unknown metric, or for `fid` without what
  it needs (an existing weights file, an existing stats file when one is named, a
  known resize mode), so a run fails before it trains rather than at its first eval.
  """
  for name in names:
    lookup('metric', name, METRICS)
  if 'fid' not in names:
    return
  import os  # pylint: disable=g-import-not-at-top
  from gensuite.nets import inception  # pylint: disable=g-import-not-at-top
  inception.check_weights_path(options.get('inception_weights', ''))
  stats = options.get('fid_stats', '')
  if stats and not os.path.isfile(stats):
    raise ConfigError(f'config.eval.fid_stats: file {stats} does not exist')
  resize = options.get('inception_resize', 'tf')
  if resize not in inception.RESIZE_MODES:
    raise ConfigError(f'config.eval.inception_resize must be one of '
                      f'{", ".join(inception.RESIZE_MODES)}, got {resize!r}')


def evaluate(names: Sequence[str], rng: jax.Array, samples, reference,
             log_prob: Callable | None = None, workdir: str | None = None,
             mixture=None, **options) -> dict[str, float]:
  """Computes the named metrics of samples against reference (module docstring).

  Unknown names raise ConfigError before anything is computed. `workdir` is where
  metrics that build something (the digits classifier, FID reference statistics)
  cache it. `mixture` is the data's Gaussian mixture, if it is one (the mode
  metrics). `options` are FID_OPTIONS (for `fid`); others are refused.
  """
  fns = {name: lookup('metric', name, METRICS) for name in names}
  unknown = sorted(set(options) - set(FID_OPTIONS))
  if unknown:
    raise ConfigError(f'unknown metric option {unknown[0]!r}; allowed: '
                      f'{", ".join(FID_OPTIONS)}')
  order = list(METRICS)
  given = dict(options, workdir=workdir, image_shape=np.shape(samples)[1:],
               mixture=mixture)
  samples, reference = _flat(samples), _flat(reference)
  results = {}
  for name, fn in fns.items():
    kw = {k: given[k] for k in _KEYWORDS.get(name, ()) if k in given}
    value = fn(jax.random.fold_in(rng, order.index(name)), samples, reference, log_prob, **kw)
    if value is None:
      continue
    results[name] = float(value)
    if name == 'nll':
      results['nll_finite_fraction'] = distances.nll_finite_fraction(samples, log_prob)
  return results
