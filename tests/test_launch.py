"""The launch scripts: the sweep's grid, and a CPU rehearsal of the GPU benchmark script."""

import json
import subprocess
import sys

import harness


def test_sweep_prints_one_command_per_grid_point(tmp_path):
  result = subprocess.run(
      [sys.executable, 'launch/sweep.py', '--config=configs/shakespeare_char.py',
       '--grid=optim.lr=1e-3,3e-3 model.num_layers=2,4', f'--root={tmp_path}', '--dry_run'],
      cwd=harness.ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 4
  assert f'--config.workdir={tmp_path}/lr=3e-3_num_layers=2' in lines[2]
  assert '--config.optim.lr=3e-3' in lines[2] and '--config.model.num_layers=2' in lines[2]


def test_gpu_benchmark_script_rehearses_on_cpu(tmp_path):
  env = harness.env(BENCH_TINY='1', PYTHON=sys.executable)
  result = subprocess.run(['launch/bench_gpu.sh', str(tmp_path)], cwd=harness.ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'failed' not in result.stdout, result.stdout[-3000:]
  for name in ('gpt2_124m_b16', 'gpt2_124m_b32', 'llama_1b'):
    figures = json.loads((tmp_path / f'{name}.json').read_text())
    assert figures['train']['tokens_per_s'] > 0
  table = result.stdout.split('benchmark ')[-1]
  assert 'gpt2_124m_b32' in table and 'llama_1b' in table


def test_prepare_benchmark_prints_its_figures(tmp_path):
  """A smoke test of launch/bench_prepare.py on a 1 MiB corpus: it runs and prints a line of
  figures per worker count (the figures themselves are in docs/BENCHMARKS.md)."""
  result = subprocess.run(
      [sys.executable, 'launch/bench_prepare.py', '--size_mb=1', '--chunk_mb=0.25',
       f'--workdir={tmp_path / "scratch"}'], cwd=harness.ROOT, env=harness.env(),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith('workers ')]
  assert [l.split(':')[0] for l in lines] == ['workers 1', 'workers 2']
  assert all('MiB/s' in l and 'peak RSS' in l for l in lines)
  assert not (tmp_path / 'scratch').exists()  # it cleans up after itself
