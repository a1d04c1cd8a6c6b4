"""Fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the
Middle"), context-level, in the prefix-suffix-middle (PSM) order.

With probability fim.rate a training row is cut at two points drawn uniformly (sorted) into a
prefix, a middle and a suffix, and becomes

  <PRE> prefix <SUF> suffix <MID> middle

a causal-LM row like any other, the loss on every position: the model learns to write the middle
after reading both sides, and the rows left whole keep its left-to-right ability. The three
sentinel ids are the first past the tokenizer's vocabulary. A row of L + 1 tokens keeps its first
L - 2 (the sentinels take three places); rows not chosen are unchanged. The draws come from
fold_in(seed, step) and each row's global index, as every objective's.

Validation and jaxlm.eval report the left-to-right loss of every token (`loss`, perplexity, bits
per byte: comparable with a causal run's) and `fim_loss`, the loss on the middle tokens of every
window transformed with cuts drawn from the run's seed (the same for every checkpoint).
Shape letters: B batch, L length.
"""

from typing import NamedTuple

from etils import epy
from ml_collections import ConfigDict

from jaxlm.errors import UserError
from jaxlm.objectives.base import Batch, Objective, Vocab, stream_key, windows

with epy.lazy_imports():
  import jax
  import jax.numpy as jnp


class Sentinels(NamedTuple):
  prefix: int  # <PRE>
  suffix: int  # <SUF>
  middle: int  # <MID>


def fim_row(key: 'jax.Array', raw: 'jax.Array', rate: float,
            ids: Sentinels) -> tuple['jax.Array', 'jax.Array']:
  """One row of n + 3 raw tokens -> (the row, PSM-ordered from its first n tokens with
  probability `rate` and else unchanged; the position of <MID> in it, n + 3 when unchosen).

  For cuts i <= j in [0, n] of t = raw[:n], position p of the result holds: <PRE> at 0, t[p - 1]
  for p in 1..i, <SUF> at i + 1, the suffix t[j:] from i + 2, <MID> at m = i + 2 + n - j, and the
  middle t[i:j] after it, to the end (n + 3 positions in all)."""
  k_choose, k_cut = jax.random.split(key)
  n = raw.shape[0] - 3
  chosen = jax.random.uniform(k_choose) < rate
  i, j = jnp.sort(jax.random.randint(k_cut, (2,), 0, n + 1))
  p = jnp.arange(n + 3)
  m = i + 2 + n - j
  source = jnp.where(p <= i, p - 1, jnp.where(p < m, j + p - (i + 2), i + p - (m + 1)))
  out = raw[jnp.clip(source, 0, n - 1)]
  out = jnp.where(p == 0, ids.prefix,
                  jnp.where(p == i + 1, ids.suffix, jnp.where(p == m, ids.middle, out)))
  return jnp.where(chosen, out, raw).astype(raw.dtype), jnp.where(chosen, m, n + 3)


def fim_batch(batch: Batch, key: 'jax.Array', index: 'jax.Array', rate: float,
              ids: Sentinels) -> tuple[Batch, 'jax.Array']:
  """Rows of tokens (`inputs` and the last of `targets`) -> (the FIM rows as a causal-LM batch,
  [B] the position of each row's <MID>: n + 3 = L + 1 where a row was left whole). A transformed
  row counts on every position if its row counted on all of them, else on none."""
  raw = windows(batch)
  rows, middle = jax.vmap(lambda i, r: fim_row(jax.random.fold_in(key, i), r, rate, ids))(
      index, raw)
  chosen = (middle <= raw.shape[1] - 1)[:, None]
  whole = batch['mask'].min(axis=1, keepdims=True)
  mask = jnp.where(chosen, jnp.broadcast_to(whole, batch['mask'].shape), batch['mask'])
  return dict(inputs=rows[:, :-1], targets=rows[:, 1:], mask=mask), middle


class FillInTheMiddle(Objective):
  """Causal LM on rows of which a fraction fim.rate is in PSM order."""
  name = 'fim'
  section = 'fim'
  resume_fields = ('rate',)
  ranges = {'fim.rate': (lambda v: 0 < v <= 1, 'a number in (0, 1]')}
  eval_rows = True

  def __init__(self, cfg: ConfigDict, vocab: Vocab, model_vocab: int):
    super().__init__(cfg, vocab, model_vocab)
    self.rate = cfg.fim.rate
    self.ids = Sentinels(vocab.size, vocab.size + 1, vocab.size + 2)

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    if cfg.data.packing != 'concat':
      raise UserError("config field train.objective='fim' reorders windows of the token stream; "
                      "set data.packing='concat' (packed rows would mix their documents).")
    if cfg.model.max_seq_len < 4:
      raise UserError(f'config field model.max_seq_len={cfg.model.max_seq_len} leaves no token '
                      "to reorder with train.objective='fim' (its three sentinels take three "
                      'places); lengthen the context.')

  @classmethod
  def reserved_ids(cls, cfg: ConfigDict) -> int:
    del cfg
    return 3  # <PRE>, <SUF>, <MID>

  def train_batch(self, batch, key, step, rows):
    del step
    out, _ = fim_batch(batch, stream_key(key, 'fim'), rows, self.rate, self.ids)
    return out, {}

  def eval_views(self, batch):
    """'': the rows as they are (every token, left to right); 'fim': every whole window
    reordered from the run's seed, scored on its middle."""
    plain = {k: batch[k] for k in ('inputs', 'targets', 'mask')}
    key = stream_key(jax.random.PRNGKey(self.seed), 'fim')
    reordered, middle = fim_batch(plain, key, batch['index'][:, 0], 1.0, self.ids)
    position = jnp.arange(plain['inputs'].shape[1])
    whole = batch['segment_ids'][:, -1:] > 0  # the padded end of a stream is not a window
    reordered['mask'] = ((position[None] >= middle[:, None]) & whole).astype(jnp.float32)
    return {'': plain, 'fim': reordered}
