"""The accelerator benchmark: CIFAR-10-sized training steps in float32 and bfloat16,
with the state replicated (fsdp 1) and sharded over all devices (fsdp = devices).

  gensuite bench --accel                 # both nets x float32, bfloat16 x fsdp 1, all
  gensuite bench --accel --gpu           # the preset for one GPU (or TPU) host, <= 7.5 min
  gensuite bench --accel --quick         # tiny nets on 16x16 images: a CPU check
  gensuite bench --accel --models=dit --precisions=bfloat16 --fsdp=all --batch=256 \
                 --steps=20 --warmup=3 [--devices=4] [--out=docs/benchmarks.md]

Models: configs/diffusion/cifar10.py (EDM) on synthetic 32x32x3 images with 10 classes
(the cost of a step does not depend on the pixels, so no dataset is needed):
  unet  the config's own net: the DDPM++-style U-Net, 38.3M parameters
  dit   its `dit` variant: DiT-B/2 (2x2 patches = 256 tokens, hidden 768, 12 blocks,
        12 heads), 130M parameters
Each row (model, precision, fsdp) runs in a fresh process (a device's peak-memory
counter never goes down; the persistent compilation cache is off, so compile times
are real) and reports:
  images/s     global batch / step ms
  step ms      median over --steps timed calls of the bare jitted train step
               (Experiment.bare_step, blocked on after each call) on one fixed batch,
               after --warmup untimed calls
  compile s    lowering + compilation of that step
  peak memory  max over the local devices of memory_stats()['peak_bytes_in_use'] at the
               end (GPU, TPU); a CPU reports none: the process's max RSS, marked (RSS)
  GFLOP/step   XLA's cost analysis of the compiled step (the per-device program) times
               the number of devices: every floating-point operation, a multiply-add
               counting 2 (matmuls and convolutions dominate)
  TFLOP/s      GFLOP/step / step time
  MFU          TFLOP/s / (devices x one device's peak at the row's precision,
               PEAK_TFLOPS by device kind); n/a on CPUs and unknown kinds
  loop / bare  throughput of the training loop's step (Experiment.train_step: the
               same step plus the metric sums, the next batch prefetched in a thread
               as gensuite.train.loop does; --steps calls timed as one block) over
               that of the bare step
With one device, fsdp 1 and fsdp all are the same program: one row is measured.
--quick runs the same code on tiny nets (about a minute a row on a shared 2-core CPU,
most of it compiling); the full sizes there take 4 to 6 minutes a row at batch 2.
--devices=N runs the rows on N simulated CPU devices, as `gensuite bench --suite`
does. Results go to a section of --out (default docs/benchmarks.md) named after the
device, which a later run on the same kind of device replaces and `gensuite bench
--suite` keeps.
"""
import concurrent.futures
import datetime
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

MODELS = {
    'unet': 'configs/diffusion/cifar10.py',
    'dit': 'configs/diffusion/cifar10.py:dit',
}
PRECISIONS = ('float32', 'bfloat16')
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# --quick: the same code paths on nets small enough to compile in seconds.
QUICK_NETS = {
    'unet': dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,)),
    'dit': dict(hidden=32, depth=2, num_heads=2),
}
QUICK_SHAPE = (16, 16, 3)
# Settings each preset fills in where no flag gives them. batch_per_device x devices
# is the global batch unless --batch gives it; a row that runs past timeout_s is
# listed as timed out; with budget_s, the rows end within that many seconds in all
# (each row's timeout is cut to what is left; rows with under _MIN_ROW_S left are
# listed as skipped), so `--gpu` takes at most 7.5 minutes.
_MIN_ROW_S = 30.0
PRESETS = {
    'default': dict(batch_per_device=128, steps=10, warmup=2, timeout_s=1800.0,
                    budget_s=None),
    'gpu': dict(batch_per_device=256, steps=20, warmup=3, timeout_s=240.0, budget_s=450.0),
    'quick': dict(batch_per_device=4, steps=3, warmup=1, timeout_s=300.0, budget_s=None),
}
# Dense peak TFLOP/s of one device: (device_kind substring, bfloat16, float32), first
# match wins. float32 is the arithmetic XLA uses for float32 matmuls and convolutions
# at JAX's default precision: TF32 tensor cores on NVIDIA A100 and later, bfloat16
# passes on TPUs (the JAX docs' "Matmul precision" page). Vendor datasheets; SXM
# parts unless named.
PEAK_TFLOPS = (
    ('H100 PCIe', 756.0, 378.0),
    ('H100', 989.0, 494.7),
    ('H200', 989.0, 494.7),
    ('A100', 312.0, 156.0),
    ('TPU v4', 275.0, 275.0),
    ('TPU v5 lite', 197.0, 197.0),   # v5e
    ('TPU v5', 459.0, 459.0),        # v5p
    ('TPU v6 lite', 918.0, 918.0),   # v6e (Trillium)
)
COLUMNS = ('model', 'params', 'precision', 'devices', 'fsdp', 'batch', 'images/s',
           'step ms', 'compile s', 'peak memory', 'GFLOP/step', 'TFLOP/s', 'MFU',
           'loop / bare')
# docs/benchmarks.md: everything from MARKER on belongs to this benchmark (the suite's
# writer keeps it); each device's results sit between its BEGIN and END lines.
MARKER = '<!-- gensuite bench --accel -->'
BEGIN, END = '<!-- accel: {key} -->', '<!-- /accel: {key} -->'
_RESULT_TAG = 'ACCEL_RESULT '


def peak_tflops(device_kind: str, precision: str) -> float | None:
  """One device's dense peak TFLOP/s at `precision`, or None if its kind is unknown."""
  for name, bf16, f32 in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return bf16 if precision == 'bfloat16' else f32
  return None


def model_config(model: str, precision: str, fsdp: int, batch: int, quick: bool = False):
  """configs/diffusion/cifar10.py's config for `model` at these scale settings."""
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  from gensuite.errors import lookup  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.from_file(os.path.join(repo, lookup('model', model, MODELS)))
  with config.unlocked():
    config.train.update(batch_size=int(batch), precision=precision, grad_accum=1)
    config.mesh.fsdp = int(fsdp)
    if quick:
      config.net.update(QUICK_NETS[model])
  return config


def synthetic_images(shape, num_classes: int, batch_size: int, seed: int = 0,
                     size: int = 1024):
  """An in-memory image set of `size` uniform [-1, 1] images (ImageData, so batches
  and shardings are those of a real dataset)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gensuite import data as data_lib  # pylint: disable=g-import-not-at-top
  from gensuite.data import images  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, (size,) + tuple(shape)).astype(np.float32)
  labels = rng.integers(0, num_classes, size).astype(np.int32)
  source = images.ImageSource('synthetic', 'train', size, shape, num_classes,
                              lambda idx: (x[idx], labels[idx]))
  return data_lib.ImageData('synthetic', source, seed=seed, global_batch_size=batch_size)


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def measure(model: str, precision: str, fsdp='1', batch: int | None = None,
            batch_per_device: int = 128, steps: int = 10, warmup: int = 2,
            quick: bool = False) -> dict:
  """One row on this process's devices (the module docstring says what each is)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gensuite import bench  # pylint: disable=g-import-not-at-top
  from gensuite import experiment  # pylint: disable=g-import-not-at-top
  from gensuite import nets  # pylint: disable=g-import-not-at-top
  n = jax.device_count()
  fsdp_n = n if str(fsdp) == 'all' else int(fsdp)
  global_batch = int(batch) if batch else int(batch_per_device) * n
  config = model_config(model, precision, fsdp_n, global_batch, quick)
  data = synthetic_images(QUICK_SHAPE if quick else IMAGE_SHAPE, NUM_CLASSES, global_batch,
                          seed=config.seed)
  exp = experiment.build_experiment(config, data=data)
  state = exp.init_state()
  params = nets.param_count(state.params)
  batch0 = exp.global_batch(0)
  t0 = time.perf_counter()
  bare = exp.bare_step.lower(state, batch0).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(bare)
  for _ in range(warmup):
    state, metrics = bare(state, batch0)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = bare(state, batch0)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  loss = float(metrics['loss'])

  # The loop's step: metric sums on device, the next batch assembled in a thread.
  acc = exp.empty_accumulator(state)
  looped = exp.train_step.lower(state, acc, batch0).compile()
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    future = pool.submit(exp.global_batch, 1)
    for step in range(warmup + steps):
      if step == warmup:
        jax.block_until_ready((state, acc))
        t0 = time.perf_counter()
      batch = future.result()
      future = pool.submit(exp.global_batch, step + 2)
      state, acc = looped(state, acc, batch)
    jax.block_until_ready((state, acc))
    loop_s = (time.perf_counter() - t0) / steps
  finally:
    pool.shutdown(wait=True)
  peak, peak_kind = bench.peak_memory()
  device = jax.devices()[0]
  total_flops = flops * n if flops is not None else None
  peak_device = peak_tflops(device.device_kind, precision) if device.platform != 'cpu' \
      else None
  achieved = total_flops / step_s / 1e12 if total_flops else None
  return {
      'model': model + (' (quick)' if quick else ''), 'params': params,
      'precision': precision, 'devices': n, 'fsdp': fsdp_n, 'batch': global_batch,
      'backend': jax.default_backend(), 'device_kind': device.device_kind,
      'images_per_sec': global_batch / step_s, 'step_ms': 1e3 * step_s,
      'compile_s': compile_s, 'peak_memory_bytes': peak, 'peak_memory_kind': peak_kind,
      'flops_per_step': total_flops,
      'tflops_per_sec': achieved,
      'mfu': achieved / (n * peak_device) if achieved and peak_device else None,
      'loop_over_bare': step_s / loop_s, 'loss': loss, 'steps': steps, 'warmup': warmup,
      'finite': bool(np.isfinite(loss)),
  }


def worker_main(spec_json: str) -> None:
  """Measures one row (a JSON dict of measure's arguments); prints it as a tagged line."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_compilation_cache', False)
  result = measure(**json.loads(spec_json))
  print(_RESULT_TAG + json.dumps(result), flush=True)


def _run_worker(spec: dict, devices: int | None, timeout: float) -> dict:
  from gensuite import bench  # pylint: disable=g-import-not-at-top
  env = bench.worker_env(devices)
  cmd = [sys.executable, '-m', 'gensuite.bench_accel', '--worker', json.dumps(spec)]
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=repo)
  except subprocess.TimeoutExpired:
    return {'error': f'timed out after {timeout:.0f} s'}
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT_TAG):
      return json.loads(line[len(_RESULT_TAG):])
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  return {'error': (lines[-1] if lines else f'exit code {proc.returncode}')[:200]}


def settings(preset: str | None = None, **given) -> dict:
  """The preset's settings (quick, gpu or default) with the given non-None ones over them."""
  out = dict(PRESETS[preset or 'default'], batch=None)
  out.update({k: v for k, v in given.items() if v is not None})
  return out


def run(models=('unet', 'dit'), precisions=PRECISIONS, fsdp=('1', 'all'),
        preset: str | None = None, batch: int | None = None, steps: int | None = None,
        warmup: int | None = None, devices: int | None = None, isolate: bool = True,
        log=print, on_row=None) -> list[dict]:
  """Every (model, precision, fsdp) row, each in a fresh process unless isolate=False
  (then in this one, on its devices: tests). on_row(rows so far) after each row."""
  from gensuite.errors import ConfigError, lookup  # pylint: disable=g-import-not-at-top
  for m in models:
    lookup('model', m, MODELS)
  for p in precisions:
    lookup('precision', p, {p: None for p in PRECISIONS})
  for f in fsdp:
    if str(f) != 'all' and not (str(f).isdigit() and int(f) >= 1):
      raise ConfigError(f"--fsdp takes positive integers or 'all', got {f!r}")
  s = settings(preset, batch=batch, steps=steps, warmup=warmup)
  if s['steps'] < 1 or s['warmup'] < 0:
    raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {s['steps']}, "
                      f"{s['warmup']}")
  start = time.time()
  rows, device_count = [], None
  for model in models:
    for precision in precisions:
      done = set()  # the fsdp sizes measured for this (model, precision)
      for f in fsdp:
        if device_count is not None:  # known from the first row measured
          if (device_count if str(f) == 'all' else int(f)) in done:
            continue  # the same program as a row already measured (one device: 1 = all)
        spec = dict(model=model, precision=precision, fsdp=str(f), batch=s['batch'],
                    batch_per_device=s['batch_per_device'], steps=s['steps'],
                    warmup=s['warmup'], quick=preset == 'quick')
        timeout = s['timeout_s']
        if s['budget_s'] is not None:
          timeout = min(timeout, s['budget_s'] - (time.time() - start))
        if timeout < _MIN_ROW_S:
          row = {'error': f"skipped: the preset's {s['budget_s']:.0f} s budget was spent"}
        elif isolate:
          t0 = time.time()
          row = _run_worker(spec, devices, timeout)
          log(f'{model} {precision} fsdp={f}: {time.time() - t0:.0f} s' +
              (f" ({row['error']})" if 'error' in row else ''))
        else:
          row = measure(**spec)
        if 'error' in row:
          row.update(model=model + (' (quick)' if preset == 'quick' else ''),
                     precision=precision, fsdp=str(f))
        else:
          device_count = row['devices']
          done.add(row['fsdp'])
        rows.append(row)
        if on_row is not None:
          on_row(rows)
  return rows


def _sig(x: float, digits: int = 3) -> str:
  """x to `digits` significant digits, without an exponent (13060, 0.00944)."""
  if not x or not math.isfinite(x):
    return str(x)
  return f'{x:.{max(digits - 1 - math.floor(math.log10(abs(x))), 0)}f}'


def _num(x, digits: int = 3, scale: float = 1.0, suffix: str = '') -> str:
  return 'n/a' if x is None else _sig(x * scale, digits) + suffix


def format_table(rows: list[dict]) -> str:
  from gensuite.bench import format_bytes  # pylint: disable=g-import-not-at-top
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  for r in rows:
    if 'error' in r:
      cells = ([r['model'], '–', r['precision'], '–', str(r['fsdp'])] +
               ['–'] * (len(COLUMNS) - 6) + [r['error'].replace('|', '/')])
    else:
      memory = format_bytes(r['peak_memory_bytes']) + (
          ' (RSS)' if r['peak_memory_kind'] == 'RSS' else '')
      cells = [
          r['model'], f"{r['params'] / 1e6:.1f}M", r['precision'], str(r['devices']),
          str(r['fsdp']), str(r['batch']), _sig(r['images_per_sec']),
          _sig(r['step_ms'], 4), f"{r['compile_s']:.1f}", memory,
          _num(r['flops_per_step'], 4, 1e-9), _num(r['tflops_per_sec']),
          _num(r['mfu'], 3, 100.0, '%'), f"{r['loop_over_bare']:.0%}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


INTRO = '\n'.join([
    '## Accelerator benchmark',
    '',
    '`gensuite bench --accel` (gensuite/bench_accel.py): a training step of '
    "configs/diffusion/cifar10.py's EDM on synthetic 32x32x3 images, for the U-Net "
    '(38.3M parameters) and its `dit` variant (DiT-B/2, 130M), in float32 and bfloat16, '
    'with the state replicated (fsdp 1) and sharded over all devices. `step ms` is the '
    'median of the timed calls of the bare jitted step after the warm-up; `GFLOP/step` '
    "is XLA's cost analysis of the compiled step; `MFU` divides the achieved FLOP/s by "
    "the devices' dense peak at the row's precision (float32: TF32 on NVIDIA GPUs, as "
    'XLA runs float32 matmuls by default); `loop / bare` is the throughput of the '
    "training loop's step (metric sums, prefetched batches) over the bare step's. "
    'Peak memory is the devices\' `peak_bytes_in_use`; CPUs report none, so there it '
    "is the process's max RSS (JAX and Python included).",
])


def section(rows: list[dict], command: str, machine: dict) -> tuple[str, str]:
  """(key, markdown) of one run's results: the key names the device they ran on."""
  ok = [r for r in rows if 'error' not in r]
  kind = ok[0]['device_kind'] if ok else 'unknown device'
  backend = ok[0]['backend'] if ok else 'unknown'
  count = ok[0]['devices'] if ok else 0
  quick = any('(quick)' in r['model'] for r in rows)
  title = f'{count} x {kind} ({backend})' + (', --quick' if quick else '')
  key = re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')
  where = (f"{machine['cpu']}, {machine['cores']} cores" if backend == 'cpu' else kind)
  text = '\n'.join([
      BEGIN.format(key=key),
      f'### {title}',
      '',
      f'- Machine: {where}; {machine["os"]}',
      f"- Software: jax {machine['jax']}, Python {machine['python']}",
      f'- Date: {datetime.date.today().isoformat()}',
      f'- Command: `{command}`' + (
          f" ({ok[0]['warmup']} warm-up and {ok[0]['steps']} timed steps per row)"
          if ok else ''),
      '',
      format_table(rows),
      END.format(key=key),
  ])
  return key, text


def write_section(path: str, key: str, text: str) -> str:
  """Puts `text` (the block of `key`) into the accelerator part of the markdown file at
  `path`, replacing that key's block if there is one; returns the whole file."""
  old = open(path).read() if os.path.exists(path) else ''
  if MARKER not in old:
    head = old.rstrip('\n') + '\n\n' if old.strip() else '# Benchmarks\n\n'
    old = head + MARKER + '\n' + INTRO + '\n'
  begin, end = BEGIN.format(key=key), END.format(key=key)
  if begin in old and end in old[old.index(begin):]:
    i = old.index(begin)
    j = old.index(end, i) + len(end)
    new = old[:i] + text + old[j:]
  else:
    new = old.rstrip('\n') + '\n\n' + text + '\n'
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write(new)
  return new


def run_to_markdown(path: str, command: str, machine: dict, **run_kw) -> str:
  """run(**run_kw), rewriting this device's section of `path` after every row (an
  interrupted run keeps what it measured); returns the section."""
  def write(rows):
    key, text = section(rows, command, machine)
    write_section(path, key, text)
    return text
  return write(run(on_row=write, **run_kw))


if __name__ == '__main__':
  # Only run()'s worker subprocess runs this module as a script; people use
  # `gensuite bench --accel`, so this module never imports the CLI.
  if len(sys.argv) == 3 and sys.argv[1] == '--worker':
    worker_main(sys.argv[2])
  else:
    print('usage: python -m gensuite.bench_accel --worker JSON  (a worker of '
          '`gensuite bench --accel`)', file=sys.stderr)
    sys.exit(2)
