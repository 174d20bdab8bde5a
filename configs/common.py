"""What every config file shares: the variant parser, the smoke block, method sections.

  from configs import common
  c = config_lib.base()
  c.method = common.method('diffusion', sigma_data=1.0)       # the family's defaults + these
  common.apply_variant(c, arg, {'vp': use_vp, 'moons': ...}, 'diffusion toy2d')

A variant is the text after the config path's colon: comma-separated tokens, in any
order (`toy2d.py:moons,ot,smoke`). Each token names a function that edits the config;
`smoke` (a few steps of a tiny run, for tests) is handled here for every file, after
the other tokens, so it shrinks whatever they chose. An unknown token is one
ValueError listing the allowed ones, which the CLI prints as one line with exit 2.
"""
from typing import Callable, Mapping

import ml_collections

from gensuite.methods import defaults

Edit = Callable[[ml_collections.ConfigDict], None]


def method(name: str, **overrides) -> ml_collections.ConfigDict:
  """The method section of family `name` (gensuite.methods.defaults) with overrides."""
  return defaults.section(name, **overrides)


def tokens(arg: str | None) -> list[str]:
  return [t.strip() for t in (arg or '').split(',') if t.strip()]


def smoke(c: ml_collections.ConfigDict, *, num_steps: int = 20, batch_size: int = 64,
          log_every: int = 5, eval_every: int = 10, ckpt_every: int = 10,
          sampler_steps: int | None = 8, eval_samples: int = 256,
          net: Mapping | None = None) -> None:
  """A few steps of a tiny net: the block tests run (defaults fit the 2-D toys)."""
  c.train.num_steps, c.train.batch_size = num_steps, batch_size
  c.train.log_every, c.train.eval_every, c.train.ckpt_every = log_every, eval_every, ckpt_every
  c.optim.warmup_steps = 0
  if sampler_steps is not None:
    c.sampler.steps = sampler_steps
  c.eval.num_samples = eval_samples
  for key, value in (net or {}).items():
    c.net[key] = value


def apply_variant(c: ml_collections.ConfigDict, arg: str | None,
                  edits: Mapping[str, Edit], what: str, *,
                  smoke_edit: Edit | None = None,
                  patterns: Mapping[str, Callable[[ml_collections.ConfigDict, str], bool]]
                  | None = None) -> ml_collections.ConfigDict:
  """Applies the variant's tokens to `c` in order, then `smoke_edit` if 'smoke' is one.

  edits: token -> fn(c). patterns: a description such as 'dim<N>' -> fn(c, token)
  returning True if it took the token (tokens with a number in them).
  """
  chosen = tokens(arg)
  for token in chosen:
    if token == 'smoke' and smoke_edit is not None:
      continue
    if token in edits:
      edits[token](c)
      continue
    if any(take(c, token) for take in (patterns or {}).values()):
      continue
    allowed = list(edits) + list(patterns or {}) + (['smoke'] if smoke_edit else [])
    raise ValueError(f'unknown {what} variant {token!r}; allowed tokens: '
                     + ', '.join(allowed))
  if 'smoke' in chosen and smoke_edit is not None:
    smoke_edit(c)
  return c


def setter(**fields) -> Edit:
  """An edit that sets dotted fields: setter(**{'method.path': 'vp'})."""
  def edit(c):
    for path, value in fields.items():
      node = c
      *parents, last = path.split('.')
      for part in parents:
        node = node[part]
      node[last] = value
  return edit


def numbered(prefix: str, edit: Callable[[ml_collections.ConfigDict, object], None],
             kind: type = int) -> Callable[[ml_collections.ConfigDict, str], bool]:
  """A pattern for apply_variant: a token `<prefix><number>` calls edit(c, number).

    patterns={'dim<N>': numbered('dim', lambda c, n: ...)}              # dim10
    patterns={'beta<x>': numbered('beta', setter_fn, kind=float)}       # beta0.5
  kind=int takes digits only; kind=float whatever float() parses.
  """
  def take(c, token):
    if not token.startswith(prefix):
      return False
    text = token[len(prefix):]
    if kind is int:
      if not text.isdigit():
        return False
      value = int(text)
    else:
      try:
        value = kind(text)
      except ValueError:
        return False
    edit(c, value)
    return True
  return take


def rebuild_method(c: ml_collections.ConfigDict, drop=(), **overrides) -> None:
  """Rebuilds c.method from its family's defaults, keeping its fields except `drop`.

  Dropped fields take their defaults again, including those that depend on other
  fields (gensuite.methods.defaults); `overrides` come last.
  """
  kept = {k: c.method[k] for k in c.method.keys() if k != 'name' and k not in drop}
  c.method = method(c.method.name, **{**kept, **overrides})


# The distillation fields that follow from `objective` (defaults.DISTILL_OBJECTIVES,
# and disc_weight from disc_head).
DISTILL_DEPENDENT = ('fake_updates', 'disc_head', 'gan_weight', 'reg_weight', 'disc_weight')


def distill_objective(c: ml_collections.ConfigDict, objective: str, **overrides) -> None:
  """Switches a distill config to `objective`: the fields it implies are derived again
  from the defaults, every other field chosen so far (divergence, lr_*, gen_steps, ...)
  is kept; `overrides` come last."""
  rebuild_method(c, drop=DISTILL_DEPENDENT, objective=objective, **overrides)


def distill_objective_edits(objectives, file_overrides: Mapping[str, Mapping] = None
                            ) -> dict[str, Edit]:
  """token -> edit for each objective: distill_objective with JS for f-distill and
  reverse KL otherwise (what DMD/DMD2 minimise), then the file's own overrides."""
  def edit_for(objective):
    def edit(c):
      distill_objective(c, objective,
                        divergence='js' if objective == 'f_distill' else 'reverse_kl',
                        **(file_overrides or {}).get(objective, {}))
    return edit
  return {objective: edit_for(objective) for objective in objectives}


def vae_edits() -> tuple[dict[str, Edit], dict]:
  """The VAE tokens every VAE config has: `warmup` (KL warm-up over the first fifth of
  training) and `beta<x>` (the KL weight), as (edits, patterns) for apply_variant."""
  def warmup(c):
    c.method.kl_warmup_steps = c.train.num_steps // 5

  def set_beta(c, beta):
    c.method.beta = beta
  return {'warmup': warmup}, {'beta<x>': numbered('beta', set_beta, kind=float)}


def digits_unet(channels: int = 32) -> ml_collections.ConfigDict:
  """The small U-Net the digits configs use (8x8 images: two levels, attention at 4x4)."""
  return ml_collections.ConfigDict(dict(
      name='unet', channels=channels, channel_mult=(1, 2), num_res_blocks=1,
      attn_resolutions=(4,), dropout=0.0, time_scale=1000.0))
