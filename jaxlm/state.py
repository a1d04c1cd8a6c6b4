"""The train state and its sharded creation: eval_shape -> shardings -> a jitted init.

Parameters never exist unsharded: the init function runs under `jax.jit` with the target shardings
as `out_shardings`, so each device materialises only its own shard.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from ml_collections import ConfigDict

from jaxlm import sharding
from jaxlm.model import Transformer
from jaxlm.optim import LossScale


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree of arrays that checkpoints as it is."""
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: dict[str, Any]  # Pure dict of float32 parameters (the nnx.to_pure_dict layout).
  opt_state: optax.OptState
  rng: jax.Array  # Base key; step t uses fold_in(rng, t), so a resumed run draws the same bits.
  skipped: jax.Array  # int32 [3]: steps whose update was not applied (a non-finite loss or
  #                     gradient), the last such step, and what was non-finite (see SKIP_CAUSES).
  loss_scale: LossScale | None = None  # Only with float16 compute.


# What made a step skip its update, as recorded in TrainState.skipped[2].
SKIP_CAUSES = {1: 'loss', 2: 'gradient norm'}


def abstract_model(model_cfg: ConfigDict) -> Transformer:
  """The model with ShapeDtypeStructs instead of arrays: shapes and axis names, no memory."""
  return nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))


def init_params(model_cfg: ConfigDict, key: jax.Array) -> dict[str, Any]:
  """Fresh parameters as a pure dict (call under jit with out_shardings to create them sharded)."""
  model = Transformer(model_cfg, rngs=nnx.Rngs(key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


class StateSetup(NamedTuple):
  """What it takes to create or restore a train state on a mesh."""
  graphdef: nnx.GraphDef  # Static structure: nnx.merge(graphdef, params) is the model again.
  shardings: TrainState  # A NamedSharding per leaf, for jit and for restoring.
  abstract: TrainState  # ShapeDtypeStructs with those shardings: the restore target.
  init: Callable[[], TrainState]  # Jitted: creates a fresh state, already sharded.


def setup_train_state(cfg: ConfigDict, model_cfg: ConfigDict, tx: optax.GradientTransformation,
                      mesh: Mesh, rules: sharding.Rules) -> StateSetup:
  """eval_shape -> shardings -> a jitted init: nothing is allocated until `init()` is called."""
  graphdef, abstract_params = nnx.split(abstract_model(model_cfg), nnx.Param)
  root = jax.random.PRNGKey(cfg.seed)

  def init() -> TrainState:
    params = init_params(model_cfg, jax.random.fold_in(root, 0))
    return TrainState(
        step=jnp.int32(0), params=params, opt_state=tx.init(params),
        rng=jax.random.fold_in(root, 1), skipped=jnp.zeros((3,), jnp.int32),
        loss_scale=LossScale.create(cfg) if model_cfg.dtype == 'float16' else None)

  param_shardings = sharding.param_shardings(abstract_params, mesh, rules)
  shapes = jax.eval_shape(init)
  shardings = state_shardings(shapes, param_shardings, tx, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  return StateSetup(graphdef, shardings, abstract, jax.jit(init, out_shardings=shardings))


def state_shardings(abstract: TrainState, param_shardings: dict[str, Any],
                    tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings for every leaf: optimizer moments follow their parameter, scalars are replicated."""
  replicated = sharding.replicated(mesh)
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, param_shardings,
                              transform_non_params=lambda _: replicated,
                              is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(
      step=replicated, params=param_shardings, opt_state=opt, rng=replicated, skipped=replicated,
      loss_scale=jax.tree.map(lambda _: replicated, abstract.loss_scale))
