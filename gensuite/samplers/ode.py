"""Deterministic ODE solvers for dx/dt = v(x, t): fixed-grid Euler, Heun, RK4 and
adaptive Dormand–Prince 5(4).

  ts = time_grid(steps=20, t0=0.0, t1=1.0)           # steps + 1 points
  x1 = heun(velocity_fn, x0, ts)                      # final state
  xs = rk4(velocity_fn, x0, ts, return_trajectory=True)  # [len(ts), B, ...]
  x1, nfe = dopri5(velocity_fn, x0, 0.0, 1.0, rtol=1e-5, atol=1e-5)

Solvers take a function and a grid, never a method or a config: they are small pure
functions, jittable and differentiable like any other JAX code.

`velocity_fn(x, t)` gets the whole batch x [B, ...] and a *scalar* float array t; a
network that wants a [B] vector of times must broadcast it itself, e.g.
`net.apply(params, x, jnp.full((x.shape[0],), t))`. The grid `ts` may run in either
direction (t1 < t0 integrates backwards, as diffusion samplers do in sigma) and need
not be uniform. Fixed-grid solvers run ONE `jax.lax.scan` over consecutive grid pairs,
so compile time does not grow with the number of steps. A step's evaluations all use
`guidance.for_step(velocity_fn, t_i)` (a guidance interval decided per step).

Costs (network evaluations per step, ALGORITHMS.md §3): Euler 1, Heun 2 (EDM form with
`final_euler=True`: 2N - 1 in all), RK4 4; dopri5 6 per attempted step plus 2 at the
start (the first stage, reused by FSAL, and a probe that sizes the first step).
"""
from typing import Callable

import jax
import jax.numpy as jnp

from gensuite.errors import ConfigError
from gensuite.samplers.guidance import for_step

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
GRID_KINDS = ('uniform', 'cosine', 'quadratic')


def time_grid(steps: int, t0: float = 0.0, t1: float = 1.0,
              kind: str = 'uniform') -> jax.Array:
  """steps + 1 times from t0 to t1 (both exact).

  kinds, with u uniform on [0, 1] and t = t0 + (t1 - t0) s(u):
    'uniform'    s = u.
    'cosine'     s = sin(pi u / 2): steps shrink toward t1 (ds/du = 0 there).
    'quadratic'  s = 1 - (1 - u)^2: same clustering, linear step-size decay.
  Clustering toward t1 suits flow matching with t = 1 the data end, where the
  velocity field varies fastest for concentrated data.
  """
  if steps < 1:
    raise ValueError(f'time_grid needs steps >= 1, got {steps}')
  u = jnp.linspace(0.0, 1.0, steps + 1)
  if kind == 'uniform':
    s = u
  elif kind == 'cosine':
    s = jnp.sin(0.5 * jnp.pi * u)
  elif kind == 'quadratic':
    s = 1.0 - (1.0 - u)**2
  else:
    raise ConfigError(f'unknown time grid kind {kind!r}; allowed: {", ".join(GRID_KINDS)}')
  ts = t0 + (t1 - t0) * s
  # Round-off in the maps above must not move the endpoints.
  return ts.at[0].set(t0).at[-1].set(t1)


def _scan(step: Callable, x: jax.Array, ts: jax.Array, return_trajectory: bool):
  """Runs x <- step(x, t_i, t_{i+1}) over the grid in one scan."""
  ts = jnp.asarray(ts)
  if ts.ndim != 1 or ts.shape[0] < 1:
    raise ValueError(f'ts must be a 1-D array of times, got shape {ts.shape}')

  def body(x, pair):
    # Keep the carry's dtype fixed: a float64 grid must not promote a float32 state.
    x_next = step(x, pair[0], pair[1]).astype(x.dtype)
    return x_next, (x_next if return_trajectory else None)

  x_final, traj = jax.lax.scan(body, x, (ts[:-1], ts[1:]))
  if return_trajectory:
    return jnp.concatenate([x[None], traj], axis=0)
  return x_final


def _euler_step(velocity_fn: VelocityFn, x, t0, t1):
  dt = (t1 - t0).astype(x.dtype)
  return x + dt * velocity_fn(x, t0)


def euler(velocity_fn: VelocityFn, x: jax.Array, ts: jax.Array,
          return_trajectory: bool = False) -> jax.Array:
  """Explicit Euler (order 1, 1 NFE per step) over the grid ts."""
  return _scan(lambda x, a, b: _euler_step(velocity_fn, x, a, b), x, ts,
               return_trajectory)


def heun(velocity_fn: VelocityFn, x: jax.Array, ts: jax.Array,
         return_trajectory: bool = False, final_euler: bool = False) -> jax.Array:
  """Heun's trapezoid predictor-corrector (order 2, 2 NFE per step).

  final_euler: take the last step with Euler, as EDM does when the last grid point is
    sigma = 0 (where the velocity (x - D) / sigma is undefined). N steps then cost
    2N - 1 evaluations and the velocity is never evaluated at ts[-1].
  """
  def step(x, t0, t1):
    dt = (t1 - t0).astype(x.dtype)
    fn = for_step(velocity_fn, t0)  # both evaluations: the step's guidance
    d0 = fn(x, t0)
    x_pred = x + dt * d0
    d1 = fn(x_pred, t1)
    return x + 0.5 * dt * (d0 + d1)

  ts = jnp.asarray(ts)
  if not final_euler or ts.shape[0] < 2:
    return _scan(step, x, ts, return_trajectory)
  # The final step is separate so that the scan body needs no branch (a lax.cond in
  # the body would still trace both paths and hide the saving from NFE counters).
  head = _scan(step, x, ts[:-1], return_trajectory)
  x_prev = head[-1] if return_trajectory else head
  x_last = _euler_step(velocity_fn, x_prev, ts[-2], ts[-1]).astype(x.dtype)
  if return_trajectory:
    return jnp.concatenate([head, x_last[None]], axis=0)
  return x_last


def rk4(velocity_fn: VelocityFn, x: jax.Array, ts: jax.Array,
        return_trajectory: bool = False) -> jax.Array:
  """Classical fourth-order Runge–Kutta (order 4, 4 NFE per step)."""
  def step(x, t0, t1):
    dt = (t1 - t0).astype(x.dtype)
    tm = t0 + 0.5 * (t1 - t0)
    fn = for_step(velocity_fn, t0)  # every stage: the step's guidance
    k1 = fn(x, t0)
    k2 = fn(x + 0.5 * dt * k1, tm)
    k3 = fn(x + 0.5 * dt * k2, tm)
    k4 = fn(x + dt * k3, t1)
    return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

  return _scan(step, x, ts, return_trajectory)


# Dormand–Prince 5(4) tableau (Hairer, Nørsett & Wanner, Table II.5.2). The 5th-order
# weights equal the last stage row, so the last stage is the next step's first (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# b5 - b4: the embedded error estimate.
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _rms_per_example(v: jax.Array) -> jax.Array:
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.mean(jnp.square(v), axis=axes)) if axes else jnp.abs(v)


def _dp_step(velocity_fn, x, t, dt, k1):
  """One Dormand–Prince attempt: 5th-order x_new, its error estimate, and k7."""
  ks = [k1]
  for i in range(1, 7):
    dx = sum(a * k for a, k in zip(_DP_A[i], ks) if a != 0.0)
    ks.append(velocity_fn(x + dt * dx, t + _DP_C[i] * dt).astype(x.dtype))
  x_new = x + dt * sum(a * k for a, k in zip(_DP_A[6], ks) if a != 0.0)
  err = dt * sum(e * k for e, k in zip(_DP_E, ks) if e != 0.0)
  return x_new, err, ks[6]


def dopri5(velocity_fn: VelocityFn, x: jax.Array, t0, t1, rtol: float = 1e-5,
           atol: float = 1e-5, max_steps: int = 4096, safety: float = 0.9,
           ) -> tuple[jax.Array, jax.Array]:
  """Adaptive Dormand–Prince 5(4) from t0 to t1; returns (x(t1), nfe).

  Error control (Hairer's RMS norm): with scale = atol + rtol max(|x|, |x_new|), a step
  is accepted when sqrt(mean((err / scale)^2)) <= 1. The mean runs over each
  example's elements and the step is shared by the batch, so the norm is the max over
  examples: every sample meets the tolerance, not only the batch average. The step
  then grows or shrinks by safety * norm^(-1/5), clipped to [0.2, 10]; the first step
  comes from Hairer's starting-step heuristic (1 extra evaluation).

  The loop is a `jax.lax.while_loop`, so the function jits (t0 and t1 may be traced)
  but is not reverse-mode differentiable. After max_steps attempted steps it stops
  and returns the state reached, which is then short of t1.
  """
  dtype = x.dtype
  t0 = jnp.asarray(t0, dtype)
  t1 = jnp.asarray(t1, dtype)
  direction = jnp.where(t1 >= t0, 1.0, -1.0).astype(dtype)
  span = jnp.abs(t1 - t0)

  def error_norm(err, x_old, x_new):
    scale = atol + rtol * jnp.maximum(jnp.abs(x_old), jnp.abs(x_new))
    return jnp.max(_rms_per_example(err / scale))

  # Hairer, Nørsett & Wanner II.4: pick h so that an Euler step changes x by ~1% of
  # its scale, then refine it with a second-derivative estimate.
  # Casts keep the while_loop carry's dtype fixed whatever the velocity returns.
  k1 = velocity_fn(x, t0).astype(dtype)
  scale0 = atol + rtol * jnp.abs(x)
  d0 = jnp.max(_rms_per_example(x / scale0))
  d1 = jnp.max(_rms_per_example(k1 / scale0))
  h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.maximum(d1, 1e-30))
  h0 = jnp.minimum(h0, span)
  k_probe = velocity_fn(x + direction * h0 * k1, t0 + direction * h0).astype(dtype)
  d2 = jnp.max(_rms_per_example((k_probe - k1) / scale0)) / h0
  dmax = jnp.maximum(d1, d2)
  h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                 (0.01 / jnp.maximum(dmax, 1e-30))**(1.0 / 5.0))
  h = jnp.minimum(jnp.minimum(100.0 * h0, h1), span).astype(dtype)

  def cond(state):
    t, _, _, _, _, steps = state
    return (direction * (t1 - t) > 0) & (steps < max_steps)

  def body(state):
    t, x, h, k1, nfe, steps = state
    last = h >= direction * (t1 - t)
    dt = jnp.where(last, t1 - t, direction * h)
    x_new, err, k7 = _dp_step(velocity_fn, x, t, dt, k1)
    x_new = x_new.astype(dtype)
    norm = error_norm(err, x, x_new)
    accept = norm <= 1.0
    # A non-finite norm (overflow) counts as a rejection with the largest shrink.
    factor = jnp.where(jnp.isfinite(norm),
                       safety * jnp.maximum(norm, 1e-10)**(-0.2), 0.2)
    h_next = h * jnp.clip(factor, 0.2, 10.0)
    t = jnp.where(accept, jnp.where(last, t1, t + dt), t)
    x = jnp.where(accept, x_new, x)
    k1 = jnp.where(accept, k7, k1)
    return t, x, h_next.astype(dtype), k1, nfe + 6, steps + 1

  state = (t0, x, h, k1, jnp.asarray(2, jnp.int32), jnp.asarray(0, jnp.int32))
  _, x, _, _, nfe, _ = jax.lax.while_loop(cond, body, state)
  return x, nfe
