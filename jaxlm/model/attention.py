"""Multi-head attention with grouped-query heads, RoPE, and an optional KV cache for decoding.

Shape letters: B batch, L query length, S key length, D width, H query heads, K kv heads, E head dim.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.model.attention_kernels import attend
from jaxlm.model.layers import Dense, hidden_std, scaled_std, width_mult

# A KV cache for one layer: keys [B, S, K, E] and values [B, S, K, E], S the decoding budget.
Cache = tuple[jax.Array, jax.Array]


def rope_frequencies(head_dim: int, theta: float,
                     llama3: tuple[float, float, float, int] | None = None) -> np.ndarray:
  """The E/2 rotation frequencies 1 / theta^(2i/E) in float32, as transformers computes them.

  llama3 = (factor, low_freq_factor, high_freq_factor, original context): Llama 3.1's scaling.
  Wavelengths longer than original / low_freq_factor are stretched by the factor, those shorter
  than original / high_freq_factor kept, and those in between blended.
  """
  freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  if llama3 is None:
    return freq
  factor, low, high, original = llama3
  wavelength = 2 * np.pi / freq
  stretched = np.where(wavelength > original / low, freq / factor, freq)
  smooth = (original / wavelength - low) / (high - low)
  blended = (1 - smooth) * stretched / factor + smooth * stretched
  medium = (wavelength >= original / high) & (wavelength <= original / low)
  return np.where(medium, blended, stretched).astype(np.float32)


def rope(x: jax.Array, positions: jax.Array, freq: jax.Array) -> jax.Array:
  """Rotary position embedding of x [B, L, H, E] at integer positions [B, L], with the E/2
  frequencies `freq` (rope_frequencies).

  Channel i of the first half is rotated together with channel i of the second half (the
  "rotate_half" layout that Hugging Face Llama checkpoints use).
  """
  angle = positions[..., None].astype(jnp.float32) * jnp.asarray(freq, jnp.float32)  # [B,L,E/2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def prefix_mask(prefix: jax.Array, length: int, mask: jax.Array | None = None,
                segment_ids: jax.Array | None = None) -> jax.Array:
  """The [B, 1, L, S] attention mask of a prefix LM: `mask` (None: causal over the L positions)
  and, besides, every key at a slot before prefix [B] for every query of the same segment
  (segment_ids [B, L], None: one segment). The prefix is read bidirectionally, the rest causally.
  A prompt's prefill passes its decoding mask and its segment_ids (0 on the left padding, which
  no real query then sees)."""
  if mask is None:
    q = jnp.arange(length)[:, None]
    mask = (jnp.arange(length)[None, :] <= q)[None, None]
  S = mask.shape[-1]
  visible = (jnp.arange(S)[None, :] < prefix[:, None])[:, None, :]  # [B, 1, S]
  if segment_ids is not None:
    keys = jnp.pad(segment_ids, ((0, 0), (0, S - segment_ids.shape[1])))
    visible = visible & (segment_ids[:, :, None] == keys[:, None, :])  # [B, L, S]
  return mask | visible[:, None]


class Attention(nnx.Module):
  """Query, key and value projections (one fused matmul), RoPE, attention, output projection.

  The fused projection's kernel is [D, K, G + 2, E]: for each kv head, its G = H / K query heads,
  then its key, then its value. Query head h = k * G + g, and sharding the kv_heads axis over
  `tensor` keeps every group of query heads with its key and value on one shard.
  """

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    D, H, K, E = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(use_bias=cfg.use_bias, dtype=dtype, rngs=rngs)
    self.groups = H // K
    self.qkv = Dense((D,), (K, self.groups + 2, E), ('embed', 'kv_heads', None, 'head_dim'),
                     std=hidden_std(cfg, cfg.init_std),
                     **dict(kw, use_bias=cfg.use_bias or cfg.qkv_bias))
    self.o = Dense((H, E), (D,), ('heads', 'head_dim', 'embed'),
                   std=hidden_std(cfg, scaled_std(cfg.init_std, cfg.num_layers)), **kw)
    self.use_rope = cfg.position == 'rope'
    llama3 = (cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
              cfg.rope_original_max_len) if cfg.rope_scaling == 'llama3' else None
    # A tuple of floats: a static, hashable attribute of the module.
    self.rope_freq = tuple(rope_frequencies(E, cfg.rope_theta, llama3).tolist())
    self.implementation = cfg.attention
    self.causal = cfg.causal
    # muP: scores q.k / E rather than / sqrt(E) (the same at the base width); every kernel
    # divides by sqrt(E), so the queries are scaled by 1 / sqrt(width_mult) = sqrt(E_base / E).
    self.q_scale = width_mult(cfg) ** -0.5

  def __call__(self, x: jax.Array, positions: jax.Array, *, segment_ids: jax.Array | None = None,
               mask: jax.Array | None = None, cache: Cache | None = None,
               cache_index: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
    """x [B, L, D] at positions [B, L] -> [B, L, D], and the cache with this step written in.

    Training attends causally (bidirectionally in an encoder, model.causal=False), within
    `segment_ids` [B, L] when sequences are packed. Decoding
    passes a cache, the slot `cache_index` where this step's L keys go, and the mask
    [B, 1, L, S] saying which slots each query may see.
    """
    qkv = self.qkv(x)  # [B, L, K, G + 2, E]
    B, L, K, _, E = qkv.shape
    G = self.groups
    q, k, v = qkv[:, :, :, :G].reshape(B, L, K * G, E), qkv[:, :, :, G], qkv[:, :, :, G + 1]
    if self.q_scale != 1.0:
      q = q * jnp.asarray(self.q_scale, q.dtype)
    if self.use_rope:
      q, k = rope(q, positions, self.rope_freq), rope(k, positions, self.rope_freq)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, 1)
      cache = (k, v)
    out = attend(q, k, v, mask=mask, segment_ids=segment_ids, implementation=self.implementation,
                 causal=self.causal)
    return self.o(out), cache
