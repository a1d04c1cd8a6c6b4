"""config -> optax: learning-rate schedule, AdamW or Muon with a weight-decay mask, clipping, loss
scaling.

The learning rate is not inside the optax chain: the train step multiplies the chain's update
by -schedule(state.step). So the rate applied at a step is a function of that step alone, the same
one that is logged, whether or not earlier updates were skipped (a skipped update leaves the
optimizer state, and with it Adam's own count, untouched).
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from ml_collections import ConfigDict
from optax.contrib import MuonDimensionNumbers

from jaxlm.model.layers import width_mult


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


def muon_dims(axes: tuple[str | None, ...]) -> MuonDimensionNumbers | None:
  """How Muon sees a parameter with these logical axes as matrices, or None (AdamW's).

  Muon orthogonalises the hidden matmul weights (decayed() says which are matmuls; the
  embeddings and the output head, which read or write `vocab`, stay with AdamW, as in
  modded-nanogpt and the Muon papers). Each is a batch of matrices (inputs, outputs): the scanned
  stack's `layers` and the unnamed axes (the query/key/value slot of the fused projection, the
  LSTM's four gates) are batch axes, so each layer's query, key and value projections (and each
  gate) are orthogonalised on their own; the input is the first named axis, with `head_dim`
  after `heads` (the attention output projection reads every head).
  """
  named = [i for i, a in enumerate(axes) if a not in (None, 'layers')]
  if not decayed(axes, True) or {'vocab', 'length'} & set(axes):
    return None
  inputs = 2 if axes[named[0]] == 'heads' and len(named) > 2 else 1
  return MuonDimensionNumbers(tuple(named[:inputs]), tuple(named[inputs:]))


def _by_param(model_cfg: ConfigDict, fn) -> dict[str, Any]:
  """fn(logical axes) for every parameter of the model (a pure dict shaped like its params)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from jaxlm.state import abstract_model  # pylint: disable=import-outside-toplevel  (a cycle)
  state = nnx.state(abstract_model(model_cfg), nnx.Param)
  values = []  # (numbered first: None and NamedTuples are not leaves of a tree map)

  def number(v):
    values.append(fn(tuple(v.get_metadata().get('out_sharding') or ())))
    return len(values) - 1
  numbers = jax.tree.map(number, state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  return jax.tree.map(lambda i: values[i], nnx.to_pure_dict(numbers))


def decay_mask(model_cfg: ConfigDict, decay_embeddings: bool) -> dict[str, Any]:
  """The decay decision of every parameter of the model (a pure dict shaped like its params)."""
  return _by_param(model_cfg, lambda axes: decayed(axes, decay_embeddings))


def _is_dims(x) -> bool:
  return x is None or isinstance(x, (MuonDimensionNumbers, optax.MaskedNode))


def _matching(dims: Any, updates: Any) -> Any:
  """`dims` with optax.partition's MaskedNode where `updates` has one (Muon's share only)."""
  return jax.tree.map(lambda d, u: u if isinstance(u, optax.MaskedNode) else d, dims, updates,
                      is_leaf=_is_dims)


def scale_to_rms(dims: Any, rms: float) -> optax.GradientTransformation:
  """Multiplies each orthogonalised update (RMS about 1/sqrt(max(fan_in, fan_out))) by
  rms * sqrt(max(fan_in, fan_out)), so that its RMS is about `rms`, AdamW's typical 0.2: the
  learning rate, schedule and weight decay of AdamW then carry over (Liu et al. 2025, "Muon is
  scalable for LLM training")."""
  def scale(updates, params=None):
    del params

    def one(d, u):
      if d is None or isinstance(u, optax.MaskedNode):
        return u
      fan_in = math.prod(u.shape[a] for a in d.reduction_axis)
      fan_out = math.prod(u.shape[a] for a in d.output_axis)
      return u * (rms * math.sqrt(max(fan_in, fan_out)))
    return jax.tree.map(one, _matching(dims, updates), updates, is_leaf=_is_dims)
  return optax.stateless(scale)


def make_optimizer(cfg: ConfigDict,
                   model_cfg: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain for the resolved model `model_cfg` and the learning-rate schedule; the update
  is -schedule(step) * tx.update(...) (see apply_updates). The chain clips the global gradient
  norm, then:
  - 'adamw': Adam's direction plus decoupled weight decay (optax.adamw without its rate);
  - 'muon': optax.contrib.scale_by_muon (Nesterov momentum, then Newton-Schulz
    orthogonalisation) on the hidden matmul weights (muon_dims), scaled to AdamW's update RMS,
    and Adam on the rest (embeddings, head, norms, biases), both with the same weight decay;
  - 'schedule_free_adamw': optax.contrib.schedule_free around Adam without momentum, whose
    update is the whole step (includes_rate); the parameters to evaluate are eval_params'.
  Under muP (model.parametrization='mup', width multiplier m) the hidden matrices' updates are
  scaled by 1/m (AdamW), or 1/sqrt(m) (Muon, whose orthogonalised update is scaled to a
  constant RMS, so its spectral norm grows with sqrt(m) without this).
  """
  o = cfg.optim
  mask = decay_mask(model_cfg, o.decay_embeddings)
  clip = optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity()
  # optax.adamw is exactly these two followed by scale_by_learning_rate. (The chain stays flat:
  # its state's layout is what checkpoints hold, so older ones restore.)
  adam = [optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
          optax.add_decayed_weights(o.weight_decay, mask=mask)]
  if o.name == 'schedule_free_adamw':
    # optax.contrib.schedule_free_adamw with the decay mask: Adam without momentum (b1 is the
    # interpolation's), decayed weights, the rate (warm-up, then constant) inside.
    schedule = make_schedule(cfg)
    base = optax.chain(
        optax.scale_by_rms(decay=o.b2, eps=o.eps, eps_in_sqrt=False, bias_correction=True),
        optax.add_decayed_weights(o.weight_decay, mask=mask),
        optax.scale_by_learning_rate(schedule))
    free = optax.contrib.schedule_free(base, lambda count: schedule(count - 1), b1=o.b1,
                                       weight_lr_power=o.schedule_free_power)
    return optax.chain(clip, free), schedule
  if o.name == 'muon':
    dims = _by_param(model_cfg, muon_dims)
    muon = optax.chain(
        optax.contrib.scale_by_muon(beta=o.muon_momentum, ns_steps=o.muon_ns_steps,
                                    nesterov=True,
                                    weight_dimension_numbers=lambda u: _matching(dims, u)),
        scale_to_rms(dims, o.muon_rms),
        optax.add_decayed_weights(o.weight_decay, mask=mask))
    labels = jax.tree.map(lambda d: 'adam' if d is None else 'muon', dims, is_leaf=_is_dims)
    direction = [optax.partition({'muon': muon, 'adam': optax.chain(*adam)}, labels)]
  else:
    direction = adam
  m = width_mult(model_cfg)
  if m != 1.0:  # muP's per-layer rates (see the docstring)
    hidden = 1 / (math.sqrt(m) if o.name == 'muon' else m)
    rates = _by_param(model_cfg, lambda axes: 1.0 if muon_dims(axes) is None else hidden)
    direction.append(optax.stateless(
        lambda updates, params=None: jax.tree.map(lambda u, r: u * r, updates, rates)))
  return optax.chain(clip, *direction), make_schedule(cfg)


def includes_rate(cfg: ConfigDict) -> bool:
  """Whether the optimizer's update is the whole step, rate and sign included (schedule-free:
  its averaging weighs each step by its rate), rather than a direction for apply_updates."""
  return cfg.optim.name == 'schedule_free_adamw'


def apply_updates(params: Any, direction: Any, lr: jax.Array) -> Any:
  """params - lr * direction: the AdamW or Muon step, with the rate given explicitly."""
  return jax.tree.map(lambda p, d: p - lr * d, params, direction)


def eval_params(opt_state: Any, params: Any) -> Any:
  """The parameters to evaluate, generate from and export: schedule-free AdamW's average x,
  computed from the parameters it takes gradients at (y) and its state's z
  (optax.contrib.schedule_free_eval_params); the parameters themselves for other optimizers."""
  free = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_free) if _is_free(s)]
  return _averaged(free[0], params) if free else params  # (no copy of the others)


_averaged = jax.jit(optax.contrib.schedule_free_eval_params)


def _is_free(x) -> bool:
  return isinstance(x, optax.contrib.ScheduleFreeState)


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
