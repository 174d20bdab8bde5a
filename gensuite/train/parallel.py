"""Devices, meshes and shardings for data parallelism and sharded state, on one host or many.

  maybe_initialize_distributed(multihost)      # jax.distributed.initialize when asked
  mesh = make_mesh(fsdp=2)                     # mesh data x fsdp over all devices
  x = to_global(local_batch, batch_sharding(mesh))
  shardings = state_shardings(jax.eval_shape(method.init, rng, batch), mesh)

The devices (in jax.devices() order, so each host's devices are consecutive) form a
2-D mesh ('data', 'fsdp') of shape (devices / fsdp, fsdp). The batch's rows are split
over both axes, so every device holds batch_size / devices rows, as in pure data
parallelism. With fsdp = 1 the state is replicated and XLA inserts the gradient
all-reduce; with fsdp = n every state leaf (params, optimizer state, EMAs, extra) is
split over the 'fsdp' axis along its largest axis that n divides, and replicated when
none does (ZeRO-3 / FSDP: XLA gathers each parameter where a step uses it and
reduce-scatters its gradient), so each device keeps about 1/n of the state. Nothing in
a method knows about devices.
"""
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gensuite.errors import ConfigError

_ENV_VARS = ('JAX_COORDINATOR_ADDRESS', 'COORDINATOR_ADDRESS')
_initialized = False


def launched_multihost() -> bool:
  """True when the usual environment variables of a multi-process launch are set."""
  return any(os.environ.get(v) for v in _ENV_VARS) or (
      int(os.environ.get('JAX_NUM_PROCESSES', '1')) > 1)


def maybe_initialize_distributed(multihost: bool = False) -> None:
  """Calls jax.distributed.initialize once when `multihost` or the env asks for it.

  Reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID when set; on
  clusters (SLURM, TPU pods) jax discovers them itself.
  """
  global _initialized
  if _initialized or not (multihost or launched_multihost()):
    return
  kw = {}
  addr = os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('COORDINATOR_ADDRESS')
  if addr:
    kw['coordinator_address'] = addr
  if os.environ.get('JAX_NUM_PROCESSES'):
    kw['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if os.environ.get('JAX_PROCESS_ID'):
    kw['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kw)
  _initialized = True


AXES = ('data', 'fsdp')


def make_mesh(fsdp: int = 1) -> Mesh:
  """The mesh ('data', 'fsdp') of shape (devices / fsdp, fsdp) over every device."""
  devices = np.asarray(jax.devices())
  n = devices.size
  if fsdp < 1 or n % fsdp:
    allowed = ', '.join(str(d) for d in range(1, n + 1) if n % d == 0)
    raise ConfigError(f'config.mesh.fsdp={fsdp} does not divide the number of devices '
                      f'({n}); allowed: {allowed}')
  return Mesh(devices.reshape(n // fsdp, fsdp), AXES)


def fsdp_size(mesh: Mesh) -> int:
  return int(mesh.shape.get('fsdp', 1))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over every device of the mesh (both axes)."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple, n: int) -> P:
  """'fsdp' on the largest axis of `shape` that n divides (the first of equal ones);
  P() (replicated) when n = 1 or no axis divides."""
  if n == 1:
    return P()
  best = None
  for axis, size in enumerate(shape):
    if size >= n and size % n == 0 and (best is None or size > shape[best]):
      best = axis
  if best is None:
    return P()
  return P(*[('fsdp' if axis == best else None) for axis in range(len(shape))])


def state_shardings(shapes, mesh: Mesh):
  """A NamedSharding per leaf of `shapes` (e.g. jax.eval_shape of a method's init):
  fsdp_spec of the leaf's shape over the mesh's 'fsdp' axis."""
  n = fsdp_size(mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, fsdp_spec(tuple(s.shape), n)), shapes)


def check_batch_size(batch_size: int, mesh: Mesh, grad_accum: int = 1) -> None:
  """ConfigError unless every device gets the same whole number of rows in each of
  the grad_accum microbatches."""
  n = mesh.size
  multiple = n * grad_accum
  if batch_size % multiple == 0:
    return
  if grad_accum == 1:
    raise ConfigError(f'train.batch_size={batch_size} is not divisible by the number of '
                      f'devices ({n}); use a multiple of {n}')
  data = int(mesh.shape['data'])
  raise ConfigError(f'train.batch_size={batch_size} is not divisible by {n} devices (data '
                    f'{data} x fsdp {fsdp_size(mesh)}) x train.grad_accum {grad_accum} = '
                    f'{multiple}; use a multiple of {multiple}')


def to_global(local_batch, sharding: NamedSharding):
  """Assembles each host's numpy shard into one global jax.Array."""
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a),
                      local_batch)


def to_host(x) -> np.ndarray:
  """A (possibly multi-host) array as one numpy array on every host."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
