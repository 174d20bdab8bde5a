"""The benchmark suite's table: one row per (config, device count), fixed columns; and
the accelerator benchmark's (gensuite bench --accel): one row per (model, precision,
fsdp), measured on the quick preset here."""
import os

import numpy as np
import pytest

from conftest import run_cli
from gensuite import bench
from gensuite import bench_accel
from gensuite import bench_peers
from gensuite.errors import ConfigError

TOY = 'configs/flow_matching/toy2d.py:smoke'


def _check_table(text: str, rows: int):
  lines = text.splitlines()
  assert lines[0] == '# Benchmarks'
  assert any(l.startswith('- Machine: ') and 'cores' in l for l in lines)
  assert any(l.startswith('- Software: jax ') and 'backend' in l for l in lines)
  assert any(l.startswith('- Command: `gensuite bench --suite') for l in lines)
  table = [l for l in lines if l.startswith('|')]
  assert table[0] == '| ' + ' | '.join(bench.COLUMNS) + ' |'
  assert table[1] == '|' + '---|' * len(bench.COLUMNS)
  assert len(table) == 2 + rows
  for line in table[2:]:
    assert line.count('|') == len(bench.COLUMNS) + 1, line
  return [[c.strip() for c in l.strip('|').split('|')] for l in table[2:]]


def test_default_configs_are_every_family_file_on_disk():
  specs = bench.default_configs()
  assert 'configs/flow_matching/toy2d.py' in specs and 'configs/flow_matching/digits.py' in specs
  assert all(os.path.exists(s) for s in specs)
  smoke = bench.default_configs(smoke=True)
  assert len(smoke) == len(specs) and 'configs/flow_matching/toy2d.py:smoke' in smoke


def test_table_structure_with_a_failed_row(tmp_path):
  ok = dict(spec=TOY, devices=2, device_kind='cpu', backend='cpu', batch_size=64,
            compile_s=1.5, bare_steps_per_sec=100.0, loop_steps_per_sec=80.0,
            loop_efficiency=0.8, samples_per_sec=5000.0, num_samples=256,
            sampler='heun/8', peak_memory_bytes=3 * 2**20, peak_memory_kind='RSS',
            scaling=1.25)
  bad = dict(spec='configs/x/y.py', devices=4, error='ConfigError: batch | devices')
  text = bench.write_markdown([ok, bad], str(tmp_path / 'b.md'), 'gensuite bench --suite',
                              bench.machine_description())
  assert open(tmp_path / 'b.md').read() == text
  cells = _check_table(text, rows=2)
  assert cells[0][:3] == [TOY, '2', '64'] and cells[0][6] == '80%'
  assert cells[0][8] == '3.0 MiB (RSS)' and cells[0][9] == '1.25x'
  assert cells[1][-1].startswith('failed: ConfigError')


@pytest.mark.slow
def test_suite_on_one_smoke_config_writes_the_table(tmp_path):
  rows = bench.run_suite([TOY], devices=(1, 2), steps=2, log=lambda m: None)
  assert [r['devices'] for r in rows] == [1, 2] and not any('error' in r for r in rows)
  assert rows[0]['scaling'] == 1.0
  for r in rows:
    assert r['compile_s'] > 0 and r['bare_steps_per_sec'] > 0 and r['samples_per_sec'] > 0
    assert r['peak_memory_bytes'] > 0 and r['loop_efficiency'] > 0
  text = bench.write_markdown(rows, str(tmp_path / 'b.md'), 'gensuite bench --suite',
                              bench.machine_description())
  cells = _check_table(text, rows=2)
  assert [c[1] for c in cells] == ['1', '2']


# ---- the peer section of gensuite bench --suite ---------------------------------------

def test_peer_section_ratios_and_missing_peers(tmp_path):
  rows = [dict(comparison='sde', system='gensuite euler_maruyama', value=200.0,
               unit='samples/s'),
          dict(comparison='sde', system='diffrax Euler, VirtualBrownianTree', value=20.0,
               unit='samples/s'),
          dict(comparison='fid', system='gensuite pool3 features', value=8.0, unit='images/s'),
          dict(comparison='fid', system='pytorch-fid InceptionV3', error=bench_peers.INSTALL)]
  section = bench_peers.format_section(rows)
  lines = section.splitlines()
  assert lines[0] == '## Peers'
  assert '| diffrax Euler, VirtualBrownianTree | 20 samples/s | 0.10 |' in lines
  assert '| gensuite euler_maruyama | 200 samples/s | 1.00 |' in lines
  assert f'| pytorch-fid InceptionV3 | {bench_peers.INSTALL} | |' in lines
  assert not any('flow-matching training step' in l for l in lines)  # no fm_step rows
  # The section sits after the suite's table and before the accelerator part.
  path = str(tmp_path / 'b.md')
  with open(path, 'w') as f:
    f.write('old\n' + bench._ACCEL_MARKER + '\naccel part\n')  # pylint: disable=protected-access
  text = bench.write_markdown([], path, 'gensuite bench --suite', bench.machine_description(),
                              peers=section)
  assert text.index('## Peers') < text.index(bench._ACCEL_MARKER)  # pylint: disable=protected-access
  assert text.endswith('accel part\n') and 'old' not in text


def test_peer_worker_measures_gensuite_and_names_a_missing_peer():
  """The sde comparison in its subprocess: gensuite's row is measured; each diffrax row is
  measured too where diffrax is installed, else says how to install it."""
  rows = bench_peers.run_peers(['sde'], log=lambda m: None)
  assert [r['system'] for r in rows] == ['gensuite euler_maruyama',
                                         'diffrax Euler, VirtualBrownianTree',
                                         'diffrax Euler, UnsafeBrownianPath']
  assert rows[0]['value'] > 0 and rows[0]['unit'] == 'samples/s'
  for r in rows[1:]:
    assert r.get('value', 0) > 0 or r['error'] == bench_peers.INSTALL, r


# ---- gensuite bench --accel ----------------------------------------------------------

def _accel_cells(text: str, rows: int):
  """The data rows of every accelerator table in `text` (each under the fixed header)."""
  header = '| ' + ' | '.join(bench_accel.COLUMNS) + ' |'
  rule = '|' + '---|' * len(bench_accel.COLUMNS)
  lines = text.splitlines()
  starts = [i for i, l in enumerate(lines) if l == header]
  assert starts and all(lines[i + 1] == rule for i in starts)
  table = [l for l in lines if l.startswith('|') and l not in (header, rule)]
  assert len(table) == rows
  cells = [[c.strip() for c in l.strip('|').split('|')] for l in table]
  assert all(len(c) == len(bench_accel.COLUMNS) for c in cells)
  return [dict(zip(bench_accel.COLUMNS, c)) for c in cells]


def test_accel_quick_path_measures_a_row_and_writes_its_section(tmp_path):
  # One device here: fsdp 1 and all are one program, so one row.
  rows = bench_accel.run(models=('dit',), precisions=('float32',), fsdp=('1', 'all'),
                         preset='quick', isolate=False)
  assert len(rows) == 1 and 'error' not in rows[0]
  r = rows[0]
  assert r['finite'] and r['batch'] == 4 * r['devices'] and r['fsdp'] == r['devices']
  for key in ('images_per_sec', 'step_ms', 'compile_s', 'peak_memory_bytes',
              'flops_per_step', 'tflops_per_sec', 'loop_over_bare'):
    assert np.isfinite(r[key]) and r[key] > 0, key
  assert r['mfu'] is None  # a CPU has no peak in the table
  path = str(tmp_path / 'b.md')
  key, text = bench_accel.section(rows, 'gensuite bench --accel --quick',
                                  bench.machine_description())
  written = bench_accel.write_section(path, key, text)
  assert bench_accel.MARKER in written and '- Command: `gensuite bench --accel --quick`' in text
  cell = _accel_cells(written, rows=1)[0]
  assert cell['model'] == 'dit (quick)' and cell['precision'] == 'float32'
  assert cell['MFU'] == 'n/a' and cell['peak memory'].endswith('(RSS)')
  for column in ('images/s', 'step ms', 'compile s', 'GFLOP/step', 'TFLOP/s'):
    assert np.isfinite(float(cell[column])) and float(cell[column]) > 0, column
  assert cell['loop / bare'].endswith('%') and float(cell['loop / bare'][:-1]) > 0


def _fake_row(**kw):
  row = dict(model='unet', params=38.3e6, precision='bfloat16', devices=8, fsdp=8,
             batch=1024, backend='gpu', device_kind='NVIDIA H200', images_per_sec=9000.0,
             step_ms=113.8, compile_s=41.2, peak_memory_bytes=30 * 2**30,
             peak_memory_kind='device', flops_per_step=2.6e14, tflops_per_sec=2284.0,
             mfu=0.289, loop_over_bare=0.99, loss=0.5, steps=20, warmup=3, finite=True)
  row.update(kw)
  return row


def test_accel_sections_replace_their_own_block_and_the_suite_keeps_them(tmp_path):
  path = str(tmp_path / 'b.md')
  machine = bench.machine_description()
  gpu = [_fake_row(), dict(model='dit', precision='float32', fsdp='all',
                           error='timed out after 240 s')]
  key, text = bench_accel.section(gpu, 'gensuite bench --accel --gpu', machine)
  assert key == '8-x-nvidia-h200-gpu'
  bench_accel.write_section(path, key, text)
  cells = _accel_cells(open(path).read(), rows=2)
  assert cells[0]['MFU'] == '28.9%' and cells[0]['peak memory'] == '30.0 GiB'
  assert cells[0]['params'] == '38.3M' and cells[0]['loop / bare'] == '99%'
  assert cells[1]['loop / bare'] == 'timed out after 240 s'
  # Another device's run adds its block; a rerun on the same device replaces its own.
  cpu = [_fake_row(backend='cpu', device_kind='cpu', devices=1, fsdp=1, mfu=None,
                   peak_memory_kind='RSS')]
  bench_accel.write_section(path, *bench_accel.section(cpu, 'gensuite bench --accel', machine))
  key, text = bench_accel.section(gpu[:1], 'gensuite bench --accel --gpu', machine)
  bench_accel.write_section(path, key, text)
  accel = open(path).read()
  assert accel.count(bench_accel.MARKER) == 1 and accel.count('### ') == 2
  assert len(_accel_cells(accel, rows=2)) == 2  # the new GPU row and the CPU row
  # The suite rewrites its own table and keeps the accelerator part.
  ok = dict(spec=TOY, devices=1, device_kind='cpu', backend='cpu', batch_size=64,
            compile_s=1.5, bare_steps_per_sec=100.0, loop_steps_per_sec=80.0,
            loop_efficiency=0.8, samples_per_sec=5000.0, num_samples=256,
            sampler='heun/8', peak_memory_bytes=3 * 2**20, peak_memory_kind='RSS',
            scaling=1.0)
  text = bench.write_markdown([ok], path, 'gensuite bench --suite', machine)
  assert open(path).read() == text and text.endswith(accel[accel.index(bench_accel.MARKER):])
  _check_table(text.split(bench_accel.MARKER)[0], rows=1)


def test_accel_peaks_and_option_errors():
  assert bench_accel.peak_tflops('NVIDIA H200', 'bfloat16') == 989.0
  assert bench_accel.peak_tflops('NVIDIA H100 PCIe', 'float32') == 378.0
  assert bench_accel.peak_tflops('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312.0
  assert bench_accel.peak_tflops('TPU v5 lite', 'bfloat16') == 197.0
  assert bench_accel.peak_tflops('TPU v5', 'float32') == 459.0
  assert bench_accel.peak_tflops('cpu', 'bfloat16') is None
  assert bench_accel.settings('gpu', steps=5)['steps'] == 5
  assert bench_accel.settings(None, batch=None)['batch_per_device'] == 128
  for kw, match in ((dict(models=('vit',)), "unknown model name 'vit'; allowed: dit, unet"),
                    (dict(precisions=('float16',)), "unknown precision name 'float16'"),
                    (dict(fsdp=('0',)), "--fsdp takes positive integers or 'all'")):
    with pytest.raises(ConfigError, match=match):
      bench_accel.run(**kw, isolate=False)


@pytest.mark.slow
def test_accel_cli_quick_on_two_simulated_devices(tmp_path):
  out = str(tmp_path / 'b.md')
  proc = run_cli('bench', '--accel', '--quick', '--models=dit', '--devices=2',
                 f'--out={out}', timeout=900)
  assert 'wrote ' + out in proc.stdout
  cells = _accel_cells(open(out).read(), rows=4)
  assert [(c['precision'], c['fsdp']) for c in cells] == [
      ('float32', '1'), ('float32', '2'), ('bfloat16', '1'), ('bfloat16', '2')]
  assert all(c['devices'] == '2' and c['batch'] == '8' for c in cells)
