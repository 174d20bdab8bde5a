"""The 'latents' data source: a trained VAE run's codes of its own training data.

  config.data = dict(name='latents', vae_workdir='runs/vae_digits', latents='mean',
                     standardize=True)
  data = gensuite.data.build(config.data, seed=0, global_batch_size=128,
                             load_run=gensuite.load_run)
  data.batch(step)['x']          # [B, latent_dim] codes (and 'label' when the data has them)
  images = data.decode(z)        # codes -> the VAE decoder's mean, in data space
  data.reference(rng, 500)       # real data (images), the space decoded samples live in

Flow matching in latent space (Dao et al., arXiv 2307.08698) trains the usual flow
on z = Enc(x) of a frozen autoencoder and decodes what it samples. The VAE run
is loaded with the load_run it is given (gensuite.load_run: latest checkpoint, EMA params unless
data.use_ema is False). Its whole training split is encoded once (an image
dataset), or data.num_examples fresh draws of a toy distribution. latents='mean'
uses the posterior means mu(x); latents='sample' draws z = mu + sigma * eps afresh
for each batch, from a key fixed by (seed, step), so resuming retraces the run.
standardize=True shifts and scales each latent dimension to zero mean and unit
variance over the encoded set (std floored at 1e-3), and decode undoes it.

The loop applies `decode` to method samples (Experiment.sample), so eval metrics,
pictures and `gensuite sample` all see data-space samples; `reference` and
`log_prob` are the VAE data's own.
"""
import dataclasses

import jax
import numpy as np

from gensuite.data.sources import ImageData
from gensuite.errors import ConfigError

NAME = 'latents'
LATENT_KINDS = ('mean', 'sample')
_ENCODE_BATCH = 500
_LATENT_SEED_TAG = 0x1A7E


def _encode_all(method, params, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  encode = jax.jit(lambda p, xb: method.encode(p, xb))
  mus, log_vars = [], []
  for start in range(0, len(x), _ENCODE_BATCH):
    mu, log_var = encode(params, x[start:start + _ENCODE_BATCH])
    mus.append(np.asarray(mu, np.float32))
    log_vars.append(np.asarray(log_var, np.float32))
  return np.concatenate(mus), np.concatenate(log_vars)


class _CodeSource:
  """Posterior means (and labels) in the random-access form ImageData reads."""

  def __init__(self, mu: np.ndarray, labels: np.ndarray | None, num_classes: int | None):
    self.mu = mu
    self.labels = labels
    self.shape = mu.shape[1:]
    self.num_classes = num_classes if labels is not None else None

  def __len__(self) -> int:
    return len(self.mu)

  def get(self, idx):
    label = self.labels[idx] if self.labels is not None else np.zeros(len(idx), np.int32)
    return {'x': self.mu[idx], 'label': label}


def build(data_config, *, seed: int, global_batch_size: int, process_index: int = 0,
          process_count: int = 1, load_run=None):
  """LatentData from config.data (see module docstring); ConfigError on bad fields.

  load_run(workdir) loads the VAE run (gensuite.load_run; the experiment passes it).
  """
  vae_workdir = data_config.get('vae_workdir', '') or ''
  if not vae_workdir:
    raise ConfigError("data 'latents' needs data.vae_workdir, the workdir of a trained "
                      "VAE run (method.name='vae')")
  kind = data_config.get('latents', 'mean')
  if kind not in LATENT_KINDS:
    raise ConfigError(f'unknown data.latents {kind!r}; allowed: ' + ', '.join(LATENT_KINDS))
  num_examples = int(data_config.get('num_examples', 10000))
  if num_examples <= 0:
    raise ConfigError(f'data.num_examples must be positive, got {num_examples}')
  if load_run is None:
    raise ConfigError("data 'latents' loads its VAE run through the experiment: build it "
                      'with gensuite.experiment.build_experiment, or pass '
                      'load_run=gensuite.load_run to gensuite.data.build')
  vae_run = load_run(vae_workdir)
  if vae_run.config.method.name != 'vae':
    raise ConfigError(f'data.vae_workdir={vae_workdir} holds a '
                      f'{vae_run.config.method.name!r} run; latents need a VAE run '
                      "(method.name='vae')")
  return LatentData(vae_run, kind=kind, standardize=bool(data_config.get('standardize', True)),
                    num_examples=num_examples, use_ema=data_config.get('use_ema', True),
                    seed=seed, global_batch_size=global_batch_size,
                    process_index=process_index, process_count=process_count)


class LatentData:
  """Codes of a VAE run's data, batched like an image dataset (see module docstring)."""

  def __init__(self, vae_run, *, kind: str, standardize: bool, num_examples: int,
               use_ema, seed: int, global_batch_size: int, process_index: int = 0,
               process_count: int = 1):
    self.vae_run = vae_run
    self.vae_method = vae_run.method
    self.vae_data = vae_run.experiment.data
    self.kind = kind
    self.params = vae_run.state.eval_params(use_ema)
    source = getattr(self.vae_data, 'source', None)
    if source is not None:
      every = source.get(np.arange(len(source)))
      x, labels = every['x'], every['label']
    else:
      key = jax.random.fold_in(jax.random.PRNGKey(seed), _LATENT_SEED_TAG)
      x, labels = np.asarray(self.vae_data.reference(key, num_examples), np.float32), None
    mu, log_var = _encode_all(self.vae_method, self.params, x)
    self.sigma = np.exp(0.5 * log_var)
    self.shift = mu.mean(0) if standardize else np.zeros(mu.shape[1], np.float32)
    if standardize:
      var = mu.var(0) + (np.mean(self.sigma**2, 0) if kind == 'sample' else 0.0)
      self.scale = np.maximum(np.sqrt(var), 1e-3).astype(np.float32)
    else:
      self.scale = np.ones(mu.shape[1], np.float32)
    self.codes = ((mu - self.shift) / self.scale).astype(np.float32)
    self._images = ImageData(NAME, _CodeSource(self.codes, labels,
                                               self.vae_data.spec.num_classes),
                             seed=seed, global_batch_size=global_batch_size,
                             process_index=process_index, process_count=process_count)
    self.spec = dataclasses.replace(self._images.spec, kind='latent')
    self.global_batch_size = global_batch_size
    self._seed = seed
    self._slice = self._images._slice  # pylint: disable=protected-access
    self._decode = jax.jit(lambda p, z: self.vae_method.decode(p, z))

  def __len__(self) -> int:
    return len(self.codes)

  def indices(self, step: int) -> np.ndarray:
    """Rows of `codes` in this host's part of batch `step`."""
    return self._images.indices(step)

  def batch(self, step: int) -> dict[str, np.ndarray]:
    batch = self._images.batch(step)
    if self.kind == 'sample':
      idx = self.indices(step)
      rng = np.random.default_rng([self._seed, _LATENT_SEED_TAG, step])
      eps = rng.standard_normal((self.global_batch_size, self.codes.shape[1]))[self._slice]
      batch['x'] = (batch['x'] + eps * self.sigma[idx] / self.scale).astype(np.float32)
    if self._images.spec.num_classes is None:
      batch.pop('label')
    return batch

  def decode(self, z) -> np.ndarray:
    """Codes (as served by `batch`) -> the VAE decoder's mean, in data space."""
    z = np.asarray(z, np.float32) * self.scale + self.shift
    out = [np.asarray(self._decode(self.params, z[s:s + _ENCODE_BATCH]))
           for s in range(0, len(z), _ENCODE_BATCH)]
    return np.concatenate(out) if out else np.zeros((0,) + self.vae_data.spec.shape)

  def reference(self, rng, n: int) -> np.ndarray:
    return self.vae_data.reference(rng, n)

  @property
  def log_prob(self):
    return self.vae_data.log_prob
