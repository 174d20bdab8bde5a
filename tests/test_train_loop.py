"""End-to-end tests of the training loop through the CLI, in fresh processes."""
import os

import numpy as np
import pytest

from conftest import losses, run_cli, tree_hash
from gensuite.train import logging as log_lib

TOY = 'configs/flow_matching/toy2d.py:smoke'


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('toy') / 'run')
  proc = run_cli('train', f'--config={TOY}', f'--workdir={workdir}')
  return workdir, proc


def test_run_writes_the_contract(toy_run):
  workdir, proc = toy_run
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20'] or \
      {'10', '20'} <= set(os.listdir(os.path.join(workdir, 'checkpoints')))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  by_step = losses(workdir)
  assert sorted(by_step) == [5, 10, 15, 20]
  assert all(np.isfinite(v) for v in by_step.values())
  assert 'TensorBoard logs in' in proc.stdout
  rows = log_lib.read_jsonl(workdir)
  assert any('eval/mmd' in r and r['step'] == 20 for r in rows)


def test_tensorboard_events_hold_scalars_and_image(toy_run):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  workdir, _ = toy_run
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'images': 0, 'scalars': 0})
  acc.Reload()
  tags = acc.Tags()
  assert {'loss', 'l2_grads', 'steps_per_sec', 'lr', 'eval/mmd'} <= set(tags['scalars'])
  assert [e.step for e in acc.Scalars('loss')] == [5, 10, 15, 20]
  assert np.isclose(acc.Scalars('loss')[-1].value, losses(workdir)[20], rtol=1e-6)
  assert 'samples' in tags['images']
  image = acc.Images('samples')[-1]
  assert image.width > 100 and image.height > 100


def test_sample_cli_and_load_run(toy_run, tmp_path):
  workdir, _ = toy_run
  out = str(tmp_path / 's.npz')
  run_cli('sample', f'--workdir={workdir}', '--num=37', '--sampler=rk4', '--steps=4',
          f'--out={out}')
  x = np.load(out)['samples']
  assert x.shape == (37, 2) and np.all(np.isfinite(x))
  import jax  # pylint: disable=g-import-not-at-top
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(workdir)
  assert run.step == 20 and run.config.data.name == '8gaussians'
  y = run.sample(jax.random.PRNGKey(0), 37, sampler='rk4', steps=4)
  np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_rerun_of_finished_run_changes_nothing(toy_run):
  workdir, _ = toy_run
  before = tree_hash(os.path.join(workdir, 'checkpoints'))
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read()
  run_cli('train', f'--config={TOY}', f'--workdir={workdir}')
  assert tree_hash(os.path.join(workdir, 'checkpoints')) == before
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == lines


@pytest.mark.parametrize('args, needle', [
    (['--config.method.name=flow_matchin'], 'flow_matching'),
    (['--config.net.name=mlpp'], 'mlp'),
    (['--config.data.name=moonz'], 'moons'),
    (['--config.sampler.name=eulr'], 'euler'),
    (['--config.train.batch_size=abc'], 'batch_size'),
    (['--config.train.num_stepz=3'], 'num_stepz'),
    (['--config.train.batch_size=62'], 'divisible'),
    (['--config.seed=1'], 'different config'),
])
def test_bad_input_exit_2_and_checkpoints_untouched(toy_run, args, needle):
  workdir, _ = toy_run
  before = tree_hash(workdir)
  proc = run_cli('train', f'--config={TOY}', f'--workdir={workdir}', *args, devices=4,
                 check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('gensuite: error:'), proc.stderr[-2000:]
  assert needle in err[0]
  assert tree_hash(workdir) == before


def test_unknown_command_and_bad_variant():
  proc = run_cli('trian', check=False)
  assert proc.returncode == 2 and 'train' in proc.stderr
  proc = run_cli('train', '--config=configs/flow_matching/toy2d.py:moonz',
                 '--workdir=/tmp/never_written', check=False)
  assert proc.returncode == 2 and 'moons' in proc.stderr
  assert not os.path.exists('/tmp/never_written')
  proc = run_cli('train', '--config=configs/flow_matching/nope.py',
                 '--workdir=/tmp/never_written', check=False)
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
  assert 'nope.py' in proc.stderr


def test_digits_unet_run_logs_an_image_grid(tmp_path):
  workdir = str(tmp_path / 'digits')
  proc = run_cli('train', '--config=configs/flow_matching/digits.py:smoke,cond',
                 f'--workdir={workdir}')
  assert 'samples:' in proc.stdout
  pngs = os.listdir(os.path.join(workdir, 'samples'))
  assert pngs == ['step_00000006.png']
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(Image.open(os.path.join(workdir, 'samples', pngs[0])))
  # A conditional run's grid: one column per class (10), each 8x8 digit drawn at
  # 32x32 with its label in a strip under it, a 2 px border around each.
  assert image.shape[-1] == 3
  assert image.shape[1] == 10 * (32 + 2) + 2
  assert image.shape[0] == 7 * (32 + 11 + 2) + 2  # 64 digits: 7 rows of 10
  # The pictures are for looking: `gensuite sample` writes the exact 8x8 samples.
  out = os.path.join(workdir, 'x.npz')
  run_cli('sample', f'--workdir={workdir}', '--num=5', '--sampler=euler', '--steps=4',
          f'--out={out}')
  got = np.load(out)['samples']
  assert got.shape == (5, 8, 8, 1) and got.dtype == np.float32
  assert sorted(losses(workdir)) == [2, 4, 6]
