"""The train state every method keeps, and the one update rule they share.

  state = TrainState.create(params, tx, ema_decays=(0.999,))
  state = apply_gradients(state, grads)     # optimizer step, EMA update, step += 1

`params` may be any pytree (a dict of several networks for methods that train more
than one); `extra` holds whatever else a method carries (walkers, a fake-score
net's state, ...). `ema` maps a decay's name (e.g. '0.999') to a params pytree.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


def ema_name(decay: float) -> str:
  return f'{float(decay):g}'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema: dict[str, Any]
  extra: Any = None

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, ema_decays=(), extra=None):
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        ema={ema_name(d): jax.tree.map(jnp.array, params) for d in ema_decays},
        extra=extra,
    )

  def eval_params(self, use_ema: bool | str = True):
    """The params to sample with: the EMA with the largest decay by default."""
    if use_ema is False or not self.ema:
      return self.params
    if isinstance(use_ema, str):
      return self.ema[use_ema]
    return self.ema[max(self.ema, key=float)]


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
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema,
                      **replace)
  metrics = {
      'l2_grads': optax.global_norm(grads),
      'l2_updates': optax.global_norm(updates),
      'l2_params': optax.global_norm(params),
  }
  return new, metrics
