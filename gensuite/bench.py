"""Benchmarks: the training loop against the bare jitted step, and a suite over configs.

  gensuite bench --config=configs/flow_matching/digits.py --steps=100     # one config
  gensuite bench --suite [--configs=configs/flow_matching/toy2d.py,...] [--devices=1,2,4]
                 [--steps=20] [--smoke] [--out=docs/benchmarks.md]

`loop_vs_bare` times (a) `steps` calls of the bare jitted train_step on one fixed,
already-sharded batch, and (b) the full loop of `gensuite train` (data pipeline,
prefetch, metric accumulation, logging) over the same number of steps after one
warm-up interval, with checkpoints and evals off. It prints steps/s of both and the
loop's efficiency (b / a).

`run_suite` measures, for every config (default: the default config of every
configs/<family>/*.py on disk, so the suite grows as families land; `smoke` picks
each file's `smoke` variant instead) and every device count (simulated CPU devices,
XLA_FLAGS=--xla_force_host_platform_device_count=N, one fresh subprocess each, with
the persistent compilation cache off so compile times are real):
  compile_s        lowering + compilation of the bare train step
  bare / loop steps/s and loop / bare, as above
  samples_per_sec  method.sample with the config's sampler and steps (second call)
  peak_memory      device peak_bytes_in_use where the backend reports it, else the
                   process's max RSS (which includes the Python runtime and JAX)
  scaling          examples/s of the bare step relative to 1 device, same global batch
and writes a markdown table with the machine description and the command.
"""
import datetime
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

_RESULT_TAG = 'BENCH_RESULT '
# Where `gensuite bench --accel`'s part of the markdown file starts (bench_accel.MARKER).
_ACCEL_MARKER = '<!-- gensuite bench --accel -->'
COLUMNS = ('config', 'devices', 'batch', 'compile s', 'bare steps/s', 'loop steps/s',
           'loop / bare', 'samples/s', 'peak memory', 'scaling vs 1 device')


def _time_bare(exp, steps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  state = exp.init_state()
  batch = exp.global_batch(0)
  state, m = exp.bare_step(state, batch)  # compile
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = exp.bare_step(state, batch)
  jax.block_until_ready((state, m))
  return steps / (time.perf_counter() - t0)


def _time_loop(config, steps: int, repeats: int) -> list[float]:
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  from gensuite.train import loop  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.num_steps = steps * (repeats + 1)
    config.train.log_every = steps
    config.train.eval_every = 0
    config.train.ckpt_every = 0
  with tempfile.TemporaryDirectory() as workdir:
    loop.run(config, workdir)
    rows = log_lib.read_jsonl(workdir)
  return [r['steps_per_sec'] for r in rows[1:]]  # the first interval holds the compile


def loop_vs_bare(config, steps: int = 50, repeats: int = 3) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite import experiment  # pylint: disable=g-import-not-at-top
  from gensuite import run as run_lib  # pylint: disable=g-import-not-at-top
  exp = experiment.build_experiment(config, load_run=run_lib.load_run)
  bare = _time_bare(exp, steps)
  rates = _time_loop(config, steps, repeats)
  looped = sorted(rates)[len(rates) // 2]
  result = {
      'config': f'{config.data.name}/{config.net.name}/{config.method.name}',
      'batch_size': config.train.batch_size,
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'bare_steps_per_sec': round(bare, 2),
      'loop_steps_per_sec': round(looped, 2),
      'loop_efficiency': round(looped / bare, 3),
  }
  print('| config | batch | devices | bare step/s | loop step/s | loop / bare |')
  print('|---|---|---|---|---|---|')
  print(f"| {result['config']} | {result['batch_size']} | {result['devices']} | "
        f"{result['bare_steps_per_sec']} | {result['loop_steps_per_sec']} | "
        f"{result['loop_efficiency']:.1%} |")
  print(json.dumps(result))
  return result


# ---- one config on this process's devices (the suite's worker) -----------------------

def peak_memory() -> tuple[float, str]:
  import jax  # pylint: disable=g-import-not-at-top
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, 'memory_stats') else None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
  if peaks:
    return float(max(peaks)), 'device'
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  return float(rss) * 1024.0, 'RSS'


def measure(config, steps: int = 20, repeats: int = 2, max_samples: int = 256) -> dict:
  """All suite figures for `config` on the current process's devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite import experiment  # pylint: disable=g-import-not-at-top
  from gensuite import run as run_lib  # pylint: disable=g-import-not-at-top
  exp = experiment.build_experiment(config, load_run=run_lib.load_run)
  state = exp.init_state()
  batch = exp.global_batch(0)
  t0 = time.perf_counter()
  step_fn = exp.bare_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step_fn(state, batch)
  jax.block_until_ready((state, m))
  bare = steps / (time.perf_counter() - t0)
  num = int(min(config.eval.num_samples, max_samples))
  kw = dict(sampler=config.sampler.name, steps=config.sampler.steps)
  rng = jax.random.PRNGKey(0)
  exp.sample(state, rng, num, **kw)  # compile
  t0 = time.perf_counter()
  exp.sample(state, jax.random.fold_in(rng, 1), num, **kw)
  samples_per_sec = num / (time.perf_counter() - t0)
  rates = _time_loop(config, steps, repeats)
  looped = statistics.median(rates)
  peak, peak_kind = peak_memory()
  return {
      'config': f'{config.data.name}/{config.net.name}/{config.method.name}',
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'backend': jax.default_backend(),
      'batch_size': int(config.train.batch_size),
      'compile_s': compile_s,
      'bare_steps_per_sec': bare,
      'loop_steps_per_sec': looped,
      'loop_efficiency': looped / bare,
      'samples_per_sec': samples_per_sec,
      'num_samples': num,
      'sampler': f'{config.sampler.name}/{config.sampler.steps}',
      'peak_memory_bytes': peak,
      'peak_memory_kind': peak_kind,
  }


def worker_main(spec: str, steps: int, overrides: dict | None = None) -> None:
  """Measures one config file spec and prints its figures as one tagged JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_enable_compilation_cache', False)
  config = config_lib.from_file(spec)
  if overrides:
    with config.unlocked():
      for path, value in overrides.items():
        section, name = path.split('.')
        config[section][name] = value
  result = measure(config, steps=steps)
  result['spec'] = spec
  print(_RESULT_TAG + json.dumps(result), flush=True)


# ---- the suite ----------------------------------------------------------------------

def _has_smoke_variant(path: str) -> bool:
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.from_file(f'{path}:smoke')
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def default_configs(root: str = 'configs', smoke: bool = False) -> list[str]:
  """Every configs/<family>/*.py on disk, as default config specs; with `smoke`, each
  file's `smoke` variant where it has one (else its default)."""
  files = sorted(p for p in glob.glob(os.path.join(root, '*', '*.py'))
                 if not os.path.basename(p).startswith('_'))
  return [f'{p}:smoke' if smoke and _has_smoke_variant(p) else p for p in files]


def worker_env(devices: int | None) -> dict:
  """The environment of a benchmark worker process: no compilation cache (compile times
  are measured), the repo on PYTHONPATH and, with `devices`, that many CPU devices."""
  env = dict(os.environ)
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join([repo] + [p for p in
                                                env.get('PYTHONPATH', '').split(os.pathsep) if p])
  return env


def _run_worker(spec: str, devices: int, steps: int, timeout: float) -> dict:
  env = worker_env(devices)
  cmd = [sys.executable, '-m', 'gensuite.bench', '--worker', spec, str(steps)]
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {'spec': spec, 'devices': devices, 'error': f'timed out after {timeout:.0f} s'}
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT_TAG):
      return json.loads(line[len(_RESULT_TAG):])
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  reason = lines[-1] if lines else f'exit code {proc.returncode}'
  return {'spec': spec, 'devices': devices, 'error': reason[:200]}


def run_suite(specs: list[str] | None = None, devices=(1, 2, 4), steps: int = 20,
              smoke: bool = False, timeout: float = 900.0, log=print,
              on_row=None) -> list[dict]:
  """Measures every spec on every device count, each in a fresh subprocess.

  on_row(rows so far) is called after each row, e.g. to rewrite the table so that an
  interrupted suite keeps what it measured.
  """
  specs = list(specs) if specs else default_configs(smoke=smoke)
  rows = []
  for spec in specs:
    group = []
    for n in devices:
      t0 = time.time()
      row = _run_worker(spec, int(n), steps, timeout)
      row.setdefault('spec', spec)
      group.append(row)
      log(f'{spec} on {n} device(s): {time.time() - t0:.0f} s'
          + (f" ({row['error']})" if 'error' in row else ''))
      ok = [r for r in group if 'error' not in r]
      ref = next((r for r in ok if r['devices'] == 1), ok[0] if ok else None)
      for r in ok:
        r['scaling'] = ((r['bare_steps_per_sec'] * r['batch_size']) /
                        (ref['bare_steps_per_sec'] * ref['batch_size']))
      if on_row is not None:
        on_row(rows + group)
    rows.extend(group)
  return rows


def machine_description() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    if names:
      cpu = names[0]
  except OSError:
    pass
  return {'cpu': cpu, 'cores': os.cpu_count(), 'jax': jax.__version__,
          'python': platform.python_version(), 'os': platform.platform()}


def format_bytes(n: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if n < 1024 or unit == 'GiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024.0
  return f'{n:.1f} GiB'


def format_table(rows: list[dict]) -> str:
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  for r in rows:
    if 'error' in r:
      cells = [r['spec'], str(r['devices'])] + ['–'] * (len(COLUMNS) - 3) + [
          f"failed: {r['error']}".replace('|', '/')]
    else:
      cells = [
          r['spec'], str(r['devices']), str(r['batch_size']), f"{r['compile_s']:.2f}",
          f"{r['bare_steps_per_sec']:.1f}", f"{r['loop_steps_per_sec']:.1f}",
          f"{r['loop_efficiency']:.0%}",
          f"{r['samples_per_sec']:.0f} ({r['num_samples']}, {r['sampler']})",
          f"{format_bytes(r['peak_memory_bytes'])} ({r['peak_memory_kind']})",
          f"{r['scaling']:.2f}x"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_markdown(rows: list[dict], path: str, command: str, machine: dict,
                   peers: str = '') -> str:
  """The suite's table (and `peers`, gensuite.bench_peers.format_section's text, after
  it) into `path`, keeping the accelerator benchmark's part of an existing file."""
  backend = next((r['backend'] for r in rows if 'backend' in r), 'cpu')
  kinds = sorted({r['device_kind'] for r in rows if 'device_kind' in r}) or ['cpu']
  text = '\n'.join([
      '# Benchmarks',
      '',
      'Training-step, loop and sampling throughput of every config, on simulated CPU '
      'devices (one fresh process per row, persistent compilation cache off). '
      '`loop / bare` is the full training loop (data, prefetch, metric accumulation, '
      'logging) against the bare jitted step on a fixed batch; `scaling` is the bare '
      "step's examples/s relative to one device at the same global batch. Simulated "
      "CPU devices share the machine's cores (XLA runs each device's part on its own "
      'thread), so that column says how well the sharded step uses the cores, not how '
      'real accelerators scale. Timings on a machine shared with other jobs are noisy.',
      '',
      f"- Machine: {machine['cpu']}, {machine['cores']} cores; {machine['os']}",
      f"- Software: jax {machine['jax']}, Python {machine['python']}; backend "
      f"{backend} ({', '.join(kinds)})",
      f'- Date: {datetime.date.today().isoformat()}',
      f'- Command: `{command}`',
      '',
      format_table(rows),
      '',
  ] + ([peers] if peers else []))
  # The accelerator benchmark's part (gensuite.bench_accel.MARKER to the end) stays.
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if _ACCEL_MARKER in old:
      text += '\n' + old[old.index(_ACCEL_MARKER):]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  return text


if __name__ == '__main__':
  # Only the suite's worker subprocess runs this module as a script (see _run_worker);
  # people use `gensuite bench`, so this module never imports the CLI.
  if len(sys.argv) == 4 and sys.argv[1] == '--worker':
    worker_main(sys.argv[2], int(sys.argv[3]))
  else:
    print('usage: python -m gensuite.bench --worker SPEC STEPS  (the suite\'s worker; '
          'run benchmarks with `gensuite bench`)', file=sys.stderr)
    sys.exit(2)
