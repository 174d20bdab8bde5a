"""The default `config.method` section of every family, in one place.

  c.method = defaults.section('diffusion', formulation='vp')   # in configs/<family>/*.py
  mc = defaults.resolve(config.method)                          # in the method

Configs start from `section(name, **overrides)`, so a config file writes only what it
changes. Methods read their fields through `resolve`, which fills what a hand-built
section leaves out with the same defaults and refuses (one line, exit 2 from the CLI)
a field the family does not have or a value of the wrong type, so a typo such as
`--config.method.sigma_mn=0.1` is an error, not a silent no-op.

Some defaults depend on another field: distillation's fake-score/discriminator
settings on `objective` (DMD: one fake-score update, no discriminator, paired
regression; DMD2: five updates and a GAN head on the fake score's bottleneck;
f-distill: a separate discriminator) and disc_weight on disc_head (1e-2 for the head
on the fake score, 1 otherwise), and flow matching's `t_eps` on `gamma` (1e-3 for
'sqrt', whose velocity target is singular at t = 0 and 1). Values are never None: ml_collections
cannot override a None field from the command line.

Light on purpose (no JAX): config files import it.
"""
from typing import Any, Mapping

import ml_collections

from gensuite import config as config_lib
from gensuite.errors import lookup

# How a flow map pairs noise with data in a batch (as flow matching's coupling):
# 'independent', or 'ot' (the minibatch OT permutation by method.ot_solver).
FLOW_MAP_COUPLING = dict(coupling='independent', ot_solver='exact', sinkhorn_eps=0.01,
                         sinkhorn_iters=30)
SECTIONS: dict[str, dict[str, Any]] = {
    'flow_matching': dict(
        path='linear', sigma_min=0.0, coupling='independent', gamma='none',
        gamma_scale=1.0, denoiser_head=False, contrastive_weight=0.0, negatives='any',
        time_sampling='uniform', t_eps=0.0, class_conditional=False, label_dropout=0.0,
        ot_solver='exact', sinkhorn_eps=0.01, sinkhorn_iters=30),
    'diffusion': dict(
        formulation='edm', weighting='default', sigma_data=0.5, p_mean=-1.2, p_std=1.2,
        edm_sigma_min=0.002, edm_sigma_max=80.0, rho=7.0, beta_min=0.1, beta_max=20.0,
        sigma_min=0.01, sigma_max=50.0, t_eps=1e-5, sample_t_eps=1e-3,
        class_conditional=False, label_dropout=0.0),
    'distill': dict(
        objective='f_distill', divergence='reverse_kl', alpha=0.5, fake_updates=4,
        disc_head='separate', gan_weight=3e-3, disc_weight=1.0, reg_weight=0.0,
        reg_loss='l2', reg_huber_c=0.0, reg_schedule='constant', reg_final=0.0,
        reg_step='first', online_steps=8, online_batch=0,
        num_pairs=1024, pair_steps=18, reg_batch=256,
        sigma_min=0.002, sigma_max=80.0,
        rho=7.0, num_levels=1000, t_range=(0.02, 0.98), logit_clamp=10.0,
        ratio_clip=(0.1, 20.0), ratio_bins=10, ratio_ema=0.0, normalize_ratio=True,
        normalize_h=True, dm_normalize=True, gen_steps=1, gen_sigmas=(), sigma_data=0.0,
        init_from_teacher=True, lr_generator=0.0, lr_fake_score=0.0,
        lr_discriminator=0.0, generator_schedule='', fake_per_step=True, head_width=64,
        class_conditional=False, teacher_cfg_scale=1.0),
    'ebm': dict(
        estimator='jarzynski', num_walkers=1000, step_size=0.1, ula_steps=1, cd_steps=1,
        resampler='systematic', resample_threshold=0.5, energy_reg=0.0, param_lr_scale={},
        walker_move='ula', log_z_walkers=0, log_z_ema=0.0, log_z_move='', data_noise=0.0,
        denoise_samples=True),
    'vae': dict(
        latent_dim=8, likelihood='gaussian', variance='learned_scalar', fixed_sigma=0.1,
        beta=1.0, kl_warmup_steps=0, balance_decay=0.99, balance_init_mse=1.0,
        num_bins=256, iwae_k=(1, 64), iwae_chunk=100, eval_examples=500, eval_batch=100,
        eval_split=''),
    # Flow maps (gensuite.methods.flow_maps; ALGORITHMS.md §10). MeanFlow: the JAX
    # code's (t, r) sampler and p = 1, c = 0.01; sCM: FastGen's sCT settings.
    'meanflow': dict(
        time_mean=-0.4, time_std=1.0, time_pairing='sorted', r_time_mean=-4.0, r_time_std=1.6,
        tangent='conditional',
        equal_fraction=0.75, adaptive_p=1.0, adaptive_c=0.01,
        cfg_omega=1.0, cfg_kappa=0.0, cfg_t_range=(0.0, 1.0), class_conditional=False,
        label_dropout=0.0, **FLOW_MAP_COUPLING),
    'scm': dict(
        training='sct', sigma_data=0.5, p_mean=-1.0, p_std=1.4, tangent_warmup=10000,
        tangent_norm_c=0.1, tangent_norm='example', tangent_norm_bins=8,
        prior_weighting='tan', sigma_max=80.0, mid_t=1.1,
        weight_hidden=64, class_conditional=False, label_dropout=0.0,
        teacher_cfg_scale=1.0, init_from_teacher=False, ect_stage_steps=25000,
        **FLOW_MAP_COUPLING),
    'shortcut': dict(
        max_steps=128, bootstrap_every=4, bootstrap_target='online', target_clip=4.0,
        class_conditional=False, label_dropout=0.0, **FLOW_MAP_COUPLING),
}
# Fields whose allowed types are wider than their default's type, or that a section
# may hold without a default (a separate discriminator's own net section).
EXTRA_TYPES: dict[str, dict[str, Any]] = {
    'distill': {'disc_net': dict},
    'ebm': {'param_lr_scale': dict},
    'vae': {'iwae_k': (tuple, int)},
}
# Distillation: what `objective` implies unless the section says otherwise.
DISTILL_OBJECTIVES = {
    'f_distill': dict(fake_updates=4, disc_head='separate', gan_weight=3e-3, reg_weight=0.0),
    'dmd': dict(fake_updates=1, disc_head='none', gan_weight=0.0, reg_weight=0.25),
    'dmd2': dict(fake_updates=5, disc_head='fake_score', gan_weight=3e-3, reg_weight=0.0),
}


def _dependent(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
  """Defaults implied by other fields of `given` (see the module docstring)."""
  if name == 'distill':
    objective = lookup('distillation objective', given.get('objective', 'f_distill'),
                       DISTILL_OBJECTIVES)
    out = dict(objective)
    # A head on the fake score shares its backbone with the DSM loss: DMD2 weights the
    # classification loss 1e-2 against it. Elsewhere the weight only scales the
    # discriminator's own gradients.
    disc_head = given.get('disc_head', out['disc_head'])
    out['disc_weight'] = 1e-2 if disc_head == 'fake_score' else 1.0
    return out
  if name == 'flow_matching':
    return {'t_eps': 1e-3 if given.get('gamma', 'none') == 'sqrt' else 0.0}
  return {}


def _defaults(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
  return {**lookup('method', name, SECTIONS), **_dependent(name, given)}


def section(name: str, **overrides) -> ml_collections.ConfigDict:
  """A complete method section for family `name`: its defaults, then `overrides`."""
  values = {**_defaults(name, overrides), **overrides}
  return ml_collections.ConfigDict(dict(name=name, **values))


def field_types(name: str) -> dict[str, Any]:
  types = {k: config_lib.kind_of(v) for k, v in lookup('method', name, SECTIONS).items()}
  types.update(EXTRA_TYPES.get(name, {}))
  types['name'] = str
  return types


def resolve(method_config) -> ml_collections.ConfigDict:
  """config.method checked against its family's fields, with every default filled."""
  name = method_config['name']
  config_lib.check_section(method_config, field_types(name), 'method')
  given = {k: method_config[k] for k in method_config.keys()}
  return ml_collections.ConfigDict({**_defaults(name, given), **given})
