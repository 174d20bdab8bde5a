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

A save that fails (no space left on the device: tensorstore's RESOURCE_EXHAUSTED or
an OSError ENOSPC) removes its own half-written `<step>.orbax-checkpoint-tmp*`, never
a committed step, and raises `workdir.OutOfSpace` naming the path, the state's size
and the free bytes; older steps are untouched (orbax deletes them only after a save
commits).

A committed step can still fail to read back (bytes flipped or files truncated on
disk: tensorstore's checksums and decoders refuse them). `restore` then raises
`UnreadableCheckpoint` (a ConfigError), and `restore_latest` falls back to the next
older step with a warning naming the unreadable one:

  step, state = ckpt.restore_latest(abstract_state, move_corrupt=True)  # trainer
  step, state = ckpt.restore_latest(abstract_state)                     # readers

The trainer (`move_corrupt=True`) moves each unreadable newer step to
`corrupt/<step>` (never deletes it), so the step's next save can happen and orbax
no longer lists it; it moves nothing when no step reads back, and raises
ConfigError instead (a run never silently restarts from step 0). Readers only skip:
a trainer may be writing to the directory.
"""
import dataclasses
import errno
import gc
import logging
import os
import shutil
import signal
import sys

import jax
import orbax.checkpoint as ocp

from gensuite.errors import ConfigError
from gensuite.train import workdir as workdir_lib

COMMIT_MARKER = 'commit_success.txt'
STEP_METADATA = '_CHECKPOINT_METADATA'
CORRUPT_DIR = 'corrupt'  # under the checkpoint directory: unreadable steps moved aside
# Tests set these to fail the save of a given step in its middle, arrays written into
# the temporary directory, not yet renamed to the step: SIGKILL the process, or raise
# OSError(ENOSPC) as a full disk would.
_KILL_IN_SAVE_ENV = 'GENSUITE_FAULT_KILL_IN_SAVE_AT_STEP'
_ENOSPC_IN_SAVE_ENV = 'GENSUITE_FAULT_ENOSPC_IN_SAVE_AT_STEP'

log = logging.getLogger(__name__)


class UnreadableCheckpoint(ConfigError):
  """A committed step whose files do not read back (corrupted or truncated)."""

  def __init__(self, directory: str, step: int, error: BaseException):
    self.step = step
    self.reason = first_line(error)
    super().__init__(f'checkpoint {directory}/{step} is unreadable: {self.reason}')


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of `error`'s message without tensorstore's JSON spec; if longer
  than `limit`, its start (the status) and its end (the innermost cause) only."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  line = line.split(' [tensorstore_spec')[0]
  if len(line) <= limit:
    return line
  head = limit // 3
  return line[:head] + ' ... ' + line[-(limit - head - 5):]


def _is_read_error(error: BaseException) -> bool:
  """True for what a damaged checkpoint raises (tensorstore's DATA_LOSS, NOT_FOUND,
  ...; orbax's decoding and structure errors), False for running out of memory."""
  return (isinstance(error, Exception) and not isinstance(error, MemoryError) and
          'RESOURCE_EXHAUSTED' not in str(error))


class _DropUnretrievedTaskErrors(logging.Filter):

  def filter(self, record):
    return not str(record.msg).startswith('Task exception was never retrieved')


class _DropReraisedThreadErrors(logging.Filter):
  """Orbax logs (with a traceback) each exception of its worker threads, then raises
  it again to the caller of save/restore, which reports it: drop the first report."""

  def filter(self, record):
    return '_SignalingThread.run() raised an exception' not in record.getMessage()


_QUIET = False


def quiet_background_errors() -> None:
  """Silences the leftovers of a failed save or restore, once per process.

  When one array fails to read or write, orbax raises and closes the event loop it
  ran the I/O on while tensorstore is still finishing the others: their completion
  callbacks then hit the closed loop (an unraisable `RuntimeError: Event loop is
  closed`, printed with a traceback from tensorstore's threads, at any time up to
  interpreter shutdown) and their tasks die unretrieved (asyncio logs 'Task exception
  was never retrieved'); orbax also logs each worker thread's exception before
  raising it again. The failure itself reaches the caller, which reports it, so
  exactly those reports are dropped. Installed when a Checkpointer is made, since
  the callbacks can fire before the exception reaches us.
  """
  global _QUIET
  if _QUIET:
    return
  _QUIET = True
  previous = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
      return
    previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(_DropUnretrievedTaskErrors())
  logging.getLogger('absl').addFilter(_DropReraisedThreadErrors())


class _FaultBeforeCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Fault injection: fails where a crash or a full disk leaves a half-written
  checkpoint (every array in the temporary directory, not yet renamed)."""

  async def finalize(self, *args, **kwargs):
    name = self.get_final().name
    if name == os.environ.get(_KILL_IN_SAVE_ENV):
      os.kill(os.getpid(), signal.SIGKILL)
    if name == os.environ.get(_ENOSPC_IN_SAVE_ENV):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.get()))
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
    quiet_background_errors()
    kw = {}
    if os.environ.get(_KILL_IN_SAVE_ENV) or os.environ.get(_ENOSPC_IN_SAVE_ENV):
      kw['temporary_path_class'] = _FaultBeforeCommit
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
    """Saves `state` as step `step` (nothing if that step is already committed).

    If the save fails, its half-written directory is removed and the error raised
    again; for lack of space, as `workdir.OutOfSpace` (one line: the path, the
    state's size, the free bytes, the last committed step).
    """
    if step in self.all_steps():
      return
    try:
      self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      written = self._discard_failed_save(step)
      if not workdir_lib.is_out_of_space(e):
        raise
      path = written[0] if written else os.path.join(self.directory, str(step))
      latest = self.latest_step()
      raise workdir_lib.OutOfSpace(
          path, workdir_lib.tree_nbytes(state), workdir_lib.free_bytes(self.directory),
          None if latest is None else os.path.join(self.directory, str(latest))) from e

  def _discard_failed_save(self, step: int) -> list[str]:
    """After a failed save of `step`: lets orbax's threads finish, drops the I/O they
    abandoned, removes that step's temporary or uncommitted directory (never a
    committed step) and returns the removed paths."""
    try:
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # the same failure, already being raised
    gc.collect()  # finalize abandoned write coroutines now, not at interpreter exit
    removed = []
    if jax.process_index() == 0:
      for name in incomplete_entries(self.directory):
        if name == str(step) or name.startswith(f'{step}.orbax-checkpoint-tmp'):
          path = os.path.join(self.directory, name)
          shutil.rmtree(path, ignore_errors=True)
          removed.append(path)
    try:
      self._manager.reload()
    except Exception:  # pylint: disable=broad-except
      pass
    return removed

  def check_compatible(self, step: int, abstract_state) -> None:
    """ConfigError naming the first leaf where the checkpoint and the model differ."""
    try:
      saved = self._manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_read_error(e):
        raise
      return  # no readable metadata: the restore itself reports what is wrong
    saved = getattr(saved, 'tree', saved)
    if saved is None:
      return
    problem = describe_mismatch(_shapes_by_path(saved), _shapes_by_path(abstract_state))
    if problem:
      raise ConfigError(f'checkpoint {self.directory}/{step} does not match this model '
                        f'(different architecture or method?): {problem}')

  def _older_state_fields(self, step: int, abstract_state):
    """The fields of `abstract_state` (a dataclass state) that the checkpoint at
    `step` holds, if it lacks only fields that are empty here (a field added to the
    train state after the checkpoint was written, e.g. TrainState.phema); else None."""
    if not dataclasses.is_dataclass(abstract_state):
      return None
    try:
      saved = self._manager.item_metadata(step)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_read_error(e):
        raise
      return None
    saved = getattr(saved, 'tree', saved)
    if not isinstance(saved, dict):
      return None
    names = [f.name for f in dataclasses.fields(abstract_state)]
    missing = [n for n in names if n not in saved]
    if not missing or any(jax.tree.leaves(getattr(abstract_state, n)) for n in missing):
      return None
    return {n: getattr(abstract_state, n) for n in names if n in saved}

  def restore(self, step: int, abstract_state):
    """The state saved at `step`, restored onto `abstract_state`'s shardings.

    Raises ConfigError if the saved tree differs from the model's (architecture
    mismatch: nothing is wrong with the files), and UnreadableCheckpoint (also a
    ConfigError) if the saved tree matches but its files do not read back. A
    checkpoint written before an empty field joined the state restores with that
    field empty.
    """
    quiet_background_errors()  # the metadata read below can already leave some behind
    self.check_compatible(step, abstract_state)
    older = self._older_state_fields(step, abstract_state)
    try:
      if older is not None:
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(older))
        return abstract_state.replace(**restored)
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except
      if not _is_read_error(e):
        raise
      raise UnreadableCheckpoint(self.directory, step, e) from e

  def restore_latest(self, abstract_state, move_corrupt: bool = False):
    """(step, state) of the newest committed step that reads back; (None, None) if
    there is no committed step.

    Each newer step that does not read back is reported with a warning naming it and
    the error's first line. With `move_corrupt` (the trainer, the directory's only
    writer) those steps are moved aside to `corrupt/<step>` (see `move_aside`), but
    only once an older step has been restored. If steps exist and none reads back,
    raises ConfigError naming them, and moves nothing.
    """
    failed = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(step, abstract_state)
      except UnreadableCheckpoint as e:
        failed.append(e)
        continue
      for e in failed:
        where = ''
        if move_corrupt:
          where = f'; moved it to {self.move_aside(e.step)}'
        log.warning('checkpoint %s/%d is unreadable (%s)%s; using step %d instead',
                    self.directory, e.step, e.reason, where, step)
      return step, state
    if failed:
      hint = ('; moved nothing: to train from step 0, move the directory away'
              if move_corrupt else '')
      raise ConfigError(f'no readable checkpoint in {self.directory}: ' + '; '.join(
          f'step {e.step} is unreadable ({e.reason})' for e in failed) + hint)
    return None, None

  def move_aside(self, step: int) -> str:
    """Moves step `step`'s directory to `corrupt/<step>` (`corrupt/<step>.2`, ... if
    taken) and returns the new path. Orbax lists only numeric step directories, so it
    no longer sees the step, and the step's next save writes a fresh `<step>`."""
    src = os.path.join(self.directory, str(step))
    dest_dir = os.path.join(self.directory, CORRUPT_DIR)
    dest = os.path.join(dest_dir, str(step))
    if jax.process_index() == 0:
      os.makedirs(dest_dir, exist_ok=True)
      n = 1
      while os.path.exists(dest):
        n += 1
        dest = os.path.join(dest_dir, f'{step}.{n}')
      os.rename(src, dest)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f'gensuite_move_aside_{step}')
    self._manager.reload()  # forget the moved step
    return dest

  def close(self) -> None:
    self._manager.close()


def abstract(tree, sharding):
  """Shape/dtype/sharding stand-ins for `tree`, the target of a restore: `sharding` is
  one sharding for every leaf or a tree of them (a prefix of `tree`'s structure).

  Orbax writes each array's shards and reads them back onto these shardings, whatever
  the mesh that wrote them (a run saved with mesh.fsdp = 4 restores on 1 device)."""
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        tree)
  return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      sharding, tree)
