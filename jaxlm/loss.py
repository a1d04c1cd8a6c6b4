"""Token-level cross-entropy with a mask, and optional z-loss. Pure functions.

The losses are returned as sums together with the number of counted tokens, so that gradient
accumulation and evaluation over many batches divide once, by the total count, and give exactly
the mean over every token.
"""

from typing import Callable

import jax
import jax.numpy as jnp


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
