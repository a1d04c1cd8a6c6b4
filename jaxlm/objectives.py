"""Training objectives other than next-token prediction: masked LM (BERT) with a ratio schedule.

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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict


def is_mlm(cfg: ConfigDict) -> bool:
  """Whether a run's config trains a masked LM (configs older than the field are causal)."""
  return cfg.train.get('objective', 'causal') == 'mlm'


def reserved_ids(cfg: ConfigDict) -> int:
  """Ids the objective needs past the tokenizer's vocabulary (the model's must hold them)."""
  return 1 if is_mlm(cfg) else 0


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


def masking(cfg: ConfigDict, tokenizer) -> Masking | None:
  """The masking of a masked-LM run (None for a causal one)."""
  if not is_mlm(cfg):
    return None
  return Masking(tokenizer.vocab_size, tokenizer.eos_id, cfg.mlm.mask_fraction,
                 cfg.mlm.random_fraction)


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
