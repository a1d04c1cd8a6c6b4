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


def test_gpu_check_rehearses_on_cpu(tmp_path):
  """A smoke test of launch/gpu_check.sh with tiny models: every variant is measured (its JSON
  has a train figure, written by jaxlm.bench) and is a row of the final table; the cuDNN check
  says it was skipped rather than passing."""
  env = harness.env(GPU_CHECK_TINY='1', PYTHON=sys.executable)
  result = subprocess.run(['launch/gpu_check.sh', str(tmp_path)], cwd=harness.ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'stopped' not in result.stdout, result.stdout[-3000:]
  assert 'skipped: no GPU here' in result.stdout
  table = result.stdout.split('variant ')[-1]
  names = ['gpt2', 'gpt2_scan1', 'gpt2_autodiff_loss', 'gpt2_triton_on', 'llama_dots',
           'llama_dots_attention', 'llama_autodiff_loss', 'llama_triton_on']
  for name in names:
    figures = json.loads((tmp_path / f'{name}.json').read_text())
    assert figures['train']['tokens_per_s'] > 0
    row = next(line for line in table.splitlines() if line.split()[:1] == [name])
    assert 'not measured' not in row
  remat = lambda name: json.loads((tmp_path / f'{name}.json').read_text())['config']['remat']
  assert (remat('llama_dots'), remat('llama_dots_attention')) == ('dots', 'dots_attention')


def test_bench_writes_each_figure_as_it_is_measured(tmp_path):
  """jaxlm.bench hands over (and the CLI writes) the train figures before eval is measured."""
  from tiny import tiny_config
  from jaxlm import bench
  cfg = tiny_config(workdir=str(tmp_path))
  cfg.model.vocab_size = 64
  seen = []
  bench.run(cfg, ['train', 'eval'], 2, 1,
            emit=lambda results, name: seen.append((name, sorted(results))))
  names = [name for name, _ in seen]
  assert names == ['config', 'train', 'eval']
  assert 'train' in seen[1][1] and 'eval' not in seen[1][1]


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


def test_tpu_presets_round_the_micro_batch_to_the_chips():
  """launch/tpu_presets.py compiles each preset as configured except for what the slice calls
  for: Llama 1B's micro-batches on 4 chips, GPT-2's one batch on 128, and a micro-batch rounded
  up to a multiple of the chips (not the whole batch: 16 rows in 4 micro-batches on 8 chips
  become 4 of 8)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('tpu_presets',
                                                harness.ROOT / 'launch' / 'tpu_presets.py')
  presets = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(presets)
  cfg, changed = presets.for_slice('llama_1b', 'v5p-8', 4)
  assert (cfg.train.batch_size, cfg.train.grad_accum, changed) == (512, 16, ['grad_accum=16'])
  cfg, changed = presets.for_slice('gpt2_124m', 'v5p-256', 128)  # 480 rows in one batch
  assert (cfg.train.batch_size, changed) == (512, ['grad_accum=1', 'batch_size=512'])
  presets.ACCUM['base', 'test'] = 4  # base: 16 rows, so micro-batches of 4, rounded up to 8
  cfg, changed = presets.for_slice('base', 'test', 8)
  assert (cfg.train.batch_size, changed) == (32, ['grad_accum=4', 'batch_size=32'])


def test_entry_points_share_the_config_flag_in_one_process():
  """Importing two jaxlm entry points in one process (as the test files do, in whatever order
  pytest-xdist gives them to a worker) defines --config once, not twice (a DuplicateFlagError)."""
  result = subprocess.run([sys.executable, '-c', 'import jaxlm.compile, jaxlm.bench'],
                          cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_tpu_presets_refuses_an_unknown_preset_in_one_sentence():
  result = subprocess.run([sys.executable, 'launch/tpu_presets.py', '--presets=base,nope'],
                          cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert 'error: --presets=base,nope is invalid' in result.stderr and not result.stdout
