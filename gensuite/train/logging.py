"""Metrics for people (TensorBoard) and for tools (metrics.jsonl).

  writer = MetricWriter(workdir)                     # only process 0 writes
  writer.write_scalars(step, {'loss': 0.1})          # TB scalars + one jsonl line
  writer.write_image(step, "samples", grid)          # uint8 [H, W, C] (gensuite.pictures)

metrics.jsonl holds one JSON object per write: {"step": N, "name": value, ...}.
On resume, `truncate_after(step)` drops lines past the restored checkpoint, and a
writer made with `replace=True` (`gensuite eval`) first removes earlier values of the
names it writes at that step, so the file never holds two values for one (step, name).
"""
import json
import math
import os

import jax
import numpy as np

_JSONL = 'metrics.jsonl'


class MetricWriter:

  def __init__(self, workdir: str, enabled: bool | None = None, replace: bool = False):
    self.workdir = workdir
    self.replace = replace
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.workdir, _JSONL)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    clean = {}
    for k, v in scalars.items():
      v = float(v)
      clean[k] = v if math.isfinite(v) else str(v)  # JSON has no NaN/inf literals
      self._tb.add_scalar(k, v, step)
    if self.replace:
      self._drop(lambda row: row.get('step') == int(step), set(clean))
    with open(self.jsonl_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **clean}) + '\n')

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    if self.enabled:
      self._tb.add_image(name, np.asarray(image), step, dataformats='HWC')

  def write_hparams(self, hparams: dict, metrics: dict) -> None:
    if self.enabled:
      self._tb.add_hparams(hparams, metrics, name='hparams')

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
    if changed:
      tmp = self.jsonl_path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(keep)
      os.replace(tmp, self.jsonl_path)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(workdir: str) -> list[dict]:
  path = os.path.join(workdir, _JSONL)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
