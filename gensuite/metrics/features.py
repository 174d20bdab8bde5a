"""Feature-space image metrics computed offline: Fréchet distance, KID, precision/recall.

  extractor = digits_extractor(cache_dir=workdir)   # trains or loads a small classifier
  f_fake, f_real = extractor.features(samples), extractor.features(reference)
  fd = frechet_distance_of_features(f_fake, f_real)
  kid_mean, kid_std = kid(f_fake, f_real, rng)
  precision, recall = precision_recall(f_real, f_fake, k=3)
  mu, cov = frechet_stats(f); frechet_distance(mu1, cov1, mu2, cov2)

The digits metrics (`fd_digits`, `kid_digits`, `precision_digits`, `recall_digits`,
registered in gensuite.metrics) use the penultimate layer (128 features) of a small
conv classifier trained here on the digits train split, with a fixed seed. The
classifier is trained once and stored as DIR/fd_digits/classifier.npz under the run's
workdir, or, without one, under $GENSUITE_CACHE_DIR or ~/.cache/gensuite; later calls
load it. `class_tv_digits` uses its predicted labels: the total variation between the
class proportions of the samples and of the reference, the digits' analogue of the toy
mixtures' mode-mass TV (a student whose later steps move samples between digits shows
it there, not in precision/recall).
These numbers are comparable between runs that use the same classifier file, not
with Inception-based FID values.

Definitions (ALGORITHMS.md §9):
  Fréchet distance  |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) of Gaussians
                    fitted to the two feature sets (the FID formula on other features).
  KID               unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random
                    subsets (Bińkowski et al.): mean and std over subsets.
  precision/recall  k-NN manifolds (Kynkäänniemi et al., k = 3): precision is the
                    fraction of fake features inside some real feature's ball of
                    radius its k-th nearest real neighbour distance; recall swaps roles.

Standard FID (`fid`, `inception_extractor`) uses the FID Inception-v3's 2048 pool3
features (gensuite/nets/inception.py), from a weights file the user supplies:
nothing is downloaded, and without a file `fid` stops with a one-line error. The
reference side is an .npz of (mu, sigma) (`eval.fid_stats`) or the reference images'
statistics, cached under DIR/fid/.
"""
import dataclasses
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from gensuite.errors import ConfigError

DIGITS_SHAPE = (8, 8, 1)
CLASSIFIER_FILE = os.path.join('fd_digits', 'classifier.npz')
# Measured on the 297 test digits with the settings below (see tests/test_image_metrics.py).
CLASSIFIER_SEED = 0
CLASSIFIER_STEPS = 800
CLASSIFIER_BATCH = 128
CLASSIFIER_LR = 3e-3
FEATURE_DIM = 128
_HI = jax.lax.Precision.HIGHEST


class DigitsClassifier(nn.Module):
  """conv 16 - conv 32 (stride 2) - dense 128 (features) - dense 10."""

  @nn.compact
  def __call__(self, x: jax.Array, features: bool = False) -> jax.Array:
    h = nn.relu(nn.Conv(16, (3, 3))(x))
    h = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(h))
    h = nn.relu(nn.Dense(FEATURE_DIM)(h.reshape(h.shape[0], -1)))
    if features:
      return h
    return nn.Dense(10)(h)


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  from gensuite.data import images  # pylint: disable=g-import-not-at-top
  src = images.open_image_source('digits', split=split)
  b = src.get(np.arange(len(src)))
  return np.asarray(b['x'], np.float32), np.asarray(b['label'], np.int32)


def train_digits_classifier(steps: int = CLASSIFIER_STEPS, seed: int = CLASSIFIER_SEED):
  """(params, test_accuracy): Adam on the digits train split, fixed seed and order.

  Light augmentation (Gaussian pixel noise, std 0.1) keeps the features smooth on
  generated images, which are never quite clean.
  """
  x_train, y_train = _load_digits('train')
  x_test, y_test = _load_digits('test')
  net = DigitsClassifier()
  params = net.init(jax.random.PRNGKey(seed), x_train[:1])['params']
  tx = optax.adam(optax.cosine_decay_schedule(CLASSIFIER_LR, steps, alpha=0.05))
  opt_state = tx.init(params)
  xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)

  def loss_fn(p, x, y):
    logits = net.apply({'params': p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def run(params, opt_state):
    def step(carry, i):
      p, o = carry
      k = jax.random.fold_in(jax.random.PRNGKey(seed + 1), i)
      k_idx, k_noise = jax.random.split(k)
      idx = jax.random.randint(k_idx, (CLASSIFIER_BATCH,), 0, xs.shape[0])
      x = xs[idx] + 0.1 * jax.random.normal(k_noise, (CLASSIFIER_BATCH,) + DIGITS_SHAPE)
      grads = jax.grad(loss_fn)(p, x, ys[idx])
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), None
    (p, o), _ = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
    return p

  params = run(params, opt_state)
  logits = net.apply({'params': params}, jnp.asarray(x_test))
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y_test)))
  return params, accuracy


def default_cache_dir() -> str:
  return os.environ.get('GENSUITE_CACHE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'gensuite')


@dataclasses.dataclass
class FeatureExtractor:
  """Penultimate features of the digits classifier; `accuracy` is its test accuracy."""
  params: dict
  accuracy: float
  path: str

  def __post_init__(self):
    net = DigitsClassifier()
    self._apply = jax.jit(lambda p, x: net.apply({'params': p}, x, features=True))

  def features(self, images, batch: int = 1000) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.shape[1:] != DIGITS_SHAPE:
      if x.ndim == 2 and x.shape[1] == int(np.prod(DIGITS_SHAPE)):
        x = x.reshape((-1,) + DIGITS_SHAPE)
      else:
        raise ConfigError(f'digits feature metrics need 8x8x1 images in [-1, 1], got '
                          f'shape {x.shape[1:]}; use them only with data.name=digits')
    out = [np.asarray(self._apply(self.params, x[i:i + batch]))
           for i in range(0, x.shape[0], batch)]
    return np.concatenate(out, 0).astype(np.float64)

  def classify(self, images) -> np.ndarray:
    x = np.asarray(images, np.float32).reshape((-1,) + DIGITS_SHAPE)
    logits = DigitsClassifier().apply({'params': self.params}, x)
    return np.asarray(jnp.argmax(logits, -1))


_EXTRACTORS: dict[str, FeatureExtractor] = {}


def _save(path: str, params, accuracy: float) -> None:
  flat = {'/'.join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params)).items()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.npz', dir=os.path.dirname(path))
  os.close(fd)
  np.savez(tmp, __accuracy__=np.float64(accuracy), __steps__=np.int64(CLASSIFIER_STEPS),
           __seed__=np.int64(CLASSIFIER_SEED), **flat)
  os.replace(tmp, path)


def _load(path: str) -> tuple[dict, float]:
  with np.load(path) as f:
    accuracy = float(f['__accuracy__'])
    flat = {tuple(k.split('/')): jnp.asarray(f[k]) for k in f.files
            if not k.startswith('__')}
  return traverse_util.unflatten_dict(flat), accuracy


def digits_extractor(cache_dir: str | None = None) -> FeatureExtractor:
  """The digits classifier from cache_dir/fd_digits/classifier.npz, trained if absent."""
  path = os.path.abspath(os.path.join(cache_dir or default_cache_dir(), CLASSIFIER_FILE))
  if path not in _EXTRACTORS:
    if os.path.exists(path):
      params, accuracy = _load(path)
    else:
      params, accuracy = train_digits_classifier()
      _save(path, params, accuracy)
    _EXTRACTORS[path] = FeatureExtractor(params, accuracy, path)
  return _EXTRACTORS[path]


# ---- distances on features ------------------------------------------------------------

def class_proportions_tv(labels_a, labels_b, num_classes: int = 10) -> float:
  """1/2 sum_k |p_a(k) - p_b(k)|, p the class proportions of two label arrays."""
  def proportions(labels):
    labels = np.asarray(labels).reshape(-1)
    return np.bincount(labels, minlength=num_classes)[:num_classes] / max(labels.size, 1)
  return 0.5 * float(np.abs(proportions(labels_a) - proportions(labels_b)).sum())


def frechet_stats(features) -> tuple[np.ndarray, np.ndarray]:
  f = np.asarray(features, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def trace_sqrt_product(cov1, cov2) -> float:
  """tr((S1 S2)^{1/2}) for symmetric PSD S1, S2, by two symmetric eigendecompositions.

  S1 S2 is similar to S1^{1/2} S2 S1^{1/2}, which is symmetric PSD, so the trace is
  the sum of the square roots of its eigenvalues. This agrees with the usual
  tr(sqrtm(S1 @ S2)) to rounding (relative 1.5e-15 on a 2048-d pair) and takes 1.9 s
  instead of 10.1 s there on 2 CPU cores; rank-deficient covariances need no jitter.
  """
  w, v = np.linalg.eigh(cov1)
  root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
  m = root1 @ cov2 @ root1
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))
  return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) (float64)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  cov1 = np.atleast_2d(np.asarray(cov1, np.float64))
  cov2 = np.atleast_2d(np.asarray(cov2, np.float64))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2)
               - 2.0 * trace_sqrt_product(cov1, cov2))


def frechet_distance_of_features(f1, f2) -> float:
  return frechet_distance(*frechet_stats(f1), *frechet_stats(f2))


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
  d = x.shape[1]
  kxx = (x @ x.T / d + 1.0)**3
  kyy = (y @ y.T / d + 1.0)**3
  kxy = (x @ y.T / d + 1.0)**3
  m, n = x.shape[0], y.shape[0]
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
               + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def kid(f1, f2, rng=None, num_subsets: int = 100, subset_size: int = 1000
        ) -> tuple[float, float]:
  """(mean, std) over random subsets of the unbiased polynomial-kernel MMD^2."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  size = min(subset_size, f1.shape[0], f2.shape[0])
  if size < 2:
    raise ValueError(f'KID needs at least 2 samples per set, got {f1.shape[0]}, {f2.shape[0]}')
  seed = 0 if rng is None else int(jax.random.randint(rng, (), 0, 2**31 - 1))
  gen = np.random.default_rng(seed)
  values = [
      _poly_mmd2(f1[gen.choice(f1.shape[0], size, replace=False)],
                 f2[gen.choice(f2.shape[0], size, replace=False)])
      for _ in range(num_subsets)
  ]
  return float(np.mean(values)), float(np.std(values))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(sq, 0.0)


def knn_radii(f: np.ndarray, k: int = 3) -> np.ndarray:
  """Distance from each row to its k-th nearest other row."""
  d = _sq_dists(f, f)
  np.fill_diagonal(d, np.inf)
  return np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])


def _inside(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> np.ndarray:
  d = np.sqrt(_sq_dists(queries, manifold))
  return (d <= radii[None, :]).any(1)


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
  """Kynkäänniemi et al.'s k-NN precision and recall of `fake` against `real`."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f'precision/recall with k={k} needs more than {k} points per set')
  precision = _inside(real, knn_radii(real, k), fake).mean()
  recall = _inside(fake, knn_radii(fake, k), real).mean()
  return float(precision), float(recall)


# ---- Inception-v3 FID -----------------------------------------------------------------

def to_uint8_values(images) -> np.ndarray:
  """Images in [-1, 1] -> the integers 0..255 (as float32) an 8-bit PNG would hold.

  floor(127.5 x + 128) clipped, as EDM's sampler writes its PNGs: data images that
  came from 8-bit files get their exact values back.
  """
  x = np.asarray(images, np.float32)
  return np.clip(np.floor(x * 127.5 + 128.0), 0.0, 255.0)


@dataclasses.dataclass
class InceptionExtractor:
  """Pool3 features of the FID Inception-v3 (gensuite.nets.inception) from a weights file."""
  params: dict
  path: str
  resize: str = 'tf'

  def __post_init__(self):
    from gensuite.nets import inception  # pylint: disable=g-import-not-at-top
    self._apply = jax.jit(inception.pool3_features, static_argnums=2)

  def features(self, images, batch: int = 100) -> np.ndarray:
    """[n, h, w, 1 or 3] images in [-1, 1] -> [n, 2048] float64 features.

    The last partial batch is padded to `batch`, so one compilation serves all.
    """
    x = to_uint8_values(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ConfigError(f'fid needs image samples [n, h, w, 1 or 3], got shape '
                        f'{x.shape}; it is an image metric')
    out = []
    for i in range(0, x.shape[0], batch):
      chunk = x[i:i + batch]
      n = chunk.shape[0]
      if n < batch and x.shape[0] > batch:
        chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:],
                                                chunk.dtype)])
      out.append(np.asarray(self._apply(self.params, chunk, self.resize))[:n])
    return np.concatenate(out, 0).astype(np.float64)


_INCEPTIONS: dict[tuple, InceptionExtractor] = {}


def inception_extractor(weights_path: str | None, resize: str = 'tf') -> InceptionExtractor:
  """The FID Inception-v3 from a local weights file (nothing is downloaded).

  Without a file, or with one that is missing or is not these weights, a one-line
  ConfigError says what was wrong. Loaded networks are kept for the process, keyed by
  the file's path, size and modification time.
  """
  from gensuite.nets import inception  # pylint: disable=g-import-not-at-top
  if resize not in inception.RESIZE_MODES:
    raise ConfigError(f'unknown eval.inception_resize {resize!r}; allowed: '
                      f'{", ".join(inception.RESIZE_MODES)}')
  inception.check_weights_path(weights_path)
  st = os.stat(weights_path)
  key = (os.path.abspath(weights_path), st.st_size, st.st_mtime_ns, resize)
  if key not in _INCEPTIONS:
    _INCEPTIONS[key] = InceptionExtractor(inception.load_weights(weights_path),
                                          weights_path, resize)
  return _INCEPTIONS[key]


def load_fid_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an .npz with arrays `mu` [2048] and `sigma` [2048, 2048].

  This is the format of the reference statistics published with TTUR, pytorch-fid
  and EDM (e.g. EDM's cifar10-32x32.npz over the 50k training images).
  """
  if not os.path.isfile(path):
    raise ConfigError(f'fid reference statistics file {path} does not exist')
  try:
    with np.load(path, allow_pickle=False) as f:
      mu, sigma = np.asarray(f['mu'], np.float64), np.asarray(f['sigma'], np.float64)
  except (KeyError, ValueError, OSError) as e:
    raise ConfigError(f'{path}: fid statistics need an .npz with arrays mu and sigma '
                      f'({" ".join(str(e).split())})') from e
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ConfigError(f'{path}: mu has shape {mu.shape} and sigma {sigma.shape}; they '
                      f'must be [d] and [d, d]')
  return mu, sigma


def save_fid_stats(path: str, mu, sigma, **extra) -> None:
  """Writes (mu, sigma) atomically in the format `load_fid_stats` reads."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.npz', dir=os.path.dirname(os.path.abspath(path)))
  os.close(fd)
  np.savez(tmp, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), **extra)
  os.replace(tmp, path)


def reference_fid_stats(extractor: InceptionExtractor, reference,
                        cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of the reference images, cached in cache_dir/fid/ when given.

  The cache file is named by a hash of the reference images' 8-bit values, the
  weights file (path, size, mtime) and the resize mode, so a changed reference set or
  network never reads a stale file.
  """
  x = to_uint8_values(reference)
  if cache_dir:
    import hashlib  # pylint: disable=g-import-not-at-top
    h = hashlib.sha1(x.astype(np.uint8).tobytes())
    h.update(str(x.shape).encode())
    st = os.stat(extractor.path)
    h.update(f'{os.path.abspath(extractor.path)}|{st.st_size}|{st.st_mtime_ns}|'
             f'{extractor.resize}'.encode())
    path = os.path.join(cache_dir, 'fid', f'reference_{h.hexdigest()[:16]}.npz')
    if os.path.exists(path):
      return load_fid_stats(path)
  mu, sigma = frechet_stats(extractor.features(reference))
  if cache_dir:
    save_fid_stats(path, mu, sigma, num=np.int64(x.shape[0]))
  return mu, sigma


def fid(samples, reference, weights_path: str | None, fid_stats: str = '',
        resize: str = 'tf', cache_dir: str | None = None) -> float:
  """Standard FID: Fréchet distance of Inception-v3 pool3 features (images in [-1, 1]).

  The reference side is the `fid_stats` file when given (`reference` is then not
  used), else the statistics of `reference`, cached under cache_dir/fid/.
  """
  extractor = inception_extractor(weights_path, resize)
  if fid_stats:
    mu_ref, sigma_ref = load_fid_stats(fid_stats)
  else:
    mu_ref, sigma_ref = reference_fid_stats(extractor, reference, cache_dir)
  mu, sigma = frechet_stats(extractor.features(samples))
  if mu.shape != mu_ref.shape:
    raise ConfigError(f'fid reference statistics have dimension {mu_ref.shape[0]}, the '
                      f'features {mu.shape[0]}')
  return frechet_distance(mu, sigma, mu_ref, sigma_ref)
