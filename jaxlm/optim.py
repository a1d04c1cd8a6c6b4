"""config -> optax: learning-rate schedule, AdamW with a weight-decay mask, clipping, loss scaling.

The learning rate is not inside the optax chain: the train step multiplies the chain's update
by -schedule(state.step). So the rate applied at a step is a function of that step alone, the same
one that is logged, whether or not earlier updates were skipped (a skipped update leaves the
optimizer state, and with it Adam's own count, untouched).
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from ml_collections import ConfigDict


DECAY_SHAPES = {  # progress p in [0, 1] through the decay -> the share of (lr - min_lr) left
    'linear': lambda p: 1 - p,
    'cosine': lambda p: 0.5 * (1 + jnp.cos(jnp.pi * p)),
    '1-sqrt': lambda p: 1 - jnp.sqrt(p),  # Hägele et al. 2024: better than linear for WSD
}


def decay_start(cfg: ConfigDict) -> int:
  """optim.schedule='wsd': the first step of the decay (the stable phase ends before it)."""
  o = cfg.optim
  total = max(o.decay_steps or cfg.train.steps, o.warmup_steps + 1)
  return max(total - round(o.decay_fraction * total), o.warmup_steps)


def make_schedule(cfg: ConfigDict) -> optax.Schedule:
  """Linear warm-up to optim.lr, then one of:
  - 'cosine': cosine decay to optim.min_lr at the last step (of optim.decay_steps, or training);
  - 'constant': optim.lr to the end;
  - 'wsd' (warm-up, stable, decay): optim.lr until the last optim.decay_fraction of the steps,
    then optim.decay_shape down to optim.min_lr at the last step. Every rate depends only on the
    step and these fields, so a run stopped in its stable phase can be continued with more
    train.steps (a later decay), the same as if it had been set from the start.

  Step t uses the curve's value at t + 1, so the first step already moves (lr / warmup, as in
  nanoGPT) and the last step of the decay uses min_lr.
  """
  o = cfg.optim
  warmup = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
  if o.schedule == 'constant':
    curve = optax.join_schedules([warmup, optax.constant_schedule(o.lr)], [o.warmup_steps])
  elif o.schedule == 'wsd':
    total = max(o.decay_steps or cfg.train.steps, o.warmup_steps + 1)
    start = decay_start(cfg)
    shape, span = DECAY_SHAPES[o.decay_shape], max(total - start, 1)

    def decay(count):  # count = t - start - 1: t = start is still exactly lr; t = total, min_lr
      progress = jnp.clip((count + 1) / span, 0.0, 1.0)
      return o.min_lr + (o.lr - o.min_lr) * shape(progress)
    curve = optax.join_schedules([warmup, optax.constant_schedule(o.lr), decay],
                                 [o.warmup_steps, start + 1])
  else:
    decay_steps = max(o.decay_steps or cfg.train.steps, o.warmup_steps + 1)
    curve = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, decay_steps, o.min_lr)
  return lambda step: curve(step + 1)


def decayed(axes: tuple[str | None, ...], decay_embeddings: bool) -> bool:
  """Whether AdamW decays a parameter with these logical axes: by its role, not its name.

  A matmul weight has two or more model axes (the scanned stack's `layers` aside) and reads or
  writes the residual width or the MLP's (`embed`, `mlp`): attention and MLP projections, the
  LSTM's input and recurrent matrices, an untied output head. A lookup table (first axis `vocab`
  or `length`: token and learned position embeddings) is decayed only with
  optim.decay_embeddings. Norm scales and biases (one model axis, or heads without a width, as
  the query/key/value bias) never are.
  """
  named = [a for a in axes if a not in (None, 'layers')]
  if named[:1] in (['vocab'], ['length']):
    return decay_embeddings
  return len(named) >= 2 and bool({'embed', 'mlp'} & set(named))


def decay_mask(model_cfg: ConfigDict, decay_embeddings: bool) -> dict[str, Any]:
  """The decay decision of every parameter of the model (a pure dict shaped like its params)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jaxlm.state import abstract_model  # pylint: disable=import-outside-toplevel  (a cycle)
  state = nnx.state(abstract_model(model_cfg), nnx.Param)
  mask = jax.tree.map(
      lambda v: decayed(tuple(v.get_metadata().get('out_sharding') or ()), decay_embeddings),
      state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(mask)


def make_optimizer(cfg: ConfigDict,
                   model_cfg: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain (global-norm clipping, then AdamW without its learning rate) for the resolved
  model `model_cfg` and the learning-rate schedule; the update is -schedule(step) *
  tx.update(...) (see apply_updates)."""
  o = cfg.optim
  tx = optax.chain(
      optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
      # optax.adamw is exactly these two followed by scale_by_learning_rate.
      optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
      optax.add_decayed_weights(o.weight_decay,
                                mask=decay_mask(model_cfg, o.decay_embeddings)),
  )
  return tx, make_schedule(cfg)


def apply_updates(params: Any, direction: Any, lr: jax.Array) -> Any:
  """params - lr * direction: the AdamW step, with the rate given explicitly."""
  return jax.tree.map(lambda p, d: p - lr * d, params, direction)


@struct.dataclass
class LossScale:
  """Dynamic loss scaling for float16 compute.

  The loss is multiplied by `scale` before the backward pass so small float16 gradients do not
  flush to zero. A step with non-finite gradients is skipped and halves the scale; `period`
  finite steps in a row double it.
  """
  scale: jax.Array
  good_steps: jax.Array
  period: int = struct.field(pytree_node=False, default=2000)

  @classmethod
  def create(cls, cfg: ConfigDict) -> 'LossScale':
    return cls(jnp.float32(cfg.optim.loss_scale_init), jnp.int32(0), cfg.optim.loss_scale_period)

  def update(self, finite: jax.Array) -> 'LossScale':
    grow = finite & (self.good_steps + 1 >= self.period)
    scale = jnp.where(finite, jnp.where(grow, self.scale * 2, self.scale),
                      jnp.maximum(self.scale / 2, 1.0))
    good_steps = jnp.where(finite & ~grow, self.good_steps + 1, 0)
    return self.replace(scale=scale, good_steps=good_steps)
