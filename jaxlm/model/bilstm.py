"""A bidirectional LSTM encoder (model.kind='bilstm'): the recurrent counterpart of the Transformer
encoder, trained with masked LM.

Embedding -> dropout -> N bidirectional layers, each followed by dropout -> the output head. A
layer runs a forward LSTM (first position to last) and a backward one (last to first) over its
input, each with its own weights, and projects their two outputs, concatenated, back to width D:

  y_t = [h_fwd_t ; h_bwd_t] P,   P [2D, D]

Concatenating and projecting (rather than summing the directions) keeps what each direction
found apart until a learnt map mixes them (a sum is the special case P = [I; I]), and returning
to width D keeps every layer the same shape, so the layers stack on a leading `layers` axis and
run in one scan as the Transformer's blocks and the one-directional LSTM's layers do; the cost is
2 D^2 parameters a layer. Packed documents stay apart in both directions: the forward recurrence
restarts from a zero state at each document's first token, the backward one at its last.
Shape letters: B batch, L length, D width, V vocab, N layers.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.model.layers import Dense, Embed, LanguageModel, dropout, output_head, stacked
from jaxlm.model.lstm import LSTMLayer, State, layer_keys, zero_state
from jaxlm.sharding import ACTIVATION_AXES, constrain


class BiLayer(nnx.Module):
  """A forward and a backward LSTM over the same input; their outputs concatenated, projected."""

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    D = cfg.embed_dim
    self.forward = LSTMLayer(cfg, dtype=dtype, rngs=rngs)
    self.backward = LSTMLayer(cfg, dtype=dtype, rngs=rngs)
    self.proj = Dense((2, D), (D,), (None, 'mlp', 'embed'), use_bias=False, std=(2 * D)**-0.5,
                      dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, starts: jax.Array, ends: jax.Array,
               active: jax.Array | None = None) -> tuple[jax.Array, tuple[State, State]]:
    """x [B, L, D]; starts / ends [B, L] (True at each document's first / last token: the forward
    / backward recurrence restarts there); active [B, L] or None (only these positions are read)
    -> outputs [B, L, D], and each direction's final state: the forward one after the last
    position it read, the backward one after the first."""
    zero = zero_state(x.shape[0], x.shape[2])
    fwd, fwd_state = self.forward(x, zero, starts, active)
    bwd, bwd_state = self.backward(x, zero, ends, active, reverse=True)
    return self.proj(jnp.stack([fwd, bwd], axis=2)), (fwd_state, bwd_state)


def boundaries(segment_ids: jax.Array | None, shape: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """[B, L] masks of each segment's first and last token past the row's ends (no segment_ids:
  the row is one sequence, which needs no restart)."""
  starts = jnp.zeros(shape, bool)
  ends = jnp.zeros(shape, bool)
  if segment_ids is not None:
    change = segment_ids[:, 1:] != segment_ids[:, :-1]
    starts, ends = starts.at[:, 1:].set(change), ends.at[:, :-1].set(change)
  return starts, ends


def encode(layers: BiLayer, x: jax.Array, starts: jax.Array, ends: jax.Array,
           active: jax.Array | None, rate: float,
           keys: jax.Array | None) -> tuple[jax.Array, tuple[State, State]]:
  """Runs the stacked bidirectional layers over x [B, L, D] (dropout after each) -> the last
  layer's outputs [B, L, D], and every layer's final (forward, backward) states [N, B, D]."""
  graphdef, stacked = nnx.split(layers)

  def layer(x, per_layer):
    params, key = per_layer
    out, finals = nnx.merge(graphdef, params)(x, starts, ends, active)
    return constrain(dropout(out, rate, key), ACTIVATION_AXES), finals

  return jax.lax.scan(layer, x, (stacked, keys))


class BiLSTM(LanguageModel):
  """tokens [B, L] -> logits [B, L, V], every output reading the whole row (its document, when
  packed). An encoder: it does not generate."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    from jaxlm.model.transformer import DTYPES  # pylint: disable=import-outside-toplevel
    dtype = DTYPES[cfg.dtype]
    self.num_layers, self.dropout = cfg.num_layers, cfg.dropout
    self.embed = Embed(cfg.vocab_size, cfg.embed_dim, std=cfg.init_std, dtype=dtype, rngs=rngs)
    self.layers = stacked(BiLayer, cfg, dtype, rngs)
    self.head = output_head(cfg, dtype, rngs)

  def init_cache(self, batch: int, length: int):
    raise NotImplementedError('a bidirectional encoder reads the whole row; it does not decode')

  def features(self, tokens: jax.Array, positions: jax.Array | None = None, *,
               segment_ids: jax.Array | None = None, dropout_key: jax.Array | None = None,
               mask: jax.Array | None = None, prefix: jax.Array | None = None,
               cache: None = None, cache_index: jax.Array | None = None) -> tuple[jax.Array, None]:
    """tokens [B, L] -> the last layer's outputs [B, L, D]. A change of `segment_ids` restarts
    both directions; positions and mask are the Transformer's (order is the recurrence's own)."""
    del positions, mask, prefix, cache, cache_index
    starts, ends = boundaries(segment_ids, tokens.shape)
    embed_key, keys = layer_keys(dropout_key, self.num_layers)
    x = constrain(dropout(self.embed(tokens), self.dropout, embed_key), ACTIVATION_AXES)
    x, _ = encode(self.layers, x, starts, ends, None, self.dropout, keys)
    return x, None
