"""Orbax checkpoints of the whole train state, one directory per saved step.

  ckpt = Checkpointer(workdir / 'checkpoints', keep=3)
  ckpt.save(step, state); ckpt.latest_step(); state = ckpt.restore(step, abstract_state)

Saves are atomic: orbax writes into a temporary directory and renames it when the
save is complete, so a save interrupted by a crash is never picked up on resume.
Checkpoints hold arrays only (no pickle).
"""
import os

import jax
import orbax.checkpoint as ocp

from gensuite.errors import ConfigError


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, force: bool = False) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    self._manager.wait_until_finished()

  def restore(self, step: int, abstract_state):
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except (ValueError, KeyError, TypeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ConfigError(f'checkpoint {self.directory}/{step} does not match this model '
                        f'(different architecture or method?): {first}') from e

  def close(self) -> None:
    self._manager.close()


def abstract(tree, sharding):
  """Shape/dtype/sharding stand-ins for `tree`, the target of a restore."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      tree)
