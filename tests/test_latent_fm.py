"""Flow matching in a VAE's latent space: the 'latents' data source and the decode hook.

  PYTHONPATH=$PWD .venv/bin/python -m pytest -q tests/test_latent_fm.py

A smoke digits VAE is trained once; the tests check that its codes are the encoder
means (standardised and exactly invertible), that 'sample' latents are reproducible
per step with the posterior's spread, that bad data configs are ConfigErrors, and
that a latent flow-matching run trains through the loop and `gensuite sample`
writes decoded images of the VAE data's shape.
"""
import math
import os

import jax
import gensuite
import ml_collections
import numpy as np
import pytest

from conftest import run_cli
from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite.errors import ConfigError

LATENT = 'configs/flow_matching/latent_digits.py'


@pytest.fixture(scope='module')
def vae_run(tmp_path_factory):
  from gensuite import train  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('latent')
  config = config_lib.from_file('configs/vae/digits.py:smoke,mlp')
  with config.unlocked():
    config.train.eval_every = 0
  workdir = str(root / 'vae')
  train.run(config, workdir)
  return workdir


def _latents(vae_workdir, **fields):
  c = ml_collections.ConfigDict(dict(name='latents', vae_workdir=vae_workdir, **fields))
  return data_lib.build(c, seed=3, global_batch_size=32, load_run=gensuite.load_run)


def test_codes_are_standardised_encoder_means_and_decode_inverts(vae_run):
  import gensuite  # pylint: disable=g-import-not-at-top
  data = _latents(vae_run)
  assert data.spec.kind == 'latent' and data.spec.shape == (8,)
  assert data.spec.num_classes == 10 and len(data) == 1500
  np.testing.assert_allclose(data.codes.mean(0), 0.0, atol=1e-4)
  np.testing.assert_allclose(data.codes.std(0), 1.0, rtol=1e-3)
  run = gensuite.load_run(vae_run)
  params = run.state.eval_params(True)
  x = run.experiment.data.source.get(np.arange(5))['x']
  mu, _ = run.method.encode(params, x)
  np.testing.assert_allclose(data.codes[:5] * data.scale + data.shift, mu, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(data.decode(data.codes[:5]), run.method.decode(params, mu),
                             rtol=1e-5, atol=1e-5)
  batch = data.batch(2)
  assert batch['x'].shape == (32, 8) and batch['label'].shape == (32,)
  np.testing.assert_array_equal(batch['x'], data.codes[data.indices(2)])
  assert data.reference(jax.random.PRNGKey(0), 7).shape == (7, 8, 8, 1)


def test_sampled_latents_are_reproducible_and_spread_by_sigma(vae_run):
  data = _latents(vae_run, latents='sample', standardize=False)
  a, b = data.batch(4), data.batch(4)
  np.testing.assert_array_equal(a['x'], b['x'])  # a function of (seed, step): resumable
  assert not np.array_equal(a['x'], data.batch(5)['x'])
  # z - mu over many batches is N(0, sigma^2): its standardised second moment is 1.
  ratios = []
  for step in range(40):
    idx = data.indices(step)
    ratios.append((data.batch(step)['x'] - data.codes[idx]) / data.sigma[idx])
  r = np.concatenate(ratios)
  assert abs(float(np.mean(r**2)) - 1.0) < 0.06 and abs(float(np.mean(r))) < 0.03


def test_bad_latents_config(vae_run, tmp_path):
  with pytest.raises(ConfigError, match='needs data.vae_workdir'):
    _latents('')
  with pytest.raises(ConfigError, match="unknown data.latents 'median'"):
    _latents(vae_run, latents='median')
  with pytest.raises(ConfigError, match='no run in'):
    _latents(str(tmp_path / 'nothing'))


def run_config_samples(workdir):
  return int(config_lib.load(workdir).eval.num_samples)


@pytest.fixture(scope='module')
def latent_run(vae_run, tmp_path_factory):
  from gensuite import train  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file(f'{LATENT}:smoke')
  with config.unlocked():
    config.data.vae_workdir = vae_run
  workdir = str(tmp_path_factory.mktemp('lfm') / 'run')
  state = train.run(config, workdir)
  return workdir, state


def test_latent_flow_matching_trains_and_decodes_to_images(latent_run):
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  workdir, state = latent_run
  assert int(state.step) == 8
  rows = [r for r in log_lib.read_jsonl(workdir) if 'eval/mmd' in r]
  assert rows and np.isfinite(rows[-1]['eval/mmd'])  # decoded samples vs real digits
  grid = os.path.join(workdir, 'samples', 'step_00000008.png')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  n = min(run_config_samples(workdir), 64)  # an image grid of 8x8 digits, not a scatter
  cols = math.ceil(math.sqrt(n))
  # Each 8x8 digit drawn at 32x32 with a 2 px border (gensuite.pictures.image_grid).
  assert np.asarray(Image.open(grid)).shape == (math.ceil(n / cols) * 34 + 2, cols * 34 + 2, 3)
  run = gensuite.load_run(workdir)
  x = run.sample(jax.random.PRNGKey(0), 12)
  assert x.shape == (12, 8, 8, 1) and np.all(np.isfinite(x))
  z = run.sample(jax.random.PRNGKey(0), 12, decode=False)  # the flow's own codes
  assert z.shape == (12, 8)
  np.testing.assert_allclose(run.experiment.data.decode(z), x, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sample_cli_writes_decoded_images(latent_run, tmp_path):
  import gensuite  # pylint: disable=g-import-not-at-top
  workdir, _ = latent_run
  out = str(tmp_path / 'x.npz')
  run_cli('sample', f'--workdir={workdir}', '--num=12', f'--out={out}')
  x = np.load(out)['samples']
  assert x.shape == (12, 8, 8, 1) and np.all(np.isfinite(x))
  np.testing.assert_allclose(gensuite.load_run(workdir).sample(jax.random.PRNGKey(0), 12),
                             x, rtol=1e-4, atol=1e-5)
