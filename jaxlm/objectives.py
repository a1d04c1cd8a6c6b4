"""Training objectives other than next-token prediction: masked LM (BERT) with a ratio schedule,
and T5's span corruption as a prefix LM (below).

A masked-LM batch is made inside the jitted step from a plain batch of token rows: a fraction
`ratio` of the ordinary tokens is selected, and of those `mask_fraction` are replaced by the
[MASK] id, `random_fraction` by a random ordinary token, and the rest kept; the loss counts the
selected positions, predicting the original tokens. The draws are a pure function of a key and
each row's global index (fold_in(key, index)), so they do not depend on the mesh, the number of
hosts or gradient accumulation, and a resumed run draws the same masks.

Special ids are never selected and never drawn as replacements: the end-of-sequence id (which
separates and starts documents) and the [MASK] id, the first id past the tokenizer's vocabulary.
Padding (outside every segment) is never selected. Token id 0 is an ordinary token.
Shape letters: B batch, L length.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict


def is_mlm(cfg: ConfigDict) -> bool:
  """Whether a run's config trains a masked LM."""
  return objective(cfg) == 'mlm'


def objective(cfg: ConfigDict) -> str:
  """A run's train.objective (configs older than the field are causal)."""
  return cfg.train.get('objective', 'causal')


def reserved_ids(cfg: ConfigDict) -> int:
  """Ids the objective needs past the tokenizer's vocabulary (the model's must hold them): the
  [MASK] id, or one sentinel per span of a window."""
  if objective(cfg) == 'span':  # and one to end the parts if the tokenizer has no end-of-sequence
    return span_shape(cfg).spans + 1
  return 1 if objective(cfg) == 'mlm' else 0


def window_length(cfg: ConfigDict) -> int:
  """The tokens a data row gives as inputs (one more is its last target): the context, or for
  span corruption the raw window less one."""
  return span_shape(cfg).raw - 1 if objective(cfg) == 'span' else cfg.model.max_seq_len


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


class Masking(NamedTuple):
  """What masking needs to know of the vocabulary; static (hashable) for jit."""
  vocab: int  # the tokenizer's: ids 0..vocab-1; the [MASK] id is `vocab`
  eos: int | None  # the tokenizer's end-of-sequence id, never selected
  mask_fraction: float
  random_fraction: float

  @property
  def mask_id(self) -> int:
    return self.vocab

  def ordinary(self) -> np.ndarray:
    """The ids a random replacement is drawn from: every tokenizer id but the end-of-sequence."""
    ids = np.arange(self.vocab, dtype=np.int32)
    return ids[ids != self.eos] if self.eos is not None else ids


def masking(cfg: ConfigDict, vocab: int, eos: int | None) -> Masking | None:
  """The masking of a masked-LM run (None for any other), for a tokenizer of `vocab` ids with
  end-of-sequence id `eos`."""
  if not is_mlm(cfg):
    return None
  return Masking(vocab, eos, cfg.mlm.mask_fraction, cfg.mlm.random_fraction)


def eval_masking(cfg: ConfigDict) -> tuple[int, float]:
  """(seed, ratio) of a masked-LM evaluation: the same tokens for every checkpoint of a run."""
  return cfg.seed, cfg.mlm.eval_ratio if is_mlm(cfg) else 0.15


def mask_tokens(key: jax.Array, tokens: jax.Array, valid: jax.Array, index: jax.Array,
                ratio: jax.Array, spec: Masking) -> tuple[jax.Array, jax.Array]:
  """tokens [B, L], valid [B, L] (bool: real tokens), index [B] (each row's global index) ->
  (corrupted inputs [B, L], selected [B, L] float32: the positions whose original token is the
  target)."""
  ordinary = jnp.asarray(spec.ordinary())

  def row(i, t, ok):
    k_select, k_action, k_token = jax.random.split(jax.random.fold_in(key, i), 3)
    selectable = ok & (t != spec.mask_id)
    if spec.eos is not None:
      selectable &= t != spec.eos
    selected = selectable & (jax.random.uniform(k_select, t.shape) < ratio)
    action = jax.random.uniform(k_action, t.shape)
    random = ordinary[jax.random.randint(k_token, t.shape, 0, len(spec.ordinary()))]
    replaced = jnp.where(action < spec.mask_fraction, spec.mask_id,
                         jnp.where(action < spec.mask_fraction + spec.random_fraction, random, t))
    return jnp.where(selected, replaced, t), selected

  inputs, selected = jax.vmap(row)(index, tokens, valid)
  return inputs.astype(tokens.dtype), selected.astype(jnp.float32)


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
  from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
  raise UserError(f'config field model.max_seq_len={length} is too short for span corruption '
                  f'with span.noise_density={density} and span.mean_span_length={mean}: no window '
                  'hides a whole span; lengthen the context.')


def noise_mask(key: jax.Array, shape: SpanShape) -> jax.Array:
  """T5's random_spans_noise_mask for one window: [raw] bool, True where a token is hidden. The
  window alternates kept and hidden spans, starting with a kept one; the lengths of each kind
  are a random composition of their total into `spans` positive parts."""
  k_noise, k_kept = jax.random.split(key)

  def segment_lengths(k, items: int) -> jax.Array:
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


def corrupt(raw: jax.Array, noise: jax.Array, sentinel_top: int, eos: int,
            length: int) -> jax.Array:
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


def spans(cfg: ConfigDict, eos: int | None, model_vocab: int) -> Spans | None:
  """The span corruption of a span run (None for any other), for a tokenizer whose end-of-sequence
  id is `eos`. Without one (characters) both parts end with the last sentinel's neighbour below."""
  if objective(cfg) != 'span':
    return None
  shape = span_shape(cfg)
  eos = eos if eos is not None else model_vocab - 1 - shape.spans
  return Spans(shape, model_vocab - 1, eos, cfg.model.max_seq_len)


def span_batch(key: jax.Array, raw: jax.Array, index: jax.Array,
               spans: Spans) -> dict[str, jax.Array]:
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


def prefix_lm_mask(prefix: jax.Array, length: int) -> jax.Array:
  """[B, 1, L, L] attention mask: a query sees every key before `prefix` [B] and every earlier
  key (itself included) after it."""
  q = jnp.arange(length)[:, None]
  k = jnp.arange(length)[None, :]
  return ((k < prefix[:, None, None]) | (k <= q))[:, None]
