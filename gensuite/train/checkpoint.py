"""Orbax checkpoints of the whole train state, one directory per saved step.

  ckpt = Checkpointer(workdir / 'checkpoints', keep=3, discard_incomplete=True)
  ckpt.save(step, state); ckpt.latest_step(); state = ckpt.restore(step, abstract_state)

Saves are atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it to
`<step>` once every array and the commit marker (`commit_success.txt`) are on disk.
A step counts only when its directory holds the commit marker and the step metadata,
so a save cut short by a crash (a temporary directory, or a step directory without
its marker, as a non-atomic filesystem may leave) is never restored; the trainer
(`discard_incomplete=True`) deletes such leftovers before it resumes so they cannot
block the step's next save. Readers (sample, eval) only skip them: a run may be
writing one at that moment.

Checkpoints hold arrays (OCDBT/tensorstore) and JSON metadata only, never pickle.
Before restoring, the saved tree is compared leaf by leaf with the model's: a
different architecture raises ConfigError naming the first mismatched leaf.
"""
import os
import shutil
import signal

import jax
import orbax.checkpoint as ocp

from gensuite.errors import ConfigError

COMMIT_MARKER = 'commit_success.txt'
STEP_METADATA = '_CHECKPOINT_METADATA'
# Tests set this to SIGKILL the process in the middle of the save of a given step:
# arrays written into the temporary directory, not yet renamed to the step.
_KILL_IN_SAVE_ENV = 'GENSUITE_FAULT_KILL_IN_SAVE_AT_STEP'


class _KillBeforeCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Fault injection: dies where a crash would leave a half-written checkpoint."""

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == os.environ.get(_KILL_IN_SAVE_ENV):
      os.kill(os.getpid(), signal.SIGKILL)
    return await super().finalize(*args, **kwargs)


def is_complete(step_dir: str) -> bool:
  """True if `step_dir` is a committed checkpoint (its save ran to the end)."""
  return (os.path.isfile(os.path.join(step_dir, COMMIT_MARKER)) and
          os.path.isfile(os.path.join(step_dir, STEP_METADATA)))


def incomplete_entries(directory: str) -> list[str]:
  """Names under `directory` left by interrupted saves (temporary or uncommitted)."""
  if not os.path.isdir(directory):
    return []
  out = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isdir(path):
      continue
    if '.orbax-checkpoint-tmp' in name or (name.isdigit() and not is_complete(path)):
      out.append(name)
  return out


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ('name', 'key', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def _shapes_by_path(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {_path_str(p): tuple(getattr(x, 'shape', ())) for p, x in leaves}


def describe_mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
  """One line naming the first leaf whose presence or shape differs, or None."""
  for path in sorted(set(saved) | set(wanted)):
    if path not in saved:
      return f'leaf {path} {wanted[path]} of the model is missing from the checkpoint'
    if path not in wanted:
      return f'leaf {path} {saved[path]} of the checkpoint is not in the model'
    if tuple(saved[path]) != tuple(wanted[path]):
      return (f'leaf {path} has shape {saved[path]} in the checkpoint but {wanted[path]} '
              'in the model')
  return None


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3, discard_incomplete: bool = False):
    self.directory = os.path.abspath(directory)
    if discard_incomplete and jax.process_index() == 0:
      for name in incomplete_entries(self.directory):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    kw = {}
    if os.environ.get(_KILL_IN_SAVE_ENV):
      kw['temporary_path_class'] = _KillBeforeCommit
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False, **kw)
    # The handler is named up front so the saved tree's metadata can be read (for the
    # shape check) before any restore.
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def all_steps(self) -> list[int]:
    return sorted(s for s in self._manager.all_steps()
                  if is_complete(os.path.join(self.directory, str(s))))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, force: bool = False) -> None:
    if step in self.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    self._manager.wait_until_finished()

  def check_compatible(self, step: int, abstract_state) -> None:
    """ConfigError naming the first leaf where the checkpoint and the model differ."""
    try:
      saved = self._manager.item_metadata(step)
    except (ValueError, KeyError, TypeError, FileNotFoundError):
      return  # no readable metadata: the restore itself reports what is wrong
    saved = getattr(saved, 'tree', saved)
    if saved is None:
      return
    problem = describe_mismatch(_shapes_by_path(saved), _shapes_by_path(abstract_state))
    if problem:
      raise ConfigError(f'checkpoint {self.directory}/{step} does not match this model '
                        f'(different architecture or method?): {problem}')

  def restore(self, step: int, abstract_state):
    self.check_compatible(step, abstract_state)
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
