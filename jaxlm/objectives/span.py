"""T5's span corruption as a prefix LM.

A window of raw tokens loses span.noise_density of them in spans of mean length
span.mean_span_length; the input keeps the rest with one sentinel id in place of each span, the
target is each sentinel followed by the tokens it hid. For a decoder-only model it is a prefix LM:
the input is a bidirectional prefix, the target is predicted causally after it. The sentinels are
the model's top ids; the corruption is drawn inside the step from fold_in(seed, step) and each
row's global index, and for evaluation from the run's seed.
Shape letters: B batch, L length.
"""

import functools
from typing import NamedTuple

from etils import epy
from ml_collections import ConfigDict

from jaxlm.errors import UserError
from jaxlm.objectives.base import Batch, Objective, Vocab, stream_key, windows

with epy.lazy_imports():
  import jax
  import jax.numpy as jnp


# Span corruption (T5): a window of raw tokens loses noise_density of them in spans of mean length
# mean_span_length; the input keeps the rest with one sentinel id in place of each span, the target
# is each sentinel followed by the tokens it hid. For a decoder-only model it is a prefix LM: the
# input is a bidirectional prefix, the target is predicted causally after it.


def random_spans_helper(inputs_length: int, noise_density: float,
                        mean_noise_span_length: float) -> tuple[int, int]:
  """T5's random_spans_helper (one sentinel per span in inputs and targets, and an end-of-sequence
  id on each): the raw window length whose corrupted inputs fill `inputs_length`, and the length
  of its targets. E.g. (512, 0.15, 3.0) -> (568, 114)."""
  def lengths(tokens: int) -> tuple[int, int]:
    noise = int(round(tokens * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    return tokens - noise + spans + 1, noise + spans + 1

  tokens = inputs_length - 1
  while lengths(tokens + 1)[0] <= inputs_length:
    tokens += 1
  inputs, targets = lengths(tokens)
  if noise_density == 0.5 and targets > inputs:  # T5's: targets as long as the inputs
    tokens, targets = tokens - 1, targets - 1
  return tokens, targets


class SpanShape(NamedTuple):
  """The static shapes of span corruption for a context of `length` tokens."""
  raw: int  # raw tokens per window (what the data pipeline reads)
  noise: int  # of which hidden
  spans: int  # in this many spans, each a sentinel id
  inputs: int  # corrupted input: raw - noise + spans + 1 (end-of-sequence)
  targets: int  # noise + spans + 1
  # The model reads inputs + targets - 1 <= length tokens (the last target is only predicted).


def span_shape(cfg: ConfigDict) -> SpanShape:
  """The longest inputs whose prefix-LM sequence fits model.max_seq_len."""
  return _span_shape(cfg.model.max_seq_len, cfg.span.noise_density, cfg.span.mean_span_length)


@functools.lru_cache(maxsize=None)
def _span_shape(length: int, density: float, mean: float) -> SpanShape:
  for inputs in range(length, 1, -1):
    raw, _ = random_spans_helper(inputs, density, mean)
    noise = int(round(raw * density))
    spans = int(round(noise / mean))
    # The lengths corrupt() writes for this window (T5's helper trims its targets at density 0.5).
    shape = SpanShape(raw, noise, spans, raw - noise + spans + 1, noise + spans + 1)
    # Every hidden span needs a kept token before it (noise_mask starts with a kept one).
    whole = noise >= 1 and spans >= 1 and raw - noise >= spans
    if shape.inputs + shape.targets - 1 <= length and whole:
      return shape
  raise UserError(f'config field model.max_seq_len={length} is too short for span corruption '
                  f'with span.noise_density={density} and span.mean_span_length={mean}: no window '
                  'hides a whole span; lengthen the context.')


def noise_mask(key: 'jax.Array', shape: SpanShape) -> 'jax.Array':
  """T5's random_spans_noise_mask for one window: [raw] bool, True where a token is hidden. The
  window alternates kept and hidden spans, starting with a kept one; the lengths of each kind
  are a random composition of their total into `spans` positive parts."""
  k_noise, k_kept = jax.random.split(key)

  def segment_lengths(k, items: int) -> 'jax.Array':
    first = jnp.arange(items - 1) < shape.spans - 1  # spans - 1 segment starts among items - 1
    first = jnp.concatenate([jnp.zeros(1, jnp.int32),
                             jax.random.permutation(k, first).astype(jnp.int32)])
    return jax.ops.segment_sum(jnp.ones(items, jnp.int32), jnp.cumsum(first),
                               num_segments=shape.spans)

  hidden = segment_lengths(k_noise, shape.noise)
  kept = segment_lengths(k_kept, shape.raw - shape.noise)
  starts = jnp.cumsum(jnp.stack([kept, hidden], axis=1).reshape(-1))[:-1]
  indicator = jnp.zeros(shape.raw, jnp.int32).at[starts].add(1)
  return jnp.cumsum(indicator) % 2 == 1


def corrupt(raw: 'jax.Array', noise: 'jax.Array', sentinel_top: int, eos: int,
            length: int) -> 'jax.Array':
  """T5's noise_span_to_unique_sentinel and the end-of-sequence id, for one window: the tokens
  where `noise` is False, each noise span replaced by one sentinel (sentinel_top, sentinel_top - 1,
  ... in order), then eos, left-aligned in `length` slots (the rest 0)."""
  starts = noise & ~jnp.concatenate([jnp.zeros(1, bool), noise[:-1]])
  sentinel = sentinel_top + 1 - jnp.cumsum(starts)
  token = jnp.where(starts, sentinel, raw)
  keep = ~noise | starts
  slot = jnp.where(keep, jnp.cumsum(keep) - 1, length)  # dropped tokens go out of range
  out = jnp.zeros(length + 1, raw.dtype).at[slot].set(token, mode='drop')
  return out.at[keep.sum()].set(eos)[:length]


class Spans(NamedTuple):
  """Span corruption's static settings: the shapes, and the ids it writes."""
  shape: SpanShape
  sentinel_top: int  # the first span's sentinel: the model's last id (then one less per span)
  eos: int  # ends the input and the target
  length: int  # the model's context (model.max_seq_len): rows are padded to it


def span_batch(key: 'jax.Array', raw: 'jax.Array', index: 'jax.Array',
               spans: Spans) -> dict[str, 'jax.Array']:
  """Raw windows [B, raw] -> a prefix-LM batch of L = spans.length positions: `inputs`
  (corrupted input, then the target but its last token), `targets` (the next token), `mask` (1 on
  the target positions: from the input's end-of-sequence on), `prefix` [B, 1] (the input length:
  attention is bidirectional before it, causal after). The sequence holds inputs + targets - 1
  <= L positions; the rest is padding (id 0, mask 0, after everything, so no real position
  attends to it), which keeps L the context that train.loss_chunk divides."""
  shape = spans.shape

  def one(i, window):
    noise = noise_mask(jax.random.fold_in(key, i), shape)
    inputs = corrupt(window, noise, spans.sentinel_top, spans.eos, shape.inputs)
    targets = corrupt(window, ~noise, spans.sentinel_top, spans.eos, shape.targets)
    return jnp.concatenate([inputs, targets])

  sequence = jax.vmap(one)(index, raw)  # [B, inputs + targets]
  L, used = spans.length, shape.inputs + shape.targets - 1
  sequence = jnp.pad(sequence, ((0, 0), (0, L - used)))  # [B, L + 1]
  position = jnp.arange(L)
  mask = ((position >= shape.inputs - 1) & (position < used)).astype(jnp.float32)
  B = raw.shape[0]
  return dict(inputs=sequence[:, :-1], targets=sequence[:, 1:],
              mask=jnp.broadcast_to(mask, (B, L)),
              prefix=jnp.full((B, 1), shape.inputs, jnp.int32))


def spanned_batch(batch: Batch, key: 'jax.Array', index: 'jax.Array', spans: Spans) -> Batch:
  """A prefix-LM batch of span corruption from rows of raw windows (`inputs` and the last of
  `targets`). A row that is not a whole window (the padded end of an evaluation stream, whose
  `segment_ids` end in 0) counts for nothing."""
  out = span_batch(stream_key(key, 'span'), windows(batch), index, spans)
  if 'segment_ids' in batch:
    out['mask'] = out['mask'] * (batch['segment_ids'][:, -1:] > 0)
  return out


class SpanCorruption(Objective):
  """T5's span corruption, the corrupted window a bidirectional prefix of a causal model."""
  name = 'span'
  section = 'span'
  resume_fields = ('noise_density', 'mean_span_length')
  ranges = {'span.noise_density': (lambda v: 0 < v < 1, 'a number in (0, 1)'),
            'span.mean_span_length': (lambda v: v >= 1, 'a number >= 1')}
  reads = 'prefix'
  prefix_lm = True
  eval_rows = True
  every_token = False  # the targets' loss (sentinels, hidden spans, end-of-sequence)

  def __init__(self, cfg: ConfigDict, vocab: Vocab, model_vocab: int):
    """Without an end-of-sequence id (characters) both parts end with the id below the last
    sentinel."""
    super().__init__(cfg, vocab, model_vocab)
    shape = span_shape(cfg)
    eos = vocab.eos if vocab.eos is not None else model_vocab - 1 - shape.spans
    self.spans = Spans(shape, model_vocab - 1, eos, cfg.model.max_seq_len)

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    if cfg.data.packing != 'concat':
      raise UserError("config field train.objective='span' corrupts windows of the token stream; "
                      "set data.packing='concat' (packed documents are not supported with it).")
    limit = cfg.span.mean_span_length / (cfg.span.mean_span_length + 1)
    if cfg.span.noise_density > limit:
      raise UserError(f'config field span.noise_density={cfg.span.noise_density} is above '
                      f'{limit:.4g}, the most that span.mean_span_length='
                      f'{cfg.span.mean_span_length} allows (mean / (mean + 1): every hidden span '
                      'needs a kept token before it); lower the density or lengthen the spans.')

  @classmethod
  def reserved_ids(cls, cfg: ConfigDict) -> int:
    """One sentinel per span of a window, and one to end the parts if the tokenizer has no
    end-of-sequence."""
    return span_shape(cfg).spans + 1

  @classmethod
  def window_length(cls, cfg: ConfigDict) -> int:
    """The raw window less one: its last token is the row's last target."""
    return span_shape(cfg).raw - 1

  def train_batch(self, batch, key, step, rows):
    del step
    return spanned_batch(batch, key, rows, self.spans), {}

  def eval_views(self, batch):
    """The targets of windows corrupted from the run's seed."""
    return {'': spanned_batch(batch, jax.random.PRNGKey(self.seed), batch['index'][:, 0],
                              self.spans)}

