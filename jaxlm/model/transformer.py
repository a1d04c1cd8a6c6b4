"""The decoder-only Transformer: embeddings, a scanned stack of pre-norm blocks, and the LM head.

One config covers GPT-2 (LayerNorm, learned positions, GELU, biases, tied embeddings) and Llama
(RMSNorm, RoPE, SwiGLU, grouped-query attention, untied head). The blocks are created once with a
leading `layers` axis and applied with `jax.lax.scan`, so compile time does not grow with depth,
and each layer is wrapped in `jax.checkpoint` with the remat policy from the config.
Shape letters: B batch, L length, D width, V vocab, S cache length, N layers.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.model import attention_kernels
from jaxlm.model.attention import Attention, Cache, prefix_mask
from jaxlm.model.layers import (Embed, LanguageModel, Norm, dropout, output_head, param, stacked,
                                width_mult)
from jaxlm.model.mlp import Mlp
from jaxlm.sharding import ACTIVATION_AXES, constrain

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

REMAT_POLICIES = {
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
    # ... and the fused attention kernel's residuals, so its forward does not run twice
    'dots_attention': jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(attention_kernels.RESIDUALS)),
    'full': jax.checkpoint_policies.nothing_saveable,  # keep only the block inputs
}

# Logical axes of the residual stream between blocks.


class Block(nnx.Module):
  """x + attention(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    norm = dict(kind=cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias)
    self.attn_norm = Norm(cfg.embed_dim, **norm)
    self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
    self.mlp_norm = Norm(cfg.embed_dim, **norm)
    self.mlp = Mlp(cfg, dtype=dtype, rngs=rngs)
    self.dropout = cfg.dropout

  def __call__(self, x: jax.Array, positions: jax.Array, key: jax.Array | None, *,
               segment_ids: jax.Array | None = None, mask: jax.Array | None = None,
               cache: Cache | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """x [B, L, D] -> [B, L, D] (and the updated cache when decoding)."""
    k_attn, k_mlp = jax.random.split(key) if key is not None else (None, None)
    h, cache = self.attn(self.attn_norm(x), positions, segment_ids=segment_ids, mask=mask,
                         cache=cache, cache_index=cache_index)
    x = x + dropout(h, self.dropout, k_attn)
    x = x + dropout(self.mlp(self.mlp_norm(x)), self.dropout, k_mlp)
    return constrain(x, ACTIVATION_AXES), cache


class Transformer(LanguageModel):
  """tokens [B, L] -> logits [B, L, V]. `cfg` is a resolved model config (see config.resolve_model)."""

  def __init__(self, cfg: ConfigDict, *, rngs: nnx.Rngs):
    dtype = DTYPES[cfg.dtype]
    self.num_layers, self.dropout = cfg.num_layers, cfg.dropout
    self.remat = cfg.remat
    # jax.lax.scan fully unrolls only with unroll=True (an int leaves a one-trip loop behind).
    self.unroll = cfg.scan_unroll if 0 < cfg.scan_unroll < cfg.num_layers else True
    self.embed = Embed(cfg.vocab_size, cfg.embed_dim, std=cfg.init_std, dtype=dtype, rngs=rngs)
    self.pos_embed = (param(rngs, (cfg.max_seq_len, cfg.embed_dim), ('length', 'embed'),
                            cfg.init_std) if cfg.position == 'learned' else None)

    self.blocks = stacked(Block, cfg, dtype, rngs)
    self.final_norm = Norm(cfg.embed_dim, kind=cfg.norm, eps=cfg.norm_eps, use_bias=cfg.use_bias)
    self.head = output_head(cfg, dtype, rngs)
    self.output_mult = 1.0 / width_mult(cfg)

  def features(self, tokens: jax.Array, positions: jax.Array | None = None, *,
               segment_ids: jax.Array | None = None, dropout_key: jax.Array | None = None,
               mask: jax.Array | None = None, prefix: jax.Array | None = None,
               cache: Cache | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """tokens [B, L] -> final hidden states [B, L, D], and the cache [N, B, S, K, E] x 2 if given.

    `positions` [B, L] default to 0..L-1. Packed sequences pass `segment_ids` [B, L] (tokens
    attend only within their segment) and positions that restart at each segment. `mask`,
    `cache` and `cache_index` are for decoding (see Attention). `prefix` [B] makes a prefix LM:
    every token of a row's first prefix positions is seen by every query (see prefix_mask).
    """
    if prefix is not None:
      mask = prefix_mask(prefix, tokens.shape[1], mask, segment_ids)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = self.embed(tokens)
    if self.pos_embed is not None:
      x = x + jnp.take(self.pos_embed[...].astype(x.dtype), positions, axis=0)  # as in Embed
    layer_keys = None
    if dropout_key is not None:
      dropout_key, layers_key = jax.random.split(dropout_key)
      layer_keys = jax.random.split(layers_key, self.num_layers)
    x = constrain(dropout(x, self.dropout, dropout_key), ACTIVATION_AXES)

    graphdef, stacked = nnx.split(self.blocks)

    def layer(x, per_layer):
      params, key, layer_cache = per_layer
      block = nnx.merge(graphdef, params)
      return block(x, positions, key, segment_ids=segment_ids, mask=mask, cache=layer_cache,
                   cache_index=cache_index)

    if self.remat != 'none':
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
    x, cache = jax.lax.scan(layer, x, (stacked, layer_keys, cache), unroll=self.unroll)
    x = self.final_norm(x)
    if self.output_mult != 1.0:  # muP: the head reads h / width_mult (see layers.width_mult)
      x = x * jnp.asarray(self.output_mult, x.dtype)
    return x, cache

  def init_cache(self, batch: int, length: int) -> Cache:
    """Zeroed keys and values [N, B, S, K, E] in the compute dtype, for decoding S slots."""
    kernel = self.blocks.attn.qkv.kernel  # [N, D, K, G + 2, E]
    shape = (kernel.shape[0], batch, length, kernel.shape[2], kernel.shape[4])
    dtype = self.blocks.attn.qkv.dtype
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
