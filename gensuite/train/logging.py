"""Metrics for people (TensorBoard) and for tools (metrics.jsonl).

  writer = MetricWriter(workdir)                     # only process 0 writes
  writer.write_scalars(step, {'loss': 0.1})          # TB scalars + one jsonl line
  writer.write_image(step, "samples", grid)          # uint8 [H, W, C] (gensuite.pictures)
  writer.close()

metrics.jsonl holds one JSON object per write: {"step": N, "name": value, ...}.
On resume, `truncate_after(step)` drops lines past the restored checkpoint, and a
writer made with `replace=True` (`gensuite eval`) first removes earlier values of the
names it writes at that step, so the file never holds two values for one (step, name).

Both files are written in the calling thread, each write handed to the OS before it
returns (the TensorBoard file is flushed after every write_scalars/write_image), so
a failed write (no space left on the device) raises OSError, naming the file, at its
call site. A metrics.jsonl line that fails is cut back off the file: the file never
ends in half a line. (tensorboardX's SummaryWriter writes from a background thread,
where such an error was only printed, and later writes could block on its queue.)
"""
import errno
import json
import math
import os
import socket
import struct
import time

import jax
import numpy as np

_JSONL = 'metrics.jsonl'
# Tests set this to make the metrics.jsonl write at a given step fail with ENOSPC
# after half its line is written, as a full disk would.
_ENOSPC_IN_METRICS_ENV = 'GENSUITE_FAULT_ENOSPC_IN_METRICS_AT_STEP'


class _EventFile:
  """A TensorBoard event file (TFRecord of `Event` protos), written synchronously.

  Named like tensorboardX's (`events.out.tfevents.<time>.<host>`), plus the pid (and
  a counter if needed) so that a writer never truncates another one's file.
  """

  def __init__(self, logdir: str):
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._event_pb2 = event_pb2
    base = os.path.join(logdir, f'events.out.tfevents.{int(time.time())}.'
                        f'{socket.gethostname()}.{os.getpid()}')
    self.path, n = base, 0
    while True:  # never truncate an earlier writer's file (two runs in one second)
      try:
        self._file = open(self.path, 'xb')
        break
      except FileExistsError:
        n += 1
        self.path = f'{base}.{n}'
    self._good = 0  # bytes known to be on disk: the file is cut back to this on failure
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    self.flush()

  def add_summary(self, summary, step: int) -> None:
    self._write(self._event_pb2.Event(summary=summary, step=int(step),
                                      wall_time=time.time()))

  def _write(self, event) -> None:
    from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top
    data = event.SerializeToString()
    header = struct.pack('Q', len(data))
    record = (header + struct.pack('I', masked_crc32c(header)) + data +
              struct.pack('I', masked_crc32c(data)))
    self._guard(self._file.write, record)

  def flush(self) -> None:
    self._guard(self._file.flush)
    self._good = self._file.tell()

  def _guard(self, fn, *args):
    try:
      return fn(*args)
    except OSError as e:
      raise OSError(e.errno, e.strerror, self.path) from e

  def close(self, quiet: bool = False) -> None:
    """Flushes and closes; with `quiet`, after a failure: errors are dropped and the
    file is cut back to its last complete flush."""
    if self._file is None:
      return
    f, self._file = self._file, None
    try:
      f.close()  # flushes; closes the descriptor even when the flush fails
    except OSError as e:
      if not quiet:
        raise OSError(e.errno, e.strerror, self.path) from e
      try:
        os.truncate(self.path, self._good)
      except OSError:
        pass


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool | None = None, replace: bool = False):
    self.workdir = workdir
    self.replace = replace
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    fault = os.environ.get(_ENOSPC_IN_METRICS_ENV)
    self._enospc_at_step = int(fault) if fault else None
    if self.enabled:
      self._tb = _EventFile(workdir)

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.workdir, _JSONL)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    clean = {}
    for k, v in scalars.items():
      v = float(v)
      clean[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/inf literals
      self._tb.add_summary(summary.scalar(k, v), step)
    if self.replace:
      self._drop(lambda row: row.get('step') == int(step), set(clean))
    self._append(int(step), json.dumps({'step': int(step), **clean}) + '\n')
    self._tb.flush()

  def _append(self, step: int, line: str) -> None:
    """Appends one line to metrics.jsonl (unbuffered); on failure, cuts off what it
    wrote, so the file never ends in half a line."""
    data = line.encode()
    fd = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                 0o644)
    try:
      start = os.fstat(fd).st_size
      try:
        if step == self._enospc_at_step:  # fault injection: half a line, then ENOSPC
          os.write(fd, data[:len(data) // 2])
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        while data:
          data = data[os.write(fd, data):]
      except OSError as e:
        try:
          os.ftruncate(fd, start)  # needs no space
        except OSError:
          pass
        raise OSError(e.errno, e.strerror, self.jsonl_path) from e
    finally:
      os.close(fd)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    if self.enabled:
      from tensorboardX import summary  # pylint: disable=g-import-not-at-top
      self._tb.add_summary(summary.image(name, np.asarray(image), dataformats='HWC'),
                           step)
      self._tb.flush()

  def write_hparams(self, hparams: dict, metrics: dict) -> None:
    """HParams for TensorBoard's dashboard, in DIR/hparams (tensorboardX's layout)."""
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      with SummaryWriter(logdir=self.workdir) as w:
        w.add_hparams(hparams, metrics, name='hparams')

  def truncate_after(self, step: int) -> None:
    """Drops jsonl lines with a step beyond `step` (written after the last checkpoint)."""
    self._drop(lambda row: row['step'] > step)

  def _drop(self, match, names: set[str] | None = None) -> None:
    """Rewrites the jsonl without the matching rows (or only their `names`)."""
    if not self.enabled or not os.path.exists(self.jsonl_path):
      return
    with open(self.jsonl_path) as f:
      lines = f.readlines()
    keep, changed = [], False
    for line in lines:
      try:
        row = json.loads(line)
        hit = match(row)
      except (ValueError, KeyError, TypeError):
        changed = True  # a line cut short by a crash
        continue
      if not hit:
        keep.append(line)
        continue
      changed = True
      if names is not None:
        rest = {k: v for k, v in row.items() if k not in names}
        if set(rest) - {'step'}:
          keep.append(json.dumps(rest) + '\n')
    if keep and not keep[-1].endswith('\n'):  # a last line cut before its newline
      keep[-1] += '\n'
      changed = True
    if changed:
      tmp = self.jsonl_path + '.tmp'
      try:
        with open(tmp, 'w') as f:
          f.writelines(keep)
      except OSError as e:  # no space for the copy: the original stays as it was
        try:
          os.remove(tmp)
        except OSError:
          pass
        raise OSError(e.errno, e.strerror, e.filename or tmp) from e
      os.replace(tmp, self.jsonl_path)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self, quiet: bool = False) -> None:
    """Closes the TensorBoard file; `quiet` (on an error path) drops close errors."""
    if self._tb is not None:
      tb, self._tb = self._tb, None
      tb.close(quiet=quiet)


def read_jsonl(workdir: str) -> list[dict]:
  path = os.path.join(workdir, _JSONL)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
