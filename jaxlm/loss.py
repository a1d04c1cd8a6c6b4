"""Token-level cross-entropy with a mask, and optional z-loss. Pure functions.

Training uses `blockwise_cross_entropy`: the output head and the loss, a chunk of positions at a
time, with a gradient of its own (as Levanter's): the forward pass computes each chunk's gradient
with respect to the hidden states and the head weights while it has the chunk's logits, so
neither the [B, L, V] float32 logits nor a second head matmul in the backward pass is needed.
`chunked_cross_entropy` is the same loss differentiated by JAX, each chunk rematerialised
(train.loss_grad='autodiff'), kept to compare against.

The losses are returned as sums together with the number of counted tokens, so that gradient
accumulation and evaluation over many batches divide once, by the total count, and give exactly
the mean over every token.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxlm.sharding import constrain


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """logits [B, L, V], targets [B, L] int, mask [B, L] (1 = counts) -> three float32 scalars.

  Returns (objective_sum, ce_sum, count): the summed objective (cross-entropy plus
  z_loss * logsumexp^2, which keeps the softmax normaliser near 1), the summed cross-entropy
  alone, and the number of tokens counted. Logits are upcast to float32 for the log-softmax.
  """
  logits = logits.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)  # [B, L]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ce = (lse - target_logit) * mask
  objective = ce + z_loss * jnp.square(lse) * mask if z_loss else ce
  return objective.sum(), ce.sum(), mask.sum()


def chunked_cross_entropy(head: Callable[[jax.Array], jax.Array], h: jax.Array,
                          targets: jax.Array, mask: jax.Array, z_loss: float = 0.0,
                          chunk: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """cross_entropy(head(h), ...) for hidden states h [B, L, D], `chunk` positions at a time.

  Only [B, chunk, V] logits exist at once, and the backward pass recomputes each chunk's logits
  instead of keeping them: with a 50k vocabulary the float32 logits of a whole batch would be
  the largest tensor of the step. chunk=0 computes all positions at once. L must divide by chunk.
  """
  if not chunk or chunk >= h.shape[1]:
    return cross_entropy(head(h), targets, mask, z_loss)
  B, L, D = h.shape
  split = lambda x: x.reshape(B, L // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one(h, t, m):  # [B, chunk, ...]: the batch dimension keeps its sharding
    return cross_entropy(head(h), t, m, z_loss)

  def add(total, xs):
    return tuple(a + b for a, b in zip(total, one(*xs))), None

  zero = jnp.float32(0)
  total, _ = jax.lax.scan(add, (zero, zero, zero), (split(h), split(targets), split(mask)))
  return total


def blockwise_cross_entropy(h: jax.Array, w: jax.Array, targets: jax.Array, mask: jax.Array,
                            z_loss: float = 0.0, chunk: int = 0,
                            grad_scale: jax.Array | float = 1.0,
                            w_axes: tuple[str, str] = ('embed', 'vocab'),
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """cross_entropy(h @ w, targets, mask, z_loss) for hidden states h [B, L, D] and the head
  w [D, V] (both in the compute dtype), `chunk` positions at a time (0: all at once; L must
  divide by it), with its own gradient.

  The forward pass also computes d objective / d h and d objective / d w, chunk by chunk, times
  `grad_scale`: pass the factor the objective will be multiplied by (the step's loss scale over
  the token count), so that float16 gradients are formed at the scale that keeps them from
  underflowing; the backward pass then only rescales them by the cotangent / grad_scale (exactly
  1 in the train step). Only the objective is differentiated: the cross-entropy comes back under
  stop_gradient. `w_axes` are w's logical axes, which the summed head gradient is kept in.
  """
  mask = mask.astype(jnp.float32)
  chunk = chunk if chunk and chunk < h.shape[1] else h.shape[1]
  objective, ce = _blockwise(float(z_loss), int(chunk), tuple(w_axes), h, w, targets, mask,
                             jnp.asarray(grad_scale, jnp.float32))
  return objective, jax.lax.stop_gradient(ce), mask.sum()


def _split(x: jax.Array, chunk: int) -> jax.Array:
  """[B, L, ...] -> [L / chunk, B, chunk, ...]: the batch dimension keeps its sharding."""
  return x.reshape(x.shape[0], x.shape[1] // chunk, chunk, *x.shape[2:]).swapaxes(0, 1)


def _merge(x: jax.Array) -> jax.Array:
  """The inverse of _split."""
  x = x.swapaxes(0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _chunk_logits(h: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.einsum('bcd,dv->bcv', h, w).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _blockwise(z_loss, chunk, w_axes, h, w, targets, mask, grad_scale):
  del w_axes, grad_scale

  def one(total, xs):
    hc, tc, mc = xs
    objective, ce, _ = cross_entropy(_chunk_logits(hc, w), tc, mc, z_loss)
    return (total[0] + objective, total[1] + ce), None

  zero = jnp.float32(0)
  (objective, ce), _ = jax.lax.scan(
      one, (zero, zero), (_split(h, chunk), _split(targets, chunk), _split(mask, chunk)))
  return objective, ce


def _blockwise_fwd(z_loss, chunk, w_axes, h, w, targets, mask, grad_scale):
  def one(carry, xs):
    objective, ce_sum, dw = carry
    hc, tc, mc = xs
    logits = _chunk_logits(hc, w)  # [B, chunk, V] float32
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
    ce = (lse - target_logit) * mc
    objective = objective + (ce + z_loss * jnp.square(lse) * mc).sum()
    # d/dlogits of (lse - logit[t] + z lse^2) * m = (softmax * (1 + 2 z lse) - onehot(t)) * m
    probs = jnp.exp(logits - lse[..., None])
    coef = (mc * (1 + 2 * z_loss * lse) * grad_scale)[..., None]
    dlogits = probs * coef - jax.nn.one_hot(tc, logits.shape[-1]) * (mc * grad_scale)[..., None]
    dlogits = dlogits.astype(w.dtype)
    dh = jnp.einsum('bcv,dv->bcd', dlogits, w).astype(h.dtype)
    dw = constrain(dw + jnp.einsum('bcd,bcv->dv', hc, dlogits,
                                   preferred_element_type=jnp.float32), w_axes)
    return (objective, ce_sum + ce.sum(), dw), dh

  zero = jnp.float32(0)
  dw0 = constrain(jnp.zeros(w.shape, jnp.float32), w_axes)
  (objective, ce, dw), dh = jax.lax.scan(
      one, (zero, zero, dw0), (_split(h, chunk), _split(targets, chunk), _split(mask, chunk)))
  return (objective, ce), (_merge(dh), dw.astype(w.dtype), grad_scale)


def _blockwise_bwd(z_loss, chunk, w_axes, residuals, cotangents):
  del z_loss, chunk, w_axes
  dh, dw, grad_scale = residuals
  factor = cotangents[0] / grad_scale  # the cross-entropy is returned under stop_gradient
  return ((dh * factor.astype(dh.dtype)).astype(dh.dtype),
          (dw * factor.astype(dw.dtype)).astype(dw.dtype), None, None, None)


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)
