"""Masked LM's masking by position, unit and token (mlm.position_profile, mlm.unit,
mlm.token_weighting): selection rates against what the settings ask, whole words, span lengths,
special ids, documents apart, the same masks on any mesh, evaluation's fixed masking, and the
config's refusals.

Rates are checked with rows as the independent samples (spans and words make neighbouring
tokens' selections dependent): the sum over rows of (selected - expected) against three times
the square root of the sum of its squares."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import config, objectives
from jaxlm.errors import UserError
from jaxlm.objectives import Vocab, mlm
from tiny import tiny_config

V, EOS = 1000, 7
MASK = V  # the [MASK] id, past the tokenizer's
SPEC = mlm.Masking(V, EOS, 0.8, 0.1)
# Ids whose last digit is 0, 1 or 2 begin a word (words of 3.3 tokens on average); so do the
# end-of-sequence and [MASK] ids.
WORD_STARTS = np.arange(V + 1) % 10 < 3
WORD_STARTS[[EOS, MASK]] = True


def documents(rows, length, lengths, seed=0, packed=True, mask_ids=0.002):
  """Rows of documents, each an end-of-sequence id and then random ordinary ids (a few [MASK]
  ids among them, which must never be selected), padded at the end: tokens, segment ids (packed:
  1, 2, ... per document, 0 for padding; else None) and relative positions x of every token in
  its document (-1 in padding)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((rows, length), np.int32)
  segments = np.zeros((rows, length), np.int32)
  x = np.full((rows, length), -1.0)
  for r in range(rows):
    at, doc = 0, 1
    while True:
      n = int(rng.integers(*lengths))
      if at + n > length - 20:  # leave some padding
        break
      ids = rng.integers(0, V, n)
      ids[0] = EOS
      ids[1:][np.isin(ids[1:], [EOS])] = EOS + 1
      ids[1:][rng.random(n - 1) < mask_ids] = MASK
      tokens[r, at:at + n], segments[r, at:at + n] = ids, doc
      x[r, at:at + n] = np.arange(n) / (n - 1)
      at, doc = at + n, doc + 1
  return tokens, (segments if packed else None), x


def draw(selection, tokens, segments, x, ratio, seed=0):
  """mask_tokens, jitted, on rows whose real tokens are where x >= 0."""
  run = jax.jit(lambda t, v, s: mlm.mask_tokens(jax.random.PRNGKey(seed), t, v,
                                                jnp.arange(len(tokens)), jnp.float32(ratio),
                                                SPEC, selection, s))
  inputs, selected = run(jnp.asarray(tokens), jnp.asarray(x >= 0),
                         None if segments is None else jnp.asarray(segments))
  return np.asarray(inputs), np.asarray(selected) > 0


def selectable_of(tokens, x):
  return (x >= 0) & (tokens != EOS) & (tokens != MASK)


def assert_rate(selected, region, expected, what):
  """Over rows: sum(selected - expected) in `region` within 3 of its standard deviation."""
  diff = np.where(region, selected - expected, 0).sum(1)
  total, sigma = diff.sum(), math.sqrt((diff ** 2).sum())
  rate, want = selected[region].mean(), expected[region].mean()
  assert abs(total) <= 3 * sigma, f'{what}: rate {rate:.4f}, asked {want:.4f} ({total:.1f} off, ' \
                                  f'sigma {sigma:.1f})'


def words_of(tokens, x):
  """Each token's word number in its row (words begin at a word-start id or a document)."""
  begins = WORD_STARTS[tokens] | (x == 0) | (x < 0)
  return np.cumsum(begins, 1)


def word_mean(values, words, selectable):
  """Each token's word's mean of `values` over its selectable pieces."""
  out = np.zeros_like(values)
  for r in range(len(values)):
    sums = np.bincount(words[r], np.where(selectable[r], values[r], 0))
    counts = np.bincount(words[r], selectable[r])
    out[r] = (sums / np.maximum(counts, 1))[words[r]]
  return out


PROFILES = {'uniform': dict(profile='uniform'), 'linear': dict(profile='linear', slope=1.6),
            'buckets': dict(profile='buckets', buckets=(1.0, 0.0, 2.0, 1.0))}


def expected_weight(name, x):
  """The profile's weight at relative positions x, from its definition."""
  if name == 'uniform':
    return np.ones_like(x)
  if name == 'linear':
    return 1 + 1.6 * (x - 0.5)
  w = np.array(PROFILES['buckets']['buckets'])
  return (w * len(w) / w.sum())[np.minimum((x * len(w)).astype(int), len(w) - 1)]


@pytest.mark.parametrize('unit,profile,packed', [('token', 'linear', True),
                                                  ('word', 'buckets', True),
                                                  ('span', 'uniform', True),
                                                  ('span', 'linear', False),
                                                  ('token_span', 'buckets', False)])
def test_position_profiles_hide_each_part_of_each_document_as_asked(unit, profile, packed):
  """Documents packed into rows (segment ids) or joined in one stream (each starts with the
  end-of-sequence id): the selection rate in each fifth of a document's relative positions,
  and overall, is the ratio times the profile's weight there (a word's: its pieces' mean), and
  the profile keeps the expected share at the ratio. Spans without a profile run over short
  documents (each starts in the stationary state, so its first fifth is hidden as much as the
  rest), with one over long ones (a profile reaches a span's units about half a span late)."""
  ratio = 0.2
  lengths = (20, 60) if unit == 'span' and packed else (40, 400) if packed else (900, 1100)
  tokens, segments, x = documents(64, 2048, lengths, packed=packed)
  selection = mlm.Selection(unit, word_starts=WORD_STARTS, **PROFILES[profile])
  _, selected = draw(selection, tokens, segments, x, ratio)
  selectable = selectable_of(tokens, x)
  assert not selected[~selectable].any()
  expected = ratio * expected_weight(profile, x)
  if unit == 'word':
    expected = word_mean(expected, words_of(tokens, x), selectable)
  expected = np.where(selectable, expected, 0)
  assert abs(expected[selectable].mean() / ratio - 1) < 0.02  # the profile's mean is 1
  for part in range(5):
    region = selectable & (x >= part / 5) & (x < (part + 1) / 5 + (part == 4))
    assert_rate(selected, region, expected, f'part {part + 1} of 5')
  assert_rate(selected, selectable, expected, 'overall')


@pytest.mark.parametrize('unit', ['token', 'word'])
def test_frequency_weighting_hides_tokens_by_their_counts(unit):
  """Tokens drawn with Zipf frequencies f (1/rank): with mlm.token_weighting='frequency' and
  alpha 0.5 a token is selected with probability ratio f^-0.5 / sum(f^0.5) (computed here from
  the definition), in each frequency decile and overall; the overall share is the ratio."""
  ratio, alpha = 0.15, 0.5
  f = 1 / np.arange(1, V + 1)
  f[EOS] = 0  # an id never seen counts as the rarest seen
  f /= f.sum()
  rng = np.random.default_rng(4)
  tokens, segments, x = documents(64, 2048, (100, 400))
  ordinary = ~np.isin(tokens, [EOS, MASK]) & (x >= 0)
  tokens[ordinary] = rng.choice(V, ordinary.sum(), p=f)
  selection = mlm.Selection(unit, word_starts=WORD_STARTS,
                            token_weight=mlm._padded(mlm.token_weights(f, alpha), V + 1, 1.0))
  _, selected = draw(selection, tokens, segments, x, ratio)
  seen = np.where(f > 0, f, f[f > 0].min())
  v = seen ** -alpha / (f * seen ** -alpha).sum()
  expected = ratio * np.append(v, 1.0)[tokens]
  selectable = selectable_of(tokens, x)
  assert expected.max() < 1  # no probability is capped here
  if unit == 'word':
    expected = word_mean(expected, words_of(tokens, x), selectable)
  expected = np.where(selectable, expected, 0)
  rank = np.argsort(np.argsort(-f))[np.minimum(tokens, V - 1)]
  for decile in range(10):
    region = selectable & (rank >= decile * 100) & (rank < (decile + 1) * 100)
    if region.sum() > 1000:
      assert_rate(selected, region, expected, f'frequency decile {decile + 1}')
  assert_rate(selected, selectable, expected, 'overall')
  assert abs(selected[selectable].mean() / ratio - 1) < 0.05


@pytest.mark.parametrize('unit', mlm.UNITS)
def test_units_select_whole_words_and_never_special_ids(unit):
  """At a high ratio: end-of-sequence, [MASK] and padding are never selected in any unit; with
  words (word, span) every word is selected whole or not at all."""
  tokens, segments, x = documents(16, 1024, (30, 300), seed=2)
  _, selected = draw(mlm.Selection(unit, word_starts=WORD_STARTS), tokens, segments, x, 0.6)
  selectable = selectable_of(tokens, x)
  assert not selected[~selectable].any()
  assert 0.5 < selected[selectable].mean() < 0.7
  if unit in ('word', 'span'):
    words = words_of(tokens, x)
    for r in range(len(tokens)):
      chosen = np.bincount(words[r], selected[r] & selectable[r])
      pieces = np.bincount(words[r], selectable[r])
      assert ((chosen == 0) | (chosen == pieces)).all(), r


@pytest.mark.parametrize('unit', ['span', 'token_span'])
def test_span_lengths_follow_the_restricted_geometric_distribution(unit):
  """Maximal runs of selected units (words for 'span', tokens for 'token_span') inside long
  documents have the lengths of the geometric distribution of parameter 0.2 restricted to
  1..10 (SpanBERT's, mean 3.8): each length's count within 3 sigma."""
  tokens, segments, x = documents(64, 2048, (1500, 2000), seed=5, mask_ids=0)
  _, selected = draw(mlm.Selection(unit, word_starts=WORD_STARTS), tokens, segments, x, 0.15)
  begins = (x <= 0) | (WORD_STARTS[tokens] if unit == 'span' else True)
  runs = []
  for r in range(len(tokens)):
    unit_of = np.cumsum(begins[r]) - 1  # each token's unit
    chosen = np.bincount(unit_of, selected[r]) > 0
    edge = np.bincount(unit_of, x[r] <= 0) > 0  # a unit that holds a document's start, or padding
    bounds = np.flatnonzero(np.diff(np.concatenate([[0], chosen, [0]])))
    for a, b in zip(bounds[::2], bounds[1::2]):  # a run of chosen units a..b-1
      if 0 < a and not edge[a - 1:a + 1].any() and b < len(chosen) and not edge[b]:
        runs.append(b - a)
  runs = np.asarray(runs)
  assert len(runs) > 1000 and runs.max() <= 10
  pmf = mlm.span_lengths(0.2, 10)
  for k in range(1, 11):
    count, n, p = (runs == k).sum(), len(runs), pmf[k - 1]
    assert abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p)), (k, count, n * p)
  assert runs.mean() == pytest.approx(3.80, abs=0.15)


def _objective(**mlm_fields):
  cfg = tiny_config()
  cfg.train.objective, cfg.model.causal, cfg.model.max_seq_len = 'mlm', False, 64
  for k, v in mlm_fields.items():
    cfg.mlm[k] = v
  config.validate(cfg)
  rng = np.random.default_rng(0)
  frequencies = rng.random(60) + 0.01
  vocab = Vocab(60, 2, 2, rng.random(60) < 0.3, frequencies / frequencies.sum())
  return objectives.make(cfg, vocab, 64)


@pytest.mark.parametrize('fields', [
    dict(unit='span', position_profile='linear', position_slope=-1.0),
    dict(unit='word', position_profile='buckets', position_weights=(2, 1, 0.5),
         token_weighting='frequency')])
def test_masks_are_the_same_on_any_mesh_and_follow_the_rows_index(fields):
  """objective.train_batch on rows sharded over 4 devices equals one device's, bit for bit; rows
  reordered with their global indices come out reordered."""
  objective = _objective(**fields)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 60, (8, 64)).astype(np.int32)
  tokens[:, ::23] = 2
  batch = dict(inputs=tokens, targets=tokens, mask=np.ones((8, 64), np.float32))
  rows = np.arange(40, 48)
  key = jax.random.fold_in(jax.random.PRNGKey(0), 3)
  step = jax.jit(lambda b, r: objective.train_batch(b, key, jnp.int32(3), r)[0])
  one = step(jax.device_put(batch, jax.devices()[0]), rows)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ('data',))
  rows_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  four = step(jax.device_put(batch, rows_sharding), jax.device_put(rows, rows_sharding))
  for name in ('inputs', 'mask'):
    np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(four[name]))
  assert 0 < np.asarray(one['mask']).mean() < 0.5
  order = np.array([5, 2, 7, 0, 1, 6, 3, 4])
  shuffled = step({k: v[order] for k, v in batch.items()}, rows[order])
  np.testing.assert_array_equal(np.asarray(shuffled['mask']), np.asarray(one['mask'])[order])


def test_evaluation_masks_tokens_alike_whatever_the_training_masking():
  """mlm.eval_masking='fixed' (the default): the validation batch of a run trained with spans,
  a profile and frequency weights selects exactly the tokens a default run's does; 'train'
  selects them as training does (whole words: every word whole)."""
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 60, (8, 64)).astype(np.int32)
  batch = dict(inputs=tokens, targets=tokens, mask=np.ones((8, 64), np.float32),
               index=np.arange(8)[:, None] + np.zeros((8, 2), np.int32))
  plain = _objective().eval_views(batch)['']['mask']
  trained = dict(unit='word', position_profile='linear', position_slope=1.0,
                 token_weighting='frequency')
  fixed = _objective(**trained).eval_views(batch)['']['mask']
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(fixed))
  as_trained = _objective(**trained, eval_masking='train')
  words = as_trained.eval_views(batch)['']['mask']
  assert (np.asarray(words) != np.asarray(plain)).any()
  table = np.asarray(as_trained.selection.word_starts)[tokens] | (tokens == 2)
  word = np.cumsum(table | (np.arange(64) == 0), 1)
  for r in range(8):
    chosen = np.bincount(word[r], np.asarray(words)[r])
    pieces = np.bincount(word[r], tokens[r] != 2)
    assert ((chosen == 0) | (chosen == pieces)).all()


@pytest.mark.parametrize('fields,message', [
    (dict(position_profile='steep'), r"mlm.position_profile='steep' .* one of 'uniform'"),
    (dict(unit='sentence'), r"mlm.unit='sentence' .* one of 'token', 'word', 'span'"),
    (dict(position_profile='linear', position_slope=2.5), r'position_slope=2.5 .*\[-2, 2\]'),
    (dict(position_profile='linear', position_slope=1.5, ratio_start=0.6),
     r'ratio_start=0.6 .* probability of 1.05 at the end, above 1'),
    (dict(position_profile='linear', position_slope=0.0), r'position_slope=0 makes .* uniform'),
    (dict(position_profile='buckets', position_weights=(0, 0)), r'positive sum'),
    (dict(position_profile='buckets', position_weights=(1, -1)), r'weights >= 0'),
    (dict(position_weights=(1, 2)), r"read only with mlm.position_profile='buckets'"),
    (dict(unit='span', ratio_start=0.5, ratio_end=0.8, ratio_schedule='linear'),
     r'ratio_end=0.8 .* above 0.792, the most spans'),
    (dict(span_p=0.3), r"read only with mlm.unit='span' or 'token_span'"),
    (dict(unit='span', token_weighting='frequency'), r'covers whatever follows'),
    (dict(token_weighting='frequency', frequency_alpha=0.0), r'frequency_alpha=0.0 .*\(0, 2\]'),
    (dict(frequency_alpha=1.0), r"read only with mlm.token_weighting='frequency'"),
])
def test_bad_masking_settings_are_one_sentence(fields, message):
  cfg = tiny_config()
  cfg.train.objective, cfg.model.causal = 'mlm', False
  for k, v in fields.items():
    cfg.mlm[k] = v
  with pytest.raises(UserError, match=message) as e:
    config.validate(cfg)
  assert str(e.value).count('; ') <= 2 and str(e.value).endswith('.')


def test_frequency_weighting_needs_counts_and_words_need_a_tokenizer():
  cfg = tiny_config()
  cfg.train.objective, cfg.model.causal, cfg.mlm.token_weighting = 'mlm', False, 'frequency'
  with pytest.raises(UserError, match="token_weighting='frequency' needs the training data's "
                                      'token counts'):
    objectives.make(cfg, Vocab(60, 2, 2, np.ones(60, bool)), 64)
  cfg.mlm.token_weighting, cfg.mlm.unit = 'uniform', 'word'
  with pytest.raises(UserError, match="mlm.unit='word' needs the tokenizer's word starts"):
    objectives.make(cfg, Vocab(60, 2, 2), 64)


def test_a_run_saved_before_these_settings_is_read_with_their_defaults(tmp_path):
  """jaxlm.eval on a checkpoint whose saved config predates mlm.unit and the rest: its reader
  config has them at their defaults (BERT's masking), and its objective builds."""
  from jaxlm.restore import reader_config
  saved = tiny_config().to_dict()
  saved['train']['objective'], saved['model']['causal'] = 'mlm', False
  for field in ('unit', 'position_profile', 'position_weights', 'token_weighting',
                'eval_masking'):
    del saved['mlm'][field]
  cfg = reader_config(saved, tmp_path)
  assert (cfg.mlm.unit, cfg.mlm.position_profile, cfg.mlm.token_weighting) == (
      'token', 'uniform', 'uniform')
  assert objectives.make(cfg, Vocab(60, 2, 2), 64).selection.unit == 'token'
