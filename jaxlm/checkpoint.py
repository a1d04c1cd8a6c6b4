"""Orbax checkpoints: the train state, the data iterator's position and the run's metadata, saved
together in one step directory, asynchronously, and restored onto any mesh.

<workdir>/checkpoints/<step>/ holds three items: `state` (the TrainState arrays, written by each
host for its own shards), `data` (the Grain iterator state, JSON) and `meta` (the resolved config,
the tokenizer fingerprint and the jaxlm version, JSON). Orbax writes a step into a temporary
directory and renames it when complete, so a save killed half-way leaves no step behind (the
leftover is removed at the next start). A complete step that cannot be read back (a truncated
file, a bad disk) is reported and moved to <workdir>/corrupt-checkpoints/, and the previous one is
used; if none can be read, nothing is moved and the run stops with an error rather than start
from scratch.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging as absl_logging

import jaxlm
from jaxlm import paths
from jaxlm.errors import UserError

ITEMS = ('state', 'data', 'meta')


def _quiet_abandoned_reads(unraisable) -> None:
  """When one array of a checkpoint cannot be read, Orbax abandons the reads of the others: they
  complete into an event loop already closed ('Event loop is closed'), or are collected as
  coroutines that never finished. That is expected after a failed read, which jaxlm reports in
  one sentence, so it is not printed; anything else goes to the previous hook."""
  code = getattr(unraisable.object, 'cr_code', None)
  if (isinstance(unraisable.exc_value, RuntimeError) and
      str(unraisable.exc_value) == 'Event loop is closed') or (
          code is not None and 'orbax' in code.co_filename):
    return
  _Quiet.previous_hook(unraisable)


class _NoOrbaxTracebacks(logging.Filter):
  """Orbax logs the traceback of a failed background write before handing the error back to
  the save or wait call, where jaxlm reports it as one sentence; its log copy is dropped. So is
  asyncio's copy ("Task exception was never retrieved") of the same error from Orbax's tasks,
  whose frames may be only those of the array reads under it (JAX's array serialization over
  TensorStore: a torn checkpoint's other arrays, abandoned once the first failed), or none but
  asyncio's own when the abandoned future is TensorStore's, native code with no Python frame."""
  SOURCES = tuple(f'{os.sep}{part}{os.sep}' for part in ('orbax', 'array_serialization',
                                                          'tensorstore'))
  ASYNCIO = f'{os.sep}asyncio{os.sep}'

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.exc_info:
      return True
    tb = record.exc_info[2]
    files = [record.pathname]
    while tb is not None:
      files.append(tb.tb_frame.f_code.co_filename)
      tb = tb.tb_next
    if record.name == 'asyncio' and all(self.ASYNCIO in f for f in files):
      return False  # (in a process with a Checkpointer: only Orbax's reads leave such futures)
    return not any(source in f for f in files for source in self.SOURCES)


class _Quiet:
  """The filters above, in force only once a jaxlm Checkpointer exists, so that importing jaxlm
  changes nothing. Orbax's own log of a failed write is dropped only while a Checkpointer is open
  (reference-counted), so Orbax used on its own keeps its messages. Abandoned async work (reads
  given up after a failed restore, tasks whose error jaxlm already reported) can surface at any
  later moment, up to the interpreter's exit, so the unraisable hook and the asyncio filter stay
  from the first Checkpointer on; they drop only what comes from Orbax's files."""
  open = 0
  previous_hook = None
  filter = _NoOrbaxTracebacks()

  @classmethod
  def enter(cls) -> None:
    if cls.previous_hook is None:
      cls.previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_abandoned_reads
      logging.getLogger('asyncio').addFilter(cls.filter)
    if cls.open == 0:
      absl_logging.get_absl_logger().addFilter(cls.filter)
    cls.open += 1

  @classmethod
  def exit(cls) -> None:
    cls.open -= 1
    if cls.open == 0:
      absl_logging.get_absl_logger().removeFilter(cls.filter)


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` with jaxlm's three items."""

  def __init__(self, directory: Path, *, keep: int | None, keep_period: int = 0,
               async_save: bool = True, create: bool = True):
    """Keeps the latest `keep` steps (None: all) plus every `keep_period`-th step (0: none).

    create=False is for readers (eval, generate): no directory is made or cleaned.
    """
    paths.without_tensorflow()  # Orbax reads through etils.epath
    self.directory = paths.path(directory)
    if not paths.is_url(directory):
      self.directory = self.directory.absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_period or None, create=create,
        cleanup_tmp_directories=create, enable_async_checkpointing=async_save)
    handlers = dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                    meta=ocp.JsonCheckpointHandler())
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    _Quiet.enter()
    self.closed = False
    self.in_flight: int | None = None  # the step being written in the background

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Starts saving; returns once the arrays are copied off the devices (the write continues
    in the background when async_save is on). A failed write is a UserError."""
    meta = dict(meta, jaxlm_version=jaxlm.__version__)
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except  # any failure to write is reported
      raise self._write_error(self.in_flight or step, e) from None  # (maybe the previous save)
    self.in_flight = step

  def wait(self) -> None:
    """Blocks until the background write is done; a failed write is a UserError."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self.in_flight, e) from None
    self.in_flight = None

  def _write_error(self, step: int | None, e: Exception) -> UserError:
    good = [s for s in self.all_steps() if s != step]
    kept = f'checkpoint {good[-1]} is intact' if good else 'no earlier checkpoint exists'
    what = 'a checkpoint' if step is None else f'checkpoint {step}'
    return UserError(f'writing {what} to {self.directory} failed ({short_reason(e)}); {kept}; free '
                     'disk space (or fix the directory) and run the same command to resume.')

  def restore(self, abstract_state: Any, step: int) -> tuple[Any, dict, dict]:
    """Restores (state, data_state, meta) of `step`.

    `abstract_state` gives each array's shape, dtype and target sharding, so a checkpoint written
    on one mesh restores onto another. model.dtype may change on resume: when float16 compute
    (and so a loss scale) is turned on or off, the state comes back without a loss scale (None),
    for the caller to start a fresh one.
    """
    target = abstract_state
    scale = getattr(abstract_state, 'loss_scale', None)
    stored = self._stored(step)
    stored_scale = any(p.startswith('loss_scale/') for p in stored)
    if hasattr(abstract_state, 'loss_scale') and (scale is not None) != stored_scale:
      target = abstract_state.replace(loss_scale=None)
    self._check_shapes(step, target, stored)
    if not stored_scale or target is abstract_state:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
      return restored.state, restored.data, restored.meta
    # float16 turned off: every array but the stored loss scale.
    with ocp.PyTreeCheckpointer() as reader:
      state = reader.restore(self.directory / str(step) / 'state', args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    rest = self.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    return state, rest.data, rest.meta

  def restore_params(self, abstract_params: Any, step: int, abstract_opt_state: Any = None) -> Any:
    """Only the parameters of `step` (the state's `params`), onto the shardings in
    `abstract_params`: what evaluation, generation, export and init_from need. The optimizer
    state is not read, so memory holds one copy of the model, not three; unless
    `abstract_opt_state` asks for it too (schedule-free's average needs it): then (params,
    optimizer state)."""
    target = {'params': abstract_params}
    if abstract_opt_state is not None:
      target['opt_state'] = abstract_opt_state
    self._check_shapes(step, target)
    with ocp.PyTreeCheckpointer() as reader:
      restored = reader.restore(self.directory / str(step) / 'state', args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    if abstract_opt_state is not None:
      return restored['params'], restored['opt_state']
    return restored['params']

  def restore_meta(self, step: int) -> dict:
    """Only the metadata (config, tokenizer) of a checkpoint: cheap, no arrays are read."""
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore_latest(self, abstract_state: Any,
                     check_meta: Callable[[dict, int], None]) -> tuple[Any, dict, int] | None:
    """(state, data_state, step) of the newest checkpoint that reads back whole, or None if there
    is no checkpoint at all.

    `check_meta(meta, step)` raises UserError when a readable checkpoint does not belong to this
    config (another tokenizer, say): that is a mistake to report, not a corruption to skip.
    Unreadable newer steps are moved to <workdir>/corrupt-checkpoints/ once an older one has been
    restored; when none is readable, nothing is moved and a UserError says so.
    """
    steps, unreadable = self.all_steps(), []
    for step in reversed(steps):
      try:
        meta = self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((step, e))
        continue
      check_meta(meta, step)
      try:
        state, data_state, _ = self.restore(abstract_state, step)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((step, e))
        continue
      for bad, reason in unreadable:
        self._quarantine(bad, reason)
      return state, data_state, step
    if unreadable:
      listed = ', '.join(f'{s} ({short_reason(e)})' for s, e in unreadable)
      raise UserError(f'none of the checkpoints in {self.directory} can be read: {listed}; nothing '
                      'was changed. Restore a good checkpoint there, or move the directory away '
                      'to start afresh.')
    return None

  def _quarantine(self, step: int, reason: Exception) -> None:
    target = self.directory.parent / 'corrupt-checkpoints' / f'{step}-{int(time.time())}'
    if jax.process_index() == 0:
      paths.move(self.directory / str(step), target)
      print(f'checkpoint {step} in {self.directory} cannot be read ({short_reason(reason)}); '
            f'moved it to {target} and resumed from an earlier one.', flush=True)
    if jax.process_count() > 1:  # the other hosts look again only once it has moved
      multihost_utils.sync_global_devices(f'jaxlm: checkpoint {step} moved aside')
    self.manager.reload()

  def _stored(self, step: int) -> dict[str, Any]:
    """The stored arrays' metadata of `step`, by path."""
    metadata = self.manager.item_metadata(step)
    if not metadata or not metadata['state']:
      raise ValueError('its array metadata is missing')  # unreadable, not another model
    return _by_path(metadata['state'])

  def _check_shapes(self, step: int, abstract_state: Any,
                    stored: dict[str, Any] | None = None) -> None:
    """A checkpoint of another model shape is an error naming the parameter and both shapes."""
    stored = self._stored(step) if stored is None else stored
    for path, want in _by_path(abstract_state).items():
      have = stored.get(path)
      if have is None:
        raise UserError(f'checkpoint {step} in {self.directory} has no {path}: it was written by '
                        'another model; use its config or a new workdir.')
      if tuple(have.shape) != tuple(want.shape):
        raise UserError(f'checkpoint {step} in {self.directory} holds {path} with shape '
                        f'{tuple(have.shape)}, but the config builds {tuple(want.shape)}; use the '
                        'config it was trained with or a new workdir.')

  def reached_preemption(self, step: int) -> bool:
    """Multi-host: whether JAX's preemption notice (SIGTERM on any host) reached this step."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    if not self.closed:
      self.closed = True
      try:
        self.manager.close()
      finally:
        _Quiet.exit()


def step_dirs(directory: Path) -> list[int]:
  """The steps of the finished checkpoints in `directory`, newest first, from the directory
  names alone (Orbax's unfinished ones carry a suffix): no Orbax, no JAX backend."""
  directory = paths.path(directory)
  if not directory.is_dir():
    return []
  return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def peek_config(directory: Path) -> dict | None:
  """The config saved with the newest step in `directory` whose metadata reads, by reading its
  JSON file directly: no Orbax manager, so JAX's backends are not started yet and the run's
  cpu_devices and xla_flags can still be applied (see mesh.configure_backend). None if no step's
  metadata reads; the restore that follows then reports why."""
  for step in step_dirs(directory):
    try:
      return json.loads((paths.path(directory) / str(step) / 'meta' / 'metadata').read_text()
                        )['config']
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return None


def short_reason(e: BaseException) -> str:
  """The root cause of an error, on one line: Orbax wraps TensorStore's precise message."""
  while e.__cause__ is not None or e.__context__ is not None:
    e = e.__cause__ or e.__context__
  text = ' '.join(str(e).split()) or type(e).__name__
  return f'{text[:100]} ... {text[-140:]}' if len(text) > 260 else text  # what failed ... why


def _by_path(tree: Any) -> dict[str, Any]:
  """{'params/blocks/attn/qkv/kernel': leaf, ...} for any pytree (dataclasses, tuples, dicts)."""
  def name(key):
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): leaf for path, leaf in leaves}
