"""The case study's encoder-decoder (model.kind='lstm_seq2seq'): input sequence -> bidirectional
LSTM encoder -> context vector -> multilayer LSTM decoder -> output distribution.

A row holds the encoder's input and the decoder's sequence in the prefix-LM layout that span
corruption and prefix -> continuation already make for a decoder-only model: its first `prefix`
tokens are the input, and the decoder reads from the input's last token on (the corrupted text's
end-of-sequence, or the prefix's last token, is its start token), predicting the next token at
each position. So one batch trains either kind of model, and the loss counts the same targets.

- The encoder (bilstm.py's layers) reads the input positions only, in both directions.
- The context vector is every encoder layer's final forward and backward states (h, c); decoder
  layer l starts from h = tanh([h_fwd; h_bwd] W_h) and c = [c_fwd; c_bwd] W_c of encoder layer
  l (a learnt bridge: the decoder's width need not be the sum of the directions'; tanh keeps h in
  the range an LSTM's h takes, c is unbounded).
- The decoder is N LSTM layers left to right, with the state carried across positions; before its
  start it is idle (its state stays the context, its outputs 0, masked from the loss).
- model.decoder_attention='luong' adds Luong et al.'s (2015) global attention, "general" score,
  over the encoder's last-layer outputs: a_ts = softmax_s(h_t W_a m_s) over the input positions,
  then h~_t = tanh([sum_s a_ts m_s ; h_t] W_c) feeds the head. Without input feeding (h~_t is
  not fed to the next step), so attention runs once over every position after the recurrence.

Decoding carries the decoder state (and, with attention, the encoder's outputs) instead of a KV
cache: the prompt is the input, its last token the decoder's first.
Shape letters: B batch, L length, S cache slots, D width, V vocab, N layers.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.model.bilstm import BiLayer, encode
from jaxlm.model.layers import Dense, Embed, LanguageModel, dropout, output_head, stacked
from jaxlm.model.lstm import LSTMLayer, State, layer_keys
from jaxlm.sharding import ACTIVATION_AXES, constrain


class DecoderState(NamedTuple):
  """What decoding carries: each decoder layer's (h, c) [N, B, D], and for attention the encoder's
  outputs [B, S, D] and which of them are input positions [B, S] (None without attention)."""
  h: jax.Array
  c: jax.Array
  memory: jax.Array | None
  memory_mask: jax.Array | None


class DecoderLayer(nnx.Module):
  """One decoder LSTM layer, and the bridge from its encoder layer's final states to its start."""

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    D = cfg.embed_dim
    self.cell = LSTMLayer(cfg, dtype=dtype, rngs=rngs)
    bridge = dict(use_bias=False, std=(2 * D)**-0.5, dtype=dtype, rngs=rngs)
    self.bridge_h = Dense((2, D), (D,), (None, 'mlp', 'embed'), **bridge)
    self.bridge_c = Dense((2, D), (D,), (None, 'mlp', 'embed'), **bridge)

  def start(self, fwd: State, bwd: State) -> State:
    """The encoder layer's final forward and backward (h, c) [B, D] -> this layer's first state."""
    h = jnp.tanh(self.bridge_h(jnp.stack([fwd[0], bwd[0]], axis=1)))
    c = self.bridge_c(jnp.stack([fwd[1], bwd[1]], axis=1))
    return h.astype(jnp.float32), c.astype(jnp.float32)


class LuongAttention(nnx.Module):
  """Global attention with the "general" score (Luong et al. 2015), no input feeding."""

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    D = cfg.embed_dim
    self.w_a = Dense((D,), (D,), ('embed', 'mlp'), use_bias=False, std=D**-0.5, dtype=dtype,
                     rngs=rngs)
    self.w_c = Dense((2, D), (D,), (None, 'mlp', 'embed'), use_bias=False, std=(2 * D)**-0.5,
                     dtype=dtype, rngs=rngs)

  def __call__(self, h: jax.Array, memory: jax.Array, memory_mask: jax.Array) -> jax.Array:
    """Decoder outputs h [B, L, D], encoder outputs memory [B, S, D] and memory_mask [B, S] (the
    input positions) -> the attentional outputs [B, L, D]."""
    scores = jnp.einsum('bld,bsd->bls', h, self.w_a(memory)).astype(jnp.float32)
    # A large negative rather than -inf: a row with no input position (never trained on) gets
    # uniform weights, not NaNs that a zero loss mask would not remove.
    scores = jnp.where(memory_mask[:, None, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(h.dtype)
    context = jnp.einsum('bls,bsd->bld', weights, memory)
    return jnp.tanh(self.w_c(jnp.stack([context, h], axis=2)))


class LSTMSeq2Seq(LanguageModel):
  """tokens [B, L] and prefix [B] -> logits [B, L, V] of the decoder's predictions (positions
  from prefix - 1 on; those before are 0 and belong to the input)."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    from jaxlm.model.transformer import DTYPES  # pylint: disable=import-outside-toplevel
    dtype = DTYPES[cfg.dtype]
    self.num_layers, self.dropout, self.width = cfg.num_layers, cfg.dropout, cfg.embed_dim
    self.dtype = dtype
    self.embed = Embed(cfg.vocab_size, cfg.embed_dim, std=cfg.init_std, dtype=dtype, rngs=rngs)
    self.encoder = stacked(BiLayer, cfg, dtype, rngs)

    self.decoder = stacked(DecoderLayer, cfg, dtype, rngs)
    self.attention = (LuongAttention(cfg, dtype=dtype, rngs=rngs)
                      if cfg.decoder_attention == 'luong' else None)
    self.head = output_head(cfg, dtype, rngs)

  def init_cache(self, batch: int, length: int) -> DecoderState:
    """A zero decoder state, and `length` empty encoder slots when attending."""
    shape = (self.num_layers, batch, self.width)
    memory = mask = None
    if self.attention is not None:
      memory = jnp.zeros((batch, length, self.width), self.dtype)
      mask = jnp.zeros((batch, length), bool)
    return DecoderState(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), memory, mask)

  def features(self, tokens: jax.Array, positions: jax.Array | None = None, *,
               segment_ids: jax.Array | None = None, dropout_key: jax.Array | None = None,
               mask: jax.Array | None = None, prefix: jax.Array | None = None,
               cache: DecoderState | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, DecoderState | None]:
    """tokens [B, L] -> the decoder's outputs [B, L, D], and the decoding state when a `cache`
    was given.

    With `prefix` [B] (training, evaluation, a prompt's prefill) the first prefix tokens of each
    row are encoded (those with segment_ids 0 not: a prompt's left padding) and the decoder
    starts from their context at position prefix - 1. Without it (one more decoding step) the
    decoder continues from `cache`. Positions, mask and cache_index are the Transformer's."""
    del positions, mask, cache_index
    B, L = tokens.shape
    embed_key, keys = layer_keys(dropout_key, 2 * self.num_layers)
    enc_keys, dec_keys = (None, None) if keys is None else (keys[:self.num_layers],
                                                             keys[self.num_layers:])
    x = constrain(dropout(self.embed(tokens), self.dropout, embed_key), ACTIVATION_AXES)
    if prefix is not None:
      position = jnp.arange(L)[None, :]
      read = position < prefix[:, None]
      if segment_ids is not None:
        read = read & (segment_ids > 0)
      no_restart = jnp.zeros((B, L), bool)
      memory, (fwd, bwd) = encode(self.encoder, x, no_restart, no_restart, read, self.dropout,
                                  enc_keys)
      memory_mask, start = read, (fwd, bwd)
      active = position >= prefix[:, None] - 1
    elif cache is not None:
      memory, memory_mask, start, active = cache.memory, cache.memory_mask, None, None
    else:
      raise ValueError('the encoder-decoder needs the prefix length of each row (or a cache)')

    graphdef, stacked = nnx.split(self.decoder)

    def layer(x, per_layer):
      params, key, first = per_layer
      decoder = nnx.merge(graphdef, params)
      state = decoder.start(*first) if start is not None else first
      out, state = decoder.cell(x, state, jnp.zeros((B, L), bool), active)
      return constrain(dropout(out, self.dropout, key), ACTIVATION_AXES), state

    first = start if start is not None else (cache.h, cache.c)
    x, (h, c) = jax.lax.scan(layer, x, (stacked, dec_keys, first))
    if self.attention is not None:
      x = constrain(self.attention(x, memory, memory_mask), ACTIVATION_AXES)
    if cache is None:
      return x, None
    if prefix is not None and self.attention is not None:  # the prompt's outputs go in slots 0..
      memory = jax.lax.dynamic_update_slice_in_dim(cache.memory, memory.astype(self.dtype), 0, 1)
      memory_mask = jax.lax.dynamic_update_slice_in_dim(cache.memory_mask, memory_mask, 0, 1)
    return x, DecoderState(h, c, memory, memory_mask)
