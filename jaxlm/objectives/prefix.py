"""Prefix -> continuation on plain text (T5's prefix LM objective).

Each window is cut at a point drawn uniformly, P in 1..L: the model reads the first P tokens as
its input, bidirectionally (a Transformer through a prefix-LM mask, the LSTM encoder-decoder
through its encoder), and predicts the rest, token by token (the targets from position P - 1 on:
the continuation). The cut is drawn inside the step from fold_in(seed, step) and each row's
global index, and for evaluation from the run's seed, as span corruption's are.
Shape letters: B batch, L length.
"""

from etils import epy
from ml_collections import ConfigDict

from jaxlm.errors import UserError
from jaxlm.objectives.base import Batch, Objective, stream_key

with epy.lazy_imports():
  import jax
  import jax.numpy as jnp


def prefix_batch(batch: Batch, key: 'jax.Array', index: 'jax.Array') -> Batch:
  """Rows of plain windows -> the same tokens with `prefix` [B, 1] (each row's input length, P
  uniform in 1..L from fold_in(key, index)) and the mask kept only on the continuation's
  targets (positions P - 1 .. L - 1)."""
  L = batch['inputs'].shape[1]
  cut = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 1, L + 1))(index)
  continuation = jnp.arange(L)[None, :] >= cut[:, None] - 1
  return dict(inputs=batch['inputs'], targets=batch['targets'],
              mask=batch['mask'] * continuation.astype(batch['mask'].dtype),
              prefix=cut[:, None].astype(jnp.int32))


class PrefixLM(Objective):
  """Prefix -> continuation: a random cut of each window, the prefix read bidirectionally."""
  name = 'prefix'
  reads = 'prefix'
  prefix_lm = True
  eval_rows = True
  every_token = False  # the continuations' loss

  @classmethod
  def check(cls, cfg: ConfigDict) -> None:
    if cfg.data.packing != 'concat':
      raise UserError("config field train.objective='prefix' cuts windows of the token stream; "
                      "set data.packing='concat' (a cut would fall between packed documents).")

  def train_batch(self, batch, key, step, rows):
    del step
    return prefix_batch(batch, stream_key(key, 'prefix'), rows), {}

  def eval_views(self, batch):
    """The continuations of windows cut from the run's seed."""
    plain = {k: batch[k] for k in ('inputs', 'targets', 'mask')}
    return {'': prefix_batch(plain, stream_key(jax.random.PRNGKey(self.seed), 'prefix'),
                             batch['index'][:, 0])}
