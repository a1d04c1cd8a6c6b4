"""Fill-in-the-middle (objectives/fim.py), the objective added through the registry alone: the
rows it makes, how often, what evaluation scores, the settings it refuses, and a run that is
killed, resumes bit for bit and is evaluated."""

import json
import math
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import harness
from jaxlm import config as jaxlm_config
from jaxlm.errors import UserError
from jaxlm.objectives import Vocab, fim, make
from tiny import tiny_config

V = 50  # the tokenizer's ids; <PRE>, <SUF>, <MID> are 50, 51, 52
PRE, SUF, MID = V, V + 1, V + 2


def _objective(rate=0.5, seed=0):
  cfg = tiny_config()
  cfg.train.objective, cfg.fim.rate, cfg.seed = 'fim', rate, seed
  return make(cfg, Vocab(V), 56)


def _rows(n_rows, length, seed=0):
  """Rows of data as the pipeline gives them: L inputs and L targets of L + 1 tokens."""
  raw = np.random.default_rng(seed).integers(0, V, (n_rows, length + 1)).astype(np.int32)
  return raw, dict(inputs=jnp.asarray(raw[:, :-1]), targets=jnp.asarray(raw[:, 1:]),
                   mask=jnp.ones((n_rows, length), jnp.float32))


def _parts(row):
  """A PSM row -> (prefix, suffix, middle), asserting its sentinels are where PSM puts them."""
  row = list(row)
  assert row[0] == PRE and row.count(PRE) == row.count(SUF) == row.count(MID) == 1, row
  s, m = row.index(SUF), row.index(MID)
  assert s < m
  return row[1:s], row[s + 1:m], row[m + 1:]


def test_fim_rows_reorder_the_window_around_two_uniform_cuts():
  """At rate 1 every row of L + 1 tokens becomes <PRE> prefix <SUF> suffix <MID> middle of its
  first L - 2 tokens: prefix + middle + suffix is that text, inputs and targets are the row
  shifted by one, every position counts. The middle's mean length is that of two uniform cuts,
  n (n + 2) / (3 (n + 1)) for n tokens, within 4 sigma over 2000 rows."""
  L, n_rows = 24, 2000
  raw, batch = _rows(n_rows, L)
  out, _ = _objective(rate=1.0).train_batch(batch, jax.random.PRNGKey(3), jnp.int32(0),
                                            jnp.arange(n_rows))
  inputs, targets = np.asarray(out['inputs']), np.asarray(out['targets'])
  np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
  assert (np.asarray(out['mask']) == 1).all()
  n = L - 2
  lengths = []
  for i in range(n_rows):
    row = np.concatenate([inputs[i], targets[i, -1:]])
    prefix, suffix, middle = _parts(row)
    assert prefix + middle + suffix == list(raw[i, :n]), i
    lengths.append(len(middle))
  expected = n * (n + 2) / (3 * (n + 1))
  sigma = np.std(lengths) / math.sqrt(n_rows)
  assert abs(np.mean(lengths) - expected) < 4 * sigma, (np.mean(lengths), expected)
  assert min(lengths) == 0 and max(lengths) == n  # both extremes occur: cuts span [0, n]


def test_fim_reorders_a_rate_of_the_rows_drawn_per_row_index():
  """At rate 0.3, about 30% of 4000 rows are reordered (within 4 sigma); the others are exactly
  the rows given. Each row's draw depends on its global index alone: the same rows in another
  order, with their indices, come out the same."""
  L, n_rows, rate = 16, 4000, 0.3
  raw, batch = _rows(n_rows, L, seed=1)
  objective = _objective(rate=rate)
  key = jax.random.PRNGKey(5)
  out, _ = objective.train_batch(batch, key, jnp.int32(0), jnp.arange(n_rows))
  rows = np.concatenate([np.asarray(out['inputs']), np.asarray(out['targets'])[:, -1:]], 1)
  reordered = rows[:, 0] == PRE
  expected = rate * n_rows
  assert abs(reordered.sum() - expected) < 4 * math.sqrt(n_rows * rate * (1 - rate))
  np.testing.assert_array_equal(rows[~reordered], raw[~reordered])
  assert not np.isin(rows[~reordered], [PRE, SUF, MID]).any()
  order = np.random.default_rng(0).permutation(n_rows)
  shuffled = {k: v[order] for k, v in batch.items()}
  again, _ = objective.train_batch(shuffled, key, jnp.int32(0), jnp.arange(n_rows)[order])
  np.testing.assert_array_equal(np.asarray(again['inputs']), np.asarray(out['inputs'])[order])


def test_fim_evaluation_scores_every_token_and_the_middles_of_whole_windows():
  """The '' view is the rows as given (every weighted token, left to right, as a causal run's
  evaluation); the 'fim' view reorders every whole window with cuts from the run's seed and
  counts exactly its middle tokens; a window the stream ended inside counts nothing."""
  L, n_rows = 20, 6
  raw, batch = _rows(n_rows, L, seed=2)
  batch['mask'] = batch['mask'].at[5, 12:].set(0)
  segments = np.ones((n_rows, L), np.int32)
  segments[5, 12:] = 0  # the end of the stream, inside the last window
  batch.update(segment_ids=jnp.asarray(segments), input_mask=batch['mask'],
               index=jnp.arange(n_rows, dtype=jnp.int32)[:, None] + 100)
  views = _objective(rate=0.5).eval_views(batch)
  assert set(views) == {'', 'fim'}
  for k in ('inputs', 'targets', 'mask'):
    np.testing.assert_array_equal(np.asarray(views[''][k]), np.asarray(batch[k]))
  assert set(views['']) == {'inputs', 'targets', 'mask'}
  again = _objective(rate=0.5).eval_views(batch)['fim']  # the same cuts on every call
  np.testing.assert_array_equal(np.asarray(again['inputs']), np.asarray(views['fim']['inputs']))
  view = views['fim']
  mask = np.asarray(view['mask'])
  for i in range(n_rows):
    row = np.concatenate([np.asarray(view['inputs'][i]), np.asarray(view['targets'][i, -1:])])
    _, _, middle = _parts(row)  # every row reordered, whatever fim.rate
    if i == 5:
      assert mask[i].sum() == 0
      continue
    assert mask[i].sum() == len(middle), i
    counted = np.asarray(view['targets'][i])[mask[i] > 0]
    assert list(counted) == middle


@pytest.mark.parametrize('fields,message', [
    ({'data.packing': 'pack'}, "set data.packing='concat'"),
    ({'model.causal': False}, "train.objective='fim' predicts each token from those before it, "
                              "which model.kind='transformer' with model.causal=False cannot"),
    ({'fim.rate': 0.0}, 'config field fim.rate=0.0 is invalid: expected a number in (0, 1]'),
    ({'fim.rate': 1.5}, 'config field fim.rate=1.5 is invalid'),
    ({'model.max_seq_len': 3}, 'leaves no token to reorder'),
])
def test_fim_settings_it_cannot_train_are_refused(fields, message):
  cfg = tiny_config()
  cfg.train.objective = 'fim'
  for field, value in fields.items():
    section, name = field.split('.')
    cfg[section][name] = value
  with pytest.raises(UserError) as e:
    jaxlm_config.validate(cfg)
  assert message in str(e.value)


FIELDS = {'train.objective': 'fim', 'fim.rate': 0.5, 'model.max_seq_len': 24, 'train.steps': 6,
          'checkpoint.every': 2, 'train.eval_every': 6, 'train.sample_tokens': 0,
          'train.eval_batches': 0, 'optim.decay_steps': 6, 'model.dropout': 0.1,
          'cpu_devices': 2}


@pytest.mark.slow
def test_a_fim_run_killed_resumes_bit_for_bit_and_evaluates(tmp_path, corpus_file):
  """A FIM run killed with SIGKILL after step 3 and run again logs, for every step, the losses of
  an uninterrupted run, bit for bit; its validation logs fim_loss; jaxlm.eval reports the
  left-to-right loss with bits per byte and the middles' loss, the same on two calls."""
  cfg = harness.write_config(tmp_path / 'fim.py', **FIELDS, **{'data.corpus': str(corpus_file)})
  ref = harness.run_forked(harness.command(f'--config={cfg}',
                                           f'--config.workdir={tmp_path / "ref"}'))
  assert ref.returncode == 0, ref.stderr[-3000:]
  expected = {step: v[-1] for step, v in harness.logged_losses(tmp_path / 'ref').items()}
  assert sorted(expected) == list(range(1, 7))
  work = tmp_path / 'killed'
  cmd = harness.command(f'--config={cfg}', f'--config.workdir={work}')
  log = tmp_path / 'killed.log'
  p = harness.start(cmd, log)
  saved = lambda: harness.last_step(work) >= 3 and (work / 'checkpoints' / '2').is_dir()
  harness.wait_until(saved, p, log=log)  # past a committed checkpoint, before the end
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert harness.last_step(work) < 6
  result = harness.run_forked(cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step' in result.stdout + result.stderr
  got = harness.logged_losses(work)
  assert sorted(got) == sorted(expected)
  for step, values in got.items():
    assert all(v == expected[step] for v in values), (step, values, expected[step])
  records = map(json.loads, (work / 'metrics.jsonl').read_text().splitlines())
  val = [r for r in records if r.get('split') == 'val'][-1]
  assert val['fim_loss'] > 0 and val['fim_tokens'] > 0
  results = []
  for _ in range(2):
    out = harness.run_forked(harness.command(f'--workdir={work}', module='jaxlm.eval'))
    assert out.returncode == 0, out.stderr[-3000:]
    results.append(json.loads((work / 'eval' / '6.json').read_text())['validation'])
  assert results[0] == results[1]
  r = results[0]
  assert r['bits_per_byte'] > 0 and r['fim_loss'] > 0 and 0 < r['fim_tokens'] < r['tokens']
  assert r['loss'] == pytest.approx(val['loss'], rel=1e-5)  # validation scored the same split
