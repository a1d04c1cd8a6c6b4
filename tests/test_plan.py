"""The memory planner (jaxlm.plan, `jaxlm.compile --plan`) against XLA's memory analysis of the
steps compiled for TPU topologies (libtpu; no TPU needed): the large presets and the gradient
accumulator. Apart from tests/test_compile.py so that the two long files run side by side."""

import pytest

from test_compile import _report, _preset


@pytest.mark.slow
@pytest.mark.parametrize('name,topology', [('gpt2_124m', 'v5p-8'), ('llama_1b', 'v5p-8'),
                                           ('llama_1b', 'v5p-256')])
def test_the_planner_is_within_15_percent_of_xla_for_the_large_presets(name, topology):
  """The planner's per-device total (parameters, optimizer, gradients, activations, loss,
  gathered weights) against XLA's memory analysis of the compiled step, on the three steps that
  are gigabytes: GPT-2 124M data parallel, Llama 1B with FSDP on 4 chips (16 micro-batches) and
  on 128 chips. Each fits. (No loop-free estimate here: that second compile takes minutes.)"""
  r = _report(name, topology, estimate=False, with_eval=False)
  assert 0.85 <= r['planned']['total'] / r['total'] <= 1.15, (r['planned'], r['total'])
  assert r['total'] <= r['hbm'] and r['total'] > 2**30
  # AdamW: two moments like the parameters (and a step count)
  assert abs(r['planned']['optimizer'] - 2 * r['planned']['params']) <= 64


def test_the_large_presets_fit_v6e_8_by_the_planner():
  """On 8 v6e chips (32 GiB each) by the planner, which the test above holds to XLA's figures:
  compiling both takes over 4 minutes here, so their compiled figures are in BENCHMARKS.md
  (launch/tpu_presets.py) rather than in CI."""
  for name in ('gpt2_124m', 'llama_1b'):
    r = _report(name, 'v6e-8', plan_only=True)
    assert 2**30 < r['planned']['total'] <= r['hbm'], (name, r['planned'])


@pytest.mark.slow
def test_the_planner_counts_the_gradient_accumulator():
  """Micro-batches add a float32 gradient sum beside each micro-batch's own gradients: with the
  micro-batch fixed, going from 1 to 2 of them grows XLA's per-device total by about 1.5 times the
  parameters here (a 200 MB model whose activations are small), and the planner's by one
  parameter copy: two thirds of XLA's growth, held to within a factor 2 of it."""
  totals = {}
  for accum in (1, 2):
    cfg = _preset('base')
    m = cfg.model
    m.embed_dim, m.num_heads, m.num_kv_heads, m.vocab_size = 1024, 8, 8, 512
    cfg.train.batch_size, cfg.train.grad_accum = 4 * accum, accum
    r = _report('base', 'v5p-8', cfg=cfg, estimate=False, with_eval=False)
    totals[accum] = r['planned']['total'], r['total']
  planned, compiled = (totals[2][i] - totals[1][i] for i in (0, 1))
  assert compiled > 0.5 * r['planned']['params']
  assert compiled / 2 <= planned <= compiled * 2, (planned, compiled)
