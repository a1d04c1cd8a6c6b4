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

from jaxlm import families, sharding
from jaxlm.model.layers import LanguageModel
from jaxlm.optim import LossScale


@struct.dataclass
class Skips:
  """Updates that were not applied because the loss or the gradients were not finite."""
  count: jax.Array  # int32: skipped updates in the whole run.
  last: jax.Array  # int32: the step (1-based, as logged) of the latest skip.
  cause: jax.Array  # int32: what was non-finite at that step (see SKIP_CAUSES).
  run: jax.Array  # int32: skips in a row up to now (0 after an applied update).
  longest: jax.Array  # int32: the longest such run so far (the trainer aborts past a limit).

  @classmethod
  def create(cls) -> 'Skips':
    return cls(*(jnp.int32(0) for _ in range(5)))

  def update(self, finite: jax.Array, loss_finite: jax.Array, step: jax.Array) -> 'Skips':
    """The record after `step` (0-based) applied its update (finite) or skipped it."""
    run = jnp.where(finite, 0, self.run + 1)
    return Skips(count=self.count + (~finite).astype(jnp.int32),
                 last=jnp.where(finite, self.last, step + 1),
                 cause=jnp.where(finite, self.cause, jnp.where(loss_finite, 2, 1)),
                 run=run, longest=jnp.maximum(self.longest, run))


# What made a step skip its update, as recorded in Skips.cause.
SKIP_CAUSES = {1: 'loss', 2: 'gradient norm'}


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree of arrays that checkpoints as it is."""
  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: dict[str, Any]  # Pure dict of float32 parameters (the nnx.to_pure_dict layout).
  opt_state: optax.OptState
  rng: jax.Array  # Base key; step t uses fold_in(rng, t), so a resumed run draws the same bits.
  skipped: Skips  # Updates not applied (a non-finite loss or gradient); the step still counts.
  loss_scale: LossScale | None = None  # Only with float16 compute.


def build_model(model_cfg: ConfigDict, rngs: nnx.Rngs) -> LanguageModel:
  """The model of a resolved config, of its family (model.kind: families.py)."""
  return families.of(model_cfg).module()(model_cfg, rngs=rngs)


def abstract_model(model_cfg: ConfigDict) -> LanguageModel:
  """The model with ShapeDtypeStructs instead of arrays: shapes and axis names, no memory."""
  return nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))


def init_params(model_cfg: ConfigDict, key: jax.Array) -> dict[str, Any]:
  """Fresh parameters as a pure dict (call under jit with out_shardings to create them sharded)."""
  model = build_model(model_cfg, nnx.Rngs(key))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def model_parts(model_cfg: ConfigDict, mesh: Mesh,
                rules: sharding.Rules) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """The model's graphdef, and its parameters as ShapeDtypeStructs with their shardings on `mesh`
  (a restore target): what a reader of a checkpoint needs, without any optimizer state."""
  graphdef, abstract = nnx.split(abstract_model(model_cfg), nnx.Param)
  return graphdef, jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nnx.to_pure_dict(abstract), sharding.param_shardings(abstract, mesh, rules))


def abstract_params(model_cfg: ConfigDict, mesh: Mesh, rules: sharding.Rules) -> dict[str, Any]:
  """The parameters as ShapeDtypeStructs with their shardings on `mesh` (a restore target)."""
  return model_parts(model_cfg, mesh, rules)[1]


class StateSetup(NamedTuple):
  """What it takes to create or restore a train state on a mesh."""
  undivided: list[str]  # Parameter dimensions replicated because the mesh does not divide them.
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
        rng=jax.random.fold_in(root, 1), skipped=Skips.create(),
        loss_scale=LossScale.create(cfg) if model_cfg.dtype == 'float16' else None)

  param_shardings = sharding.param_shardings(abstract_params, mesh, rules)
  shapes = jax.eval_shape(init)
  shardings = state_shardings(shapes, param_shardings, tx, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  return StateSetup(sharding.undivided(abstract_params, mesh, rules), graphdef, shardings,
                    abstract, jax.jit(init, out_shardings=shardings))


def state_shardings(abstract: TrainState, param_shardings: dict[str, Any],
                    tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings for every leaf: optimizer moments follow their parameter, scalars are replicated."""
  replicated = sharding.replicated(mesh)
  # (a partitioned optimizer, Muon's, holds each part's moments with MaskedNode for the others)
  opt = optax.tree_map_params(tx, lambda v, s: v if isinstance(v, optax.MaskedNode) else s,
                              abstract.opt_state, param_shardings,
                              transform_non_params=lambda _: replicated,
                              is_leaf=lambda x: isinstance(x, (NamedSharding, optax.MaskedNode)))
  return TrainState(
      step=replicated, params=param_shardings, opt_state=opt, rng=replicated,
      skipped=jax.tree.map(lambda _: replicated, abstract.skipped),
      loss_scale=jax.tree.map(lambda _: replicated, abstract.loss_scale))
