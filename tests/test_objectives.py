"""Masked LM: the masking statistics and their determinism, the ratio schedule, the bidirectional
encoder, and runs that resume exactly and evaluate at a fixed ratio."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import objectives
from jaxlm.config import resolve_model
from jaxlm.model.transformer import Transformer
from tiny import tiny_config

V, EOS = 1000, 7  # an end-of-sequence id inside the vocabulary, as SentencePiece's often is


def spec(mask_fraction=0.8, random_fraction=0.1):
  return objectives.Masking(V, EOS, mask_fraction, random_fraction)


def draw(ratio, seed=0, rows=64, length=2048):
  """Tokens (with end-of-sequence ids and many zeros), a padding tail on every row, masked."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (rows, length)).astype(np.int32)
  tokens[rng.random(tokens.shape) < 0.05] = EOS
  tokens[rng.random(tokens.shape) < 0.05] = 0  # id 0 is an ordinary token
  valid = np.ones(tokens.shape, bool)
  valid[:, -100:] = False  # padding
  inputs, selected = objectives.mask_tokens(jax.random.PRNGKey(seed), jnp.asarray(tokens),
                                            jnp.asarray(valid), jnp.arange(rows),
                                            jnp.float32(ratio), spec())
  return tokens, valid, np.asarray(inputs), np.asarray(selected) > 0


def within_3_sigma(count, n, p):
  sigma = math.sqrt(n * p * (1 - p))
  return abs(count - n * p) <= 3 * sigma, (count, n * p, sigma)


@pytest.mark.parametrize('ratio', [0.15, 0.4, 0.8])
def test_masking_statistics(ratio):
  """Over 64 x 2048 tokens: the selected fraction of the selectable tokens, and the 80/10/10
  split of the selected ones, within 3 sigma of their expectation; end-of-sequence ids and
  padding are never selected; id 0 is selected like any token; a random replacement is never the
  end-of-sequence or [MASK] id, and unselected tokens are unchanged."""
  tokens, valid, inputs, selected = draw(ratio)
  selectable = valid & (tokens != EOS)
  assert not selected[~selectable].any()
  assert (inputs[~selected] == tokens[~selected]).all()
  n = int(selectable.sum())
  assert n > 100_000
  ok, got = within_3_sigma(int(selected.sum()), n, ratio)
  assert ok, got
  zeros = selectable & (tokens == 0)
  ok, got = within_3_sigma(int(selected[zeros].sum()), int(zeros.sum()), ratio)
  assert ok, got
  k = int(selected.sum())
  masked = inputs[selected] == V
  changed = ~masked & (inputs[selected] != tokens[selected])
  p_changed = 0.1 * (1 - 1 / (V - 1))  # a random ordinary token may be the original one
  for count, p in [(masked.sum(), 0.8), (changed.sum(), p_changed),
                   (k - masked.sum() - changed.sum(), 1 - 0.8 - p_changed)]:
    ok, got = within_3_sigma(int(count), k, p)
    assert ok, got
  replaced = inputs[selected & (inputs != tokens)]
  assert not np.isin(replaced[replaced != V], [EOS, V]).any()
  assert (inputs[inputs == V].size == masked.sum()) and (tokens != V).all()


def test_masks_are_a_pure_function_of_key_and_row_index():
  """The same key and row indices give the same masks; another step's key, other ones; a row's
  masks follow its global index, not its place in the batch (rows reordered with their indices
  give the rows reordered)."""
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, V, (8, 64)), jnp.int32)
  valid = jnp.ones(tokens.shape, bool)
  index = jnp.arange(100, 108)
  key = jax.random.fold_in(jax.random.PRNGKey(0), 5)
  run = lambda k, t, i: objectives.mask_tokens(k, t, valid, i, jnp.float32(0.3), spec())
  a, b = run(key, tokens, index), run(key, tokens, index)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  other = run(jax.random.fold_in(jax.random.PRNGKey(0), 6), tokens, index)
  assert (np.asarray(other[1]) != np.asarray(a[1])).any()
  order = np.array([3, 0, 7, 1, 6, 2, 5, 4])
  shuffled = run(key, tokens[order], index[order])
  np.testing.assert_array_equal(shuffled[0], np.asarray(a[0])[order])
  np.testing.assert_array_equal(shuffled[1], np.asarray(a[1])[order])


@pytest.mark.parametrize('schedule', ['constant', 'linear', 'cosine'])
def test_ratio_schedule_closed_form(schedule):
  """First (0), middle and last (steps - 1) step against the closed forms."""
  cfg = tiny_config()
  cfg.train.steps = 101
  cfg.mlm.ratio_schedule, cfg.mlm.ratio_start, cfg.mlm.ratio_end = schedule, 0.3, 0.15
  expected = {
      'constant': lambda p: 0.3,
      'linear': lambda p: 0.3 + (0.15 - 0.3) * p,
      'cosine': lambda p: 0.15 + (0.3 - 0.15) * 0.5 * (1 + math.cos(math.pi * p)),
  }[schedule]
  for step, progress in [(0, 0.0), (50, 0.5), (100, 1.0), (25, 0.25)]:
    got = float(objectives.mlm_ratio(cfg, jnp.int32(step)))
    assert got == pytest.approx(expected(progress), abs=1e-6), (step, got)


def _model(causal):
  cfg = tiny_config()
  cfg.model.causal = causal
  return Transformer(resolve_model(cfg.model, 61), rngs=nnx.Rngs(0))


def test_the_encoder_is_bidirectional_within_segments():
  """causal=False: changing token t changes the outputs before t (a causal model's stay equal),
  but never across a segment boundary."""
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 61, (1, 16)), jnp.int32)
  changed = tokens.at[0, 10].set((tokens[0, 10] + 1) % 61)
  for causal in (False, True):
    model = _model(causal)
    diff = np.abs(np.asarray(model(tokens) - model(changed))).max(-1)[0]
    assert (diff[:10] > 1e-6).all() != causal, (causal, diff)
  model = _model(False)
  segments = jnp.asarray([[1] * 8 + [2] * 8])
  positions = jnp.asarray([list(range(8)) * 2])
  diff = np.abs(np.asarray(model(tokens, positions, segment_ids=segments) -
                           model(changed, positions, segment_ids=segments))).max(-1)[0]
  assert (diff[:8] == 0).all() and (diff[8:] > 1e-6).all(), diff


MLM_FIELDS = {'model.causal': False, 'train.objective': 'mlm', 'train.steps': 6,
              'train.eval_every': 6, 'train.sample_tokens': 0, 'mlm.ratio_schedule': 'linear',
              'mlm.ratio_start': 0.4, 'mlm.ratio_end': 0.15, 'cpu_devices': 2}


def _train_mlm(tmp_path, name, **fields):
  """A tiny masked-LM run in its own process (as a user runs it)."""
  import harness
  config = harness.write_config(tmp_path / f'{name}.py', **{**MLM_FIELDS, **fields})
  result = harness.run(harness.command(f'--config={config}',
                                       f'--config.workdir={tmp_path / name}'))
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp_path / name


def _train_records(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [r for r in map(json.loads, lines) if r.get('split') == 'train']


@pytest.mark.slow
@pytest.mark.parametrize('packing', ['concat', 'pack'])
def test_a_resumed_mlm_run_repeats_its_losses_and_ratios(tmp_path, packing):
  """A 6-step run (checkpoints at 3 and 6) logs the schedule's ratio at every step; with its
  newest checkpoint removed (as if killed after step 3), a new process resumes it and logs the
  same losses and ratios for steps 4-6, bit for bit: the masks come from the step and the row,
  not from the process."""
  import shutil
  workdir = _train_mlm(tmp_path, 'run', **{'data.packing': packing})
  ratios = {r['step']: r['mask_ratio'] for r in _train_records(workdir)}
  assert ratios[1] == pytest.approx(0.4) and ratios[6] == pytest.approx(0.15)
  assert ratios[4] == pytest.approx(0.4 + (0.15 - 0.4) * 3 / 5)
  shutil.rmtree(workdir / 'checkpoints' / '6')
  _train_mlm(tmp_path, 'run', **{'data.packing': packing})
  by_step: dict[int, list] = {}
  for r in _train_records(workdir):
    by_step.setdefault(r['step'], []).append((r['loss'], r['mask_ratio']))
  for step in (4, 5, 6):
    assert len(by_step[step]) == 2 and by_step[step][0] == by_step[step][1], by_step


@pytest.mark.slow
def test_mlm_eval_scores_a_fixed_sample_of_masked_tokens(tmp_path):
  """jaxlm.eval on a masked-LM run: the masked-token loss at mlm.eval_ratio, the same on every
  call (fixed seed), about that ratio of the validation tokens counted, no bits per byte (which
  would need every token scored); generate and BLEU are refused in one sentence each."""
  import harness
  _train_mlm(tmp_path, 'run', **{'mlm.eval_ratio': 0.25})
  run = lambda *args, module='jaxlm.eval': harness.run(harness.command(
      f'--workdir={tmp_path / "run"}', *args, module=module))
  results = []
  for _ in range(2):
    result = run()
    assert result.returncode == 0, result.stderr[-3000:]
    results.append(json.loads((tmp_path / 'run' / 'eval' / '6.json').read_text()))
  assert results[0] == results[1]
  val = results[0]['validation']
  assert 'bits_per_byte' not in val and val['mask_ratio'] == 0.25
  from jaxlm.restore import load_trained
  from jaxlm import data
  r = load_trained(str(tmp_path / 'run'))
  stream = data.validation_stream(r.data, r.cfg, r.model_cfg.max_seq_len)
  scorable = float(stream.weights[:-1].sum())
  ok, got = within_3_sigma(val['tokens'], scorable, 0.25)
  assert ok, got
  result = run('--prompt=First', module='jaxlm.generate')
  assert result.returncode == 2 and 'does not continue a prompt' in result.stderr
  (tmp_path / 'pairs.jsonl').write_text('{"prompt": "First", "reference": "Citizen"}\n')
  result = run(f'--references={tmp_path / "pairs.jsonl"}')
  assert result.returncode == 2 and 'does not generate' in result.stderr
