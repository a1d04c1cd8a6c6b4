"""Building blocks: dense layers, embeddings and norms whose parameters carry logical axis names.

Parameters are float32 (the master weights); each layer casts them to the compute dtype at use, so
bfloat16 or float16 compute needs no second copy of the model. Shape letters: B batch, L length,
D model width, H heads, K kv heads, E head dim, F mlp width, V vocab.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


Axes = tuple[str, ...]


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Axes, std: float | None) -> nnx.Param:
  """A float32 parameter: normal(0, std), or ones if std is None; `axes` name its dimensions.

  The names are metadata only (eager_sharding=False): jaxlm.state turns them into shardings and
  creates the parameters under jit, so a model can also be built without any mesh.
  """
  assert len(shape) == len(axes), (shape, axes)
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  else:
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def zeros(shape: Sequence[int], axes: Axes) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
  """y = x . W (+ b), contracting the last len(in_shape) dims of x with the first of W.

  One class covers every projection: [D] -> [H, E] for queries, [H, E] -> [D] for the attention
  output, [D] -> [F] for the MLP. The kernel has shape in_shape + out_shape and axes `axes`.
  The product is computed as one 2-D matmul [rows, in] x [in, out]: XLA's CPU backend then folds
  the transposes of the backward pass into the matmul instead of copying activations.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], axes: Axes, *,
               use_bias: bool, std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.dtype = dtype
    self.kernel = param(rngs, (*in_shape, *out_shape), axes, std)
    self.bias = zeros(out_shape, axes[len(in_shape):]) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    lead = x.shape[:x.ndim - len(self.in_shape)]
    n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
    kernel = self.kernel[...].astype(self.dtype).reshape(n_in, n_out)
    y = (x.astype(self.dtype).reshape(-1, n_in) @ kernel).reshape(*lead, *self.out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Embed(nnx.Module):
  """Token embedding table [V, D]; `attend` reuses it as the output head when embeddings are tied."""

  def __init__(self, vocab_size: int, dim: int, *, std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.dtype = dtype
    self.table = param(rngs, (vocab_size, dim), ('vocab', 'embed'), std)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids [B, L] int -> [B, L, D]."""
    # The table keeps its (vocab, embed) sharding: the compiler gathers what the lookup needs, and
    # the caller constrains the result to the batch-sharded activation layout.
    return jnp.take(self.table[...].astype(self.dtype), ids, axis=0)

  def attend(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> logits [..., V]."""
    return jnp.einsum('...d,vd->...v', x, self.table[...].astype(self.dtype))


class Norm(nnx.Module):
  """RMSNorm (Llama) or LayerNorm (GPT-2), computed in float32 and cast back."""

  def __init__(self, dim: int, *, kind: str, eps: float, use_bias: bool):
    self.kind, self.eps = kind, eps
    self.scale = param(None, (dim,), ('embed',), None)
    self.bias = zeros((dim,), ('embed',)) if use_bias and kind == 'layernorm' else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = x.astype(jnp.float32)
    if self.kind == 'layernorm':
      h = h - h.mean(-1, keepdims=True)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + self.eps) * self.scale[...]
    if self.bias is not None:
      h = h + self.bias[...]
    return h.astype(x.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; the identity when rate is 0 or no key is given (evaluation)."""
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def scaled_std(std: float, num_layers: int) -> float:
  """GPT-2's init for projections that write into the residual stream: std / sqrt(2 * layers)."""
  return std / math.sqrt(2 * num_layers)


def width_mult(cfg) -> float:
  """muP's width multiplier m = model.embed_dim / model.base_width (1 in the standard
  parametrisation). Under muP (Yang et al., Tensor Programs V), with the head count fixed as the
  width grows: hidden matrices start at std / sqrt(m) and learn at 1/m of the rate (optim.py),
  attention scores are scaled by 1/E (E the head dimension) rather than 1/sqrt(E), and the
  output head reads the final hidden states times 1/m; embeddings, norms and biases are as in
  the standard parametrisation. At m = 1 both are the same model."""
  return cfg.embed_dim / cfg.base_width if cfg.get('parametrization') == 'mup' else 1.0


def hidden_std(cfg, std: float) -> float:
  """The initial std of a hidden matrix: `std` over sqrt(width_mult) (see width_mult)."""
  return std / math.sqrt(width_mult(cfg))


class LanguageModel(nnx.Module):
  """What training, evaluation and generation call on a model: tokens -> logits through
  `features` (the last hidden states, and the decoding cache) and `logits`. Subclasses set
  `embed` and `head` (None when tied) and define `features` and `init_cache`."""
  embed: Embed
  head: 'Dense | None'

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, *,
               segment_ids: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """tokens [B, L] int -> logits [B, L, V] in the compute dtype. Dropout only with a key."""
    h, _ = self.features(tokens, positions, segment_ids=segment_ids, dropout_key=dropout_key)
    return self.logits(h)

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states [B, L, D] -> logits [B, L, V]."""
    if self.head is None:
      return self.embed.attend(h)
    return self.head(h)

  def head_weight(self) -> tuple[jax.Array, Axes]:
    """The output head as a [D, V] matrix in the compute dtype (the embedding transposed when
    tied), and its logical axes: what blockwise_cross_entropy takes."""
    if self.head is None:
      return self.embed.table[...].astype(self.embed.dtype).T, ('embed', 'vocab')
    return self.head.kernel[...].astype(self.head.dtype), ('embed', 'vocab')


def stacked(layer: type[nnx.Module], cfg, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Module:
  """cfg.num_layers modules layer(cfg, dtype=dtype, rngs=rngs), each with its own keys, as one
  module whose parameters have a leading `layers` axis: applied with a scan over that axis, so
  compile time does not grow with depth."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
  def make(rngs: nnx.Rngs) -> nnx.Module:
    return layer(cfg, dtype=dtype, rngs=rngs)

  return make(rngs)


def output_head(cfg, dtype: jnp.dtype, rngs: nnx.Rngs) -> Dense | None:
  """The output projection [D] -> [V], or None when tied to the embedding."""
  if cfg.tie_embeddings:
    return None
  return Dense((cfg.embed_dim,), (cfg.vocab_size,), ('embed', 'vocab'), use_bias=False,
               std=cfg.init_std, dtype=dtype, rngs=rngs)
