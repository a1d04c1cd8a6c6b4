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
from jaxlm.objectives import Vocab, mlm, span
from jaxlm.config import resolve_model
from jaxlm.model.transformer import Transformer
from tiny import tiny_config

V, EOS = 1000, 7  # an end-of-sequence id inside the vocabulary, as SentencePiece's often is


def _span_batch(raw, spans):
  """span_batch of rows 0..n-1 with key 0, compiled as one program as the train step does (run
  op by op it costs a compilation per operation: seconds)."""
  rows = jnp.arange(raw.shape[0])
  return jax.jit(lambda r, i: span.span_batch(jax.random.PRNGKey(0), r, i, spans))(raw, rows)


def _spans(cfg, eos, model_vocab):
  """Span corruption's settings for `cfg`, a tokenizer whose end-of-sequence id is `eos` and a
  model of `model_vocab` ids."""
  return span.SpanCorruption(cfg, Vocab(model_vocab - span.SpanCorruption.reserved_ids(cfg), eos),
                             model_vocab).spans


def spec(mask_fraction=0.8, random_fraction=0.1):
  return mlm.Masking(V, EOS, mask_fraction, random_fraction)


def draw(ratio, seed=0, rows=64, length=2048):
  """Tokens (with end-of-sequence ids and many zeros), a padding tail on every row, masked."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (rows, length)).astype(np.int32)
  tokens[rng.random(tokens.shape) < 0.05] = EOS
  tokens[rng.random(tokens.shape) < 0.05] = 0  # id 0 is an ordinary token
  valid = np.ones(tokens.shape, bool)
  valid[:, -100:] = False  # padding
  inputs, selected = mlm.mask_tokens(jax.random.PRNGKey(seed), jnp.asarray(tokens),
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
  run = lambda k, t, i: mlm.mask_tokens(k, t, valid, i, jnp.float32(0.3), spec())
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
    got = float(mlm.mlm_ratio(cfg, jnp.int32(step)))
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


def _train(tmp_path, name, resume=False, **fields):
  """A tiny masked-LM run (unless `fields` say otherwise), as a user runs it. A resume runs in a
  process of its own (a draw keyed by the process would show); a first run in a fork of the
  harness's warmed-up process (harness.run_forked)."""
  import harness
  corpus = tmp_path / 'corpus.txt'  # the shipped corpus's first 20 KB: jaxlm.eval reads it all
  if not corpus.exists():
    corpus.write_text(harness.SHIPPED.read_text()[:20_000])
  config = harness.write_config(tmp_path / f'{name}.py', **{
      'data.corpus': str(corpus), **MLM_FIELDS, **fields})
  run = harness.run if resume else harness.run_forked
  result = run(harness.command(f'--config={config}', f'--config.workdir={tmp_path / name}'))
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp_path / name


def _train_records(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [r for r in map(json.loads, lines) if r.get('split') == 'train']


@pytest.mark.slow
@pytest.mark.parametrize('packing,masking', [
    ('concat', {'mlm.unit': 'span', 'mlm.position_profile': 'linear', 'mlm.position_slope': 1.0}),
    ('pack', {'mlm.unit': 'token_span', 'mlm.position_profile': 'buckets',
              'mlm.position_weights': (2, 1)})])
def test_a_resumed_mlm_run_repeats_its_losses_and_ratios(tmp_path, packing, masking):
  """A 6-step run (checkpoints at 3 and 6; spans and a position profile) logs the schedule's
  ratio at every step; with its newest checkpoint removed (as if killed after step 3), a new
  process resumes it and logs the same losses and ratios for steps 4-6, bit for bit: the masks
  come from the step and the row, not from the process."""
  import shutil
  workdir = _train(tmp_path, 'run', **{'data.packing': packing}, **masking)
  ratios = {r['step']: r['mask_ratio'] for r in _train_records(workdir)}
  assert ratios[1] == pytest.approx(0.4) and ratios[6] == pytest.approx(0.15)
  assert ratios[4] == pytest.approx(0.4 + (0.15 - 0.4) * 3 / 5)
  shutil.rmtree(workdir / 'checkpoints' / '6')
  _train(tmp_path, 'run', resume=True, **{'data.packing': packing}, **masking)
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
  _train(tmp_path, 'run', **{'mlm.eval_ratio': 0.25})
  run = lambda *args, module='jaxlm.eval': harness.run_forked(harness.command(
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
  scorable = float(data.stream_arrays(stream)[1][:-1].sum())
  ok, got = within_3_sigma(val['tokens'], scorable, 0.25)
  assert ok, got
  result = run('--prompt=First', module='jaxlm.generate')
  assert result.returncode == 2 and 'does not continue a prompt' in result.stderr
  (tmp_path / 'pairs.jsonl').write_text('{"prompt": "First", "reference": "Citizen"}\n')
  result = run(f'--references={tmp_path / "pairs.jsonl"}')
  assert result.returncode == 2 and 'does not generate' in result.stderr


# Span corruption (T5) as a prefix LM.

def test_random_spans_helper_equals_t5():
  """T5's values: 512 inputs at density 0.15 and mean span 3 take a raw window of 568 tokens and
  give 114 targets (the issue's figures, from T5's documentation); 128 inputs take 141 and give
  29 (worked by hand from T5's function: 141 - 21 + 7 + 1 = 128, and 142 would give 129); at
  density 0.5, 767 raw tokens give 512 inputs (767 - 384 + 128 + 1) and 513 targets, so T5 takes
  766 and 512 targets instead."""
  assert span.random_spans_helper(512, 0.15, 3.0) == (568, 114)
  assert span.random_spans_helper(128, 0.15, 3.0) == (141, 29)
  assert span.random_spans_helper(512, 0.5, 3.0) == (766, 512)


def _span_cfg(length=625):
  cfg = tiny_config()
  cfg.train.objective, cfg.model.max_seq_len = 'span', length
  return cfg


def test_the_span_shape_fills_the_context():
  """A context of 512 + 114 - 1 gets T5's 512-input shape exactly; every context's prefix-LM
  sequence fits it, with T5's rounding of noise and spans."""
  assert span.span_shape(_span_cfg(625)) == span.SpanShape(568, 85, 28, 512, 114)
  for length in (16, 48, 128, 300):
    s = span.span_shape(_span_cfg(length))
    assert s.inputs + s.targets - 1 <= length
    assert s.noise == round(s.raw * 0.15) and s.spans == round(s.noise / 3)
    assert s.inputs == s.raw - s.noise + s.spans + 1 and s.targets == s.noise + s.spans + 1


def _merge(inputs, targets, sentinels):
  """Puts each sentinel's hidden tokens (from the targets) back in its place in the inputs."""
  hidden, current = {}, None
  for t in targets:
    if t in sentinels:
      current = t
      hidden[current] = []
    elif current is not None:
      hidden[current].append(t)
  out = []
  for t in inputs:
    out.extend(hidden[t] if t in sentinels else [t])
  return out


def test_span_corruption_counts_and_merging_restores_the_window():
  """Per window: exactly round(raw * density) hidden tokens in round(noise / mean) spans, the
  first token kept; row i's input is the window with each span of fold_in(key, i)'s mask made
  one sentinel (top id first), then the end-of-sequence id, as is the target; merging the two by
  sentinel gives the window back; rows get different masks."""
  shape = span.span_shape(_span_cfg(128))
  vocab, eos = 1000, 1
  spans = span.Spans(shape, vocab - 1, eos, 128)
  rng = np.random.default_rng(0)
  raw = jnp.asarray(rng.integers(2, 900, (16, shape.raw)), jnp.int32)
  batch = _span_batch(raw, spans)
  sequence = np.concatenate([np.asarray(batch['inputs']), np.asarray(batch['targets'][:, -1:])], 1)
  sentinels = set(range(vocab - shape.spans, vocab))
  masks = []
  for i in range(16):
    noise = np.asarray(span.noise_mask(jax.random.fold_in(jax.random.PRNGKey(0), i), shape))
    masks.append(noise)
    inputs, targets = sequence[i, :shape.inputs], sequence[i, shape.inputs:]
    expected, sentinel = [], vocab - 1  # row i is corrupted with fold_in(key, i)'s mask
    for j, token in enumerate(np.asarray(raw[i])):
      if not noise[j]:
        expected.append(token)
      elif j == 0 or not noise[j - 1]:
        expected.append(sentinel)
        sentinel -= 1
    assert list(inputs) == expected + [eos]
    assert inputs[-1] == eos and targets[-1] == eos
    assert _merge(list(inputs[:-1]), list(targets[:-1]), sentinels) == list(np.asarray(raw[i]))
    assert [t for t in inputs if t in sentinels] == list(range(vocab - 1, vocab - 1 - shape.spans, -1))
  for noise in masks:
    assert noise.sum() == shape.noise and not noise[0]
    assert (noise[1:] & ~noise[:-1]).sum() == shape.spans
  assert any((a != b).any() for a, b in zip(masks, masks[1:]))
  mask = np.asarray(batch['mask'][0])
  assert (mask[:shape.inputs - 1] == 0).all() and (mask[shape.inputs - 1:] == 1).all()


def test_the_prefix_lm_mask_is_bidirectional_in_the_prefix_and_causal_after():
  """The mask itself, and a model under it: changing a prefix token changes the outputs before
  it; changing a target token changes none before it."""
  from jaxlm.model.attention import prefix_mask
  mask = np.asarray(prefix_mask(jnp.asarray([5]), 9))[0, 0]
  for q in range(9):
    for k in range(9):
      assert mask[q, k] == (k < 5 or k <= q), (q, k)
  model = _model(True)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 61, (1, 16)), jnp.int32)
  out = lambda t: np.asarray(model.logits(model.features(t, prefix=jnp.asarray([10]))[0]))[0]
  before = out(tokens)
  in_prefix = np.abs(out(tokens.at[0, 6].add(1)) - before).max(-1)
  assert (in_prefix[:6] > 1e-6).all()
  in_target = np.abs(out(tokens.at[0, 12].add(1)) - before).max(-1)
  assert (in_target[:12] == 0).all() and (in_target[12:] > 1e-6).all()


@pytest.mark.slow
def test_a_resumed_span_run_repeats_its_losses_and_evaluates(tmp_path):
  """A span-corruption run resumed in a new process logs the same losses for steps 4-6 as
  before; jaxlm.eval scores its targets, the same on every call, without bits per byte."""
  import shutil
  import harness
  fields = {'train.objective': 'span', 'model.max_seq_len': 48, 'train.steps': 6,
            'train.eval_every': 6, 'cpu_devices': 2}
  workdir = _train(tmp_path, 'run', **fields, **{'model.causal': True})
  shutil.rmtree(workdir / 'checkpoints' / '6')
  _train(tmp_path, 'run', resume=True, **fields, **{'model.causal': True})
  by_step: dict[int, list] = {}
  for r in _train_records(workdir):
    by_step.setdefault(r['step'], []).append(r['loss'])
  for step in (4, 5, 6):
    assert len(by_step[step]) == 2 and by_step[step][0] == by_step[step][1], by_step
  results = []
  for _ in range(2):
    result = harness.run_forked(harness.command(f'--workdir={workdir}', module='jaxlm.eval'))
    assert result.returncode == 0, result.stderr[-3000:]
    results.append(json.loads((workdir / 'eval' / '6.json').read_text()))
  assert results[0] == results[1] and 'bits_per_byte' not in results[0]['validation']
  assert results[0]['validation']['loss'] > 0


@pytest.mark.parametrize('length', [1024, 4096])
def test_span_rows_fill_the_context_so_the_presets_loss_chunk_divides_them(length):
  """Span rows are padded to model.max_seq_len (the sequence itself is inputs + targets - 1, 1022
  for 1024): the mask counts the targets alone, the padding after them is id 0 and uncounted,
  and the train and eval steps trace with the GPT-2/Llama presets' loss_chunk of 256."""
  from jaxlm import config as jaxlm_config
  from jaxlm.build import build
  cfg = _span_cfg(length)
  cfg.train.loss_chunk, cfg.train.batch_size, cfg.mesh.data = 256, 2, 1
  for density in (0.15, 0.5):
    cfg.span.noise_density = density
    jaxlm_config.validate(cfg)
    spans = _spans(cfg, 1, 1000)
    shape, used = spans.shape, spans.shape.inputs + spans.shape.targets - 1
    raw = jnp.asarray(np.random.default_rng(0).integers(2, 900, (2, shape.raw)), jnp.int32)
    batch = _span_batch(raw, spans)
    assert batch['inputs'].shape == batch['targets'].shape == batch['mask'].shape == (2, length)
    mask, targets = np.asarray(batch['mask']), np.asarray(batch['targets'])
    assert (mask.sum(1) == shape.targets).all() and (mask[:, used:] == 0).all()
    assert (targets[:, used - 1] == 1).all() and (targets[:, used:] == 0).all()
    built = build(cfg, Vocab(1000 - objectives.reserved_ids(cfg), 1), jax.devices()[:1])
    rows = dict(inputs=raw[:, :-1], targets=raw[:, 1:], mask=jnp.ones_like(raw[:, 1:], jnp.float32))
    # (the train and eval steps raised a reshape TypeError for 1022 positions)
    jax.eval_shape(built.train_step, built.setup.abstract, rows)
    rows.update(index=jnp.zeros((2, 1), jnp.int32), segment_ids=jnp.ones_like(raw[:, 1:]))
    jax.eval_shape(built.eval_step, built.abstract_params, rows)


def test_span_settings_up_to_the_limit_keep_every_row_aligned():
  """At densities up to mean / (mean + 1), for every context length, the shape is what corrupt()
  writes (inputs: kept tokens, a sentinel per span, end-of-sequence; targets: hidden tokens, a
  sentinel per span, end-of-sequence) with a kept token for every span; so each row's input ends
  in end-of-sequence where the fixed loss mask starts and its target where the mask ends (at
  density 0.5 T5's helper trims the targets, which misaligned every row)."""
  eos = 1
  for density, mean in [(0.5, 1.0), (0.5, 3.0), (0.7, 3.0), (0.75, 3.0), (0.15, 3.0)]:
    for length in range(24, 300, 7):
      cfg = _span_cfg(length)
      cfg.span.noise_density, cfg.span.mean_span_length = density, mean
      s = span.span_shape(cfg)
      assert s.inputs == s.raw - s.noise + s.spans + 1 and s.targets == s.noise + s.spans + 1
      assert s.raw - s.noise >= s.spans and s.inputs + s.targets - 1 <= length, (length, s)
    cfg.model.max_seq_len = 24
    spans = _spans(cfg, eos, 1000)
    shape, used = spans.shape, spans.shape.inputs + spans.shape.targets - 1
    raw = jnp.asarray(np.random.default_rng(0).integers(2, 900, (16, shape.raw)), jnp.int32)
    batch = _span_batch(raw, spans)
    inputs, targets = np.asarray(batch['inputs']), np.asarray(batch['targets'])
    assert (inputs[:, shape.inputs - 1] == eos).all(), (density, mean, shape)
    assert (targets[:, used - 1] == eos).all(), (density, mean, shape)


@pytest.mark.parametrize('density,mean,message', [
    (0.8, 1.0, r'span.noise_density=0.8 is above 0.5'),
    (0.8, 3.0, r'span.noise_density=0.8 is above 0.75'),
])
def test_span_densities_past_the_limit_are_refused(density, mean, message):
  from jaxlm import config as jaxlm_config
  from jaxlm.errors import UserError
  cfg = _span_cfg(64)
  cfg.span.noise_density, cfg.span.mean_span_length = density, mean
  with pytest.raises(UserError, match=message):
    jaxlm_config.validate(cfg)


def test_an_lstm_is_refused_span_corruption():
  """An LSTM cannot read the prefix bidirectionally; it used to train plain causal LM silently."""
  from jaxlm import config as jaxlm_config, families
  from jaxlm.errors import UserError
  cfg = _span_cfg(64)
  cfg.model.kind = 'lstm'
  for field in families.TRANSFORMER_FIELDS:
    cfg.model[field] = tiny_default(field)
  with pytest.raises(UserError,
                     match="train.objective='span' reads an input whole and predicts its "
                           "continuation, which model.kind='lstm' cannot; use "
                           r"model.kind='transformer' \(model.causal=True\) or "
                           "model.kind='lstm_seq2seq'"):
    jaxlm_config.validate(cfg)


def tiny_default(field):
  from jaxlm.configs import base
  return base.get_config().model[field]


# The batch transforms of the step, checked directly: which tokens can be selected, which count.

def test_masked_batch_selects_only_real_tokens_of_packed_and_padded_rows():
  """At ratio 1 every selectable token is selected: exactly the tokens inside a segment, inside
  input_mask, and not end-of-sequence; padding (segment 0) and masked-out input never are. The
  targets are the original tokens; unselected inputs are unchanged."""
  from jaxlm.objectives.mlm import masked_batch
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, 50, (4, 20)).astype(np.int32)
  tokens[:, 7] = 2  # an end-of-sequence in every row
  segments = np.ones((4, 20), np.int32)
  segments[0, 12:] = 2
  segments[1, 15:] = 0  # padding at the end of a packed row
  segments[2, :] = 0  # a whole padded row
  input_mask = np.ones((4, 20), np.int32)
  input_mask[3, :5] = 0
  batch = dict(inputs=jnp.asarray(tokens), targets=jnp.asarray(tokens), mask=jnp.ones((4, 20)),
               segment_ids=jnp.asarray(segments), input_mask=jnp.asarray(input_mask))
  spec = mlm.Masking(vocab=50, eos=2, mask_fraction=0.8, random_fraction=0.1)
  out = masked_batch(batch, jax.random.PRNGKey(0), jnp.float32(1.0), jnp.arange(4), spec)
  expected = (segments > 0) & (input_mask > 0) & (tokens != 2)
  np.testing.assert_array_equal(np.asarray(out['mask']), expected.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(out['targets']), tokens)
  inputs = np.asarray(out['inputs'])
  np.testing.assert_array_equal(inputs[~expected], tokens[~expected])
  assert 'input_mask' not in out


def test_spanned_batch_counts_only_whole_windows():
  """A row whose segment_ids end in 0 (the padded end of an evaluation stream) counts nothing;
  a whole window counts exactly its targets."""
  from jaxlm.objectives.span import spanned_batch
  cfg = _span_cfg(48)
  spans = _spans(cfg, 1, 1000)
  raw = np.random.default_rng(1).integers(2, 900, (3, spans.shape.raw)).astype(np.int32)
  segments = np.ones((3, spans.shape.raw - 1), np.int32)
  segments[1, -5:] = 0  # the stream ended inside this window
  batch = dict(inputs=jnp.asarray(raw[:, :-1]), targets=jnp.asarray(raw[:, 1:]),
               mask=jnp.ones(segments.shape), segment_ids=jnp.asarray(segments))
  out = spanned_batch(batch, jax.random.PRNGKey(0), jnp.arange(3), spans)
  counted = np.asarray(out['mask']).sum(1)
  np.testing.assert_array_equal(counted, [spans.shape.targets, 0, spans.shape.targets])


def test_mlm_evaluation_selects_only_tokens_of_weight_one():
  """The masked-LM eval step draws its tokens among the weighted ones only: with half of every
  window weighted 0 (as end-of-document and padding tokens are), the count at ratio 0.9 is
  about 0.9 of the weighted tokens (within 5 sigma), not of all of them (twice as many)."""
  from jaxlm import sharding
  from jaxlm.data import eval_batches
  from jaxlm.mesh import make_mesh
  from jaxlm.state import init_params, model_parts
  from jaxlm.step import make_eval_step
  cfg = tiny_config()
  cfg.train.objective, cfg.model.causal, cfg.mesh.data = 'mlm', False, 1
  cfg.seed, cfg.mlm.eval_ratio = 0, 0.9
  model_cfg = resolve_model(cfg.model, 61)
  mesh = make_mesh(cfg, jax.devices()[:1])
  rules = sharding.rules_from_config(cfg.mesh)
  graphdef, _ = model_parts(model_cfg, mesh, rules)
  params = init_params(model_cfg, jax.random.PRNGKey(0))
  step = jax.jit(make_eval_step(graphdef, mesh, rules, objectives.make(cfg, Vocab(60), 61)))
  n = 8 * 16 * 4 + 1
  tokens = np.random.default_rng(0).integers(0, 60, n).astype(np.int32)
  weights = ((np.arange(n) % 16) < 8).astype(np.float32)
  counted = 0.0
  for batch in eval_batches(tokens, 16, 8, weights=weights, segments=np.ones(n, np.int32)):
    counted += float(step(params, batch)[''][1])
  weighted = weights[:-1].sum()
  assert abs(counted - 0.9 * weighted) < 5 * math.sqrt(weighted * 0.9 * 0.1), (counted, weighted)


def test_prefix_cuts_are_uniform_drawn_per_row_and_mask_only_the_continuation():
  """train.objective='prefix': each row's cut P is uniform over 1..L (its mean within 4 sigma
  over 4000 rows, both ends seen), a function of the key and the row's global index alone; the
  tokens are the row's own, and the mask keeps exactly the continuation's targets (positions
  P - 1 .. L - 1) where the row's own mask had them. Evaluation cuts from the run's seed, the same
  on every call."""
  from jaxlm.objectives import prefix
  L, n = 16, 4000
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 61, (n, L + 1)).astype(np.int32)
  own = (rng.random((n, L)) > 0.1).astype(np.float32)
  batch = dict(inputs=jnp.asarray(tokens[:, :-1]), targets=jnp.asarray(tokens[:, 1:]),
               mask=jnp.asarray(own))
  key = jax.random.PRNGKey(3)
  out = prefix.prefix_batch(batch, key, jnp.arange(n))
  cut = np.asarray(out['prefix'][:, 0])
  assert cut.min() == 1 and cut.max() == L
  mean, sd = (L + 1) / 2, math.sqrt((L * L - 1) / 12 / n)
  assert abs(cut.mean() - mean) < 4 * sd, (cut.mean(), mean)
  np.testing.assert_array_equal(out['inputs'], tokens[:, :-1])
  np.testing.assert_array_equal(out['targets'], tokens[:, 1:])
  continuation = np.arange(L)[None, :] >= cut[:, None] - 1
  np.testing.assert_array_equal(out['mask'], own * continuation)
  rows = jnp.asarray([7, 3])  # the same global rows elsewhere in another batch: the same cuts
  again = prefix.prefix_batch({k: v[jnp.asarray([7, 3])] for k, v in batch.items()}, key, rows)
  np.testing.assert_array_equal(again['prefix'][:, 0], cut[[7, 3]])
  cfg = tiny_config()
  cfg.train.objective = 'prefix'
  objective = objectives.make(cfg, Vocab(61), 64)
  view = dict(batch, index=jnp.arange(n)[:, None])
  first, second = objective.eval_views(view)[''], objective.eval_views(view)['']
  np.testing.assert_array_equal(first['prefix'], second['prefix'])
  assert not np.array_equal(first['prefix'], out['prefix'])  # the run's seed, not the step's key


def test_the_steps_give_a_prefix_lm_its_prefix(objective='span'):
  """The train and eval steps of a prefix LM (a Transformer, span corruption) score its batch
  with the prefix read bidirectionally: their losses equal the model's under prefix_mask, within
  1e-5, and differ from what a causal reading of the same batch gives. (Every prefix LM's batch
  reaches the model through the same step.prefix_of; the encoder-decoder cannot run without it.)"""
  from conftest import random_batch
  from jaxlm import sharding
  from jaxlm.build import build
  from jaxlm.loss import chunked_cross_entropy
  cfg = tiny_config()
  cfg.train.objective, cfg.model.max_seq_len, cfg.optim.lr = objective, 32, 0.0
  cfg.model.init_std = 0.3  # weights large enough for the context to move the loss
  built = build(cfg, Vocab(61), jax.devices()[:1])
  state = built.setup.init()
  length = objectives.window_length(cfg)
  rows = random_batch(8, length, 61, seed=5)
  model = nnx.merge(built.graphdef, state.params)

  def loss(batch, prefix):
    h, _ = model.features(batch['inputs'], prefix=prefix)
    total, _, count = chunked_cross_entropy(model.logits, h, batch['targets'], batch['mask'])
    return float(total / count)

  view = dict(rows, index=np.arange(8, dtype=np.int32)[:, None])
  scored = built.objective.eval_views(jax.tree.map(jnp.asarray, view))['']
  total, count = built.eval_step(state.params, view)['']
  assert float(total / count) == pytest.approx(loss(scored, scored['prefix'][:, 0]), abs=1e-5)
  step_key = jax.random.fold_in(state.rng, state.step)
  made, _ = built.objective.train_batch(jax.tree.map(jnp.asarray, rows), step_key, state.step,
                                        jnp.arange(8))
  expected = loss(made, made['prefix'][:, 0])
  assert abs(loss(made, None) - expected) > 1e-4  # the prefix matters to this batch
  _, metrics = built.train_step(state, jax.device_put(rows, sharding.batch_sharding(
      built.mesh, built.rules)))  # (the state is donated: last)
  assert float(metrics['loss']) == pytest.approx(expected, abs=1e-5)
