"""Accelerator-scale training: gradient accumulation, bfloat16 compute, sharded state.

Runs through the CLI use 4 simulated CPU devices (as test_parallel.py does): pure data
parallelism (mesh 4 x 1) is the reference for fsdp = 4 (1 x 4), fsdp = 2 (2 x 2, with
grad_accum = 2) and bfloat16 compute.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, cli_env, losses, run_cli
from gensuite import config as config_lib
from gensuite import nets
from gensuite.errors import ConfigError
from gensuite.experiment import build_experiment
from gensuite.methods import rand

TOY = 'configs/flow_matching/toy2d.py:smoke'
STEPS = ('--config.train.num_steps=10', '--config.train.eval_every=0')


def _train(workdir, *args):
  run_cli('train', f'--config={TOY}', f'--workdir={workdir}', *STEPS, *args, devices=4)
  return str(workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('accel')
  return {
      'dp': _train(root / 'dp'),
      'fsdp4': _train(root / 'fsdp4', '--config.mesh.fsdp=4'),
      'fsdp2_accum2': _train(root / 'fsdp2', '--config.mesh.fsdp=2',
                             '--config.train.grad_accum=2'),
      'bf16': _train(root / 'bf16', '--config.train.precision=bfloat16'),
  }


def _same_losses(a, b, rtol):
  assert sorted(a) == sorted(b) and a
  np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], rtol=rtol)


def test_rand_draws_the_same_rows_in_any_split():
  key = jax.random.PRNGKey(3)
  whole = jax.random.normal(key, (12, 3))
  parts = []
  for i in range(4):
    with rand.microbatch(jnp.asarray(i), 4):
      parts.append(rand.normal(key, (3, 3)))
      np.testing.assert_array_equal(rand.rows(3), np.arange(3) * 4 + i)
      assert rand.total(3) == 12
  np.testing.assert_array_equal(rand.split_rows(whole, 4), np.stack(parts))
  np.testing.assert_array_equal(rand.normal(key, (12, 3)), whole)  # plain outside
  with rand.microbatch(1, 2):
    t = rand.uniform(key, (2, 3), batch_axis=1)
  np.testing.assert_array_equal(t, jax.random.uniform(key, (2, 6))[:, 1::2])


def _config(spec, **fields):
  """The config of `spec` with fields given as section__name=value."""
  config = config_lib.from_file(spec)
  with config.unlocked():
    for path, value in fields.items():
      section, name = path.split('__')
      config[section][name] = value
  return config


def _steps(spec, steps=2, **fields):
  config = _config(spec, **fields)
  exp = build_experiment(config)
  state = exp.init_state()
  out = []
  for step in range(steps):
    state, metrics = exp.bare_step(state, exp.global_batch(step))
    out.append(float(metrics['loss']))
  return out, state


@pytest.mark.parametrize('spec', ['configs/flow_matching/toy2d.py:smoke',
                                  'configs/diffusion/toy2d.py:smoke'])
def test_grad_accum_gives_the_one_batch_update(spec):
  _check_grad_accum(spec)


def _check_grad_accum(spec, **fields):
  loss_1, state_1 = _steps(spec, **fields)
  loss_4, state_4 = _steps(spec, train__grad_accum=4, **fields)
  np.testing.assert_allclose(loss_4, loss_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_1), jax.tree.leaves(state_4)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('spec, fields', [
    # MeanFlow's toy default pairs noise and data over the whole batch (coupling='ot'),
    # which refuses microbatches; the accumulation itself is checked without it.
    ('configs/flow_maps/toy2d.py:smoke', dict(method__coupling='independent')),
    ('configs/vae/toy2d.py:smoke', {})])
def test_grad_accum_gives_the_one_batch_update_slow(spec, fields):
  _check_grad_accum(spec, **fields)


@pytest.mark.parametrize('name, fields, shape', [
    ('mlp', dict(hidden=16, depth=2, emb_dim=8), (2,)),
    ('unet', dict(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(4,)),
     (4, 4, 1)),
    ('dit', dict(patch_size=2, hidden=16, depth=1, num_heads=2), (8, 8, 1)),
])
def test_bfloat16_nets_compute_in_bf16_and_return_float32(name, fields, shape):
  import ml_collections  # pylint: disable=g-import-not-at-top
  net_config = ml_collections.ConfigDict(dict(name=name, **fields))
  x = jax.random.normal(jax.random.PRNGKey(1), (4,) + shape)
  t = jnp.linspace(0.1, 0.9, 4)
  built = {}
  for precision in ('float32', 'bfloat16'):
    with nets.precision(precision):
      built[precision] = nets.build(net_config, data_shape=shape,
                                    out_dim_or_channels=shape[-1], num_classes=None)
  # One parameter tree (float32) serves both: the precision is not part of it.
  params = jax.jit(built['float32'].init)(jax.random.PRNGKey(0), x, t)['params']
  params = jax.tree.map(lambda p: p + 0.05, params)  # zero-init outputs: make them move
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  out = {}
  for precision, net in built.items():
    apply = lambda p, net=net: net.apply({'params': p}, x, t)
    assert ('bf16' in str(jax.make_jaxpr(apply)(params))) == (precision == 'bfloat16')
    out[precision] = jax.jit(apply)(params)
    assert out[precision].dtype == jnp.float32
    if name == 'mlp':
      grads = jax.jit(jax.grad(lambda p: jnp.mean(apply(p)**2)))(params)
      assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  scale = float(jnp.max(jnp.abs(out['float32'])))
  assert float(jnp.max(jnp.abs(out['bfloat16'] - out['float32']))) < 0.05 * scale


def test_fsdp_gives_the_data_parallel_losses(runs):
  _same_losses(losses(runs['dp']), losses(runs['fsdp4']), rtol=2e-5)
  _same_losses(losses(runs['dp']), losses(runs['fsdp2_accum2']), rtol=2e-5)


def test_bfloat16_run_tracks_float32_and_saves_float32(runs):
  bf16, f32 = losses(runs['bf16']), losses(runs['dp'])
  assert all(np.isfinite(v) for v in bf16.values())
  # bfloat16 moves the toy MLP's logged losses (the nets do compute in it), by at most
  # 3e-4 relative in a 20-step run: well inside 0.5%.
  assert any(bf16[k] != f32[k] for k in f32)
  _same_losses(f32, bf16, rtol=5e-3)
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(runs['bf16'])
  floats = [x for x in jax.tree.leaves(run.state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)


@pytest.mark.slow
def test_a_run_resumes_on_another_mesh_and_accumulation(tmp_path):
  # A constant learning rate: the schedule would otherwise follow num_steps.
  args = (f'--config={TOY}', '--config.train.eval_every=0', '--config.optim.schedule=constant')
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  run_cli('train', *args, f'--workdir={whole}', devices=4)
  run_cli('train', *args, f'--workdir={split}', '--config.train.num_steps=10',
          '--config.mesh.fsdp=4', devices=4)
  run_cli('train', *args, f'--workdir={split}', '--config.train.num_steps=20',
          '--config.mesh.fsdp=2', '--config.train.grad_accum=2', devices=4)
  _same_losses(losses(whole), losses(split), rtol=2e-5)


_RESTORE = '''
import sys, jax, numpy as np, gensuite
workdir, out = sys.argv[1], sys.argv[2]
run = gensuite.load_run(workdir, fsdp=2)
assert dict(run.experiment.mesh.shape) == {'data': 2, 'fsdp': 2}, run.experiment.mesh.shape
leaves = [np.asarray(x) for x in jax.tree.leaves(run.state)]
full = gensuite.load_run(workdir)
assert dict(full.experiment.mesh.shape) == {'data': 1, 'fsdp': 4}
state = jax.tree.leaves(full.state)
dev = jax.devices()[0]
per_device = sum(s.data.nbytes for x in state for s in x.addressable_shards if s.device == dev)
total = sum(x.nbytes for x in state)
x = full.sample(jax.random.PRNGKey(0), 8, sampler='euler', steps=2)  # sharded params
assert x.shape == (8, 2) and np.isfinite(x).all()
np.savez(out, per_device=per_device, total=total,
         **{f'leaf_{i}': x for i, x in enumerate(leaves)},
         **{f'full_{i}': np.asarray(x) for i, x in enumerate(state)})
'''


def test_fsdp_checkpoint_restores_on_any_mesh(runs, tmp_path):
  workdir = runs['fsdp4']
  out = str(tmp_path / 'restored.npz')
  proc = subprocess.run([sys.executable, '-c', _RESTORE, workdir, out], cwd=REPO,
                        env=cli_env(4), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(out)
  # Sharded over 4 devices, each holds about a quarter of the state's bytes.
  ratio = float(got['per_device']) / float(got['total'])
  assert 0.24 < ratio < 0.27, ratio
  import gensuite  # pylint: disable=g-import-not-at-top
  run = gensuite.load_run(workdir)  # this process: 1 CPU device unless told otherwise
  assert run.experiment.mesh.size == jax.device_count()
  here = [np.asarray(x) for x in jax.tree.leaves(run.state)]
  assert here and len(here) == len([k for k in got if k.startswith('leaf_')])
  for i, x in enumerate(here):
    np.testing.assert_array_equal(got[f'leaf_{i}'], x)
    np.testing.assert_array_equal(got[f'full_{i}'], x)


@pytest.mark.parametrize('args, needle', [
    (['--config.mesh.fsdp=3'], 'allowed: 1, 2, 4'),
    (['--config.train.precision=float16'], 'allowed: float32, bfloat16'),
])
def test_bad_scale_settings_exit_2_before_writing(tmp_path, args, needle):
  workdir = str(tmp_path / 'run')
  proc = run_cli('train', f'--config={TOY}', f'--workdir={workdir}', *args, devices=4,
                 check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('gensuite: error:'), proc.stderr[-2000:]
  assert needle in err[0], err[0]
  assert not os.path.exists(workdir)


@pytest.mark.parametrize('spec, fields, needle', [
    (TOY, dict(train__grad_accum=3, train__batch_size=16), 'multiple of 3'),
    (TOY, dict(train__grad_accum=2, method__coupling='ot'), "coupling='ot'"),
    ('configs/flow_maps/toy2d.py:shortcut,smoke', dict(train__grad_accum=2), 'shortcut'),
    ('configs/ebm/gmm.py:smoke', dict(train__grad_accum=2), 'walkers'),
    ('configs/vae/toy2d.py:smoke', dict(train__precision='bfloat16'), 'float32 only'),
])
def test_scale_settings_a_method_cannot_take_are_one_line_errors(spec, fields, needle):
  config = _config(spec, **fields)
  with pytest.raises(ConfigError, match=needle) as info:
    build_experiment(config)
  assert '\n' not in str(info.value)


def test_digits_dit_variant_trains_a_step():
  """configs/flow_matching/digits.py:dit,smoke builds a (tiny) DiT and trains."""
  config = config_lib.from_file(os.path.join(REPO, 'configs/flow_matching/digits.py:dit,smoke'))
  assert config.net.name == 'dit' and config.net.hidden == 16
  full = config_lib.from_file(os.path.join(REPO, 'configs/flow_matching/digits.py:dit'))
  assert (full.net.patch_size, full.net.hidden, full.net.depth, full.net.num_heads) == (
      2, 128, 4, 4)
  exp = build_experiment(config)
  state = exp.init_state()
  before = [np.asarray(p) for p in jax.tree.leaves(state.params)]
  state, metrics = exp.bare_step(state, exp.global_batch(0))
  assert np.isfinite(float(metrics['loss'])) and int(state.step) == 1
  after = [np.asarray(p) for p in jax.tree.leaves(state.params)]
  assert any(not np.array_equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize('variant', ['dit', 'vp,dit', 'dit,vp,cond'])
def test_cifar10_dit_variant_is_dit_b2(variant):
  """configs/diffusion/cifar10.py:dit: DiT-B/2 (130M parameters, from abstract shapes),
  with DiT's lr and no dropout whatever the token order."""
  from gensuite import data as data_lib  # pylint: disable=g-import-not-at-top
  from gensuite import methods  # pylint: disable=g-import-not-at-top
  config = config_lib.from_file(os.path.join(REPO, f'configs/diffusion/cifar10.py:{variant}'))
  assert dict(config.net) == dict(name='dit', patch_size=2, hidden=768, depth=12,
                                  num_heads=12, dropout=0.0)
  assert config.optim.lr == 1e-4
  spec = data_lib.DataSpec(name='cifar10', kind='image', shape=(32, 32, 3), num_classes=10)
  method = methods.build(config, spec)
  batch = {'x': jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((2,), jnp.int32)}
  state = jax.eval_shape(method.init, jax.random.PRNGKey(0), batch)
  count = nets.param_count(state.params)
  assert 129.5e6 < count < 130.5e6, count
