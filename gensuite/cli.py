"""gensuite's command line: a thin layer over importable functions.

  gensuite train  --config=configs/flow_matching/toy2d.py[:variant] --workdir=DIR [--config.a.b=v]
  gensuite sample --workdir=DIR --num=N [--sampler=heun --steps=20] --out=FILE.npz
  gensuite eval   --workdir=DIR [--metrics=mmd,nll] [--sampler=... --steps=...]
                  [--metrics=fid --inception_weights=FILE [--fid_stats=FILE.npz]] [--num=N]
  gensuite bench  --config=... [--steps=50]       # loop vs bare jitted step
  gensuite bench  --suite [--configs=A.py,B.py] [--devices=1,2,4] [--smoke] [--nopeers]
                  [--out=FILE.md]
  gensuite bench  --accel [--quick|--gpu] [--models=unet,dit] [--precisions=float32,bfloat16]
                  [--fsdp=1,all] [--batch=N] [--steps=N] [--warmup=N] [--devices=N] [--out=FILE.md]
  gensuite sweep  --config=... --sweep=experiments/sweeps/NAME.py --workdir=DIR [--parallel=N]
                  [--devices_per_run=K] [--launcher=slurm --slurm.partition=P --slurm.time=4:00:00]
  gensuite phema  --workdir=DIR --std=0.075 [--step=N]   # post-hoc EMA -> use_ema=phema_0.075

Bad input (unknown names, wrong types, incompatible settings, a config file that
is missing or rejects its variant, a workdir that cannot be created or written, or
that another `gensuite train` holds) prints one line `gensuite: error: ...` and exits
with code 2 before anything is written.

Every other failure (no space left on the device, a NaN stop, anything unexpected)
prints one line too and exits 1 (SIGTERM: 143, Ctrl-C: 130), after the loop has
closed its files and waited for orbax; the full traceback, with a timestamp and the
command line, is appended to DIR/error.log when the workdir exists and is writable,
and also printed to stderr with --verbose (which shows it for exit-2 errors too).
Nothing else is printed at interpreter shutdown.

`gensuite`, `gensuite --help` (or -h, or `gensuite help`) print the commands to
stdout and exit 0; `gensuite CMD --help` (or `gensuite help CMD`) prints CMD's
usage and flags.
"""
import collections
import datetime
import errno
import logging as std_logging
import os
import shlex
import socket
import sys
import textwrap
import threading
import traceback

from absl import flags
from absl import logging
from ml_collections import config_flags

from gensuite.errors import ConfigError
from gensuite.train import workdir as workdir_lib

Command = collections.namedtuple('Command', 'summary usage flags required')
# sweep --launcher=slurm: --slurm.<name> (gensuite.launchers.SLURM_SETTINGS).
_SLURM_FLAGS = ('partition', 'gpus_per_run', 'time', 'cpus_per_run', 'mem_gb', 'account',
                'qos', 'constraint', 'setup', 'executor')
# Every command: a one-line summary, its usage lines, the flags it reads (in the
# order --help lists them) and which of those it requires.
COMMANDS = {
    'train': Command(
        'Train a config in a run directory; resumes from its newest checkpoint.',
        ('gensuite train --config=configs/flow_matching/toy2d.py[:variant] --workdir=DIR '
         '[--config.a.b=v]',),
        ('config', 'workdir', 'multihost', 'force_unlock', 'verbose'),
        ('config', 'workdir')),
    'sample': Command(
        'Draw samples from a run\'s checkpoint into a .npz file.',
        ('gensuite sample --workdir=DIR --num=N [--sampler=heun --steps=20] --out=FILE.npz',),
        ('workdir', 'out', 'num', 'step', 'sampler', 'steps', 'seed', 'use_ema', 'config',
         'verbose'),
        ('workdir', 'out')),
    'eval': Command(
        'Evaluate a run\'s checkpoint; logs the metrics at its step.',
        ('gensuite eval --workdir=DIR [--metrics=mmd,nll] [--sampler=... --steps=...] '
         '[--num=N]',
         'gensuite eval --workdir=DIR --metrics=fid --inception_weights=FILE '
         '[--fid_stats=FILE.npz]'),
        ('workdir', 'metrics', 'num', 'step', 'sampler', 'steps', 'use_ema',
         'inception_weights', 'fid_stats', 'inception_resize', 'config', 'verbose'),
        ('workdir',)),
    'bench': Command(
        'Time the training loop against the bare jitted step (--config), run the '
        'benchmark suite (--suite), or the accelerator benchmark (--accel).',
        ('gensuite bench --config=... [--steps=50]       # loop vs bare jitted step',
         'gensuite bench --suite [--configs=A.py,B.py] [--devices=1,2,4] [--smoke] '
         '[--nopeers] [--out=FILE.md]',
         'gensuite bench --accel [--quick|--gpu] [--models=unet,dit] '
         '[--precisions=float32,bfloat16] [--fsdp=1,all] [--batch=N] [--steps=N] '
         '[--warmup=N] [--devices=N] [--out=FILE.md]'),
        ('config', 'steps', 'suite', 'configs', 'devices', 'smoke', 'peers', 'out', 'accel',
         'quick', 'gpu', 'models', 'precisions', 'fsdp', 'batch', 'warmup', 'verbose'), ()),
    'sweep': Command(
        'Train one run per point of a sweep file and tabulate them.',
        ('gensuite sweep --config=... --sweep=experiments/sweeps/NAME.py --workdir=DIR '
         '[--parallel=N] [--devices_per_run=K]',
         'gensuite sweep ... --launcher=slurm --slurm.partition=P --slurm.gpus_per_run=1 '
         '--slurm.time=4:00:00'),
        ('config', 'sweep', 'workdir', 'parallel', 'devices_per_run', 'launcher',
         *(f'slurm.{name}' for name in _SLURM_FLAGS), 'verbose'),
        ('config', 'sweep', 'workdir')),
    'phema': Command(
        'Reconstruct a post-hoc EMA (EDM2) of a run trained with optim.phema_stds, for '
        'sample/eval with --config.eval.use_ema=phema_<std>.',
        ('gensuite phema --workdir=DIR --std=S [--step=N]',),
        ('workdir', 'std', 'step', 'verbose'), ('workdir', 'std')),
}
# What --help shows as a flag's value, where its type alone says too little.
_METAVARS = {'workdir': 'DIR', 'out': 'FILE', 'sweep': 'FILE.py', 'sampler': 'NAME',
             'inception_weights': 'FILE', 'fid_stats': 'FILE.npz'}
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, with optional :variant.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory (train: created, or resumed if it '
                    'holds a run).')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize (several hosts).')
flags.DEFINE_bool('force_unlock', False, 'train: take over the workdir\'s lock even if it '
                  'names a run on another host (only once that run is known to be gone).')
flags.DEFINE_bool('verbose', False, 'On an error, also print the full traceback to stderr '
                  '(it always goes to DIR/error.log, except for exit-2 errors).')
flags.DEFINE_integer('num', 64, 'sample: number of samples; eval: same as '
                     '--config.eval.num_samples.')
flags.DEFINE_string('sampler', None, 'sample/eval: same as --config.sampler.name '
                    '(default: the run\'s).')
flags.DEFINE_integer('steps', None, 'sample/eval: same as --config.sampler.steps; bench: '
                     'timed steps (--accel: default 10; --gpu: 20, --quick: 3).')
flags.DEFINE_string('out', None, 'sample: output .npz file; bench --suite / --accel: '
                    'markdown file (default: docs/benchmarks.md).')
flags.DEFINE_integer('seed', 0, 'sample: random seed.')
flags.DEFINE_bool('use_ema', True, 'sample/eval: use the EMA params (default: the EMA '
                  'the run\'s config.eval.use_ema names; True: the longest fixed decay).')
flags.DEFINE_list('metrics', None, 'eval: metric names (default: config.eval.metrics).')
flags.DEFINE_string('inception_weights', None, 'eval: FID Inception-v3 weights file '
                    '(.pth/.pt/.npz; sets config.eval.inception_weights).')
flags.DEFINE_string('fid_stats', None, 'eval: reference (mu, sigma) .npz for fid '
                    '(sets config.eval.fid_stats).')
flags.DEFINE_enum('inception_resize', None, ['tf', 'pytorch_fid'],
                  'eval: resampling to 299x299 for fid (sets config.eval.inception_resize).')
flags.DEFINE_integer('step', None, 'sample/eval: checkpoint step; phema: the snapshot step '
                     'to reconstruct at (default: latest).')
flags.DEFINE_float('std', None, 'phema: relative std of the EMA profile to reconstruct, in '
                   '(0, 0.2887) (EDM2\'s sigma_rel, e.g. 0.05 short ... 0.2 long).')
flags.DEFINE_string('sweep', None, 'sweep: a Python file with get_sweep() (a list of '
                    'overrides) or get_study() (an Optuna search; needs the optuna extra).')
flags.DEFINE_integer('parallel', 1, 'sweep: runs (or study trials) at a time; with '
                     '--launcher=slurm, the job array\'s parallelism (default there: no limit; '
                     'a study: 1 trial at a time).')
flags.DEFINE_integer('devices_per_run', None, 'sweep: devices each run sees (local launcher); '
                     'runs wait for free devices. Default: all for a single run, 1 when '
                     '--parallel > 1 on GPU/TPU; on CPU all unless given.')
flags.DEFINE_enum('launcher', 'local', ['local', 'slurm'], 'sweep: where runs train: this '
                  'host, or a SLURM job array through submitit (needs the slurm extra).')
flags.DEFINE_string('slurm.partition', None, 'sweep --launcher=slurm: the partition.')
flags.DEFINE_integer('slurm.gpus_per_run', 1, 'sweep --launcher=slurm: GPUs per run.')
flags.DEFINE_string('slurm.time', '60', 'sweep --launcher=slurm: time limit of a run\'s job '
                    '(minutes, HH:MM:SS or D-HH:MM:SS); a run near it checkpoints and is '
                    'requeued.')
flags.DEFINE_integer('slurm.cpus_per_run', None, 'sweep --launcher=slurm: CPUs per run.')
flags.DEFINE_float('slurm.mem_gb', None, 'sweep --launcher=slurm: memory per run in GB.')
flags.DEFINE_string('slurm.account', None, 'sweep --launcher=slurm: the account.')
flags.DEFINE_string('slurm.qos', None, 'sweep --launcher=slurm: the QOS.')
flags.DEFINE_string('slurm.constraint', None, 'sweep --launcher=slurm: node features.')
flags.DEFINE_list('slurm.setup', None, 'sweep --launcher=slurm: shell lines run before each '
                  'task (e.g. module load cuda).')
flags.DEFINE_enum('slurm.executor', 'slurm', ['slurm', 'local'], 'sweep --launcher=slurm: '
                  'local runs the same tasks through submitit\'s LocalExecutor on this '
                  'machine (to try the path without a cluster).')
flags.DEFINE_bool('suite', False, 'bench: every config x device count, a markdown table.')
flags.DEFINE_list('configs', None, 'bench --suite: config specs (default: every '
                  'configs/<family>/*.py).')
flags.DEFINE_list('devices', ['1', '2', '4'], 'bench --suite: simulated CPU device counts; '
                  'bench --accel: one count, rows on that many simulated CPU devices '
                  '(default there: the machine\'s own devices).')
flags.DEFINE_bool('peers', True, 'bench --suite: also the peer comparisons '
                  '(gensuite.bench_peers: torchcfm, diffrax, pytorch-fid where installed).')
flags.DEFINE_bool('smoke', False, 'bench --suite: use each config file\'s smoke variant.')
flags.DEFINE_bool('accel', False, 'bench: the accelerator benchmark (the CIFAR-10 U-Net '
                  'and DiT-B/2, float32 / bfloat16, fsdp 1 / all devices), a markdown table.')
flags.DEFINE_bool('quick', False, 'bench --accel: tiny nets on 16x16 images, batch 4 per '
                  'device, 1 warm-up and 3 timed steps (a check that runs on a CPU).')
flags.DEFINE_bool('gpu', False, 'bench --accel: the preset for one GPU/TPU host: batch 256 '
                  'per device, 3 warm-up and 20 timed steps, at most 240 s a row and 450 s '
                  'in all (rows left over are listed as skipped).')
flags.DEFINE_list('models', ['unet', 'dit'], 'bench --accel: unet (the 38.3M CIFAR-10 '
                  'U-Net), dit (DiT-B/2, 130M).')
flags.DEFINE_list('precisions', ['float32', 'bfloat16'], 'bench --accel: '
                  'config.train.precision values.')
flags.DEFINE_list('fsdp', ['1', 'all'], 'bench --accel: config.mesh.fsdp values (all = '
                  'every device).')
flags.DEFINE_integer('batch', None, 'bench --accel: global batch (default: the preset\'s '
                     'batch per device, 128 (--gpu: 256, --quick: 4), times the devices).')
flags.DEFINE_integer('warmup', None, 'bench --accel: untimed steps before the timed ones '
                     '(default 2; --gpu: 3, --quick: 1).')


# sample / eval: what of a trained run's config may change, and the short flags that
# set those fields (each equals --config.<field>=...).
_RUN_SECTIONS = ('eval.', 'sampler.')
_SAMPLE_ALIASES = {'sampler': 'sampler.name', 'steps': 'sampler.steps'}
_EVAL_ALIASES = {**_SAMPLE_ALIASES, 'num': 'eval.num_samples', 'metrics': 'eval.metrics',
                 'use_ema': 'eval.use_ema', 'inception_weights': 'eval.inception_weights',
                 'fid_stats': 'eval.fid_stats', 'inception_resize': 'eval.inception_resize'}
# --config.a.b=v given to sample / eval (no config file: they edit the run's own).
_CONFIG_OVERRIDES: dict[str, str] = {}


def _take_run_overrides(argv: list[str]) -> list[str]:
  """Removes --config.a.b=v from a sample/eval command line into _CONFIG_OVERRIDES."""
  rest = []
  for arg in argv:
    if arg.startswith('--config.'):
      field, eq, text = arg[len('--config.'):].partition('=')
      if not eq or not field:
        _fail(f'{arg}: write --config.<section>.<field>=<value>')
      _CONFIG_OVERRIDES[field] = text
    else:
      rest.append(arg)
  return rest


def _fail(message: str) -> None:
  print(f'gensuite: error: {message}', file=sys.stderr)
  sys.exit(2)


# ---- help --------------------------------------------------------------------------

def overview() -> str:
  """The commands, each with its summary and usage: `gensuite --help`."""
  lines = ['usage: gensuite COMMAND [--flag=value ...]', '', 'commands:']
  for name, command in COMMANDS.items():
    lines.append(f'  {name:<7} {command.summary}')
    lines.extend(f'          {usage}' for usage in command.usage)
  lines += ['', "`gensuite COMMAND --help` lists that command's flags."]
  return '\n'.join(lines)


def _flag_usage(name: str) -> str:
  flag = FLAGS[name]
  if name == 'config':
    return '--config=FILE.py[:variant]'
  kind = flag.flag_type()
  if kind == 'bool':
    return f'--[no]{name}'
  if kind.startswith('multi') or isinstance(flag.parser, flags.ListParser):
    return f'--{name}=A,B,...'
  if hasattr(flag.parser, 'enum_values'):
    return f'--{name}={{{"|".join(flag.parser.enum_values)}}}'
  return f'--{name}=' + _METAVARS.get(name, {'int': 'INT', 'float': 'FLOAT'}.get(kind, 'STR'))


def command_help(name: str) -> str:
  """`gensuite NAME --help`: NAME's usage, summary and flags with their help."""
  command = COMMANDS[name]
  lines = ['usage: ' + command.usage[0]]
  lines.extend('       ' + usage for usage in command.usage[1:])
  lines += ['', command.summary, '', 'flags:']
  for flag_name in command.flags:
    if flag_name == 'config' and name in ('sample', 'eval'):
      lines.append('  --config.sampler.F=v  --config.eval.F=v')
      lines.extend(textwrap.wrap(
          "Override a sampling or evaluation field of the run's config for this command "
          '(e.g. --config.sampler.name=dpm_solver_2m --config.sampler.eta=0.5 '
          '--config.eval.num_samples=5000); the trained fields cannot change.', 86,
          initial_indent='      ', subsequent_indent='      ', break_on_hyphens=False))
      continue
    flag = FLAGS[flag_name]
    text = flag.help
    if hasattr(flag.parser, 'enum_values') and text.startswith('<'):
      text = text.split(': ', 1)[-1]  # absl prepends the choices, shown above
    if flag_name in command.required:
      text += ' Required.'
    elif flag.default is not None and flag_name != 'config':
      default = flag.default
      if isinstance(default, (list, tuple)):
        default = ','.join(map(str, default))
      text += f' (default: {default})'
    lines.append('  ' + _flag_usage(flag_name))
    lines.extend(textwrap.wrap(text, 86, initial_indent='      ',
                               subsequent_indent='      ', break_on_hyphens=False))
    if flag_name == 'config':
      lines.append('  --config.a.b=v')
      lines.append('      Override one config field, e.g. --config.train.num_steps=100.')
  return '\n'.join(lines)


def _help(argv: list[str]) -> bool:
  """Prints the help `argv` asks for, if it asks for help; returns whether it did."""
  if len(argv) < 2 or argv[1] in ('-h', '--help'):
    print(overview())
    return True
  if argv[1] == 'help':
    if len(argv) > 2 and argv[2] in COMMANDS:
      print(command_help(argv[2]))
    elif len(argv) > 2:
      _fail(f'unknown command {argv[2]!r}; allowed: {", ".join(COMMANDS)}')
    else:
      print(overview())
    return True
  if argv[1] in COMMANDS and any(a in ('-h', '--help') for a in argv[2:]):
    print(command_help(argv[1]))
    return True
  return False


# ---- flag and config-file errors ---------------------------------------------------

def _config_spec(argv: list[str]) -> str | None:
  """The value of --config in `argv` (FILE.py[:variant]), if given."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_error_message(error: BaseException, argv: list[str]) -> str:
  """One line for an error raised while parsing flags or loading the config file.

  ml_collections re-raises what the config file's get_config raises (a ValueError for
  an unknown variant, say) as `type(e)('Error whilst parsing config file:' + the
  traceback)`, which absl wraps again as IllegalFlagValueError('flag --config=...:
  ...'): the config's own message is the innermost exception of that chain. A
  missing config file surfaces, on first access to the config, as an OSError whose
  message lists the paths ml_collections tried. An override of a field the config
  lacks surfaces as a KeyError holding just the field's name.
  """
  chain = [error]
  while len(chain) < 20 and (chain[-1].__cause__ or chain[-1].__context__):
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  inner = chain[-1]
  text = ' '.join(str(e) for e in chain)
  spec = _config_spec(argv) or ''
  path = spec.split(':', 1)[0]
  if 'Failed loading config file' in text or 'earlier failure to load' in text:
    if path and not os.path.exists(path):
      return f'config file {path} does not exist'
    reason = inner.strerror if isinstance(inner, OSError) and inner.strerror else inner
    return f'cannot load config file {path}: {reason}'
  if 'Error whilst parsing config file' in text:
    return ' '.join(str(inner).split()) or type(inner).__name__
  if isinstance(inner, SyntaxError):
    return f'config file {inner.filename}, line {inner.lineno}: {inner.msg}'
  if isinstance(inner, KeyError) and inner.args:
    key = str(inner.args[0]).strip('\'"')
    for arg in argv:
      if arg.startswith('--config.'):
        parts = arg[2:].split('=', 1)[0].split('.')
        if key in parts[1:]:
          i = parts.index(key, 1)
          return f'{".".join(parts[:i])} has no field {key!r} (in {arg})'
    return f'unknown config field {key!r}'
  if isinstance(inner, OSError) and inner.errno == errno.ENOENT and inner.filename:
    return f'{inner.filename} does not exist'
  return ' '.join(str(error).split())


def _require(*names):
  for name in names:
    if FLAGS[name].value is None:
      _fail(f'--{name} is required for this command')


def _setup_jax():
  """A persistent compilation cache, unless the environment already chose one."""
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(
        os.path.expanduser('~'), '.cache', 'gensuite', 'jax'))
  if not os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'):
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def _train():
  _require('config', 'workdir')
  from gensuite import train  # pylint: disable=g-import-not-at-top
  workdir = FLAGS.workdir
  train.run(FLAGS.config, workdir, multihost=FLAGS.multihost,
            force_unlock=FLAGS.force_unlock)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(f'done: TensorBoard logs in {workdir} (tensorboard --logdir {workdir}); '
          f'metrics in {os.path.join(workdir, "metrics.jsonl")}; '
          f'checkpoints in {os.path.join(workdir, "checkpoints")}')
    samples = os.path.join(workdir, 'samples')
    if os.path.isdir(samples) and os.listdir(samples):
      print(f'samples: {os.path.join(samples, sorted(os.listdir(samples))[-1])}')


def _sample():
  _require('workdir', 'out')
  if not FLAGS.out.endswith('.npz'):
    _fail(f'--out must name a .npz file, got {FLAGS.out!r}')
  if FLAGS.num <= 0:
    _fail(f'--num must be a positive integer, got {FLAGS.num}')
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gensuite import run as run_lib  # pylint: disable=g-import-not-at-top
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  run = run_lib.load_run(FLAGS.workdir, FLAGS.step)
  config_lib.apply_overrides(run.config, _run_overrides(_SAMPLE_ALIASES), _RUN_SECTIONS)
  run.method.check_sampler(load_guide=True)
  # --config.eval.use_ema names an EMA (e.g. phema_0.05), --[no]use_ema picks the default
  # EMA or the raw params; without either, the EMA the run's eval reads (config.eval.use_ema).
  from_config = 'eval.use_ema' in _CONFIG_OVERRIDES or not FLAGS['use_ema'].present
  use_ema = run.config.eval.use_ema if from_config else FLAGS.use_ema
  run.state.eval_params(use_ema)  # an unknown EMA name: one line, before sampling
  x = run.sample(jax.random.PRNGKey(FLAGS.seed), FLAGS.num, use_ema=use_ema)
  np.savez(FLAGS.out, samples=x, step=run.step)
  print(f'wrote {x.shape[0]} samples of shape {x.shape[1:]} from step {run.step} to {FLAGS.out}')


def _run_overrides(aliases: dict) -> dict:
  """{field: text} for a loaded run's config: the short flags that were given (aliases:
  flag -> field), then the command line's --config.eval.* / --config.sampler.*."""
  out = {}
  for flag_name, field in aliases.items():
    if FLAGS[flag_name].present and FLAGS[flag_name].value is not None:
      value = FLAGS[flag_name].value
      out[field] = repr(tuple(value)) if isinstance(value, list) else str(value)
  out.update(_CONFIG_OVERRIDES)
  return out


def _eval():
  _require('workdir')
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  from gensuite import evaluate  # pylint: disable=g-import-not-at-top
  from gensuite import metrics  # pylint: disable=g-import-not-at-top
  from gensuite import run as run_lib  # pylint: disable=g-import-not-at-top
  from gensuite.errors import lookup  # pylint: disable=g-import-not-at-top
  from gensuite.train import logging as log_lib  # pylint: disable=g-import-not-at-top
  if FLAGS.metrics:
    for m in FLAGS.metrics:
      lookup('metric', m, metrics.METRICS)
  if FLAGS['num'].present and FLAGS.num <= 0:
    _fail(f'--num must be a positive integer, got {FLAGS.num}')
  run = run_lib.load_run(FLAGS.workdir, FLAGS.step)
  config_lib.apply_overrides(run.config, _run_overrides(_EVAL_ALIASES), _RUN_SECTIONS)
  run.method.check_sampler(load_guide=True)
  run.state.eval_params(run.config.eval.get('use_ema', True))  # an unknown EMA name
  metrics.check(tuple(run.config.eval.metrics), **metrics.eval_options(run.config.eval))
  # At the checkpoint's step, replacing any earlier values of the same names: that
  # step is <= every later resume point, so truncate-on-resume keeps these lines.
  writer = log_lib.MetricWriter(FLAGS.workdir, replace=True)
  try:
    results = evaluate.evaluate(run.experiment, run.state, run.step, writer, None)
  finally:
    writer.close()
  for k, v in results.items():
    print(f'{k}: {v:.6g}')


def _bench_accel():
  from gensuite import bench  # pylint: disable=g-import-not-at-top
  from gensuite import bench_accel  # pylint: disable=g-import-not-at-top
  if FLAGS.quick and FLAGS.gpu:
    _fail('--quick and --gpu are two presets; give one')
  devices = None
  if FLAGS['devices'].present:
    if len(FLAGS.devices) != 1 or not FLAGS.devices[0].isdigit() or int(FLAGS.devices[0]) < 1:
      _fail(f'bench --accel: --devices takes one positive count, got {",".join(FLAGS.devices)}')
    devices = int(FLAGS.devices[0])
  for name in ('batch', 'steps'):
    if FLAGS[name].value is not None and FLAGS[name].value < 1:
      _fail(f'--{name} must be a positive integer, got {FLAGS[name].value}')
  out = FLAGS.out or 'docs/benchmarks.md'
  command = 'gensuite ' + ' '.join(sys.argv[1:]) if sys.argv[1:2] == ['bench'] else \
      'gensuite bench --accel'
  print(bench_accel.run_to_markdown(
      out, command, bench.machine_description(), models=FLAGS.models,
      precisions=FLAGS.precisions, fsdp=FLAGS.fsdp,
      preset='quick' if FLAGS.quick else 'gpu' if FLAGS.gpu else None, batch=FLAGS.batch,
      steps=FLAGS.steps, warmup=FLAGS.warmup, devices=devices,
      log=lambda m: print(m, file=sys.stderr)))
  print(f'wrote {out}')


def _bench():
  from gensuite import bench  # pylint: disable=g-import-not-at-top
  if FLAGS.accel:
    _bench_accel()
    return
  if FLAGS.suite:
    try:
      devices = [int(d) for d in FLAGS.devices]
    except ValueError:
      _fail(f'--devices must be integers, got {",".join(FLAGS.devices)}')
    if any(d <= 0 for d in devices):
      _fail(f'--devices must be positive, got {devices}')
    out = FLAGS.out or 'docs/benchmarks.md'
    command = 'gensuite ' + ' '.join(sys.argv[1:]) if sys.argv[1:2] == ['bench'] else \
        'gensuite bench --suite'
    machine = bench.machine_description()
    log = lambda m: print(m, file=sys.stderr)
    rows = bench.run_suite(FLAGS.configs, devices=devices, steps=FLAGS.steps or 20,
                           smoke=FLAGS.smoke, log=log,
                           on_row=lambda rows: bench.write_markdown(rows, out, command,
                                                                    machine))
    peers = ''
    if FLAGS.peers:
      from gensuite import bench_peers  # pylint: disable=g-import-not-at-top
      peers = bench_peers.format_section(bench_peers.run_peers(log=log))
    print(bench.write_markdown(rows, out, command, machine, peers=peers))
    print(f'wrote {out}')
    return
  _require('config')
  bench.loop_vs_bare(FLAGS.config, steps=FLAGS.steps or 50)


def _sweep():
  _require('config', 'sweep', 'workdir')
  from gensuite import sweep  # pylint: disable=g-import-not-at-top
  slurm = {name: FLAGS[f'slurm.{name}'].value for name in _SLURM_FLAGS
           if FLAGS[f'slurm.{name}'].present}
  rows = sweep.run(config_flags.get_config_filename(FLAGS['config']), FLAGS.sweep,
                   FLAGS.workdir,
                   parallel=FLAGS.parallel if FLAGS['parallel'].present else None,
                   base_overrides=config_flags.get_override_values(FLAGS['config']),
                   launcher=FLAGS.launcher, devices_per_run=FLAGS.devices_per_run,
                   slurm=slurm, config=FLAGS.config)
  print(sweep.format_table(rows))
  print(f'summary: {FLAGS.workdir}/summary.csv; tensorboard --logdir {FLAGS.workdir}')


def _phema():
  _require('workdir', 'std')
  from gensuite import config as config_lib  # pylint: disable=g-import-not-at-top
  from gensuite.methods import phema  # pylint: disable=g-import-not-at-top
  config_lib.load(FLAGS.workdir)  # a run, or one line
  arrays, info = phema.reconstruct(FLAGS.workdir, FLAGS.std, FLAGS.step)
  path = phema.write_reconstruction(FLAGS.workdir, FLAGS.std, arrays, info['step'])
  snapshots = sorted({s for s, _ in info['coefficients']})
  tracked = sorted({n for _, n in info['coefficients']}, key=float)
  name = phema.PREFIX + phema.std_name(FLAGS.std)
  print(f'wrote {path}: the EMA with relative std {FLAGS.std:g} at step {info["step"]}, '
        f'from {len(snapshots)} snapshots of stds {", ".join(tracked)} (profile error '
        f'{100 * info["profile_error"]:.2g}%, cond {info["condition"]:.2g}); use it with '
        f'--config.eval.use_ema={name} (sample/eval) or run.sample(..., use_ema={name!r})')


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if _help(argv):
    return
  if argv[1] not in COMMANDS:
    _fail(f'unknown command {argv[1]!r}; allowed: {", ".join(COMMANDS)} '
          '(gensuite --help for usage)')
  command = argv[1]
  args = argv[2:]
  if command in ('sample', 'eval'):
    args = _take_run_overrides(args)
  try:
    FLAGS(['gensuite'] + args)
    if FLAGS['config'].present:
      FLAGS.config.get('seed')  # config files load lazily: surface their errors here
  except (flags.Error, ConfigError, OSError, AttributeError, KeyError, TypeError,
          ValueError, SyntaxError) as e:
    _fail(parse_error_message(e, argv[2:]))
  # The loop's progress lines at INFO; libraries (orbax, tfds) only at WARNING.
  logging.set_verbosity(logging.WARNING)
  handler = std_logging.StreamHandler(sys.stderr)
  handler.setFormatter(std_logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
  ours = std_logging.getLogger('gensuite')
  ours.addHandler(handler)
  ours.setLevel(std_logging.INFO)
  ours.propagate = False
  # An unreadable checkpoint fails orbax's restore in several tensorstore futures; the
  # one raised becomes the error line, and asyncio reports the others, when they are
  # collected, as 'Future exception was never retrieved' on stderr. Those go.
  std_logging.getLogger('asyncio').addFilter(
      lambda record: not str(record.msg).startswith('Future exception was never retrieved'))
  _setup_jax()
  try:
    {'train': _train, 'sample': _sample, 'eval': _eval, 'bench': _bench,
     'sweep': _sweep, 'phema': _phema}[command]()
  except ConfigError as e:  # bad input, a workdir that is locked or not writable
    _exit_with(e, 2, str(e), argv)
  except workdir_lib.Preempted as e:  # SIGTERM: a checkpoint was saved
    _exit_with(e, 143, str(e), argv)
  except (FloatingPointError, workdir_lib.OutOfSpace) as e:  # NaN/Inf, disk full
    _exit_with(e, 1, str(e), argv)
  except KeyboardInterrupt as e:
    _exit_with(e, 130, 'interrupted', argv)
  except Exception as e:  # pylint: disable=broad-except
    _exit_with(e, 1, f'{type(e).__name__}: {_first_line(e)}', argv, unexpected=True)


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = str(error).strip()
  line = text.splitlines()[0] if text else ''
  line = line.split(' [tensorstore_spec')[0]
  return line if len(line) <= limit else line[:limit - 4] + ' ...'


def _exit_with(error: BaseException, code: int, line: str, argv: list[str],
               unexpected: bool = False) -> None:
  """The one error line, the traceback to DIR/error.log (not for exit 2: those stop
  before anything is written) and, with --verbose, to stderr; then exits `code`."""
  line = ' '.join(line.split())  # one line, whatever the message held
  text = ''.join(traceback.format_exception(type(error), error, error.__traceback__))
  log_path = None
  if code != 2:
    workdir = FLAGS.workdir if argv[1] in ('train', 'sample', 'eval', 'sweep',
                                           'phema') else None
    stamp = datetime.datetime.now().isoformat(timespec='seconds')
    command = 'gensuite ' + ' '.join(shlex.quote(a) for a in argv[1:])
    log_path = workdir_lib.append_error_log(
        workdir, f'==== {stamp}  host {socket.gethostname()}  pid {os.getpid()}  exit '
        f'{code}\n$ {command}\ngensuite: error: {line}\n{text}\n')
  if FLAGS['verbose'].value:
    sys.stderr.write(text)
  if unexpected and log_path:
    line += f' (traceback in {log_path})'
  print(f'gensuite: error: {line}', file=sys.stderr)
  sys.stderr.flush()
  _divert_late_reports(log_path)
  sys.exit(code)


def _divert_late_reports(log_path: str | None) -> None:
  """After the error line, what background threads still report while the
  interpreter shuts down (abandoned orbax/tensorstore I/O, a thread's exception, a
  library's error log) goes to error.log, or nowhere, instead of burying that line."""

  def sink(parts):
    if not log_path:
      return
    try:
      with open(log_path, 'a') as f:
        f.write(''.join(parts))
    except BaseException:  # pylint: disable=broad-except
      pass

  def unraisable(u):
    try:
      sink([f'(at exit) {u.err_msg or "Exception ignored in"}: {u.object!r}\n'] +
           traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback))
    except BaseException:  # pylint: disable=broad-except
      pass

  def thread_exception(args):
    try:
      sink([f'(at exit) in thread {getattr(args.thread, "name", "?")}:\n'] +
           traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    except BaseException:  # pylint: disable=broad-except
      pass

  sys.unraisablehook = unraisable
  threading.excepthook = thread_exception
  std_logging.disable(std_logging.CRITICAL)


if __name__ == '__main__':
  main()
