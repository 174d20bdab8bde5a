"""Guidance (ALGORITHMS.md §11.1-11.2): CFG with an interval and autoguidance, one layer
(gensuite.samplers.guidance) under every sampler, checked against closed forms."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.diffusion import toy2d as diffusion_toy2d
from configs.flow_matching import toy2d as fm_toy2d
from conftest import run_cli, tree_hash
from gensuite import config as config_lib
from gensuite import data as data_lib
from gensuite import methods, samplers, train
from gensuite.data import toy
from gensuite.errors import ConfigError
from gensuite.methods.state import TrainState
from gensuite.samplers import frames, guidance

# Two classes in 2-D, equally likely: A (two components) and B (one); p(x) mixes all three.
MEANS_A, MEANS_B = [[-2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0]]
CLASS_A = toy.gaussian_mixture(MEANS_A, stds=0.5)
CLASS_B = toy.gaussian_mixture(MEANS_B, stds=0.7)
MARGINAL = toy.gaussian_mixture(MEANS_A + MEANS_B, stds=[0.5, 0.5, 0.7],
                                weights=[0.25, 0.25, 0.5])


def _grad_log(log_prob):
  """grad_x log p(x; sigma) by autodiff, one example at a time."""
  return jax.vmap(jax.grad(log_prob), in_axes=(0, None))


def test_guided_denoiser_is_the_tilted_score_of_a_two_class_mixture():
  """§11.1: D_w = x + sigma^2 (w grad log p(x|A; sigma) + (1 - w) grad log p(x; sigma))
  inside (sigma_lo, sigma_hi], the conditional D(x|A) outside. The scores come from
  autodiff of the closed-form log-densities (p(x) = p(x|A)/2 + p(x|B)/2, not the
  mixture object the guide uses), so the weights' order and convention are tested."""
  w, lo, hi = 3.0, 0.5, 2.0
  d = guidance.guided_denoiser(CLASS_A.noisy_denoiser, MARGINAL.noisy_denoiser, w, lo, hi)
  score_a = _grad_log(lambda x, s: CLASS_A.noisy_log_prob(x, s))
  score = _grad_log(lambda x, s: jnp.logaddexp(CLASS_A.noisy_log_prob(x, s),
                                               CLASS_B.noisy_log_prob(x, s)) - jnp.log(2.0))
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2)) * 2.0
  worst = 0.0
  for sigma in (0.6, 1.0, 2.0):  # inside
    want = x + sigma**2 * (w * score_a(x, sigma) + (1 - w) * score(x, sigma))
    got = jax.jit(lambda x, s: d(x, s))(x, sigma)  # traced sigma: the lax.cond path
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    worst = max(worst, float(jnp.max(jnp.abs(got - CLASS_A.noisy_denoiser(x, sigma)))))
  assert worst > 0.5  # guidance moved the denoiser (by up to this much)
  for sigma in (0.3, 0.5, 3.0):  # outside: the conditional model itself
    np.testing.assert_array_equal(d(x, sigma), CLASS_A.noisy_denoiser(x, sigma))
  print(f'max |D_w - D_A| inside the interval: {worst:.3f}')


def test_score_form_and_velocity_form_agree():
  """§11 check 1: (D_w - x)/sigma^2 = s_0 + w (s_1 - s_0); and guiding velocities on a
  flow path, with the interval on sigma(t), equals guiding the denoisers and converting."""
  w, lo, hi = 2.5, 0.4, 3.0
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 2)) * 2.0
  d = guidance.guided_denoiser(CLASS_A.noisy_denoiser, MARGINAL.noisy_denoiser, w, lo, hi)
  s1 = frames.score_from_denoiser(CLASS_A.noisy_denoiser)
  s0 = frames.score_from_denoiser(MARGINAL.noisy_denoiser)
  np.testing.assert_allclose((d(x, 1.0) - x) / 1.0**2, s0(x, 1.0) + w * (s1(x, 1.0) - s0(x, 1.0)),
                             rtol=1e-5, atol=1e-5)
  path = frames.fm_path('linear')
  v1 = frames.velocity_from_denoiser(CLASS_A.noisy_denoiser, path)
  v0 = frames.velocity_from_denoiser(MARGINAL.noisy_denoiser, path)
  v = guidance.guided_velocity(v1, v0, w, path, lo, hi)
  v_of_d = frames.velocity_from_denoiser(d, path)
  for t in (0.2, 0.5, 0.8):  # sigma(t) = 1/t - 1: 4 (outside), 1 (inside), 0.25 (outside)
    np.testing.assert_allclose(v(x, t), v_of_d(x, t), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(v(x, 0.2), v1(x, 0.2))


def test_interval_is_decided_per_step_as_in_the_reference_sampler():
  """kynkaat/guidance-interval: step i is guided iff sigma_lo < sigma_i <= sigma_hi, and
  both Heun evaluations of a guided step (the correction at sigma_{i+1} too) are. So
  Heun with the interval (sigma_5, sigma_2] equals plain Heun to sigma_2, guided Heun
  to sigma_5, plain Heun to 0; the guide runs 2 x 3 times. Deciding per evaluation
  instead (the correction of step 4 at sigma_5 unguided) gives other samples."""
  grid = samplers.karras_sigmas(8, 0.002, 80.0)
  lo, hi, w = grid[5], grid[2], 3.0
  calls = []

  def d0(x, s):
    jax.debug.callback(lambda: calls.append(1))
    return MARGINAL.noisy_denoiser(x, s)

  d1 = CLASS_A.noisy_denoiser
  z = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
  field = guidance.guide(samplers.Field.denoiser(d1, None), samplers.Field.denoiser(d0, None),
                         w, lo, hi)
  x = samplers.sample('heun', field, z, None, 8, sigmas=grid)
  jax.effects_barrier()
  assert len(calls) == 6, len(calls)
  both = guidance.guided_denoiser(d1, MARGINAL.noisy_denoiser, w)
  y, _ = samplers.sample_sigmas('heun', d1, grid[0] * z, grid[:3])
  y, _ = samplers.sample_sigmas('heun', both, y, grid[2:6])
  y, _ = samplers.sample_sigmas('heun', d1, y, grid[5:])
  np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
  guided = field.fn
  per_evaluation = lambda x, s: guided(x, s)  # no at_step: decides at every sigma
  x_eval, _ = samplers.sample_sigmas('heun', per_evaluation, grid[0] * z, grid)
  gap = float(jnp.max(jnp.abs(x_eval - x)))
  assert gap > 1e-2, gap
  # The last step guided: 2 per guided step, less one (the step to 0 is Euler).
  calls.clear()
  last = guidance.guide(samplers.Field.denoiser(d1, None), samplers.Field.denoiser(d0, None),
                        w, 0.0, grid[6])
  samplers.sample('heun', last, z, None, 8, sigmas=grid)
  jax.effects_barrier()
  assert len(calls) == 2 * 2 - 1, len(calls)
  print(f'per-evaluation decision moves the samples by {gap:.3f}')


def _conditional(family):
  """A class-conditional tiny method on 2-D data with 2 classes, random weights."""
  module = {'diffusion': diffusion_toy2d, 'flow_matching': fm_toy2d}[family]
  config = module.get_config('smoke')
  config.method.update(class_conditional=True, label_dropout=0.1)
  m = methods.build(config, data_lib.DataSpec('two_classes', 'toy', (2,), num_classes=2))
  params = m.init(jax.random.PRNGKey(0), {'x': jnp.zeros((4, 2)),
                                          'label': jnp.array([0, 1, 0, 1])}).params
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  return m, TrainState.create(params, m.tx)


@pytest.mark.parametrize('family, sampler', [('diffusion', 'heun'),
                                             ('flow_matching', 'heun'),
                                             ('flow_matching', 'dpm_solver_2m')])
def test_weight_one_and_an_empty_interval_are_the_unguided_sampler_bitwise(family, sampler):
  """w = 1, or an interval holding no step of the grid, samples exactly as without
  guidance (the guide is not evaluated); the whole grid guided does not."""
  m, state = _conditional(family)
  label = jnp.array([0, 1] * 8)

  def draw(**guide):
    m.config.sampler.guidance.update(kind='none', weight=1.0, sigma_lo=0.0, sigma_hi=1e9)
    m.config.sampler.guidance.update(guide)
    return np.asarray(m.sample(state, jax.random.PRNGKey(3), 16, sampler=sampler, steps=6,
                               use_ema=False, label=label))

  plain = draw()
  np.testing.assert_array_equal(draw(kind='cfg', weight=1.0), plain)
  np.testing.assert_array_equal(draw(kind='cfg', weight=3.0, sigma_lo=1e3, sigma_hi=1e4), plain)
  guided = draw(kind='cfg', weight=3.0)
  m.config.sampler.guidance.kind = 'none'
  legacy = m.sample(state, jax.random.PRNGKey(3), 16, sampler=sampler, steps=6,
                    use_ema=False, label=label, cfg_scale=3.0)
  gap = float(np.max(np.abs(guided - plain)))
  assert gap > 1e-2, gap
  np.testing.assert_allclose(legacy, guided, rtol=1e-5, atol=1e-5)  # cfg_scale = kind 'cfg'


# ---- runs on disk: autoguidance and the command line ------------------------------------

def _train(workdir):
  config = diffusion_toy2d.get_config('smoke')
  config.optim.ema_decays = ()  # samples with the raw params: steps 2 and 4 differ more
  config.train.update(num_steps=4, ckpt_every=2, eval_every=0, log_every=2)
  train.run(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A 4-step run (checkpoints 2 and 4), and the config of a run on 3-D data (the
  guide's data shape is read from its config before its checkpoint)."""
  base = tmp_path_factory.mktemp('guidance')
  main = _train(base / 'main')
  other = diffusion_toy2d.get_config('smoke')
  other.data.update(name='gaussian_mixture',
                    params={'means': [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], 'stds': 0.5})
  (base / 'three_d').mkdir()
  config_lib.write(str(base / 'three_d'), other)
  return main, str(base / 'three_d')


def test_autoguidance_by_the_model_itself_is_the_identity(runs):
  """D_w = D + w (D - D) = D: guided by its own step-4 weights the run samples what it
  samples unguided; guided by its step-2 checkpoint it does not."""
  import gensuite  # pylint: disable=g-import-not-at-top
  main, _ = runs
  run = gensuite.load_run(main)
  key = jax.random.PRNGKey(4)
  plain = run.sample(key, 64, sampler='heun', steps=6)
  run.config.sampler.guidance.update(kind='autoguidance', weight=2.5, guide_workdir=main,
                                     guide_step=4)
  same = run.sample(key, 64, sampler='heun', steps=6)
  np.testing.assert_allclose(same, plain, rtol=0, atol=2e-5)  # ulps: two compiled nets
  run.config.sampler.guidance.guide_step = 2
  gap = float(np.max(np.abs(run.sample(key, 64, sampler='heun', steps=6) - plain)))
  assert gap > 1e-3, gap
  print(f'guided by itself: max |diff| {np.max(np.abs(same - plain)):.1e}; by its step-2 '
        f'checkpoint (w = 2.5): samples move by up to {gap:.3f}')


def _one_line_error(proc):
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gensuite: error: '), proc.stderr[-2000:]
  return lines[0]


def test_cfg_on_an_unconditional_run_is_one_line_exit_2(runs, tmp_path):
  main, _ = runs
  out = tmp_path / 'x.npz'
  line = _one_line_error(run_cli('sample', f'--workdir={main}', f'--out={out}',
                                 '--config.sampler.guidance.kind=cfg',
                                 '--config.sampler.guidance.weight=2', check=False))
  assert 'class-conditional' in line and 'unconditional' in line, line
  assert not out.exists()


def test_a_guide_of_another_data_shape_is_one_line_exit_2(runs):
  main, other = runs
  before = tree_hash(main)
  line = _one_line_error(run_cli('eval', f'--workdir={main}',
                                 '--config.sampler.guidance.kind=autoguidance',
                                 '--config.sampler.guidance.weight=2.0',
                                 f'--config.sampler.guidance.guide_workdir={other}',
                                 check=False))
  assert 'shape (3,)' in line and '(2,)' in line, line
  assert tree_hash(main) == before  # nothing written


@pytest.mark.parametrize('overrides, needle', [
    ({'sampler.guidance.kind': 'cgf'}, "unknown sampler.guidance.kind 'cgf'"),
    ({'sampler.guidance.kind': 'cfg', 'sampler.guidance.sigma_lo': '2.0',
      'sampler.guidance.sigma_hi': '1.0'}, 'sigma_lo=2 is above sigma_hi=1'),
    ({'sampler.guidance.kind': 'autoguidance'}, 'needs sampler.guidance.guide_workdir'),
    ({'sampler.guidance.weigth': '2.0'}, "no field 'weigth'"),
])
def test_bad_guidance_sections_raise_config_error(overrides, needle):
  """What the CLI turns into one line and exit 2 (as the two tests above show)."""
  config = diffusion_toy2d.get_config('smoke')
  with pytest.raises(ConfigError, match=needle):
    config_lib.apply_overrides(config, overrides, ('sampler.',))
    guidance.from_config(config.sampler)


def test_runs_made_before_the_guidance_section_still_resume_and_override(tmp_path):
  """An older config.json has no sampler.guidance / optim.phema_stds /
  train.phema_every: it resumes with today's base() and takes guidance overrides."""
  config = diffusion_toy2d.get_config('smoke')
  old = config_lib.to_dict(config)
  del old['sampler']['guidance'], old['optim']['phema_stds'], old['train']['phema_every']
  config_lib.write(str(tmp_path), config)
  with open(config_lib.config_path(str(tmp_path)), 'w') as f:
    json.dump(old, f)
  assert config_lib.check_resume(str(tmp_path), config)
  loaded = config_lib.load(str(tmp_path))
  config_lib.apply_overrides(loaded, {'sampler.guidance.weight': '2'}, ('sampler.',))
  assert loaded.sampler.guidance.weight == 2.0 and loaded.sampler.guidance.kind == 'none'
