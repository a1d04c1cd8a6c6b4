"""The one place that assembles a run's step, for every command and the tests.

  config -> mesh and logical-axis rules -> resolved model -> the objective (objectives/) ->
  optimizer and schedule -> train-state setup -> jitted train and eval steps

The trainer, jaxlm.eval and jaxlm.generate (through restore.py), jaxlm.bench, jaxlm.compile and the
tests' helper all call `build`; nothing else builds a step, so what compile and bench measure is
what trains. What a step needs of the tokenizer comes in as a `Vocab`: commands without data
(compile, bench) give the vocabulary size alone.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxlm import objectives, sharding
from jaxlm.config import resolve_model
from jaxlm.errors import UserError
from jaxlm.mesh import make_mesh
from jaxlm.objectives import Objective, Vocab
from jaxlm.optim import make_optimizer
from jaxlm.state import StateSetup, model_parts, setup_train_state
from jaxlm.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step


class Built(NamedTuple):
  """A run's step and everything it was built from."""
  mesh: Mesh
  rules: sharding.Rules
  model_cfg: ConfigDict  # resolved
  objective: Objective
  tx: optax.GradientTransformation | None  # None for a reader (train=False)
  schedule: optax.Schedule | None
  setup: StateSetup | None  # creating or restoring the whole train state; None for a reader
  graphdef: Any
  abstract_params: Any  # the parameters' ShapeDtypeStructs with their shardings: a restore target
  train_step: Callable | None  # jitted (state, batch) -> (state, metrics); None for a reader
  eval_step: Callable  # jitted (params, batch) -> (summed loss, counted tokens)


def vocab_of_model(cfg: ConfigDict, tokenizer_vocab: int = 0) -> Vocab:
  """The Vocab of a command that reads no data (compile, bench): `tokenizer_vocab` ids when
  known, else those of an explicit model.vocab_size less the objective's reserved ids; no
  end-of-sequence id, and stand-in tables of the data (every id begins a word, every id as
  frequent): the same shapes as training, so the same program."""
  size = tokenizer_vocab or cfg.model.vocab_size - objectives.reserved_ids(cfg)
  return Vocab(size, word_starts=np.ones(size, bool), frequencies=np.full(size, 1 / size))


def model_config(cfg: ConfigDict, vocab: Vocab) -> ConfigDict:
  """The resolved model of `cfg` for a tokenizer of vocab.size ids, with room for the ids the
  objective reserves past them (one sentence when an explicit model.vocab_size has none)."""
  reserved = objectives.reserved_ids(cfg)
  if reserved and 0 < cfg.model.vocab_size < vocab.size + reserved:
    raise UserError(f'config field model.vocab_size={cfg.model.vocab_size} has no room for the '
                    f'{reserved} id(s) train.objective={cfg.train.objective!r} needs past the '
                    f"tokenizer's {vocab.size}; set it to 0 (or at least {vocab.size + reserved}).")
  return resolve_model(cfg.model, vocab.size + reserved)


def build(cfg: ConfigDict, vocab: Vocab, devices: Sequence[jax.Device] | None = None, *,
          mesh: Mesh | None = None, model_cfg: ConfigDict | None = None,
          train: bool = True) -> Built:
  """The step of `cfg` on `devices` (default: all), or on `mesh` when the caller made it first
  (the trainer does, so that a mesh the machine cannot hold fails before data is prepared).
  `model_cfg` is the resolved model when it is known already (a checkpoint's); train=False builds
  a reader's: the eval step alone, and no optimizer state."""
  mesh = mesh or make_mesh(cfg, devices)
  rules = sharding.rules_from_config(cfg.mesh)
  model_cfg = model_cfg or model_config(cfg, vocab)
  objective = objectives.make(cfg, vocab, model_cfg.vocab_size)
  tx = schedule = setup = train_step = None
  if train:
    tx, schedule = make_optimizer(cfg, model_cfg)
    setup = setup_train_state(cfg, model_cfg, tx, mesh, rules)
    graphdef, abstract_params = setup.graphdef, setup.abstract.params
    train_step = jit_train_step(make_train_step(cfg, graphdef, tx, schedule, mesh, rules,
                                                objective), setup.shardings, mesh, rules)
  else:
    graphdef, abstract_params = model_parts(model_cfg, mesh, rules)
  param_shardings = jax.tree.map(lambda x: x.sharding, abstract_params)
  eval_step = jit_eval_step(
      make_eval_step(graphdef, mesh, rules, objective, cfg.train.loss_chunk), param_shardings,
      mesh, rules)
  return Built(mesh, rules, model_cfg, objective, tx, schedule, setup, graphdef,
               abstract_params, train_step, eval_step)
