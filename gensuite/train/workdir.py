"""Guards around a run directory: one trainer at a time, somewhere to write, room on disk.

  lock = WorkdirLock(workdir, force=False)   # the trainer, before it writes anything
  lock.acquire()                             # ConfigError (exit 2) if it cannot have it
  ...                                        # train
  lock.release()

The lock. A run directory has one writer: `gensuite train` (and each run of a sweep,
which is one `gensuite train` process) holds an exclusive advisory lock
(`fcntl.flock`) on `DIR/.lock` from before it writes config.json until it exits, and
writes into that file who holds it, as JSON: host, pid, since (local time) and the
command line. A second trainer on the same directory (a job launched twice, a
requeue racing its predecessor) cannot take the flock and stops at once with one
line naming the holder, before it writes anything.

The kernel drops a flock when its process dies (SIGKILL, OOM, a node's reboot), so a
lock file whose flock is free was left by a dead holder: on the same host it is taken
over, with one warning naming the dead holder (logged once the trainer has restored
its checkpoint, so a run that stops on bad input still prints only its error line).
A lock file naming another host is different: on a network filesystem the flock may
not reach across hosts, so nothing on this host can tell whether that holder still
runs; it is respected (exit 2) unless `force=True` (`gensuite train --force_unlock`). The holder deletes the lock file when
it exits normally (while still holding the flock; an acquirer that opened the old
file checks, once it holds the flock, that the file it locked is still the one at
the path, and retries otherwise).

Readers (`gensuite sample`/`eval`, `gensuite.load_run`) take no lock: they only see
committed checkpoints (gensuite.train.checkpoint), whatever a trainer is writing.

Disk space. `tree_nbytes(state)` estimates a checkpoint's size (the arrays' bytes;
float weights barely compress, and the metadata is small), `warn_if_low` warns when less
than twice that is free, and `OutOfSpace` is the one-line stop when a write fails
for lack of space (ENOSPC/EDQUOT, or tensorstore's RESOURCE_EXHAUSTED naming it):
it names the path, the estimate and the free bytes, and the last complete
checkpoint, which the failed write never touches.
"""
import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile

from gensuite.errors import ConfigError

LOCK_NAME = '.lock'
ERROR_LOG = 'error.log'

log = logging.getLogger('gensuite')


# ---- errors ----------------------------------------------------------------------

class WorkdirLocked(ConfigError):
  """Another trainer holds the run directory (or may: a lock from another host)."""

  def __init__(self, message: str, holder: dict | None):
    super().__init__(message)
    self.holder = holder or {}


class OutOfSpace(Exception):
  """A write in the run directory failed for lack of disk space (exit 1)."""

  def __init__(self, path: str, needed: int | None, free: int | None,
               last_checkpoint: str | None):
    self.path, self.needed, self.free = path, needed, free
    self.last_checkpoint = last_checkpoint
    need = f'a checkpoint needs about {format_bytes(needed)}' if needed else \
        'size of a checkpoint unknown'
    have = f'{format_bytes(free)} free' if free is not None else 'free space unknown'
    kept = (f'the last complete checkpoint is {last_checkpoint}' if last_checkpoint
            else 'no checkpoint was completed yet')
    super().__init__(f'no space left on device writing {path}: {need}, {have}; {kept}; '
                     'free space and run the same command again to resume')


class Preempted(SystemExit):
  """SIGTERM: the trainer saved a checkpoint and stops (exit code 143, as before).

  A SystemExit, so a script that calls `gensuite.train.run` and does not catch it
  still exits 143 quietly; the CLI prints its message as its one line.
  """

  def __init__(self, message: str):
    super().__init__(143)
    self.message = message

  def __str__(self):
    return self.message


# ---- the directory ---------------------------------------------------------------

def _reason(error: OSError) -> str:
  return error.strerror or str(error)


def make_workdir(workdir: str) -> bool:
  """Creates `workdir` (and its parents); returns whether it did not exist.

  Raises ConfigError (one line, exit 2) when it cannot be created: a parent that is
  a regular file, a read-only filesystem, no permission.
  """
  if os.path.isdir(workdir):
    return False
  if os.path.lexists(workdir):
    if os.path.isdir(workdir):  # made between the two checks by another process
      return False
    raise ConfigError(f'workdir {workdir} exists and is not a directory')
  try:
    os.makedirs(workdir)
  except FileExistsError:  # made meanwhile by another process
    if os.path.isdir(workdir):
      return False
    raise ConfigError(f'workdir {workdir} exists and is not a directory') from None
  except OSError as e:
    parent = os.path.dirname(os.path.abspath(workdir))
    while parent and not os.path.lexists(parent):
      parent = os.path.dirname(parent)
    if e.errno == errno.ENOTDIR or (parent and not os.path.isdir(parent)):
      raise ConfigError(f'workdir {workdir} cannot be created: {parent} is not a '
                        'directory') from e
    raise ConfigError(f'workdir {workdir} cannot be created: {_reason(e)}') from e
  return True


def check_writable(workdir: str) -> None:
  """ConfigError unless a file can be created in `workdir` (a read-only mount, a
  directory without write permission for this user)."""
  try:
    fd, path = tempfile.mkstemp(prefix='.write_test.', dir=workdir)
  except OSError as e:
    raise ConfigError(f'workdir {workdir} is not writable: {_reason(e)}') from e
  os.close(fd)
  os.remove(path)


# ---- the lock --------------------------------------------------------------------

def _describe(holder: dict) -> str:
  return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
          f"since {holder.get('since', '?')}")


def _read_holder(fd: int) -> dict | None:
  """The JSON in the lock file; None if it is empty, {} if it is not JSON."""
  try:
    data = os.pread(fd, 1 << 16, 0)
  except OSError:
    return {}
  if not data.strip():
    return None
  try:
    holder = json.loads(data)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


class WorkdirLock:
  """The exclusive lock of a run directory (see the module docstring).

  With `enabled=False` (processes other than 0 of a multi-host run, which share the
  directory with process 0) it only makes sure the directory exists and is writable.
  """

  def __init__(self, workdir: str, force: bool = False, enabled: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.force = force
    self.enabled = enabled
    self._fd = None
    self._created = False
    self.notice = None  # the takeover of a stale lock, for announce()

  def __enter__(self):
    self.acquire()
    self.announce()
    return self

  def __exit__(self, *exc):
    self.release()

  def acquire(self) -> None:
    """Makes the directory, then takes the lock; ConfigError (exit 2) if either fails.

    Raises WorkdirLocked naming the holder when another live trainer holds it, or
    when the lock file names another host (unless `force`). Writes nothing else. A
    stale lock taken over is reported by `announce()`.
    """
    self._created = make_workdir(self.workdir)
    try:
      if not self.enabled:
        check_writable(self.workdir)
        return
      self._fd, previous = self._lock()
      here = socket.gethostname()
      if previous and previous.get('host') != here and not self.force:
        self._unlock(delete=False)
        raise WorkdirLocked(
            f'workdir {self.workdir} is locked by a run on another host '
            f'({_describe(previous)}; {self.path}); this host cannot tell whether it '
            'still runs: if it does not, run again with --force_unlock', previous)
      self._write_holder()
    except BaseException:
      self._remove_if_made()
      raise
    if previous and previous.get('host') != here:
      self.notice = (f'--force_unlock: took over the lock of {self.workdir} from '
                     f'{_describe(previous)}')
    elif previous:
      self.notice = (f'took over the stale lock of {self.workdir} left by '
                     f'{_describe(previous)} (no longer running)')
    elif previous is not None:  # a lock file that does not parse
      self.notice = f'took over the stale lock of {self.workdir} (unreadable lock file)'

  def announce(self) -> None:
    """Logs, once, that acquire took over a stale (or, forced, a foreign) lock.

    The trainer calls this once it has restored its checkpoint, just before it writes:
    a run that stops before that (a config error, exit 2) prints only its one error
    line.
    """
    if self.notice:
      log.warning('%s', self.notice)
      self.notice = None

  def _lock(self):
    """(fd holding the flock, the previous holder's record) or WorkdirLocked."""
    for _ in range(10):
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      except OSError as e:
        raise ConfigError(f'workdir {self.workdir} is not writable: {_reason(e)}') from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirLocked(
            f'workdir {self.workdir} is in use by another run ({_describe(holder or {})}; '
            f'{self.path}); wait for it to end or stop it', holder) from None
      except OSError as e:  # no flock on this filesystem: only the file's record counts
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          os.close(fd)
          raise
        holder = _read_holder(fd)
        if holder and holder.get('pid') != os.getpid() and not self.force:
          os.close(fd)
          raise WorkdirLocked(
              f'workdir {self.workdir} names a holder ({_describe(holder)}; {self.path}) '
              'and its filesystem has no file locks to check it: if that run is over, '
              'run again with --force_unlock', holder) from None
        return fd, holder
      try:  # a holder deletes the file as it releases: make sure we locked the live one
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        return fd, _read_holder(fd)
      os.close(fd)
    raise ConfigError(f'cannot lock {self.path}: it keeps being replaced')

  def _write_holder(self) -> None:
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) in ('cli.py', 'gensuite'):
      argv[0] = 'gensuite'
    record = {'host': socket.gethostname(), 'pid': os.getpid(),
              'since': datetime.datetime.now().isoformat(timespec='seconds'),
              'command': shlex.join(argv)}
    data = (json.dumps(record) + '\n').encode()
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, data, 0)
    except OSError as e:
      self._unlock(delete=True)
      if e.errno in (errno.ENOSPC, errno.EDQUOT):
        raise OutOfSpace(self.path, None, free_bytes(self.workdir), None) from e
      raise ConfigError(f'workdir {self.workdir} is not writable: {_reason(e)}') from e

  def _unlock(self, delete: bool) -> None:
    if self._fd is None:
      return
    if delete:
      try:
        os.remove(self.path)  # while holding the flock: see _lock
      except OSError:
        pass
    try:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None

  def _remove_if_made(self) -> None:
    """Removes the directory if acquire made it and it is still empty."""
    if self._created:
      self._created = False
      try:
        os.rmdir(self.workdir)
      except OSError:
        pass

  def release(self) -> None:
    """Deletes the lock file and drops the lock; removes the directory if acquire
    made it and nothing was written there (a config error before training)."""
    self._unlock(delete=True)
    self._remove_if_made()


def holder(workdir: str) -> dict | None:
  """The record in `workdir`'s lock file (who holds it, or last held it), if any."""
  try:
    fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDONLY)
  except OSError:
    return None
  try:
    return _read_holder(fd)
  finally:
    os.close(fd)


# ---- disk space ------------------------------------------------------------------

def format_bytes(n: int | None) -> str:
  """'2.4 MB (2396160 bytes)': decimal units, and the exact count."""
  if n is None:
    return '? bytes'
  value, unit = float(n), 'bytes'
  for unit_name in ('kB', 'MB', 'GB', 'TB'):
    if value < 1000:
      break
    value, unit = value / 1000, unit_name
  short = f'{int(value)} bytes' if unit == 'bytes' else f'{value:.1f} {unit}'
  return short if unit == 'bytes' else f'{short} ({n} bytes)'


def tree_nbytes(tree) -> int:
  """The bytes of every array in `tree` (arrays or shape/dtype stand-ins such as
  jax.ShapeDtypeStruct): the estimate of a checkpoint's size."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for x in jax.tree.leaves(tree):
    if hasattr(x, 'shape') and hasattr(x, 'dtype'):
      total += int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def free_bytes(path: str) -> int | None:
  """Free bytes (for this user) on the filesystem of `path` or its nearest existing
  parent; None if that cannot be read."""
  path = os.path.abspath(path)
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def warn_if_low(path: str, needed: int) -> bool:
  """Warns (one line) when `path`'s filesystem has less than twice `needed` free;
  returns whether it warned."""
  free = free_bytes(path)
  if free is None or free >= 2 * needed:
    return False
  log.warning('low disk space: %s free in %s, under twice the estimated size of a '
              'checkpoint (%s); a save may fail', format_bytes(free), path,
              format_bytes(needed))
  return True


def is_out_of_space(error: BaseException) -> bool:
  """True for a write that failed for lack of space: OSError ENOSPC/EDQUOT, or
  tensorstore's RESOURCE_EXHAUSTED naming that cause (it raises a ValueError)."""
  seen = 0
  while error is not None and seen < 10:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if 'RESOURCE_EXHAUSTED' in text and ('No space left on device' in text or
                                         "os_error_code='28'" in text or
                                         'Disk quota exceeded' in text):
      return True
    error = error.__cause__ or error.__context__
    seen += 1
  return False


# ---- the error log -----------------------------------------------------------------

def append_error_log(workdir: str | None, text: str) -> str | None:
  """Appends `text` to `workdir`/error.log if `workdir` is an existing, writable
  directory; returns the log's path, or None if nothing was written."""
  if not workdir or not os.path.isdir(workdir):
    return None
  path = os.path.join(workdir, ERROR_LOG)
  try:
    with open(path, 'a') as f:
      f.write(text if text.endswith('\n') else text + '\n')
  except OSError:
    return None
  return path
