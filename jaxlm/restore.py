"""Load a trained run for evaluation or generation: its config, tokenizer and parameters.

The config and the tokenizer's fingerprint are read from the checkpoint itself, so
`--workdir` is all the eval and generate commands need. Parameters are restored onto whatever
devices this machine has: the mesh is (data=1, fsdp=all, tensor=1), which fits any model and
still splits each batch over every device.
"""

import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxlm import paths, sharding
from jaxlm.build import build
from jaxlm.checkpoint import Checkpointer, short_reason, peek_config
from jaxlm.config import resolve_model
from jaxlm.configs import base
from jaxlm.data import RunData, is_prepared, open_run_data_at
from jaxlm.data.tokenizers import Tokenizer, open_tokenizer
from jaxlm.errors import UserError
from jaxlm.mesh import configure_backend
from jaxlm.objectives import Vocab
from jaxlm.optim import eval_params, includes_rate


class TrainedRun(NamedTuple):
  cfg: ConfigDict  # the run's config, with mesh and batch size set for this machine
  model_cfg: ConfigDict  # resolved
  tokenizer: Tokenizer
  data: RunData  # the prepared datasets it trained on
  graphdef: nnx.GraphDef
  params: Any
  step: int
  mesh: Mesh
  rules: sharding.Rules
  workdir: Path
  eval_step: Any  # jitted (params, batch) -> {view: (summed loss, counted tokens)}, as training's
  objective: Any  # objectives.Objective: what the eval step scores, what eval reports


def eval_batch_size(batch_size: int) -> int:
  """The batch rounded up to a multiple of the device count, so it splits over every device."""
  n = jax.device_count()
  return math.ceil(batch_size / n) * n


def load_trained(workdir: str, step: int | None = None, batch_size: int = 0) -> TrainedRun:
  """Restores step `step` (default: the newest that reads back whole) of the run in `workdir`.

  An unreadable newest checkpoint is reported on stderr and the one before it used, as training
  does (nothing is moved: readers change nothing on disk); an unreadable `step` is an error.
  """
  workdir = paths.path(workdir)
  directory = workdir / 'checkpoints'
  if not directory.is_dir():
    raise UserError(f'{workdir} has no checkpoints directory; give the --workdir of a training '
                    'run (the config field workdir it was trained with).')
  saved = peek_config(directory)
  if saved is not None:  # before Orbax starts JAX's backends
    configure_backend(ConfigDict(saved))
  ckpt = Checkpointer(directory, keep=None, async_save=False, create=False)
  try:
    steps = ckpt.all_steps()
    if not steps:
      raise UserError(f'there is no checkpoint in {directory}; train first.')
    if step is not None and step not in steps:
      raise UserError(f'there is no checkpoint for step {step} in {directory}; it has steps '
                      f'{", ".join(map(str, steps))}.')
    unreadable = []
    for candidate in [step] if step is not None else reversed(steps):
      try:
        run = _restore(ckpt, workdir, candidate, batch_size)
      except UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # a torn or corrupt checkpoint
        unreadable.append((candidate, short_reason(e)))  # the text, not the frames
        continue
      for bad, reason in unreadable:
        print(f'warning: checkpoint {bad} in {directory} cannot be read ({reason}); using '
              f'checkpoint {candidate}.', file=sys.stderr, flush=True)
      return run
    if step is not None:
      raise UserError(f'checkpoint {step} in {directory} cannot be read ({unreadable[0][1]}); '
                      'give another --step.')
    listed = ', '.join(f'{s} ({reason})' for s, reason in unreadable)
    raise UserError(f'no checkpoint in {directory} can be read: {listed}; give --step of a '
                    'good one, or restore the directory.')
  finally:
    ckpt.close()


def reader_config(saved: dict, workdir: Path, batch_size: int = 0) -> ConfigDict:
  """The config a reader (eval, generate) builds its step from, a new value: the run's saved
  config on all of this machine's devices (fsdp over them), at `batch_size` rows (default: the
  run's micro-batch, what its train step ran at once), without accumulation."""
  defaults = base.get_config().to_dict()  # for the fields added since the run was saved
  saved = {k: {**defaults[k], **v} if isinstance(v, dict) and isinstance(defaults.get(k), dict)
           else v for k, v in saved.items()}
  train = saved['train']
  rows = eval_batch_size(batch_size or train['batch_size'] // train.get('grad_accum', 1))
  cfg = ConfigDict({**saved, 'workdir': str(workdir),
                    'mesh': {**saved['mesh'], 'dcn': 1, 'data': 1, 'fsdp': -1, 'tensor': 1,
                             # the axes named since the run was saved take their defaults
                             'rules': {**base.get_config().mesh.rules.to_dict(),
                                       **saved['mesh'].get('rules', {})}},
                    'train': {**train, 'batch_size': rows, 'grad_accum': 1}})
  cfg.lock()
  return cfg


def _restore(ckpt: Checkpointer, workdir: Path, step: int, batch_size: int) -> TrainedRun:
  meta = ckpt.restore_meta(step)
  cfg = reader_config(meta['config'], workdir, batch_size)
  run_data = trained_data(meta, workdir, step, cfg)
  tokenizer = run_data.tokenizer
  if tokenizer.fingerprint != meta['tokenizer']:
    raise UserError(f'the tokenizer of {run_data.datasets[0].directory} ({tokenizer.fingerprint}) '
                    f'is not the one checkpoint {step} was trained with ({meta["tokenizer"]}).')
  model_cfg = resolve_model(ConfigDict(meta['model']), tokenizer.vocab_size)
  averaged = includes_rate(cfg)  # schedule-free: its average, from the parameters and state
  built = build(cfg, Vocab.of(tokenizer, run_data.token_frequencies()), model_cfg=model_cfg,
                train=averaged)  # (else no optimizer state)
  if averaged:
    params, opt_state = ckpt.restore_params(built.abstract_params, step,
                                            built.setup.abstract.opt_state)
    params = eval_params(opt_state, params)
  else:
    params = ckpt.restore_params(built.abstract_params, step)
  return TrainedRun(cfg, model_cfg, tokenizer, run_data, built.graphdef, params, step, built.mesh,
                    built.rules, workdir, built.eval_step, built.objective)


def trained_data(meta: dict, workdir: Path, step: int, cfg: ConfigDict) -> RunData:
  """The prepared datasets a checkpoint records (paths relative to the workdir when inside it)."""
  if 'data' not in meta:
    raise UserError(f'checkpoint {step} in {workdir} was written by an older jaxlm that did not '
                    'record its prepared data; evaluate it with that version.')
  if not meta['data']:  # an imported model (jaxlm.convert import-hf): no data, its own tokenizer
    return RunData(open_tokenizer(workdir / 'tokenizer', cfg.data.tokenizer), [], [])
  where = [d['path'] if paths.is_url(d['path']) else str(workdir / d['path'])
           for d in meta['data']]
  for path in where:
    if not is_prepared(path):
      raise UserError(f'the prepared data checkpoint {step} was trained on ({path}) is missing; '
                      'restore it (training with the same config prepares it again).')
  run_data = open_run_data_at(where, [1.0] * len(where), cfg)
  for ds, record in zip(run_data.datasets, meta['data']):
    if ds.fingerprint != record['fingerprint']:
      raise UserError(f'the prepared data in {ds.directory} is not what checkpoint {step} was '
                      'trained on (its manifest differs); restore that data.')
  return run_data
