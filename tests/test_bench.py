"""The benchmark suite's table: one row per (config, device count), fixed columns."""
import os

import pytest

from gensuite import bench

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
