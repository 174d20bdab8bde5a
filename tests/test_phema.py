"""Post-hoc EMA (EDM2, ALGORITHMS.md §11.3): power-function EMAs tracked in the train
state, snapshots on disk, least-squares reconstruction of other profiles, `gensuite
phema`, and the reconstructions as EMAs that sample/eval/load_run use."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.diffusion import toy2d
from conftest import run_cli, tree_hash
from gensuite import train
from gensuite.errors import ConfigError
from gensuite.methods import phema
from gensuite.methods.state import phema_update


def test_std_and_exponent_round_trip():
  """§11 check 4: gamma 0, 1, 7 -> sigma_rel 0.288675, 0.235702, 0.099381; sigma_rel
  0.05, 0.10, 0.075 -> gamma 16.9722, 6.9372, 10.2891; and back."""
  np.testing.assert_allclose(phema.exp_to_std([0.0, 1.0, 7.0]),
                             [0.288675, 0.235702, 0.099381], atol=1e-6)
  gammas = [phema.std_to_exp(s) for s in (0.05, 0.10, 0.075)]
  np.testing.assert_allclose(gammas, [16.9722, 6.9372, 10.2891], atol=1e-4)
  np.testing.assert_allclose(phema.exp_to_std(gammas), [0.05, 0.10, 0.075], rtol=1e-12)
  for bad in (0.0, -0.1, 0.29):
    with pytest.raises(ConfigError, match='must lie in'):
      phema.std_to_exp(bad)


def test_tracked_update_weights_each_step_by_the_profile():
  """§11 check 5: with params_k = e_k the tracked EMA at step t holds the weights
  (k^(g+1) - (k-1)^(g+1)) / t^(g+1) (the profile integrated over (k-1, k]), which sum
  to 1; and <p, p> = (g+1)^2 / ((2g+1) t)."""
  t = 40
  tracked = {'0.1': jnp.zeros(t), '0.05': jnp.zeros(t)}
  for k in range(1, t + 1):
    tracked = phema_update(tracked, jnp.zeros(t).at[k - 1].set(1.0), k)
  for name, weights in tracked.items():
    g = phema.std_to_exp(float(name))
    k = np.arange(1, t + 1, dtype=np.float64)
    want = (k**(g + 1) - (k - 1)**(g + 1)) / t**(g + 1)
    np.testing.assert_allclose(weights, want, atol=2e-6)
    np.testing.assert_allclose(float(jnp.sum(weights)), 1.0, atol=1e-5)
    np.testing.assert_allclose(phema.correlation(t, float(name), t, float(name)),
                               (g + 1)**2 / ((2 * g + 1) * t), rtol=1e-12)


def _trajectory(steps=4096, dim=64, every=256, stds=(0.05, 0.10, 0.075), seed=0):
  """§11 check 7's synthetic run: a random walk with steps ~ N(0, 1/k) plus a
  sinusoid, its power-function EMAs tracked in float64, snapshots every `every`."""
  rs = np.random.RandomState(seed)
  k = np.arange(1, steps + 1)
  walk = np.cumsum(rs.normal(size=(steps, dim)) / np.sqrt(k)[:, None], axis=0)
  theta = walk + np.sin(2 * np.pi * k[:, None] / 1500.0 + rs.uniform(0, 6, dim))
  ema = {s: np.zeros(dim) for s in stds}
  snaps = {}
  for i in range(steps):
    for s in stds:
      beta = (1.0 - 1.0 / (i + 1))**(phema.std_to_exp(s) + 1.0)
      ema[s] = beta * ema[s] + (1.0 - beta) * theta[i]
    if (i + 1) % every == 0:
      snaps[i + 1] = {s: ema[s].copy() for s in stds}
  return snaps


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
  """The trajectory's snapshots of 0.05 and 0.10 on disk (0.075 kept aside)."""
  workdir = str(tmp_path_factory.mktemp('phema_synthetic'))
  snaps = _trajectory()
  for step, profiles in snaps.items():
    phema.save_snapshot(workdir, step, {phema.std_name(s): {'w': profiles[s]}
                                        for s in (0.05, 0.10)})
  return workdir, snaps


def test_reconstructing_a_tracked_profile_returns_it(synthetic):
  """§11 check 6: the target (t_n, 0.10) is one of the inputs, so x = e_i (to 1e-10,
  sum before normalising 1) and the reconstruction is that snapshot."""
  workdir, snaps = synthetic
  arrays, info = phema.reconstruct(workdir, 0.10)
  coef = info['coefficients']
  assert info['step'] == 4096 and info['profile_error'] < 1e-6, info['profile_error']
  for key, value in coef.items():
    assert abs(value - (key == (4096, '0.1'))) < 1e-10, (key, value)
  assert abs(info['raw_sum'] - 1.0) < 1e-10
  np.testing.assert_allclose(arrays['w'], snaps[4096][0.10], rtol=1e-6, atol=1e-6)


def test_reconstructing_a_third_profile_matches_tracking_it(synthetic):
  """§11 check 7: from 16 snapshots each of 0.05 and 0.10, the 0.075 EMA at step 4096
  is within 1e-2 of the directly tracked one, relative to ||ema_0.05 - ema_0.10||
  (ALGORITHMS.md measured 3.9e-4)."""
  workdir, snaps = synthetic
  arrays, info = phema.reconstruct(workdir, 0.075)
  last = snaps[4096]
  rel = np.linalg.norm(arrays['w'] - last[0.075]) / np.linalg.norm(last[0.05] - last[0.10])
  print(f'0.075 reconstructed vs tracked: {rel:.2e} (profile error '
        f'{info["profile_error"]:.2e}, cond {info["condition"]:.2e})')
  assert rel < 1e-2, rel
  # An earlier snapshot step reconstructs from the snapshots up to it only.
  arrays, info = phema.reconstruct(workdir, 0.075, step=2048)
  mid = snaps[2048]
  assert max(s for s, _ in info['coefficients']) == 2048
  assert np.linalg.norm(arrays['w'] - mid[0.075]) / np.linalg.norm(mid[0.05] - mid[0.10]) < 1e-2


@pytest.mark.parametrize('std, step, needle', [
    (0.0, None, 'must lie in'),
    (0.3, None, 'must lie in'),
    (0.075, 256, 'at least 2 snapshots'),
    (0.075, 300, 'no post-hoc EMA snapshot at step 300'),
    (0.005, None, 'outside what the snapshots can represent'),
])
def test_stds_the_snapshots_cannot_represent_are_refused(synthetic, std, step, needle):
  workdir, _ = synthetic
  with pytest.raises(ConfigError, match=needle):
    phema.reconstruct(workdir, std, step)


# ---- a trained run ---------------------------------------------------------------------

def _config(num_steps):
  config = toy2d.get_config('smoke')
  config.optim.update(phema_stds=(0.05, 0.1), schedule='constant')  # 10 + 10 == 20
  config.train.update(num_steps=num_steps, phema_every=5, ckpt_every=5, eval_every=0,
                      log_every=5)
  return config


def _snapshots(workdir):
  out = {}
  for step in phema.snapshot_steps(workdir):
    with np.load(os.path.join(workdir, 'phema', f'{step}.npz')) as f:
      out[step] = {k: f[k] for k in f.files}
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A 20-step run trained as 10 + 10 (resumed), and the same run uninterrupted."""
  base = tmp_path_factory.mktemp('phema_run')
  resumed, full = str(base / 'resumed'), str(base / 'full')
  train.run(_config(10), resumed)
  first = _snapshots(resumed)
  stamps = {s: os.stat(os.path.join(resumed, 'phema', f'{s}.npz')).st_mtime_ns
            for s in first}
  train.run(_config(20), resumed)
  train.run(_config(20), full)
  return resumed, full, first, stamps


def test_training_snapshots_the_tracked_profiles_and_resume_keeps_them(trained):
  """Snapshots every phema_every steps; the resumed run keeps the first two files
  untouched and ends with the uninterrupted run's four snapshots, bit for bit; the
  last one is the state's tracked EMA."""
  import gensuite  # pylint: disable=g-import-not-at-top
  resumed, full, first, stamps = trained
  assert sorted(first) == [5, 10]
  after = _snapshots(resumed)
  assert sorted(after) == sorted(_snapshots(full)) == [5, 10, 15, 20]
  for step in (5, 10):
    assert os.stat(os.path.join(resumed, 'phema', f'{step}.npz')).st_mtime_ns == stamps[step]
  reference = _snapshots(full)
  for step, arrays in after.items():
    assert sorted(arrays) == sorted(reference[step])
    for key in arrays:
      np.testing.assert_array_equal(arrays[key], reference[step][key])
  state = gensuite.load_run(resumed).state
  assert sorted(state.phema) == ['0.05', '0.1']
  for name, tree in state.phema.items():
    for key, value in phema.flatten(tree).items():
      np.testing.assert_array_equal(after[20][f'{name}/{key}'], value)


@pytest.fixture(scope='module')
def reconstructed(trained):
  """The resumed run after `gensuite phema --std=0.07` (and a refused --std=0.3)."""
  resumed = trained[0]
  before = tree_hash(resumed)
  proc = run_cli('phema', f'--workdir={resumed}', '--std=0.3', check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1 and 'must lie in' in lines[0], proc.stderr
  assert tree_hash(resumed) == before  # nothing written
  proc = run_cli('phema', f'--workdir={resumed}', '--std=0.07')
  assert 'use_ema=phema_0.07' in proc.stdout, proc.stdout
  print(proc.stdout.strip())
  return resumed


def test_phema_command_writes_an_ema_that_load_run_and_sample_use(reconstructed):
  """`gensuite phema --std=0.07` writes phema_0.07 (a bad std: one line, exit 2,
  nothing written); load_run adds it to state.ema, run.sample and eval's
  --config.eval.use_ema=phema_0.07 use it. A tracked std reconstructs to the tracked
  EMA."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  resumed = reconstructed
  run = gensuite.load_run(resumed)
  assert 'phema_0.07' in run.state.ema and '0.999' in run.state.ema
  tracked, _ = phema.reconstruct(resumed, 0.1)
  for key, value in phema.flatten(run.state.phema['0.1']).items():
    np.testing.assert_allclose(tracked[key], value, rtol=1e-5, atol=1e-6)
  with pytest.raises(ConfigError, match="no EMA named 'phema_0.2'.*--std=0.2"):
    run.state.eval_params('phema_0.2')
  key = jax.random.PRNGKey(0)
  x = run.sample(key, 32, steps=4, use_ema='phema_0.07')
  assert np.all(np.isfinite(x))
  assert np.max(np.abs(x - run.sample(key, 32, steps=4))) > 1e-4  # not the 0.999 EMA
  config_lib.apply_overrides(run.config, {'eval.use_ema': 'phema_0.07'}, ('eval.',))
  assert run.config.eval.use_ema == 'phema_0.07'  # what `gensuite eval` then samples with


def test_a_tracked_std_is_an_ema_by_name_without_reconstruction(trained, tmp_path):
  """'phema_0.1' with 0.1 among optim.phema_stds is the tracked profile itself at the
  loaded step (no `gensuite phema` needed); `gensuite sample` without --use_ema draws
  with the EMA the run's config.eval.use_ema names, as its eval does."""
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(trained[1])  # never reconstructed
  assert not any(name.startswith('phema_') for name in run.state.ema)
  for name in ('phema_0.1', 'phema_0.10', 'phema_0.05'):
    got = run.state.eval_params(name)
    want = run.state.phema[phema.std_name(float(name[len('phema_'):]))]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="no EMA named 'phema_0.2'; it has: 0.999, "
                     'phema_0.05, phema_0.1'):
    run.state.eval_params('phema_0.2')
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[1], workdir)
  path = os.path.join(workdir, 'config.json')
  with open(path) as f:
    saved = json.load(f)
  saved['eval']['use_ema'] = 'phema_0.1'
  with open(path, 'w') as f:
    json.dump(saved, f)
  out = str(tmp_path / 'x.npz')
  run_cli('sample', f'--workdir={workdir}', '--num=32', f'--out={out}', '--steps=4')
  with np.load(out) as f:
    cli = f['samples']
  key = jax.random.PRNGKey(0)
  np.testing.assert_allclose(cli, run.sample(key, 32, steps=4, use_ema='phema_0.1'),
                             rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(cli - run.sample(key, 32, steps=4))) > 1e-4  # not the 0.999 EMA


def test_a_distillation_teacher_loads_a_reconstructed_ema(reconstructed):
  """config.teacher.ema picks the teacher run's weights: '' its default (0.999) EMA,
  'phema_0.07' the reconstruction, 'none' the raw weights; a missing one is refused in
  one line naming what the run has."""
  import gensuite  # pylint: disable=g-import-not-at-top
  from configs.distill import toy2d as distill_toy2d  # pylint: disable=g-import-not-at-top
  from gensuite.methods import teachers  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(reconstructed)
  config = distill_toy2d.get_config('smoke')
  config.data.update(name=run.config.data.name, params=run.config.data.params)
  config.teacher.update(analytic='', workdir=reconstructed)
  spec = run.experiment.data.spec
  for ema, want in (('', run.state.ema['0.999']), ('phema_0.07', run.state.ema['phema_0.07']),
                    ('none', run.state.params)):
    config.teacher.ema = ema
    got = teachers.build(config, spec, gensuite.load_run).params
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  config.teacher.ema = 'phema_0.2'
  with pytest.raises(ConfigError, match="no EMA named 'phema_0.2'.*--std=0.2"):
    teachers.build(config, spec, gensuite.load_run)


@pytest.mark.slow
def test_sample_command_uses_a_reconstructed_ema(reconstructed, tmp_path):
  """`gensuite sample --config.eval.use_ema=phema_0.07` draws what load_run draws."""
  import gensuite  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'x.npz'
  run_cli('sample', f'--workdir={reconstructed}', '--num=32', f'--out={out}', '--steps=4',
          '--config.eval.use_ema=phema_0.07')
  with np.load(out) as f:
    cli = f['samples']
  run = gensuite.load_run(reconstructed)
  np.testing.assert_allclose(cli, run.sample(jax.random.PRNGKey(0), 32, steps=4,
                                             use_ema='phema_0.07'), rtol=1e-5, atol=1e-5)


def test_checkpoints_from_before_phema_still_restore(tmp_path):
  """A checkpoint written before TrainState had its `phema` field restores onto
  today's state, with phema empty."""
  import typing  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from gensuite.methods.state import TrainState  # pylint: disable=g-import-not-at-top
  from gensuite.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldState:
    step: jax.Array
    params: typing.Any
    opt_state: typing.Any
    ema: dict
    extra: typing.Any = None

  params, tx = {'w': jnp.arange(3.0)}, optax.adam(1e-3)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  ckpt.save(1, OldState(jnp.ones((), jnp.int32), params, tx.init(params), {'0.999': params}))
  abstract = jax.eval_shape(lambda: TrainState.create(params, tx, (0.999,)))
  state = ckpt.restore(1, abstract)
  ckpt.close()
  assert state.phema == {} and int(state.step) == 1
  np.testing.assert_array_equal(state.ema['0.999']['w'], [0.0, 1.0, 2.0])
