"""The pure train and eval steps, and their jitted, sharded forms. No I/O, no host syncs.

A batch is a dict of [B, L] arrays: `inputs` (token ids), `targets` (the next token ids) and
`mask` (1 where the target counts); packed batches add `segment_ids` and `positions`, a prefix
LM's `prefix` [B, 1].
Shape letters: B batch, L length, A micro-batches.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxlm import families, sharding
from jaxlm.loss import blockwise_cross_entropy, chunked_cross_entropy
from jaxlm.objectives import Objective
from jaxlm.optim import apply_updates, includes_rate
from jaxlm.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_train_step(cfg: ConfigDict, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, rules: sharding.Rules,
                    objective: Objective,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Builds train_step(state, batch) -> (state, metrics).

  The objective is the mean over every counted token of the whole batch: each of the
  `train.grad_accum` micro-batches contributes its summed loss divided by the batch's total token
  count, so the summed gradients equal those of the whole batch at once. With float16 compute that
  mean is multiplied by the dynamic loss scale before the backward pass and the gradients divided
  by it after. An update whose loss or gradients are not finite is not applied (and the scale is
  halved); the step still counts, and the learning rate is always schedule(state.step).

  The batch's rows become what the model reads through the `objective`
  (objective.train_batch: masked, span-corrupted, reordered, or as they are), with keys from
  fold_in(rng, step) and each row's global index (step * B + row), before the batch is split
  into micro-batches; its metrics (the masking ratio) are the step's too. The model family's
  auxiliary loss (families.Family.aux_loss), if it has one, is added to the objective's mean,
  averaged over the micro-batches, and logged as aux_loss.
  """
  accum, z_loss, chunk = cfg.train.grad_accum, cfg.train.z_loss, cfg.train.loss_chunk
  use_dropout = cfg.model.dropout > 0
  blockwise = cfg.train.loss_grad == 'blockwise'
  family = families.of(cfg.model)

  def loss_fn(params, batch, key, scale, loss_scale):
    model = nnx.merge(graphdef, params)
    h, _ = model.features(batch['inputs'], batch.get('positions'),
                          segment_ids=batch.get('segment_ids'), dropout_key=key,
                          prefix=prefix_of(batch))
    if blockwise:  # the loss's gradient is formed in its forward pass, at this scale
      w, w_axes = model.head_weight()
      summed, ce, count = blockwise_cross_entropy(h, w, batch['targets'], batch['mask'],
                                                  z_loss, chunk, scale, w_axes)
    else:
      summed, ce, count = chunked_cross_entropy(model.logits, h, batch['targets'],
                                                batch['mask'], z_loss, chunk)
    loss, aux = summed * scale, family.aux_loss(model)
    if aux is None:
      return loss, (ce, jnp.float32(0))
    # The family's auxiliary term (a micro-batch mean): the step's is its mean over micro-batches.
    return loss + aux * (loss_scale / accum), (ce, aux.astype(jnp.float32))

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    with sharding.use_mesh(mesh, rules):
      step_key = jax.random.fold_in(state.rng, state.step)
      B = batch['inputs'].shape[0]
      rows = state.step * B + jnp.arange(B)  # each row's global index
      batch, extra = objective.train_batch(batch, step_key, state.step, rows)
      key = step_key if use_dropout else None
      loss_scale = state.loss_scale.scale if state.loss_scale is not None else jnp.float32(1)
      count = jnp.maximum(batch['mask'].astype(jnp.float32).sum(), 1)
      scale = loss_scale / count  # the summed loss times this is the (scaled) batch mean

      def micro_step(carry, xs):
        grads, ce, aux = carry
        micro_batch, i = xs
        micro_key = jax.random.fold_in(key, i) if use_dropout else None
        (_, (c, a)), g = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, micro_batch, micro_key, scale, loss_scale)
        return (jax.tree.map(jnp.add, grads, g), ce + c, aux + a), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, ce, aux), _ = jax.lax.scan(
          micro_step, (zeros, jnp.float32(0), jnp.float32(0)),
          (split_micro_batches(batch, accum), jnp.arange(accum)))
      grads = jax.tree.map(lambda g: g / loss_scale, grads)
      grad_norm = optax.tree.norm(grads)
      loss_finite = jnp.isfinite(ce) & jnp.isfinite(aux)
      finite = loss_finite & jnp.isfinite(grad_norm)

      lr = schedule(state.step)
      direction, opt_state = tx.update(grads, state.opt_state, state.params)
      params = (optax.apply_updates(state.params, direction) if includes_rate(cfg) else
                apply_updates(state.params, direction, lr))
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      new_state = state.replace(
          step=state.step + 1, params=keep(params, state.params),
          opt_state=keep(opt_state, state.opt_state),
          skipped=state.skipped.update(finite, loss_finite, state.step),
          loss_scale=None if state.loss_scale is None else state.loss_scale.update(finite))
      metrics = dict(loss=ce / count, grad_norm=grad_norm, lr=lr, tokens=count, finite=finite,
                     **extra)
      if family.has_aux_loss:
        metrics['aux_loss'] = aux / accum
      if state.loss_scale is not None:
        metrics['loss_scale'] = loss_scale
      return new_state, metrics

  return train_step


def prefix_of(batch: Batch) -> jax.Array | None:
  """A prefix LM's batch carries `prefix` [B, 1], each row's input length (span corruption,
  prefix -> continuation): what the model reads bidirectionally (a Transformer) or encodes (the
  LSTM encoder-decoder). None for the others."""
  return batch['prefix'][:, 0] if 'prefix' in batch else None


def split_micro_batches(batch: Batch, accum: int) -> Batch:
  """[B, L] -> [A, B/A, L], micro-batch i taking rows i, i+A, i+2A, ...

  Taking strided rows keeps every micro-batch spread over the batch shards, so the split moves no
  data between devices.
  """
  def split(x):
    micro = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(micro, (None, *sharding.BATCH_AXES))
  return jax.tree.map(split, batch)


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh, rules: sharding.Rules,
                   objective: Objective, chunk: int = 0,
                   ) -> Callable[[Any, Batch], dict[str, tuple[jax.Array, jax.Array]]]:
  """Builds eval_step(params, batch) -> {view: (summed cross-entropy, counted tokens)}: each
  batch the objective scores from the rows (objective.eval_views; '' the main one). A masked
  LM's selected tokens, span corruption's windows and FIM's cuts are drawn from the run's seed
  and each row's `index`: the same for every checkpoint, so evaluations compare."""

  def eval_step(params, batch: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    with sharding.use_mesh(mesh, rules):
      model = nnx.merge(graphdef, params)
      out = {}
      for name, view in objective.eval_views(batch).items():
        h, _ = model.features(view['inputs'], view.get('positions'),
                              segment_ids=view.get('segment_ids'), prefix=prefix_of(view))
        _, ce, count = chunked_cross_entropy(model.logits, h, view['targets'], view['mask'],
                                             chunk=chunk)
        out[name] = (ce, count)
      return out
  return eval_step


def jit_train_step(train_step, state_shardings: TrainState, mesh: Mesh, rules: sharding.Rules):
  """jit with explicit in/out shardings; the old state is donated, so it is updated in place."""
  batch_sh = sharding.batch_sharding(mesh, rules)
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sh),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def jit_eval_step(eval_step, param_shardings: Any, mesh: Mesh, rules: sharding.Rules):
  batch_sh = sharding.batch_sharding(mesh, rules)
  return jax.jit(eval_step, in_shardings=(param_shardings, batch_sh),
                 out_shardings=sharding.replicated(mesh))
