"""Masked language modelling (BERT), its masking varying over steps, positions, units and tokens.

A masked-LM batch is made inside the jitted step from a plain batch of token rows: tokens are
selected, and of those `mask_fraction` are replaced by the [MASK] id, `random_fraction` by a
random ordinary token, and the rest kept; the loss counts the selected positions, predicting the
original tokens. Which tokens are selected varies four ways, each composing with the others:

- over the steps: the ratio r follows mlm.ratio_schedule (constant, linear or cosine);
- over positions: mlm.position_profile scales it by a weight w(x) of the token's relative
  position x in 0..1 along its document (x = offset / (length - 1) within the stretch of the
  document in the row): 'uniform' (1), 'linear' (1 + slope (x - 1/2)), or 'buckets' (K w_k /
  sum(w) in the k-th of K equal parts). Each has mean 1 over x, so the expected share of
  selected tokens stays r;
- over tokens: mlm.token_weighting='frequency' scales it by c_t^-alpha / mean(c^-alpha), c_t the
  token's count in the training data (jaxlm.prepare counts them), the mean over the corpus's
  tokens, so frequent tokens are hidden less and the expected share stays r;
- by unit: mlm.unit='token' selects each token with probability p = min(1, r w(x) v(t));
  'word' selects whole words (all of a word's pieces, its probability the mean of its pieces'
  p; words begin where the tokenizer's table says, data/tokenizers.py word_starts); 'span'
  (SpanBERT) selects runs of whole words whose lengths follow the geometric distribution of
  parameter mlm.span_p restricted to 1..mlm.max_span, and 'token_span' runs of tokens.

Spans are a renewal process along each document: at each unit not inside a span, a span starts
with probability h, its length drawn as above, and one unit is always left between two spans (so
every maximal run of selected units is one span, of the drawn length). With mean length E the
share of selected units is hE / (1 + hE), which is r for h = r / (E (1 - r)) (r <= E / (E + 1)).
Each document starts in the process's stationary state, so the share is r from its first unit on.
The process runs as an associative scan of per-position transition tables over the remaining
length of the current span, so it takes log L parallel steps, not L sequential ones.

The draws are a pure function of a key and each row's global index (fold_in(key, index)), so they
do not depend on the mesh, the number of hosts or gradient accumulation, and a resumed run draws
the same masks. Special ids are never selected and never drawn as replacements: the id each
document starts with (the end-of-sequence id, which separates and starts documents) and the
[MASK] id, the first id past the tokenizer's vocabulary. Padding (outside every segment) is never
selected. Token id 0 is an ordinary token. Validation and jaxlm.eval score the tokens selected at
mlm.eval_ratio from the run's seed, token by token and uniformly (mlm.eval_masking='fixed'), the
same tokens for every checkpoint and every training masking, so evaluations compare;
mlm.eval_masking='train' scores them selected as in training, at mlm.eval_ratio.
Shape letters: B batch, L length, S span states (max_span + 1), V vocabulary.
"""

import dataclasses
import math
from typing import NamedTuple

from etils import epy
from ml_collections import ConfigDict

from jaxlm.configs import base
from jaxlm.errors import UserError
from jaxlm.objectives.base import Batch, Objective, Vocab, stream_key

with epy.lazy_imports():
  import jax
  import jax.numpy as jnp
  import numpy as np

UNITS = ('token', 'word', 'span', 'token_span')
SPANS = ('span', 'token_span')


class Masking(NamedTuple):
  """What masking needs to know of the vocabulary; static (hashable) for jit."""
  vocab: int  # the tokenizer's: ids 0..vocab-1; the [MASK] id is `vocab`
  eos: int | None  # the id each document starts with (the end-of-sequence), never selected
  mask_fraction: float
  random_fraction: float

  @property
  def mask_id(self) -> int:
    return self.vocab

  def ordinary(self) -> 'np.ndarray':
    """The ids a random replacement is drawn from: every tokenizer id but the end-of-sequence."""
    ids = np.arange(self.vocab, dtype=np.int32)
    return ids[ids != self.eos] if self.eos is not None else ids


def span_lengths(p: float, longest: int) -> 'np.ndarray':
  """P(length = k) for k = 1..longest: the geometric distribution of parameter p restricted to
  them (SpanBERT's: p=0.2, longest 10, mean 3.8)."""
  k = np.arange(1, longest + 1)
  pmf = p * (1 - p) ** (k - 1)
  return pmf / pmf.sum()


def mean_span(p: float, longest: int) -> float:
  return float((np.arange(1, longest + 1) * span_lengths(p, longest)).sum())


@dataclasses.dataclass(frozen=True, eq=False)
class Selection:
  """Which tokens of a row are selected (see the module docstring); the default is BERT's: each
  token alone, uniformly."""
  unit: str = 'token'
  profile: str = 'uniform'  # over relative positions: 'uniform', 'linear' or 'buckets'
  slope: float = 0.0  # 'linear'
  buckets: tuple[float, ...] = ()  # 'buckets': the weights of equal parts of a document
  span_p: float = 0.2
  max_span: int = 10
  word_starts: 'np.ndarray | None' = None  # bool [V]: the ids that begin a word
  token_weight: 'np.ndarray | None' = None  # float32 [V]: v(t), mean 1 over the corpus

  def position_weight(self, x: 'jax.Array') -> 'jax.Array':
    """w(x) at relative positions x in [0, 1]; its mean over x is 1."""
    if self.profile == 'linear':
      return 1 + self.slope * (x - 0.5)
    if self.profile == 'buckets':
      w = np.asarray(self.buckets, np.float32)
      k = jnp.minimum((x * len(w)).astype(jnp.int32), len(w) - 1)
      return jnp.asarray(w * len(w) / w.sum())[k]
    return jnp.ones_like(x)

  def select(self, key: 'jax.Array', t: 'jax.Array', selectable: 'jax.Array',
             begins: 'jax.Array', ratio: 'jax.Array') -> 'jax.Array':
    """One row: tokens t [L], selectable [L] bool, begins [L] bool (where a document, or the
    row, begins) -> selected [L] bool."""
    L = t.shape[0]
    at = jnp.arange(L)
    first = jax.lax.cummax(jnp.where(begins, at, 0))  # where each position's document begins
    doc = jnp.cumsum(begins) - 1
    length = jax.ops.segment_sum(jnp.ones(L, jnp.int32), doc, L)[doc]
    x = (at - first) / jnp.maximum(length - 1, 1)
    p = ratio * self.position_weight(x)
    if self.token_weight is not None:
      p = p * jnp.asarray(self.token_weight)[t]
    p = jnp.clip(p, 0, 1)
    if self.unit == 'token':
      return selectable & (jax.random.uniform(key, (L,)) < p)
    k_unit, k_start, k_length, k_state = jax.random.split(key, 4)
    # Units: words (each begins at a word-start id or a document's start) or single tokens.
    unit_begins = begins | (True if self.unit == 'token_span' else
                            jnp.asarray(self.word_starts)[t])
    unit = jnp.cumsum(unit_begins) - 1
    # A unit's probability: the mean of its selectable pieces'.
    total = jax.ops.segment_sum(jnp.where(selectable, p, 0), unit, L)
    pieces = jax.ops.segment_sum(selectable.astype(jnp.float32), unit, L)
    p_unit = (total / jnp.maximum(pieces, 1))[unit]
    if self.unit == 'word':
      return selectable & (jax.random.uniform(k_unit, (L,))[unit] < p_unit)
    chosen = self._spans(k_start, k_length, k_state, jnp.where(pieces[unit] > 0, p_unit, 0), p,
                         unit_begins, begins)
    start_of_unit = jax.lax.cummax(jnp.where(unit_begins, at, 0))
    return selectable & chosen[start_of_unit]

  def _spans(self, k_start, k_length, k_state, r, r_here, unit_begins, begins):
    """The renewal process over units (module docstring): [L] bool, meaningful where a unit
    begins. r: each unit's ratio (0: it does not count); r_here: each position's (a document
    starts in the state of its first position's). State s before a position: 0 free, 1 the gap
    after a span, k >= 2 inside a span with k - 1 units of it left."""
    L, S = r.shape[0], self.max_span + 1
    pmf, E = span_lengths(self.span_p, self.max_span), mean_span(self.span_p, self.max_span)
    hazard = lambda r: jnp.clip(r / (E * jnp.maximum(1 - r, 1e-6)), 0, 1)
    h = hazard(r)  # the start probability of a free unit
    q = 1 - self.span_p
    u = jax.random.uniform(k_length, (L,))
    length = jnp.clip(jnp.ceil(jnp.log1p(-u * (1 - q ** self.max_span)) / math.log(q)), 1,
                      self.max_span).astype(jnp.int32)
    # Units with nothing to select (an end-of-sequence id alone, padding, a weight of 0) do not
    # count: a span passes over them.
    ticks = unit_begins & (r > 0)
    starts = ticks & (jax.random.uniform(k_start, (L,)) < h)
    # The stationary state each document starts in: P(0) = 1 / (1 + hE), P(k) = h P(len >= k) P(0).
    survival = jnp.asarray(np.cumsum(pmf[::-1])[::-1], jnp.float32)  # P(len >= k), k = 1..S-1
    h_here = hazard(r_here)
    free = 1 / (1 + h_here * E)
    states = jnp.concatenate([free[:, None], (h_here * free)[:, None] * survival], axis=1)
    initial = jnp.sum(jax.random.uniform(k_state, (L, 1)) > jnp.cumsum(states, 1)[:, :-1], 1)
    s = jnp.arange(S)
    step = lambda state: jnp.where(state > 0, state - 1, jnp.where(starts, length, 0)[:, None])
    restart = jnp.where(ticks, step(initial[:, None])[:, 0], initial)  # at a document's start
    tables = jnp.where(begins[:, None], restart[:, None],
                       jnp.where(ticks[:, None], step(s[None, :]), s[None, :]))
    # Composed left to right: after[i] maps the state before position 0 to the one after i.
    after = jax.lax.associative_scan(lambda a, b: jnp.take_along_axis(b, a, -1), tables)
    state = jnp.where(begins, initial, jnp.concatenate([jnp.zeros(1, jnp.int32),
                                                        after[:-1, 0]]))
    return ticks & ((state > 1) | ((state == 0) & starts))


def document_begins(tokens: 'jax.Array', segments: 'jax.Array', start: int | None) -> 'jax.Array':
  """[B, L] bool: where a document (or its stretch in the row) begins: the row's first position,
  a change of segment id (packed rows, padding), and the id each document starts with."""
  begins = jnp.concatenate([jnp.ones_like(segments[:, :1], bool),
                            segments[:, 1:] != segments[:, :-1]], axis=1)
  return begins | (tokens == start) if start is not None else begins


def mlm_ratio(cfg: ConfigDict, step):
  """The masking ratio at 0-based `step` (int or traced): mlm.ratio_start at step 0,
  mlm.ratio_end at the last step (train.steps - 1), linearly or along a half cosine between."""
  m = cfg.mlm
  if m.ratio_schedule == 'constant':
    return jnp.float32(m.ratio_start)
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(cfg.train.steps - 1, 1), 0, 1)
  if m.ratio_schedule == 'cosine':
    progress = 0.5 * (1 - jnp.cos(math.pi * progress))
  return jnp.float32(m.ratio_start) + (m.ratio_end - m.ratio_start) * progress


def mask_tokens(key: 'jax.Array', tokens: 'jax.Array', valid: 'jax.Array', index: 'jax.Array',
                ratio: 'jax.Array', spec: Masking, selection: Selection = Selection(),
                segments: 'jax.Array | None' = None) -> tuple['jax.Array', 'jax.Array']:
  """tokens [B, L], valid [B, L] (bool: real tokens), index [B] (each row's global index),
  segments [B, L] (packed rows' segment ids; None: one stream) -> (corrupted inputs [B, L],
  selected [B, L] float32: the positions whose original token is the target)."""
  ordinary = jnp.asarray(spec.ordinary())
  segments = jnp.zeros(tokens.shape, jnp.int32) if segments is None else segments
  begins = document_begins(tokens, jnp.where(valid, segments, -1), spec.eos)

  def row(i, t, ok, begin):
    k_select, k_action, k_token = jax.random.split(jax.random.fold_in(key, i), 3)
    selectable = ok & (t != spec.mask_id)
    if spec.eos is not None:
      selectable &= t != spec.eos
    selected = selection.select(k_select, t, selectable, begin, ratio)
    action = jax.random.uniform(k_action, t.shape)
    random = ordinary[jax.random.randint(k_token, t.shape, 0, len(spec.ordinary()))]
    replaced = jnp.where(action < spec.mask_fraction, spec.mask_id,
                         jnp.where(action < spec.mask_fraction + spec.random_fraction, random, t))
    return jnp.where(selected, replaced, t), selected

  inputs, selected = jax.vmap(row)(index, tokens, valid, begins)
  return inputs.astype(tokens.dtype), selected.astype(jnp.float32)


def masked_batch(batch: Batch, key: 'jax.Array', ratio: 'jax.Array', index: 'jax.Array',
                 masking: Masking, selection: Selection = Selection()) -> Batch:
  """A masked-LM batch from rows of tokens (`inputs`; real where `segment_ids` > 0 when packed,
  and where `input_mask` > 0 when given): the corrupted rows as inputs, the original tokens as
  targets, the selected positions as the mask."""
  tokens = batch['inputs']
  valid = jnp.ones(tokens.shape, bool)
  if 'segment_ids' in batch:
    valid &= batch['segment_ids'] > 0
  if 'input_mask' in batch:
    valid &= batch['input_mask'] > 0
  # A stream of its own: the masks do not share bits with dropout's fold_in(rng, step).
  inputs, selected = mask_tokens(stream_key(key, 'mlm'), tokens, valid, index, ratio, masking,
                                 selection, batch.get('segment_ids'))
  out = dict(batch, inputs=inputs, targets=tokens, mask=selected)
  out.pop('input_mask', None)
  out.pop('index', None)
  return out


# Fields read only with another field's value: (that field, the value).
_READ_WITH = {'position_slope': ('position_profile', 'linear'),
              'position_weights': ('position_profile', 'buckets'),
              'span_p': ('unit', SPANS), 'max_span': ('unit', SPANS),
              'frequency_alpha': ('token_weighting', 'frequency')}


def _highest_weight(m: ConfigDict) -> tuple[float, str]:
  """The largest position weight of the profile, and where it falls."""
  if m.position_profile == 'linear':
    return 1 + abs(m.position_slope) / 2, ('the end' if m.position_slope > 0 else 'the start')
  if m.position_profile == 'buckets':
    w = m.position_weights
    return len(w) * max(w) / sum(w), f'bucket {w.index(max(w)) + 1} of {len(w)}'
  return 1.0, 'every position'


class MaskedLM(Objective):
  """BERT's objective on a bidirectional model, masking as mlm.* ask (module docstring)."""
  name = 'mlm'
  section = 'mlm'
  resume_fields = ('ratio_schedule', 'ratio_start', 'ratio_end', 'mask_fraction',
                   'random_fraction', 'position_profile', 'position_slope', 'position_weights',
                   'unit', 'span_p', 'max_span', 'token_weighting', 'frequency_alpha')
  choices = {'mlm.ratio_schedule': ('constant', 'linear', 'cosine'),
             'mlm.position_profile': ('uniform', 'linear', 'buckets'),
             'mlm.unit': UNITS,
             'mlm.token_weighting': ('uniform', 'frequency'),
             'mlm.eval_masking': ('fixed', 'train')}
  ranges = {**{f'mlm.{k}': (lambda v: 0 < v < 1, 'a number in (0, 1)')
               for k in ('ratio_start', 'ratio_end', 'eval_ratio', 'span_p')},
            **{f'mlm.{k}': (lambda v: 0 <= v <= 1, 'a number in [0, 1]')
               for k in ('mask_fraction', 'random_fraction')},
            'mlm.position_slope': (lambda v: -2 <= v <= 2,
                                   'a number in [-2, 2] (the weight 1 + slope (x - 1/2) of a '
                                   'relative position x is never negative)'),
            'mlm.position_weights': (lambda v: all(isinstance(w, (int, float)) and w >= 0
                                                   for w in v),
                                     'a tuple of weights >= 0, e.g. (1, 1, 2)'),
            'mlm.max_span': (lambda v: 1 <= v <= 64, 'a whole number of units in 1..64'),
            'mlm.frequency_alpha': (lambda v: 0 < v <= 2, 'a number in (0, 2]')}
  generates = False
  reads = 'bidirectional'
  every_token = False
  eval_rows = True

  def __init__(self, cfg: ConfigDict, vocab: Vocab, model_vocab: int):
    super().__init__(cfg, vocab, model_vocab)
    self.cfg = cfg  # the ratio schedule reads mlm.* and train.steps
    m = cfg.mlm
    if m.unit in ('word', 'span') and vocab.word_starts is None:
      raise UserError(f"config field mlm.unit={m.unit!r} needs the tokenizer's word starts, "
                      'which this command does not have; use it in a run that reads data.')
    if m.token_weighting == 'frequency' and vocab.frequencies is None:
      raise UserError("config field mlm.token_weighting='frequency' needs the training data's "
                      'token counts, which its preparation lacks (prepared by an older jaxlm); '
                      'run python -m jaxlm.prepare into it again with the same flags (it adds '
                      "them), or set mlm.token_weighting='uniform'.")
    self.masking = Masking(vocab.size, vocab.start, m.mask_fraction, m.random_fraction)
    self.selection = Selection(
        m.unit, m.position_profile, m.position_slope, tuple(m.position_weights), m.span_p,
        m.max_span, _padded(vocab.word_starts, model_vocab, True) if m.unit != 'token' else None,
        _padded(token_weights(vocab.frequencies, m.frequency_alpha), model_vocab, 1.0)
        if m.token_weighting == 'frequency' else None)
    self.eval_ratio = m.eval_ratio
    self.eval_selection = self.selection if m.eval_masking == 'train' else Selection()

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    m, defaults = cfg.mlm, base.get_config().mlm
    if m.mask_fraction + m.random_fraction > 1:
      raise UserError(f'config fields mlm.mask_fraction={m.mask_fraction} and '
                      f'mlm.random_fraction={m.random_fraction} add up to more than 1; the '
                      'rest of the selected tokens is kept unchanged.')
    for field, (other, wanted) in _READ_WITH.items():
      wanted = wanted if isinstance(wanted, tuple) else (wanted,)
      if m[field] != defaults[field] and m[other] not in wanted:
        raise UserError(f'config field mlm.{field}={m[field]!r} is read only with mlm.{other}='
                        + ' or '.join(map(repr, wanted)) + f' (it is {m[other]!r}); set that, '
                        f'or leave mlm.{field} at {defaults[field]!r}.')
    if m.position_profile == 'linear' and m.position_slope == 0:
      raise UserError("config field mlm.position_slope=0 makes mlm.position_profile='linear' "
                      "uniform; give a slope in [-2, 2] (> 0 hides late tokens more), or use "
                      "'uniform'.")
    if m.position_profile == 'buckets' and (len(m.position_weights) < 2 or
                                            not sum(m.position_weights) > 0):
      raise UserError(f'config field mlm.position_weights={tuple(m.position_weights)!r} must '
                      'hold two or more weights >= 0 with a positive sum, one per equal part '
                      "of a document, e.g. (1, 1, 2), for mlm.position_profile='buckets'.")
    if m.unit in SPANS and m.token_weighting == 'frequency':
      raise UserError(f"config field mlm.token_weighting='frequency' weighs single tokens and "
                      f'words, but mlm.unit={m.unit!r} covers whatever follows a span\'s start; '
                      "use mlm.unit='token' or 'word' with it, or token_weighting='uniform'.")
    ratios = {'mlm.ratio_start': m.ratio_start}
    if m.ratio_schedule != 'constant':
      ratios['mlm.ratio_end'] = m.ratio_end
    if m.eval_masking == 'train':
      ratios['mlm.eval_ratio'] = m.eval_ratio
    field, ratio = max(ratios.items(), key=lambda kv: kv[1])
    weight, where = _highest_weight(m)
    limit, why = 1.0, 'above 1'
    if m.unit in SPANS:
      mean = mean_span(m.span_p, m.max_span)
      limit = mean / (mean + 1)
      why = (f'above {limit:.3g}, the most spans of mean length {mean:.3g} can hide with a '
             'unit between two')
    if ratio * weight > limit:
      profile = (f' with mlm.position_profile={m.position_profile!r}'
                 if m.position_profile != 'uniform' else '')
      raise UserError(f'config field {field}={ratio}{profile} asks for a selection probability '
                      f'of {ratio * weight:.3g} at {where}, {why}; lower the ratio'
                      + (' or flatten the profile.' if profile else '.'))

  @classmethod
  def reserved_ids(cls, cfg: ConfigDict) -> int:
    del cfg
    return 1  # the [MASK] id

  def train_batch(self, batch, key, step, rows):
    ratio = mlm_ratio(self.cfg, step)
    out = masked_batch(batch, key, ratio, rows, self.masking, self.selection)
    return out, dict(mask_ratio=ratio)

  def eval_views(self, batch):
    return {'': masked_batch(batch, jax.random.PRNGKey(self.seed), jnp.float32(self.eval_ratio),
                             batch['index'][:, 0], self.masking, self.eval_selection)}

  def report(self, result, text_bytes):
    """The masked tokens' loss at the fixed ratio; bits per byte would need every token."""
    return dict(super().report(result, text_bytes), mask_ratio=self.eval_ratio)


def token_weights(frequencies: 'np.ndarray | None', alpha: float) -> 'np.ndarray | None':
  """v(t) = f_t^-alpha / sum_t f_t f_t^-alpha for the tokens' shares f of the training data (an
  id never seen counts as the rarest seen): mean 1 over the corpus's tokens."""
  if frequencies is None:
    return None
  f = np.asarray(frequencies, np.float64)
  f = np.maximum(f, f[f > 0].min())
  v = f ** -alpha
  return (v / (f / f.sum() * v).sum()).astype(np.float32)


def _padded(table: 'np.ndarray | None', size: int, fill) -> 'np.ndarray | None':
  """A per-id table extended to the model's `size` ids (the reserved ones) with `fill`."""
  if table is None:
    return None
  return np.concatenate([table, np.full(size - len(table), fill, table.dtype)])
