"""Slow: the default toy config learns the 8-Gaussians ring to within sampling noise."""
import jax
import numpy as np
import pytest

import gensuite
import gensuite.config
from gensuite.metrics import distances


@pytest.mark.slow
def test_8gaussians_is_indistinguishable_from_data_at_n_2000(tmp_path):
  config = gensuite.config.from_file('configs/flow_matching/toy2d.py')
  gensuite.train.run(config, str(tmp_path / 'run'))
  run = gensuite.load_run(str(tmp_path / 'run'))
  dist = run.experiment.data.dist
  k_null, k_ref, k_s = jax.random.split(jax.random.PRNGKey(99), 3)
  reference = np.asarray(dist.sample(k_ref, 2000))
  bw = float(distances.median_bandwidth(reference))
  null95 = distances.mmd2_null_quantile(dist.sample, k_null, 2000, q=0.95, num_pairs=100,
                                        bandwidths=bw)
  x = run.sample(k_s, 2000, sampler='heun', steps=50)
  assert float(distances.mmd2_unbiased(x, reference, bw)) < null95
