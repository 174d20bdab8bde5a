"""Failure handling: non-finite steps, bad config input, checkpoint format and
architecture mismatches, and `gensuite eval` on a run that is later resumed."""
import json
import os
import pickle
import shutil

import jax
import numpy as np
import pytest

from conftest import losses, run_cli, tree_hash
from gensuite import config as config_lib
from gensuite.errors import ConfigError
from gensuite.train import checkpoint as ckpt_lib
from gensuite.train import logging as log_lib

TOY = 'configs/flow_matching/toy2d.py:smoke'


def _one_line_error(proc, code=2):
  assert proc.returncode == code, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gensuite: error:'), proc.stderr[-2000:]
  return lines[0]


# ---- non-finite loss / gradients -------------------------------------------------

def test_nonfinite_step_stops_before_any_bad_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  # NaN at step 13; no log before step 100, so the check before the step-20 save
  # is what catches it.
  proc = run_cli('train', f'--config={TOY}', f'--workdir={workdir}',
                 '--config.train.num_steps=30', '--config.train.log_every=100',
                 '--config.train.ckpt_every=10', '--config.train.eval_every=0',
                 check=False, GENSUITE_FAULT_NAN_AT_STEP=13)
  line = _one_line_error(proc, code=1)
  assert 'non-finite' in line and 'step 13' in line and 'checkpoints/10' in line
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10']
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(workdir)
  assert run.step == 10
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(run.state))


def test_skip_nonfinite_leaves_state_unchanged_and_counts_the_step(tmp_path, monkeypatch):
  from gensuite import experiment  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('GENSUITE_FAULT_NAN_AT_STEP', '3')
  config = config_lib.from_file(TOY)
  with config.unlocked():
    config.train.skip_nonfinite = True
  exp = experiment.build_experiment(config)
  state = exp.init_state()
  acc = exp.empty_accumulator(state)
  snapshots = []
  for step in range(4):
    state, acc = exp.train_step(state, acc, exp.global_batch(step))
    snapshots.append([np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state,
                                                             state.ema))])
  acc = jax.device_get(acc)
  assert int(state.step) == 4
  for x, y in zip(snapshots[1], snapshots[2]):  # step 3 was skipped: bitwise unchanged
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(snapshots[2], snapshots[3]))
  assert all(np.all(np.isfinite(x)) for x in snapshots[3])
  assert int(acc['first_nonfinite']) == 3 and float(acc['skipped_steps']) == 1.0
  assert float(acc['count']) == 3.0 and np.isfinite(acc['loss'])


def test_skip_nonfinite_run_completes_and_logs_skipped_steps(tmp_path):
  workdir = str(tmp_path / 'skip')
  run_cli('train', f'--config={TOY}', f'--workdir={workdir}', '--config.train.eval_every=0',
          '--config.train.skip_nonfinite=True', GENSUITE_FAULT_NAN_AT_STEP=7)
  rows = [r for r in log_lib.read_jsonl(workdir) if 'skipped_steps' in r]
  assert {r['step']: r['skipped_steps'] for r in rows} == {5: 0.0, 10: 1.0, 15: 0.0, 20: 0.0}
  assert all(np.isfinite(v) for v in losses(workdir).values())


# ---- config types and incompatible settings ---------------------------------------

@pytest.mark.parametrize('path, value, needle', [
    ('train.batch_size', '64', 'config.train.batch_size must be an integer'),
    ('train.log_every', True, 'config.train.log_every must be an integer'),
    ('optim.lr', 'big', 'config.optim.lr must be a number'),
    ('optim.ema_decays', 0.999, 'config.optim.ema_decays must be a tuple'),
    ('train.skip_nonfinite', 1, 'config.train.skip_nonfinite must be a bool'),
    ('sampler.steps', 2.5, 'config.sampler.steps must be an integer'),
    ('eval.use_ema', 1, 'config.eval.use_ema must be a bool or a string'),
    ('data.name', 3, 'config.data.name must be a string'),
])
def test_every_shared_field_type_is_checked(path, value, needle):
  import ml_collections  # pylint: disable=g-import-not-at-top
  # A config file can build a section from a plain dict with any types; so does this.
  d = config_lib.to_dict(config_lib.from_file(TOY))
  section, name = path.split('.')
  d[section][name] = value
  with pytest.raises(ConfigError, match=needle.replace('.', r'\.')):
    config_lib.validate(ml_collections.ConfigDict(d))


def test_unknown_fields_in_closed_sections_list_the_allowed_ones():
  config = config_lib.base()
  config.train.num_stepz = 3
  with pytest.raises(ConfigError, match=r"config\.train has no field 'num_stepz'; "
                     r'allowed: .*batch_size.*num_steps'):
    config_lib.validate(config)
  config = config_lib.base()
  config.sampler.step_size = 0.01  # family-specific sampler fields are allowed
  import ml_collections  # pylint: disable=g-import-not-at-top
  config.eval = ml_collections.ConfigDict(dict(config.eval.to_dict(), use_ema='0.999'))
  config_lib.validate(config)


def test_check_section_for_a_method_section():
  allowed = {'name': str, 'sigma_min': float, 'num_walkers': int, 'path': str}
  section = {'name': 'ebm', 'sigma_min': 0, 'num_walkers': 10}  # an int is a valid float
  config_lib.check_section(section, allowed, 'method')
  with pytest.raises(ConfigError, match=r'config\.method\.num_walkers must be an integer'):
    config_lib.check_section({**section, 'num_walkers': 10.0}, allowed, 'method')
  with pytest.raises(ConfigError, match=r"no field 'pathh'; allowed: name, num_walkers, "
                     r'path, sigma_min'):
    config_lib.check_section({**section, 'pathh': 'linear'}, allowed, 'method')


@pytest.mark.parametrize('spec, overrides, needle', [
    ('configs/flow_matching/digits.py:smoke', {'data.name': '8gaussians'},
     "net 'unet' needs image data"),
    (TOY, {'data.name': 'digits'}, "net 'mlp' needs vector data"),
])
def test_net_and_data_mismatch_fails_before_compile(spec, overrides, needle):
  from gensuite import experiment  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file(spec)
  with config.unlocked():
    for path, value in overrides.items():
      section, name = path.split('.')
      config[section][name] = value
  with pytest.raises(ConfigError, match=needle):
    experiment.build_experiment(config)


# ---- checkpoints: no pickle, architecture mismatch ---------------------------------

@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ckpt') / 'run')
  run_cli('train', f'--config={TOY}', f'--workdir={workdir}', '--config.train.num_steps=10',
          '--config.train.eval_every=0')
  return workdir


def _is_pickle(data: bytes) -> bool:
  # Protocol 2+ pickles open with PROTO (0x80) and a protocol number, and end with STOP.
  return len(data) > 2 and data[0] == 0x80 and 2 <= data[1] <= 5 and data.endswith(b'.')


def test_checkpoints_hold_no_pickle_and_restore_without_it(short_run, monkeypatch):
  ckpt_dir = os.path.join(short_run, 'checkpoints')
  files = [os.path.join(r, f) for r, _, fs in os.walk(ckpt_dir) for f in fs]
  assert files
  for path in files:
    with open(path, 'rb') as f:
      assert not _is_pickle(f.read()), path
  def refuse(*args, **kwargs):
    raise AssertionError('pickle used while restoring a checkpoint')
  monkeypatch.setattr(pickle, 'load', refuse)
  monkeypatch.setattr(pickle, 'loads', refuse)
  monkeypatch.setattr(pickle, 'Unpickler', refuse)
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(short_run)
  assert run.step == 10


def test_other_architecture_gives_leaf_shape_error_exit_2_workdir_untouched(short_run,
                                                                           tmp_path):
  forced = str(tmp_path / 'forced')
  shutil.copytree(short_run, forced)
  # Force a resume with a wider net: the saved config says so, the checkpoint does not.
  path = os.path.join(forced, 'config.json')
  with open(path) as f:
    d = json.load(f)
  d['net']['hidden'] = 48
  with open(path, 'w') as f:
    json.dump(d, f, indent=2, sort_keys=True)
  before = tree_hash(forced)
  proc = run_cli('train', f'--config={TOY}', f'--workdir={forced}',
                 '--config.train.num_steps=10', '--config.train.eval_every=0',
                 '--config.net.hidden=48', check=False)
  line = _one_line_error(proc)
  assert 'does not match this model' in line
  assert 'leaf ' in line and '32' in line and '48' in line, line
  assert tree_hash(forced) == before
  proc = run_cli('sample', f'--workdir={forced}', f'--out={tmp_path / "x.npz"}', check=False)
  assert 'leaf ' in _one_line_error(proc)


def test_describe_mismatch_names_missing_extra_and_reshaped_leaves():
  want = {'params/a': (2, 3), 'params/b': (4,)}
  assert ckpt_lib.describe_mismatch(dict(want), want) is None
  assert 'params/b has shape (5,) in the checkpoint but (4,)' in ckpt_lib.describe_mismatch(
      {'params/a': (2, 3), 'params/b': (5,)}, want)
  assert 'missing from the checkpoint' in ckpt_lib.describe_mismatch({'params/a': (2, 3)},
                                                                     want)
  assert 'not in the model' in ckpt_lib.describe_mismatch({**want, 'params/c': ()}, want)


# ---- gensuite eval ---------------------------------------------------------------

@pytest.mark.slow
def test_eval_cli_on_interrupted_run_then_resume(tmp_path):
  workdir = str(tmp_path / 'evalrun')
  args = [f'--config={TOY}', '--config.train.eval_every=0']
  proc = run_cli('train', f'--workdir={workdir}', *args, check=False,
                 GENSUITE_FAULT_KILL_AT_STEP=17)
  assert proc.returncode == -9
  assert max(losses(workdir)) == 15  # logged past the last checkpoint (10)
  for _ in range(2):  # a second eval replaces the first one's values
    proc = run_cli('eval', f'--workdir={workdir}', '--metrics=mmd,energy_distance',
                   '--sampler=euler', '--steps=4')
    printed = dict(line.split(': ') for line in proc.stdout.strip().splitlines()
                   if line.startswith('eval/'))
    assert {'eval/mmd', 'eval/energy_distance'} <= set(printed)
  rows = log_lib.read_jsonl(workdir)
  evals = [r for r in rows if 'eval/mmd' in r]
  assert [r['step'] for r in evals] == [10]
  assert float(printed['eval/mmd']) == pytest.approx(evals[0]['eval/mmd'], rel=1e-5)
  run_cli('train', f'--workdir={workdir}', *args)  # resume: truncates past 10, keeps eval
  rows = log_lib.read_jsonl(workdir)
  assert [r['step'] for r in rows if 'eval/mmd' in r] == [10]
  assert sorted(losses(workdir)) == [5, 10, 15, 20]
  seen = set()
  for r in rows:
    for k in r:
      if k != 'step':
        assert (r['step'], k) not in seen, (r['step'], k)
        seen.add((r['step'], k))
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'scalars': 0})
  acc.Reload()
  assert 10 in [e.step for e in acc.Scalars('eval/mmd')]
