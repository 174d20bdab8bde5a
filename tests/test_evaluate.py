"""The one evaluator: `gensuite eval` with --config.eval.* / --config.sampler.* overrides
computes what `load_run(...).evaluate()` computes after the same config changes, and
an override of a trained field, or of an unknown sampler, is one line with exit 2
that leaves the run's files as they were."""
import os

import numpy as np
import pytest

from conftest import run_cli, tree_hash

OVERRIDES = {'eval.num_samples': '200', 'eval.metrics': "('mmd', 'energy_distance')",
             'sampler.name': 'dpm_solver_2m', 'sampler.steps': '6'}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  from gensuite import train  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('evaluate') / 'run')
  config = config_lib.from_file('configs/diffusion/toy2d.py:smoke')
  with config.unlocked():
    config.train.eval_every = 0
  train.run(config, path)
  return path


def test_cli_eval_overrides_equal_run_evaluate(workdir):
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  proc = run_cli('eval', f'--workdir={workdir}',
                 *(f'--config.{k}={v}' for k, v in OVERRIDES.items()))
  printed = dict(line.split(': ') for line in proc.stdout.strip().splitlines())
  assert set(printed) >= {'eval/mmd', 'eval/energy_distance'}
  assert 'eval/nll' not in printed  # the override replaced the config's metric list
  run = gensuite.load_run(workdir)
  config_lib.apply_overrides(run.config, OVERRIDES, ('eval.', 'sampler.'))
  results = run.evaluate()
  for name in ('eval/mmd', 'eval/energy_distance'):
    np.testing.assert_allclose(float(printed[name]), results[name], rtol=1e-4, atol=1e-7)
  # The short flags are the same fields: --sampler/--steps/--num/--metrics.
  proc = run_cli('eval', f'--workdir={workdir}', '--sampler=dpm_solver_2m', '--steps=6',
                 '--num=200', '--metrics=mmd,energy_distance')
  short = dict(line.split(': ') for line in proc.stdout.strip().splitlines())
  assert short['eval/mmd'] == printed['eval/mmd']


@pytest.mark.parametrize('override, needle', [
    ('--config.optim.lr=1.0', 'cannot change a trained run'),
    ('--config.sampler.name=nosuch', 'nosuch'),
    ('--config.eval.num_samples=many', 'must be an integer'),
])
def test_cli_eval_bad_override_is_one_line_and_writes_nothing(workdir, override, needle):
  before = tree_hash(workdir)
  proc = run_cli('eval', f'--workdir={workdir}', override, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert tree_hash(workdir) == before
  assert os.path.exists(os.path.join(workdir, 'config.json'))
