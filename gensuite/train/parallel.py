"""Devices, meshes and shardings for data parallelism, on one host or many.

  maybe_initialize_distributed(multihost)      # jax.distributed.initialize when asked
  mesh = make_mesh()                           # 1-D mesh 'data' over all devices
  x = to_global(local_batch, batch_sharding(mesh))

The state is replicated (`replicated(mesh)`), the batch is split over 'data'; XLA
inserts the gradient all-reduce. Nothing in a method knows about devices.
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


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.size
  if batch_size % n:
    raise ConfigError(f'train.batch_size={batch_size} is not divisible by the number of '
                      f'devices ({n}); use a multiple of {n}')


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
