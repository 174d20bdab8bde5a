"""Sweeps: grids, failures recorded without stopping the others, re-runs skip finished runs."""
import csv
import os

import pytest

from conftest import run_cli, tree_hash
from gensuite import sweep
from gensuite.errors import ConfigError


def test_grid_helpers():
  assert sweep.product(a=[1, 2], b=['x']) == [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
  assert sweep.zip_(a=[1, 2], b=[3, 4]) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(ConfigError):
    sweep.zip_(a=[1, 2], b=[3])
  points = sweep.random_search(50, seed=1, lr=('log', 1e-4, 1e-2), depth=[2, 3])
  assert points == sweep.random_search(50, seed=1, lr=('log', 1e-4, 1e-2), depth=[2, 3])
  assert all(1e-4 <= p['lr'] <= 1e-2 and p['depth'] in (2, 3) for p in points)
  assert sweep.run_name({'seed': 0, 'optim.lr': 0.001}) == 'optim.lr=0.001,seed=0'


def test_sweep_records_failures_and_resumes(tmp_path):
  sweep_file = tmp_path / 'sw.py'
  sweep_file.write_text('from gensuite import sweep\n'
                        'def get_sweep():\n'
                        "  return sweep.product(**{'optim.lr': [1e-3, 3e-3]}) + "
                        "[{'train.batch_size': 'abc'}]\n")
  workdir = str(tmp_path / 'sweep')
  args = ['sweep', '--config=configs/flow_matching/toy2d.py:smoke', f'--sweep={sweep_file}',
          f'--workdir={workdir}', '--config.train.eval_every=0']
  proc = run_cli(*args)
  assert 'optim.lr=0.001 | done' in proc.stdout
  with open(os.path.join(workdir, 'summary.csv')) as f:
    rows = {r['run']: r for r in csv.DictReader(f)}
  assert rows['optim.lr=0.001']['status'] == 'done'
  assert rows['optim.lr=0.003']['status'] == 'done'
  assert rows['train.batch_size=abc']['status'] == 'failed'
  assert 'batch_size' in rows['train.batch_size=abc']['error']
  assert float(rows['optim.lr=0.001']['step']) == 20
  assert rows['optim.lr=0.001']['loss'] != rows['optim.lr=0.003']['loss']
  done = os.path.join(workdir, 'optim.lr=0.001')
  before = tree_hash(done)
  run_cli(*args)
  assert tree_hash(done) == before  # finished runs are skipped, not retrained
