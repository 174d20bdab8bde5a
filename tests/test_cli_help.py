"""The CLI's help, its unknown-command error and its one-line config-file errors."""
import os

import pytest

from conftest import REPO, run_cli

COMMANDS = ('train', 'sample', 'eval', 'bench', 'sweep', 'phema')


def _one_line_error(proc):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('gensuite: error: '), proc.stderr[-2000:]
  return lines[0]


def test_help_lists_every_command_with_a_usage_line():
  outputs = set()
  for args in (['--help'], ['-h'], ['help'], []):
    proc = run_cli(*args)
    assert proc.returncode == 0 and not proc.stderr.strip(), (args, proc.stderr)
    outputs.add(proc.stdout)
  assert len(outputs) == 1  # `gensuite` alone prints the same overview, exit 0
  text = outputs.pop()
  for command in COMMANDS:
    assert f'\n  {command} ' in text and f'gensuite {command} --' in text, command


@pytest.mark.parametrize('command', COMMANDS)
def test_command_help_lists_its_flags(command):
  from gensuite import cli  # pylint: disable=g-import-not-at-top
  proc = run_cli(command, '--help')
  assert proc.returncode == 0 and proc.stdout.startswith(f'usage: gensuite {command} ')
  text = ' '.join(proc.stdout.split())
  for name in cli.COMMANDS[command].flags:
    if name == 'config' and command in ('sample', 'eval'):  # overrides of the run's config
      assert '--config.sampler.F=v --config.eval.F=v' in text
      continue
    assert f'--{name}=' in text or f'--[no]{name}' in text, name
    help_text = cli.FLAGS[name].help
    if help_text.startswith('<'):  # absl prepends an enum's choices
      help_text = help_text.split(': ', 1)[1]
    assert ' '.join(help_text.split()) in text, name
  assert run_cli(command, '-h', '--workdir=x').stdout == proc.stdout
  assert run_cli('help', command).stdout == proc.stdout


def test_train_help_names_config_and_workdir():
  proc = run_cli('train', '--help')
  assert '--config=' in proc.stdout and '--workdir=' in proc.stdout
  assert '--config.a.b=v' in proc.stdout


def test_every_flag_belongs_to_a_command():
  from gensuite import cli  # pylint: disable=g-import-not-at-top
  defined = {f.name for f in cli.FLAGS.get_flags_for_module(cli)}
  listed = {name for command in cli.COMMANDS.values() for name in command.flags}
  assert defined == listed
  assert list(cli.COMMANDS) == list(COMMANDS)
  for command in cli.COMMANDS.values():
    assert set(command.required) <= set(command.flags)


def test_unknown_command_is_one_line_exit_2():
  line = _one_line_error(run_cli('nosuch', check=False))
  assert "unknown command 'nosuch'" in line and 'train, sample, eval, bench, sweep' in line
  _one_line_error(run_cli('help', 'nosuch', check=False))


def test_bad_config_variant_prints_the_configs_own_message(tmp_path):
  workdir = tmp_path / 'x'
  proc = run_cli('train', '--config=configs/flow_matching/toy2d.py:nosuch',
                 f'--workdir={workdir}', check=False)
  line = _one_line_error(proc)
  assert line.startswith("gensuite: error: unknown toy2d variant 'nosuch'; allowed tokens:")
  assert not workdir.exists()


@pytest.mark.parametrize('args, needle', [
    (['--config=configs/nosuch.py'], 'config file configs/nosuch.py does not exist'),
    (['--config=configs/nosuch.py:smoke', '--config.train.num_steps=3'],
     'config file configs/nosuch.py does not exist'),
    (['--config=configs/flow_matching/toy2d.py:smoke', '--config.train.num_stepz=3'],
     "config.train has no field 'num_stepz' (in --config.train.num_stepz=3)"),
])
def test_config_file_errors_are_one_line(args, needle, tmp_path):
  line = _one_line_error(run_cli('train', *args, f'--workdir={tmp_path / "x"}', check=False))
  assert needle in line


def test_bench_modules_never_import_the_cli():
  for name in ('bench.py', 'bench_accel.py'):  # their workers run them as scripts
    with open(os.path.join(REPO, 'gensuite', name)) as f:
      source = f.read()
    assert 'gensuite.cli' not in source and 'import cli' not in source, name
  proc = run_cli('bench', '--help')  # `gensuite bench` still works through the CLI
  assert proc.returncode == 0 and '--suite' in proc.stdout and '--accel' in proc.stdout


@pytest.mark.parametrize('args, needle', [
    (['--quick', '--gpu'], '--quick and --gpu are two presets; give one'),
    (['--devices=1,2'], 'bench --accel: --devices takes one positive count, got 1,2'),
    (['--models=vit'], "unknown model name 'vit'; allowed: dit, unet"),
    (['--fsdp=0'], "--fsdp takes positive integers or 'all', got '0'"),
])
def test_bench_accel_bad_options_are_one_line_exit_2(args, needle, tmp_path):
  out = tmp_path / 'b.md'
  line = _one_line_error(run_cli('bench', '--accel', *args, f'--out={out}', check=False))
  assert needle in line and not out.exists()
