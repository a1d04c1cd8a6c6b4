"""jaxlm.compile: ahead-of-time compilation of the train step for TPU topologies (with libtpu,
the `tpu` extra; no TPU needed) and for this host, with the memory, FLOPs and cost-model report."""

import pytest

import harness
from jaxlm import compile as aot
from jaxlm.errors import UserError


@pytest.mark.parametrize('name,expected', [
    ('v5p-8', ('v5p', 'v5p:2x2x1')), ('v5p-256', ('v5p', 'v5p:4x4x8')),
    ('v5e-16', ('v5e', 'v5e:4x4')), ('v6e-256', ('v6e', 'v6e:16x16')),
    ('v6e-8', ('v6e', 'v6e:2x4')), ('V5P:2x2x2', ('v5p', 'v5p:2x2x2'))])
def test_topology_names(name, expected):
  assert aot.topology_desc(name) == expected


@pytest.mark.parametrize('name', ['v5p-7', 'v7x-8', 'tpu', 'v5e-3', 'v5p-'])
def test_unknown_topologies_are_one_sentence(name):
  with pytest.raises(UserError, match='is not a TPU slice jaxlm knows'):
    aot.topology_desc(name)


def _compile(*args):
  return harness.run(harness.command(*args, module='jaxlm.compile'))


@pytest.mark.slow
def test_the_default_config_compiles_for_a_v5p_and_the_report_adds_up(tmp_path):
  """The default config for 4 v5p chips: it fits, the per-device total is arguments plus
  temporaries plus outputs less the donated state, the compiler's FLOPs are within 15% of jaxlm's
  analytic count, and the cost model's step time gives tokens/s and an MFU, labelled as an
  estimate. Then the same for this host (memory and FLOPs only)."""
  import re
  result = _compile(f'--config={harness.ROOT}/configs/base.py', '--topology=v5p-8')
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert out.startswith('4 x TPU v5 |'), out
  memory = re.search(r'arguments ([\d.,]+) GiB \+ temporaries ([\d.,]+) GiB \+ outputs ([\d.,]+) '
                     r'GiB - donated ([\d.,]+) GiB = ([\d.,]+) GiB of 95.00 GiB HBM: fits', out)
  assert memory, out
  a, t, o, d, total = (float(x) for x in memory.groups())
  assert abs(a + t + o - d - total) <= 0.011 and total > 0
  ratio = float(re.search(r'\(ratio ([\d.]+)\)', out).group(1))
  assert 0.85 <= ratio <= 1.15, out
  assert 'compiler estimate (cost model, not a measurement)' in out and 'MFU' in out
  # XLA counts one trip of each loop: with a layer scan and micro-batches no estimate is shown.
  result = _compile(f'--config={harness.ROOT}/configs/base.py', '--topology=v5p-8',
                    '--config.model.scan_unroll=1', '--config.train.grad_accum=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'no step-time estimate: the compiler counts one trip of each loop' in result.stdout
  assert 'MFU' not in result.stdout
  result = _compile(f'--config={harness.ROOT}/configs/base.py', '--config.cpu_devices=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith('2 x cpu |') and 'HBM' not in result.stdout


@pytest.mark.slow
def test_a_step_that_does_not_fit_and_a_wrong_mesh_are_one_sentence():
  """A 16 GiB v5e chip and a batch far too large: one sentence with the compiler's figure and
  what to change (exit 2); a mesh the chips do not divide, and an unknown topology, are one
  sentence too."""
  base = f'--config={harness.ROOT}/configs/base.py'
  result = _compile(base, '--topology=v5e-4', '--config.train.batch_size=2048',
                    '--config.model.max_seq_len=1024', '--config.model.embed_dim=1024',
                    '--config.model.num_heads=8', '--config.model.num_kv_heads=8')
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  # The TPU compiler itself refuses a step whose temporaries exceed the chip's HBM.
  assert len(errors) == 1 and 'the train step does not fit (' in errors[0], result.stderr[-2000:]
  assert 'exceeds available HBM' in errors[0]
  assert "model.remat='dots' or 'full'" in errors[0] and 'Traceback' not in result.stderr
  result = _compile(base, '--topology=v5p-8', '--config.mesh.fsdp=3')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'error: ' in result.stderr
  result = _compile(base, '--topology=v9-8')
  assert result.returncode == 2 and 'is not a TPU slice jaxlm knows' in result.stderr
