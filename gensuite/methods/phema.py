"""Post-hoc EMA (Karras et al., EDM2, arXiv 2312.02696; NVlabs/edm2 training/phema.py).

  gamma = phema.std_to_exp(0.05)                               # 16.97
  phema.save_snapshot(workdir, step, state.phema)             # the loop, every phema_every
  arrays, info = phema.reconstruct(workdir, std=0.075)        # `gensuite phema`
  phema.write_reconstruction(workdir, 0.075, arrays, info['step'])  # DIR/phema/reconstructed/
  state = phema.merge(workdir, state)                         # load_run: ema['phema_0.075']

A power-function EMA with exponent gamma averages the training trajectory theta(tau)
with the profile

  p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),  0 <= tau <= t,

whose relative std (the std of tau/t) is sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2
(gamma + 3))) (Eq. 123); gamma from sigma_rel is the largest real root of gamma^3 +
7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) (Eq. 126), so 0 < sigma_rel
< 1/sqrt(12) for gamma > 0. Training tracks a few such EMAs (config.optim.phema_stds,
updated in gensuite.methods.state) and snapshots them every config.train.phema_every
steps. Any other profile q (relative std S at a snapshot time t_r) is then
approximated by a combination sum_i x_i p_i of the snapshots' profiles with t_i <=
t_r: least squares in L2 over tau, whose normal equations A x = B have closed-form
entries (Eq. 151)

  <p_a, p_b> = (g_a + 1)(g_b + 1) / (g_a + g_b + 1) * (t_a/t_b)^g_b / t_b    (t_a < t_b)
             = (g_a + 1)(g_b + 1) / (g_a + g_b + 1) * (t_a/t_b)^(-g_a) / t_a  (otherwise),

A_ij = <p_i, p_j>, B_i = <p_i, q>; x is normalised to sum to one (Alg. 3) and the
reconstruction is sum_i x_i theta_hat_i. Time is measured in steps (only ratios
matter). The solve runs in float64 on the host: cond(A) grows quickly with the number
of snapshots (ALGORITHMS.md §11, pitfalls).

Files (never pickle): DIR/phema/<step>.npz holds every tracked profile at that step,
arrays named '<std>/<leaf path>'; DIR/phema/reconstructed/phema_<S>.npz holds one
reconstruction (arrays named by leaf path, plus __step__ and __std__), which
`merge` (called by gensuite.load_run) adds to state.ema as 'phema_<S>', so `sample`,
`eval` (--config.eval.use_ema=phema_<S>) and distillation teachers can use it. The
checkpoints never hold reconstructions, so they restore onto the model as before.
"""
import os
import re

import jax
import numpy as np

from gensuite.config import PHEMA_MAX_STD as MAX_STD  # 1/sqrt(12): gamma = 0
from gensuite.errors import ConfigError

PREFIX = 'phema_'  # state.ema names of reconstructed profiles
SUBDIR = 'phema'
RECONSTRUCTED = 'reconstructed'
# A reconstruction whose profile misses the target by more than this (relative L2
# error of sum_i x_i p_i - q) is refused: the snapshots cannot represent the target.
MAX_PROFILE_ERROR = 0.25
MAX_CONDITION = 1e13  # cond(A) above this: numerically singular in float64


# ---- the profiles ------------------------------------------------------------------

def std_name(std: float) -> str:
  """The name of a tracked profile ('0.05') and, after PREFIX, of a reconstruction."""
  return f'{float(std):g}'


def exp_to_std(gamma):
  """sigma_rel of the power-function profile with exponent gamma (Eq. 123)."""
  gamma = np.asarray(gamma, np.float64)
  return np.sqrt((gamma + 1) / ((gamma + 2)**2 * (gamma + 3)))


def std_to_exp(std) -> float:
  """gamma of the profile with relative std `std` (Eq. 126: the cubic's largest real
  root); ConfigError outside 0 < std < 1/sqrt(12)."""
  std = float(std)
  if not 0.0 < std < MAX_STD:
    raise ConfigError(f'a post-hoc EMA std must lie in (0, {MAX_STD:.4f}) (a power-function '
                      f'profile with exponent > 0), got {std:g}')
  inv = std**-2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  return float(max(r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r))))


def correlation(t_a, std_a, t_b, std_b) -> np.ndarray:
  """<p_a, p_b> = int p_a(tau) p_b(tau) dtau in closed form (Eq. 151), broadcast."""
  g_a = np.vectorize(std_to_exp)(np.asarray(std_a, np.float64))
  g_b = np.vectorize(std_to_exp)(np.asarray(std_b, np.float64))
  t_a = np.asarray(t_a, np.float64)
  t_b = np.asarray(t_b, np.float64)
  ratio = t_a / t_b
  power = np.where(t_a < t_b, g_b, -g_a)
  return (g_a + 1) * (g_b + 1) * ratio**power / ((g_a + g_b + 1) * np.maximum(t_a, t_b))


def solve(in_t, in_std, out_t: float, out_std: float) -> tuple[np.ndarray, dict]:
  """Coefficients x (summing to one) with sum_i x_i p_i ~ q (module docstring).

  in_t, in_std: the snapshots' times and stds (1-D, same length). Returns (x, info)
  with info = {'condition': cond(A), 'profile_error': ||sum x_i p_i - q|| / ||q||,
  'raw_sum': sum of x before normalising}. ConfigError if A is singular.
  """
  in_t = np.asarray(in_t, np.float64).reshape(-1)
  in_std = np.asarray(in_std, np.float64).reshape(-1)
  a = correlation(in_t[:, None], in_std[:, None], in_t[None, :], in_std[None, :])
  b = correlation(in_t, in_std, out_t, out_std)
  qq = float(correlation(out_t, out_std, out_t, out_std))
  condition = float(np.linalg.cond(a))
  if not np.isfinite(condition) or condition > MAX_CONDITION:
    raise ConfigError(f'post-hoc EMA: the snapshots\' profiles are numerically dependent '
                      f'(cond {condition:.3g}); use fewer snapshots or other tracked stds')
  x = np.linalg.solve(a, b)
  raw_sum = float(np.sum(x))
  x = x / raw_sum
  err2 = qq - 2.0 * float(x @ b) + float(x @ a @ x)
  info = {'condition': condition, 'raw_sum': raw_sum,
          'profile_error': float(np.sqrt(max(err2, 0.0) / qq))}
  return x, info


# ---- pytrees <-> flat arrays ---------------------------------------------------------

def _key(entry) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten(tree) -> dict[str, np.ndarray]:
  """{'Dense_0/kernel': array, ...}: a pytree's leaves by path, on the host."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key(k) for k in path): np.asarray(jax.device_get(leaf))
          for path, leaf in leaves}


def unflatten(like, arrays: dict[str, np.ndarray], where: str):
  """The pytree of `like`'s structure with the leaves of `arrays` (flatten's keys)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for path, leaf in leaves:
    key = '/'.join(_key(k) for k in path)
    if key not in arrays:
      raise ConfigError(f'{where} has no leaf {key}: it was made by another model')
    value = arrays[key]
    if tuple(value.shape) != tuple(np.shape(leaf)):
      raise ConfigError(f'{where}: leaf {key} has shape {tuple(value.shape)}, the model '
                        f'{tuple(np.shape(leaf))}')
    out.append(value.astype(np.dtype(leaf.dtype)))
  return jax.tree_util.tree_unflatten(treedef, out)


def _write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """np.savez to `path` atomically (a reader never sees half a file)."""
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


# ---- snapshots -------------------------------------------------------------------------

def snapshot_dir(workdir: str) -> str:
  return os.path.join(workdir, SUBDIR)


def save_snapshot(workdir: str, step: int, tracked: dict) -> str:
  """Writes every tracked profile at `step` to DIR/phema/<step>.npz; returns the path."""
  arrays = {}
  for name, tree in tracked.items():
    arrays.update({f'{name}/{k}': v for k, v in flatten(tree).items()})
  os.makedirs(snapshot_dir(workdir), exist_ok=True)
  path = os.path.join(snapshot_dir(workdir), f'{int(step)}.npz')
  _write_npz(path, arrays)
  return path


def snapshot_steps(workdir: str) -> list[int]:
  directory = snapshot_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(re.compile(r'^(\d+)\.npz$').match,
                                             os.listdir(directory)) if m)


def drop_snapshots_after(workdir: str, step: int) -> list[int]:
  """Removes snapshots later than `step` (a run resumed from an older checkpoint makes
  them again, identically) and returns their steps."""
  dropped = [s for s in snapshot_steps(workdir) if s > step]
  for s in dropped:
    os.remove(os.path.join(snapshot_dir(workdir), f'{s}.npz'))
  return dropped


def _load_snapshot(workdir: str, step: int) -> dict[str, dict[str, np.ndarray]]:
  """{std name: {leaf path: array}} of DIR/phema/<step>.npz."""
  out: dict[str, dict[str, np.ndarray]] = {}
  with np.load(os.path.join(snapshot_dir(workdir), f'{step}.npz')) as f:
    for key in f.files:
      name, _, leaf = key.partition('/')
      out.setdefault(name, {})[leaf] = f[key]
  return out


# ---- reconstruction --------------------------------------------------------------------

def reconstruct(workdir: str, std: float, step: int | None = None):
  """The EMA with relative std `std` at snapshot step `step` (default: the latest).

  Returns ({leaf path: float32 array}, info) with info from `solve` plus 'step',
  'coefficients' {(snapshot step, std name): x}. ConfigError (one line) for a std
  outside (0, 1/sqrt(12)), fewer than 2 snapshots up to `step`, a step that is not a
  snapshot, or a target the snapshots cannot represent (profile error above
  MAX_PROFILE_ERROR, or a singular system).
  """
  std = float(std)
  std_to_exp(std)  # the range check
  steps = snapshot_steps(workdir)
  if not steps:
    raise ConfigError(f'no post-hoc EMA snapshots in {snapshot_dir(workdir)}; train with '
                      'config.optim.phema_stds (e.g. (0.05, 0.1)) and config.train.phema_every')
  if step is None:
    step = steps[-1]
  if step not in steps:
    raise ConfigError(f'no post-hoc EMA snapshot at step {step}; snapshots: '
                      + ', '.join(map(str, steps)))
  used = [s for s in steps if s <= step]
  if len(used) < 2:
    raise ConfigError(f'post-hoc EMA needs at least 2 snapshots up to step {step}, found '
                      f'{len(used)} in {snapshot_dir(workdir)}')
  snapshots = {s: _load_snapshot(workdir, s) for s in used}
  columns = [(s, name) for s in used for name in sorted(snapshots[s], key=float)]
  x, info = solve([s for s, _ in columns], [float(n) for _, n in columns], step, std)
  if info['profile_error'] > MAX_PROFILE_ERROR:
    tracked = sorted({n for _, n in columns}, key=float)
    raise ConfigError(f'post-hoc EMA std {std:g} is outside what the snapshots can '
                      f'represent: the best combination of the tracked profiles (stds '
                      f'{", ".join(tracked)}) misses its profile by '
                      f'{100 * info["profile_error"]:.0f}% (L2); choose a std nearer those')
  out: dict[str, np.ndarray] = {}
  for coef, (s, name) in zip(x, columns):
    for leaf, value in snapshots[s][name].items():
      acc = out.get(leaf)
      term = coef * value.astype(np.float64)
      out[leaf] = term if acc is None else acc + term
  info = dict(info, step=int(step),
              coefficients={(s, n): float(c) for c, (s, n) in zip(x, columns)})
  return {k: v.astype(np.float32) for k, v in out.items()}, info


def reconstruction_path(workdir: str, std: float) -> str:
  return os.path.join(snapshot_dir(workdir), RECONSTRUCTED, f'{PREFIX}{std_name(std)}.npz')


def write_reconstruction(workdir: str, std: float, arrays: dict[str, np.ndarray],
                         step: int) -> str:
  """Writes a reconstruction for `merge`; returns its path."""
  path = reconstruction_path(workdir, std)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _write_npz(path, {**arrays, '__step__': np.asarray(step), '__std__': np.asarray(std)})
  return path


def reconstructions(workdir: str) -> dict[str, str]:
  """{'phema_<S>': path} of the reconstructions written for this run."""
  directory = os.path.join(snapshot_dir(workdir), RECONSTRUCTED)
  if not os.path.isdir(directory):
    return {}
  return {name[:-4]: os.path.join(directory, name) for name in sorted(os.listdir(directory))
          if name.startswith(PREFIX) and name.endswith('.npz')}


def merge(workdir: str, state, put=None):
  """state with every reconstruction of `workdir` added to state.ema ('phema_<S>').

  put(tree) places the arrays (e.g. jax.device_put onto the state's sharding). The
  tree is the params' (ConfigError naming the leaf if a file is of another model).
  """
  found = reconstructions(workdir)
  if not found:
    return state
  ema = dict(state.ema)
  for name, path in found.items():
    with np.load(path) as f:
      arrays = {k: f[k] for k in f.files if not k.startswith('__')}
    tree = unflatten(state.params, arrays, path)
    ema[name] = put(tree) if put is not None else tree
  return state.replace(ema=ema)
