"""A run's workdir: created and checked before any work, held by one run at a time, and the test
of whether a checkpoint in it belongs to the run at hand."""

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

import jax

from jaxlm import objectives, paths
from jaxlm.configs import base
from jaxlm.errors import UserError


def prepare_workdir(path: str):
  """Creates the workdir (a local Path, or an epath.Path on a bucket) and checks that it is
  writable, before any work is done."""
  workdir = paths.path(path)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f'.write-test-{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  # OSError, or a cloud client's error
    reason = e.strerror if isinstance(e, OSError) and e.strerror else ' '.join(str(e).split())
    raise UserError(f'the workdir {workdir} is not writable ({reason[:200]}); set config field '
                    'workdir to a directory you can write to.') from None
  return workdir


class WorkdirLock:
  """One run per workdir: an exclusive flock on <workdir>/.lock, held by process 0 for the run.

  The kernel drops the lock when its process dies, however it dies, so a crashed run never
  leaves a stale lock behind; the file only records who held it last. A workdir on a bucket has
  no lock (object storage has no flock): one run at a time there is the user's to keep.
  """

  def __init__(self, workdir: Path):
    self.file = None
    if jax.process_index() != 0 or paths.is_url(workdir):
      return
    path = workdir / '.lock'
    handle = open(path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      holder = handle.read().strip() or 'another process'
      handle.close()
      raise UserError(f'the workdir {workdir} is in use by another jaxlm run ({holder}); wait '
                      'for it to finish, or give another config field workdir.') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    handle.flush()
    self.file = handle

  def release(self) -> None:
    if self.file is not None:
      self.file.close()  # closing the file releases the lock
      self.file = None


# What a resumed run may change: how it computes, not what it computes with or on.
_FREE_ON_RESUME = {'model.dtype', 'model.remat', 'model.scan_unroll', 'model.attention',
                   'model.dropout', 'data.workers'}


# The objective's settings that change what is trained (mlm.eval_ratio changes what validation
# reports, not training, and is free).


def run_differences(saved: dict, now: dict) -> list[str]:
  """"field=saved (now x)" for each setting that differs between a checkpoint's metadata and this
  run's and would change what is trained: the resolved model, data.*, seed, train.batch_size
  (the data position counts global batches), optim.name (the optimizer's state is another),
  train.objective and its mlm.* or span.* settings.
  docs/RELIABILITY.md has the table of what is free and what is refused."""
  defaults = base.get_config()  # for fields added since a checkpoint was written

  def fields(meta: dict) -> dict[str, Any]:
    out = {f'model.{k}': v for k, v in {**defaults.model.to_dict(),
                                        **meta.get('model', {})}.items()}
    config = meta.get('config', {})
    out.update({f'data.{k}': v for k, v in config.get('data', {}).items()})
    out['seed'] = config.get('seed')
    train = config.get('train', {})
    out['train.batch_size'] = train.get('batch_size')
    out['optim.name'] = config.get('optim', {}).get('name', 'adamw')  # (its state's shape)
    objective = objectives.REGISTRY.get(train.get('objective', 'causal'))
    out['train.objective'] = train.get('objective', 'causal')
    for name in objective.resume_fields if objective else ():
      section = objective.section
      out[f'{section}.{name}'] = config.get(section, {}).get(name, defaults[section][name])
    return json.loads(json.dumps(out))  # as saved: a tuple (mlm.position_weights) as a list
  old, new = fields(saved), fields(now)
  return [f'{k}={old.get(k)!r} (now {new.get(k)!r})' for k in sorted(set(old) | set(new))
          if k not in _FREE_ON_RESUME and old.get(k) != new.get(k)]
