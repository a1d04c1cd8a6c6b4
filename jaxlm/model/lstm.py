"""A multi-layer LSTM language model (model.kind='lstm'): the recurrent baseline to compare the
Transformer with, through the same trainer, checkpoints, evaluation and generation.

Embedding -> dropout -> N LSTM layers of width D, each followed by dropout -> the output head
(tied to the embedding, or its own). Each layer computes its input projections for the whole
window in one matmul, then runs the recurrence with `jax.lax.scan` over time; the layers are
stacked on a leading `layers` axis and applied with a scan, as the Transformer's blocks are. The
recurrent state is float32 whatever the compute dtype. A new segment (packed documents, or the
first real token after left padding when generating) starts from a zero state, so documents
never see each other. Generation carries the state (h, c) [N, B, D] x 2 instead of a KV cache.
A layer can also run backwards and skip positions (`LSTMLayer`'s reverse and active): the
bidirectional encoder (bilstm.py) and the encoder-decoder (lstm_seq2seq.py) are built from it.
Shape letters: B batch, L length, D width, V vocab, N layers.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.model.layers import (Dense, Embed, LanguageModel, dropout, output_head, param,
                                stacked)
from jaxlm.sharding import ACTIVATION_AXES, constrain

State = tuple[jax.Array, jax.Array]  # (h, c): [N, B, D] each



class LSTMLayer(nnx.Module):
  """One layer: gates = x W + h U + b in the order (input, forget, cell, output)."""

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    D = cfg.embed_dim
    std = D**-0.5
    self.dtype = dtype
    self.w = Dense((D,), (4, D), ('embed', None, 'mlp'), use_bias=False, std=std, dtype=dtype,
                   rngs=rngs)
    self.u = param(rngs, (D, 4, D), ('embed', None, 'mlp'), std)
    # The forget gate's bias starts at 1, so the cell remembers by default (Jozefowicz et al.).
    self.b = nnx.Param(jnp.zeros((4, D), jnp.float32).at[1].set(1.0), out_sharding=(None, 'mlp'),
                       eager_sharding=False)

  def __call__(self, x: jax.Array, state: State, reset: jax.Array,
               active: jax.Array | None = None, *,
               reverse: bool = False) -> tuple[jax.Array, State]:
    """x [B, L, D], state ([B, D], [B, D]), reset [B, L] (True: start from a zero state at this
    position) -> outputs [B, L, D] and the state after the last position. `active` [B, L]
    (None: every position) skips the others: the state passes them unchanged, their outputs are
    0. reverse: run from the last position to the first (a backward direction)."""
    B, L, D = x.shape
    gates_x = self.w(x) + self.b[...].astype(self.dtype)  # [B, L, 4, D]: the whole window at once
    u = self.u[...].astype(self.dtype).reshape(D, 4 * D)

    def step(carry, inputs):
      h0, c0 = carry
      g, r, a = inputs  # [B, 4, D], [B], [B] or None
      h, c = jnp.where(r[:, None], 0.0, h0), jnp.where(r[:, None], 0.0, c0)
      g = g.astype(jnp.float32) + (h.astype(self.dtype) @ u).reshape(B, 4, D).astype(jnp.float32)
      i, f, z, o = (g[:, k] for k in range(4))
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(z)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      if a is None:
        return (h, c), h
      h, c = jnp.where(a[:, None], h, h0), jnp.where(a[:, None], c, c0)
      return (h, c), jnp.where(a[:, None], h, 0.0)

    time_major = lambda v: None if v is None else v.swapaxes(0, 1)
    state, out = jax.lax.scan(step, state, (time_major(gates_x), time_major(reset),
                                            time_major(active)), reverse=reverse)
    return out.swapaxes(0, 1).astype(self.dtype), state


def zero_state(batch: int, width: int) -> State:
  return jnp.zeros((batch, width), jnp.float32), jnp.zeros((batch, width), jnp.float32)


def layer_keys(dropout_key: jax.Array | None,
               num_layers: int) -> tuple[jax.Array | None, jax.Array | None]:
  """(the embedding dropout's key, each layer's [N] keys), or (None, None) without dropout."""
  if dropout_key is None:
    return None, None
  dropout_key, layers_key = jax.random.split(dropout_key)
  return dropout_key, jax.random.split(layers_key, num_layers)


class LSTM(LanguageModel):
  """tokens [B, L] -> logits [B, L, V], with the Transformer's interface (features, logits,
  init_cache), so training, evaluation and generation take either."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    from jaxlm.model.transformer import DTYPES  # pylint: disable=import-outside-toplevel
    dtype = DTYPES[cfg.dtype]
    self.num_layers, self.dropout, self.width = cfg.num_layers, cfg.dropout, cfg.embed_dim
    self.embed = Embed(cfg.vocab_size, cfg.embed_dim, std=cfg.init_std, dtype=dtype, rngs=rngs)

    self.layers = stacked(LSTMLayer, cfg, dtype, rngs)
    self.head = output_head(cfg, dtype, rngs)

  def init_cache(self, batch: int, length: int) -> State:
    """The zero recurrent state of every layer (`length` is the KV cache's; unused here)."""
    del length
    shape = (self.num_layers, batch, self.width)
    return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)

  def features(self, tokens: jax.Array, positions: jax.Array | None = None, *,
               segment_ids: jax.Array | None = None, dropout_key: jax.Array | None = None,
               mask: jax.Array | None = None, prefix: jax.Array | None = None,
               cache: State | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, State | None]:
    """tokens [B, L] -> the last layer's outputs [B, L, D], and the state after them when a
    state `cache` was given (generation). Positions, mask, prefix and cache_index are the
    Transformer's (order is the recurrence's own, and it reads left to right only); a change of
    `segment_ids` restarts from a zero state."""
    del positions, mask, prefix, cache_index
    B, L = tokens.shape
    reset = jnp.zeros((B, L), bool)
    if segment_ids is not None:
      reset = reset.at[:, 1:].set(segment_ids[:, 1:] != segment_ids[:, :-1])
    x = self.embed(tokens)
    dropout_key, keys = layer_keys(dropout_key, self.num_layers)
    x = constrain(dropout(x, self.dropout, dropout_key), ACTIVATION_AXES)
    state = cache if cache is not None else self.init_cache(B, L)
    graphdef, stacked = nnx.split(self.layers)

    def layer(x, per_layer):
      params, key, h, c = per_layer
      out, new_state = nnx.merge(graphdef, params)(x, (h, c), reset)
      out = constrain(dropout(out, self.dropout, key), ACTIVATION_AXES)
      return out, new_state

    x, (h, c) = jax.lax.scan(layer, x, (stacked, keys, *state))
    return x, ((h, c) if cache is not None else None)
