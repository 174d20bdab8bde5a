"""Every config file resolves, with every variant token, to a valid config (no training).

The tokens of each file are read from its own unknown-token error, so a token added to
a config file is tested here without listing it: `dim<N>`-style patterns are tried
with a number in place of <N> / <x>.
"""
import glob
import os
import re

import pytest

from configs import common
from gensuite import config as config_lib
from gensuite import methods
from gensuite.methods import defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, REPO)
                 for p in glob.glob(os.path.join(REPO, 'configs', '*', '*.py')))
FAMILIES = ('flow_matching', 'diffusion', 'distill', 'ebm', 'vae')
# configs/<dir>/ -> the method names its configs may use: a family's own directory, and
# configs/flow_maps/ for the few-step generators trained from scratch.
DIRECTORIES = {**{family: (family,) for family in FAMILIES}, 'flow_maps': methods.FLOW_MAPS}


def _load(path: str, variant: str = ''):
  spec = os.path.join(REPO, path) + (f':{variant}' if variant else '')
  return config_lib.from_file(spec)


def _allowed(path: str) -> list[str]:
  """The tokens a config file lists in its unknown-token error."""
  with pytest.raises(ValueError) as e:
    _load(path, 'no_such_token')
  message = str(e.value)
  assert re.match(r"unknown [\w ]+ variant 'no_such_token'; allowed tokens: \S", message), \
      message
  return message.split('allowed tokens: ', 1)[1].split(', ')


def _example(token: str) -> str:
  """A concrete token for a pattern such as dim<N> or beta<x>."""
  return token.replace('<N>', '3').replace('<x>', '0.5')


TOKENS = {path: [_example(t) for t in _allowed(path)] for path in CONFIGS}
CASES = [(path, token) for path in CONFIGS for token in TOKENS[path]]
SMOKE = [path for path in CONFIGS if 'smoke' in TOKENS[path]]


def _check(config, path):
  config_lib.validate(config)
  method = defaults.resolve(config.method)  # field names and types of the family
  assert method.name in DIRECTORIES[path.split(os.sep)[1]], (path, method.name)
  return method


def test_every_family_has_configs():
  assert len(CONFIGS) >= 14
  assert {p.split(os.sep)[1] for p in CONFIGS} == set(DIRECTORIES)


def test_flow_map_configs_use_every_flow_map_method():
  for name in ('toy2d', 'digits', 'cifar10'):
    path = os.path.join('configs', 'flow_maps', f'{name}.py')
    assert {_load(path, m).method.name for m in methods.FLOW_MAPS} == set(methods.FLOW_MAPS)


def test_flow_maps_digits_meanflow_trains_on_the_plain_squared_error():
  """The digits MeanFlow recipe (experiments/results/few_step.md): no adaptive weight,
  with or without labels; sCD and the other methods are untouched by it."""
  for variant in ('meanflow', 'meanflow,cond', None):
    assert _load('configs/flow_maps/digits.py', variant).method.adaptive_p == 0.0
  assert _load('configs/flow_maps/cifar10.py', 'meanflow').method.adaptive_p == 0.75


def test_flow_maps_digits_one_step_draws_t_and_r_apart_for_meanflow_only():
  """The one_step token: py-meanflow's CIFAR (t, r) sampler and the model tangent, for
  MeanFlow alone."""
  for variant in ('one_step', 'cond,one_step', 'one_step,meanflow,smoke'):
    mc = _load('configs/flow_maps/digits.py', variant).method
    assert (mc.time_pairing, mc.time_mean, mc.time_std, mc.r_time_mean, mc.tangent) == (
        'separate', -0.6, 1.6, -4.0, 'model')
  default = _load('configs/flow_maps/digits.py', None).method
  assert (default.time_pairing, default.tangent) == ('sorted', 'conditional')
  for method in ('scm', 'shortcut'):
    with pytest.raises(ValueError, match=f"'one_step' .* does not apply to '{method}'"):
      _load('configs/flow_maps/digits.py', f'{method},one_step')


@pytest.mark.parametrize('path', ['configs/flow_maps/digits.py', 'configs/flow_maps/cifar10.py'])
def test_flow_map_cond_whatever_the_method_token_position(path):
  for method in methods.FLOW_MAPS:
    after = config_lib.to_dict(_load(path, f'{method},cond'))
    assert config_lib.to_dict(_load(path, f'cond,{method}')) == after
    assert after['method']['class_conditional'] and after['method']['label_dropout'] == 0.1
  guided = _load(path, 'cond').method  # MeanFlow bakes its guidance into training
  assert guided.cfg_omega / (1.0 - guided.cfg_kappa) > 1.0


@pytest.mark.parametrize('path', CONFIGS)
def test_default_variant_is_valid(path):
  _check(_load(path), path)


@pytest.mark.parametrize('path, token', CASES, ids=[f'{p}:{t}' for p, t in CASES])
def test_each_token_is_valid_alone_and_with_smoke(path, token):
  _check(_load(path, token), path)
  if 'smoke' in TOKENS[path]:
    _check(_load(path, f'{token},smoke'), path)


@pytest.mark.parametrize('path, token', [c for c in CASES if c[0] in SMOKE and c[1] != 'smoke'],
                         ids=lambda v: str(v))
def test_smoke_applies_last_whatever_its_position(path, token):
  after = config_lib.to_dict(_load(path, f'{token},smoke'))
  assert config_lib.to_dict(_load(path, f'smoke,{token}')) == after
  assert config_lib.to_dict(_load(path, f' smoke , {token} ')) == after


@pytest.mark.parametrize('path', SMOKE)
def test_smoke_shrinks_the_run(path):
  full, smoke = _load(path), _load(path, 'smoke')
  assert smoke.train.num_steps < full.train.num_steps
  assert smoke.train.batch_size <= full.train.batch_size
  assert smoke.eval.num_samples <= full.eval.num_samples
  assert smoke.optim.warmup_steps == 0


@pytest.mark.parametrize('path', CONFIGS)
def test_unknown_token_is_one_error_naming_the_allowed_tokens(path):
  with pytest.raises(ValueError) as e:
    _load(path, f'{TOKENS[path][0]},bogus')
  message = str(e.value)
  assert "variant 'bogus'; allowed tokens: " in message and '\n' not in message
  for token in _allowed(path):
    assert token in message


@pytest.mark.parametrize('path', CONFIGS)
def test_method_section_is_the_familys_defaults_plus_overrides(path):
  """Sections are built from gensuite.methods.defaults: every default field present."""
  method = _load(path).method
  assert set(defaults.SECTIONS[method.name]) <= set(method.keys())
  assert config_lib.to_dict(defaults.resolve(method)) == config_lib.to_dict(method)


# Distillation objectives re-derive their dependent fields but keep the others.
@pytest.mark.parametrize('path, variant, expected', [
    ('configs/distill/toy2d.py', '', dict(
        objective='f_distill', divergence='js', fake_updates=4, disc_head='separate',
        gan_weight=0.1, disc_weight=1.0, reg_weight=1.0, num_pairs=8192, lr_generator=1e-3)),
    ('configs/distill/toy2d.py', 'dmd2', dict(
        divergence='reverse_kl', fake_updates=5, gan_weight=0.1, reg_weight=1.0)),
    ('configs/distill/toy2d.py', 'dmd', dict(
        divergence='reverse_kl', fake_updates=1, disc_head='none', gan_weight=0.0,
        disc_weight=1.0, reg_weight=0.25)),
    ('configs/distill/toy2d.py', 'multistep,forward_kl,dmd2', dict(
        divergence='reverse_kl', fake_updates=5, disc_head='fake_score', gan_weight=0.1,
        disc_weight=1e-2, reg_weight=1.0, reg_schedule='constant', gen_steps=4,
        lr_fake_score=1e-3)),
    ('configs/distill/toy2d.py', 'dmd2,forward_kl,smoke', dict(
        divergence='forward_kl', fake_updates=2, num_pairs=64)),
    ('configs/distill/toy2d.py', 'dmd2,f_distill', dict(
        divergence='js', fake_updates=4, disc_head='separate', disc_weight=1.0)),
    ('configs/distill/digits.py', '', dict(
        objective='dmd', divergence='reverse_kl', fake_updates=1, disc_head='fake_score',
        gan_weight=1e-2, disc_weight=1e-2, reg_weight=0.25, num_pairs=512)),
    ('configs/distill/digits.py', 'f_distill', dict(
        divergence='js', fake_updates=4, disc_head='separate', gan_weight=3e-3,
        reg_weight=0.0)),
    ('configs/distill/digits.py', 'dmd', dict(
        divergence='reverse_kl', fake_updates=1, disc_head='fake_score', gan_weight=1e-2,
        disc_weight=1e-2, reg_weight=0.25, num_pairs=512, lr_generator=2e-5)),
    ('configs/distill/digits.py', 'dmd,teacher_head', dict(
        disc_head='teacher_features', gan_weight=1e-2, disc_weight=1.0)),
    ('configs/distill/digits.py', 'dmd2', dict(
        fake_updates=5, disc_head='separate', gan_weight=3e-3, disc_weight=1.0)),
    ('configs/distill/digits.py', 'dmd2,smoke', dict(fake_updates=1, reg_batch=8)),
])
def test_distill_objective_tokens(path, variant, expected):
  method = _load(path, variant).method
  assert {k: method[k] for k in expected} == expected


def test_distill_digits_conditional_multistep_student_trains_longer():
  """cond,multistep trains 6000 steps (its 4-NFE figure reached the teacher's there);
  the other digits students keep 2500, and smoke its own 4."""
  steps = {v: _load('configs/distill/digits.py', v).train.num_steps
           for v in ('cond,multistep', 'multistep,cond', 'multistep', 'cond', '',
                     'cond,multistep,smoke')}
  assert steps == {'cond,multistep': 6000, 'multistep,cond': 6000, 'multistep': 2500,
                   'cond': 2500, '': 2500, 'cond,multistep,smoke': 4}


def test_distill_digits_unconditional_multistep_student_regresses_its_later_steps():
  """The unconditional few-step student takes reg_step='online' (4 NFE at the teacher
  over 3 seeds); the conditional one and the one-step students keep 'first'."""
  reg = {v: _load('configs/distill/digits.py', v).method.reg_step
         for v in ('multistep', 'dmd2,multistep', 'multistep,smoke', 'cond,multistep', '',
                   'cond')}
  assert reg == {'multistep': 'online', 'dmd2,multistep': 'online',
                 'multistep,smoke': 'online', 'cond,multistep': 'first', '': 'first',
                 'cond': 'first'}


def test_ebm_gmm_patterns():
  c = _load('configs/ebm/gmm.py', 'pcd,dim10,walkers2000')
  assert (c.method.estimator, c.method.num_walkers) == ('pcd', 2000)
  assert len(c.data.params.means[0]) == 10 and len(c.data.params.means) == 2
  smoke = _load('configs/ebm/gmm.py', 'smoke,dim10')
  assert len(smoke.data.params.means[0]) == 5 and smoke.method.num_walkers == 256
  assert len(_load('configs/ebm/gmm.py', 'dim3,smoke').data.params.means[0]) == 3
  for bad in ('dim', 'dimx', 'dim-1', 'walkers1.5'):
    with pytest.raises(ValueError, match='dim<N>, walkers<N>'):
      _load('configs/ebm/gmm.py', bad)


@pytest.mark.parametrize('path', ['configs/vae/toy2d.py', 'configs/vae/digits.py',
                                  'configs/vae/mnist.py'])
def test_vae_beta_and_warmup(path):
  c = _load(path, 'beta2,warmup')
  assert c.method.beta == 2.0 and isinstance(c.method.beta, float)
  assert c.method.kl_warmup_steps == _load(path).train.num_steps // 5
  with pytest.raises(ValueError, match='beta<x>'):
    _load(path, 'betax')


def test_common_helpers():
  assert common.tokens(' a, ,b,') == ['a', 'b'] and common.tokens(None) == []
  c = config_lib.base()
  common.setter(**{'method.name': 'vae', 'seed': 3})(c)
  assert (c.method.name, c.seed) == ('vae', 3)
  take = common.numbered('n', lambda c, v: setattr(c, 'seed', v))
  assert take(c, 'n12') and c.seed == 12
  assert not take(c, 'n1.5') and not take(c, 'm3') and not take(c, 'n')
  c.method = common.method('distill', divergence='js', lr_generator=1e-4)
  common.distill_objective(c, 'dmd2', gen_steps=4)
  assert (c.method.divergence, c.method.lr_generator, c.method.gen_steps) == ('js', 1e-4, 4)
  assert (c.method.fake_updates, c.method.disc_head, c.method.disc_weight) == (
      5, 'fake_score', 1e-2)
  assert set(common.DISTILL_DEPENDENT) == set(defaults.DISTILL_OBJECTIVES['dmd']) | {
      'disc_weight'}
