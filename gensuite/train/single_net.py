"""init / train_step shared by methods that train one network on one loss.

  class FlowMatching(SingleNetMethod):   # needs self.net, self.tx, self.ema_decays,
    def loss(self, params, batch, rng)   # self.conditional and this loss
      -> (scalar, metrics)

Methods with several networks (distillation) or extra state (EBM walkers, VAE running
MSE) write their own.
"""
import jax
import jax.numpy as jnp

from gensuite.train.state import TrainState, apply_gradients


class SingleNetMethod:
  """Mixin: `init` builds params from a batch, `train_step` is one optimizer step."""

  def init(self, rng, batch) -> TrainState:
    x = batch['x']
    label = batch.get('label') if self.conditional else None
    t = jnp.zeros((x.shape[0],), x.dtype)
    params = self.net.init({'params': rng, 'dropout': rng}, x, t, label=label)['params']
    return TrainState.create(params, self.tx, self.ema_decays)

  def train_step(self, state, batch, rng):
    grads, metrics = jax.grad(self.loss, has_aux=True)(state.params, batch, rng)
    state, norms = apply_gradients(state, grads, self.tx)
    return state, {**metrics, **norms}
