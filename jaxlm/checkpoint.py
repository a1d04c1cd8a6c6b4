"""Orbax checkpoints: the train state, the data iterator's position and the run's metadata, saved
together in one step directory, asynchronously, and restored onto any mesh.

<workdir>/checkpoints/<step>/ holds three items: `state` (the TrainState arrays, written by each
host for its own shards), `data` (the Grain iterator state, JSON) and `meta` (the resolved config,
the tokenizer fingerprint and the jaxlm version, JSON).
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

import jaxlm
from jaxlm.errors import UserError

ITEMS = ('state', 'data', 'meta')


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with jaxlm's three items."""

  def __init__(self, directory: Path, *, keep: int | None, async_save: bool = True,
               create: bool = True):
    """keep=None keeps every checkpoint; create=False (for readers) never makes directories."""
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=create, enable_async_checkpointing=async_save)
    handlers = dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                    meta=ocp.JsonCheckpointHandler())
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Starts saving; returns once the arrays are copied off the devices (the write continues
    in the background when async_save is on)."""
    meta = dict(meta, jaxlm_version=jaxlm.__version__)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
    """Restores (state, data_state, meta) of `step` (default: the latest).

    `abstract_state` gives each array's shape, dtype and target sharding, so a checkpoint written
    on one mesh restores onto another.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f'there is no checkpoint in {self.directory}; train first.')
    self._check_shapes(step, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.data, restored.meta

  def restore_meta(self, step: int | None = None) -> dict:
    """Only the metadata (config, tokenizer) of a checkpoint: cheap, no arrays are read."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f'there is no checkpoint in {self.directory}; train first.')
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def _check_shapes(self, step: int, abstract_state: Any) -> None:
    """A checkpoint of another model shape is an error naming the parameter and both shapes."""
    stored = _by_path(self.manager.item_metadata(step)['state'])
    for path, want in _by_path(abstract_state).items():
      have = stored.get(path)
      if have is None:
        raise UserError(f'checkpoint {step} in {self.directory} has no {path}: it was written by '
                        'another model; use its config or a new workdir.')
      if tuple(have.shape) != tuple(want.shape):
        raise UserError(f'checkpoint {step} in {self.directory} holds {path} with shape '
                        f'{tuple(have.shape)}, but the config builds {tuple(want.shape)}; use the '
                        'config it was trained with or a new workdir.')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()



def _by_path(tree: Any) -> dict[str, Any]:
  """{'params/blocks/attn/q/kernel': leaf, ...} for any pytree (dataclasses, tuples, dicts)."""
  def name(key):
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): leaf for path, leaf in leaves}
