"""Per-example random draws that do not depend on how a batch is split into microbatches.

  from gensuite.methods import rand
  eps = rand.normal(key, x.shape)              # [B, ...]: one row per example
  t = rand.uniform(key, (n,))
  drop = rand.bernoulli(key, 0.1, (n,))
  k = rand.randint(key, (n,), 0, 10)
  z = rand.normal(key, (2, n), batch_axis=1)   # the batch on another axis
  first = rand.rows(n) < m                     # global row numbers of this batch's rows
  rngs = {'dropout': rand.microbatch_key(k_net)}

Gradient accumulation (config.train.grad_accum = k; gensuite.methods.base.accumulate_grads)
runs a method's loss on k microbatches of the global batch of N rows, each with the
same rng; microbatch i holds the rows i, i + k, i + 2k, ... (a stride that keeps every
device's rows on that device). Inside `microbatch(i, k)` (set while the accumulation
traces its scan body, i a traced index), each draw above makes the whole global batch's
values, shape [N, ...] with N = k times the microbatch's rows, and returns this
microbatch's rows of it: so every example gets exactly the value it gets when the
batch is not split, and the k microbatch gradients average to the one-batch gradient.
Outside a microbatch every function is the plain jax.random draw of the same name
(bitwise: methods that use it train as before when grad_accum = 1).

Draws that are not per example (one scalar, a population of walkers) should keep
using jax.random; `microbatch_key` gives such draws (and dropout, which flax draws per
call) a key of their own in each microbatch, so microbatches do not repeat them.
"""
import contextlib
import threading

import jax
import jax.numpy as jnp

_STATE = threading.local()


@contextlib.contextmanager
def microbatch(index, count: int):
  """Draws inside are this microbatch's rows (index traced or int, count static)."""
  previous = getattr(_STATE, 'current', None)
  _STATE.current = (index, int(count))
  try:
    yield
  finally:
    _STATE.current = previous


def current():
  """(index, count) of the active microbatch, or None."""
  return getattr(_STATE, 'current', None)


def split_rows(x: jax.Array, count: int) -> jax.Array:
  """[N, ...] -> [count, N / count, ...]: row j of microbatch i is row j * count + i."""
  n = x.shape[0] // count
  return jnp.swapaxes(x.reshape((n, count) + x.shape[1:]), 0, 1)


def _rows_of(global_value: jax.Array, batch_axis: int) -> jax.Array:
  index, count = current()
  x = jnp.moveaxis(global_value, batch_axis, 0)
  n = x.shape[0] // count
  x = x.reshape((n, count) + x.shape[1:])
  x = jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False)
  return jnp.moveaxis(x, 0, batch_axis)


def _draw(fn, shape, batch_axis: int):
  """fn(shape) for the whole batch, cut to this microbatch's rows when one is active."""
  shape = tuple(shape)
  if current() is None:
    return fn(shape)
  _, count = current()
  axis = batch_axis % len(shape)
  full = shape[:axis] + (shape[axis] * count,) + shape[axis + 1:]
  return _rows_of(fn(full), axis)


def normal(key, shape, dtype=jnp.float32, batch_axis: int = 0) -> jax.Array:
  return _draw(lambda s: jax.random.normal(key, s, dtype), shape, batch_axis)


def uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=1.0,
            batch_axis: int = 0) -> jax.Array:
  return _draw(lambda s: jax.random.uniform(key, s, dtype, minval, maxval), shape,
               batch_axis)


def bernoulli(key, p, shape, batch_axis: int = 0) -> jax.Array:
  return _draw(lambda s: jax.random.bernoulli(key, p, s), shape, batch_axis)


def randint(key, shape, minval, maxval, dtype=jnp.int32, batch_axis: int = 0) -> jax.Array:
  return _draw(lambda s: jax.random.randint(key, s, minval, maxval, dtype), shape,
               batch_axis)


def rows(n: int) -> jax.Array:
  """[n] int32: the global row number of each of this batch's n rows (arange(n) when
  the batch is not split)."""
  local = jnp.arange(n, dtype=jnp.int32)
  if current() is None:
    return local
  index, count = current()
  return local * count + jnp.asarray(index, jnp.int32)


def total(n: int) -> int:
  """The global batch's rows, for a batch (or microbatch) of n rows."""
  return n if current() is None else n * current()[1]


def microbatch_key(key) -> jax.Array:
  """key folded with the microbatch index (key itself outside a microbatch)."""
  if current() is None:
    return key
  return jax.random.fold_in(key, current()[0])
