"""Token-level cross-entropy with a mask, and optional z-loss. Pure functions.

The losses are returned as sums together with the number of counted tokens, so that gradient
accumulation and evaluation over many batches divide once, by the total count, and give exactly
the mean over every token.
"""

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
