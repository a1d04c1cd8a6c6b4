"""Masked language modelling (BERT) with a ratio schedule.

A masked-LM batch is made inside the jitted step from a plain batch of token rows: a fraction
`ratio` of the ordinary tokens is selected, and of those `mask_fraction` are replaced by the
[MASK] id, `random_fraction` by a random ordinary token, and the rest kept; the loss counts the
selected positions, predicting the original tokens. The draws are a pure function of a key and
each row's global index (fold_in(key, index)), so they do not depend on the mesh, the number of
hosts or gradient accumulation, and a resumed run draws the same masks.

Special ids are never selected and never drawn as replacements: the id each document starts with
(the end-of-sequence id, which separates and starts documents) and the [MASK] id, the first id
past the tokenizer's vocabulary. Padding (outside every segment) is never selected. Token id 0 is
an ordinary token. Validation and jaxlm.eval score the tokens selected at mlm.eval_ratio from the
run's seed: the same tokens for every checkpoint, so evaluations compare.
Shape letters: B batch, L length.
"""

import math
from typing import NamedTuple

from etils import epy
from ml_collections import ConfigDict

from jaxlm.errors import UserError
from jaxlm.objectives.base import Batch, Objective, Vocab, stream_key

with epy.lazy_imports():
  import jax
  import jax.numpy as jnp
  import numpy as np


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
                ratio: 'jax.Array', spec: Masking) -> tuple['jax.Array', 'jax.Array']:
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


def masked_batch(batch: Batch, key: 'jax.Array', ratio: 'jax.Array', index: 'jax.Array',
                 masking: Masking) -> Batch:
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
  inputs, selected = mask_tokens(stream_key(key, 'mlm'), tokens, valid, index, ratio, masking)
  out = dict(batch, inputs=inputs, targets=tokens, mask=selected)
  out.pop('input_mask', None)
  out.pop('index', None)
  return out


class MaskedLM(Objective):
  """BERT's objective on a bidirectional model, the ratio following mlm.ratio_schedule."""
  name = 'mlm'
  section = 'mlm'
  resume_fields = ('ratio_schedule', 'ratio_start', 'ratio_end', 'mask_fraction',
                   'random_fraction')
  choices = {'mlm.ratio_schedule': ('constant', 'linear', 'cosine')}
  ranges = {**{f'mlm.{k}': (lambda v: 0 < v < 1, 'a number in (0, 1)')
               for k in ('ratio_start', 'ratio_end', 'eval_ratio')},
            **{f'mlm.{k}': (lambda v: 0 <= v <= 1, 'a number in [0, 1]')
               for k in ('mask_fraction', 'random_fraction')}}
  generates = False
  reads = 'bidirectional'
  every_token = False
  eval_rows = True

  def __init__(self, cfg: ConfigDict, vocab: Vocab, model_vocab: int):
    super().__init__(cfg, vocab, model_vocab)
    self.cfg = cfg  # the ratio schedule reads mlm.* and train.steps
    self.masking = Masking(vocab.size, vocab.start, cfg.mlm.mask_fraction,
                           cfg.mlm.random_fraction)
    self.eval_ratio = cfg.mlm.eval_ratio

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    if cfg.mlm.mask_fraction + cfg.mlm.random_fraction > 1:
      raise UserError(f'config fields mlm.mask_fraction={cfg.mlm.mask_fraction} and '
                      f'mlm.random_fraction={cfg.mlm.random_fraction} add up to more than 1; the '
                      'rest of the selected tokens is kept unchanged.')

  @classmethod
  def reserved_ids(cls, cfg: ConfigDict) -> int:
    del cfg
    return 1  # the [MASK] id

  def train_batch(self, batch, key, step, rows):
    ratio = mlm_ratio(self.cfg, step)
    return masked_batch(batch, key, ratio, rows, self.masking), dict(mask_ratio=ratio)

  def eval_views(self, batch):
    return {'': masked_batch(batch, jax.random.PRNGKey(self.seed), jnp.float32(self.eval_ratio),
                             batch['index'][:, 0], self.masking)}

  def report(self, result, text_bytes):
    """The masked tokens' loss at the fixed ratio; bits per byte would need every token."""
    return dict(super().report(result, text_bytes), mask_ratio=self.eval_ratio)
