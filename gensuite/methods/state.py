"""The train state every method keeps, and the one update rule they share.

  state = TrainState.create(params, tx, ema_decays=(0.999,), phema_stds=(0.05, 0.1))
  state = apply_gradients(state, grads)     # optimizer step, EMA updates, step += 1

`params` may be any pytree (a dict of several networks for methods that train more
than one); `extra` holds whatever else a method carries (walkers, a fake-score
net's state, ...). `ema` maps a decay's name (e.g. '0.999') to a params pytree: the
fixed-decay EMAs, plus, in a loaded run, the post-hoc EMAs reconstructed by `gensuite
phema` ('phema_0.05'; gensuite.methods.phema). `phema` maps a relative std's name
(e.g. '0.05') to the power-function EMA tracked with that std (EDM2, Karras et al.,
arXiv 2312.02696): after step k (k = 1, 2, ...)

  phema <- beta_k phema + (1 - beta_k) params,   beta_k = (1 - 1/k)^(gamma + 1),

gamma from the std by EDM2's Eq. 126 (phema.std_to_exp). beta_1 = 0, and params_k
gets weight (k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1) in the EMA at step t:
the profile p_t(tau) = (gamma+1) tau^gamma / t^(gamma+1) integrated over (k-1, k].
"""
import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gensuite.errors import ConfigError
from gensuite.methods import phema as phema_lib


def ema_name(decay: float) -> str:
  return f'{float(decay):g}'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema: dict[str, Any]
  extra: Any = None
  phema: dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, ema_decays=(), extra=None,
             phema_stds=()):
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema={ema_name(d): jax.tree.map(jnp.array, params) for d in ema_decays},
        extra=extra,
        phema={phema_lib.std_name(s): jax.tree.map(jnp.array, params) for s in phema_stds},
    )

  def eval_params(self, use_ema: bool | str = True):
    """The params to sample with: by default the fixed-decay EMA with the largest
    decay; a name picks any EMA ('0.999', 'phema_0.05'); False the raw params.
    'phema_<S>' with S one of the tracked stds (optim.phema_stds) is the tracked
    power-function EMA itself, exact at this state's step (a reconstruction of the
    same name, possibly of another step, is not read); any other S is a
    reconstruction by `gensuite phema`."""
    if use_ema is False:
      return self.params
    if isinstance(use_ema, str):
      tracked = self._tracked_phema(use_ema)
      if tracked is not None:
        return tracked
      if use_ema not in self.ema:
        hint = (f"; run `gensuite phema --workdir=DIR --std={use_ema[len('phema_'):]}` "
                'first' if use_ema.startswith('phema_') else '')
        raise ConfigError(f'this run has no EMA named {use_ema!r}; it has: '
                          + (', '.join(sorted(set(self.ema) | {phema_lib.PREFIX + s
                                                           for s in self.phema}))
                             or 'none') + hint)
      return self.ema[use_ema]
    decays = [name for name in self.ema if not name.startswith(phema_lib.PREFIX)]
    if not decays:
      return self.params
    return self.ema[max(decays, key=float)]

  def _tracked_phema(self, name: str):
    if not name.startswith(phema_lib.PREFIX) or not self.phema:
      return None
    try:
      std = phema_lib.std_name(float(name[len(phema_lib.PREFIX):]))
    except ValueError:
      return None
    return self.phema.get(std)


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation,
                    **replace) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on `state.params`, EMA update, step + 1.

  Returns the new state and the standard log scalars (grad / update / param norms).
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = {
      name: jax.tree.map(lambda e, p, d=float(name): d * e + (1.0 - d) * p, tree, params)
      for name, tree in state.ema.items()
  }
  replace = dict(replace)
  if state.phema:
    replace['phema'] = phema_update(state.phema, params, state.step + 1)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema,
                      **replace)
  metrics = {
      'l2_grads': optax.global_norm(grads),
      'l2_updates': optax.global_norm(updates),
      'l2_params': optax.global_norm(params),
  }
  return new, metrics


def phema_update(tracked: dict[str, Any], params, step) -> dict[str, Any]:
  """The power-function EMAs after step `step` (>= 1; module docstring).

  beta = exp((gamma + 1) log1p(-1/k)) in the params' dtype: 0 at k = 1 (the EMA is
  then params_1), and accurate for large k where 1 - 1/k rounds.
  """
  out = {}
  for name, tree in tracked.items():
    gamma = phema_lib.std_to_exp(float(name))
    k = jnp.asarray(step, jnp.float32)
    beta = jnp.where(k > 1.0, jnp.exp((gamma + 1.0) * jnp.log1p(-1.0 / jnp.maximum(k, 1.0))),
                     0.0)
    out[name] = jax.tree.map(
        lambda e, p: (beta.astype(p.dtype) * e + (1.0 - beta).astype(p.dtype) * p), tree, params)
  return out
