"""`launch/sweep.py search`: search beyond grids with Optuna (the `sweep` extra). The study lives
in SQLite in the sweep root (or an RDB URL that several machines share, --storage); each trial is
one jaxlm.train run in <root>/trial_<n>, its state and log kept as a sweep point's.

- A trial whose run crashes or is killed is queued again with the same parameters and resumes
  from its own checkpoint (the retry keeps the original trial's workdir); at most --max_retry
  times.
- A search process that dies leaves its trial RUNNING; Optuna's heartbeat marks it stale after
  --grace_period seconds and RetryHeartbeatStaleTrialCallback queues it again, so the next search
  process (or another one sharing the study) picks it up and resumes it.
- --prune stops a trial whose validation loss at an eval_every step is worse than the median of
  the earlier trials' at that step (Optuna's MedianPruner).
- The search ends once the study holds --trials complete (or pruned) trials; running it again
  with more --trials goes on.

Space: space-separated 'field=kind:args', kind one of log:<low>:<high> (log-uniform float),
float:<low>:<high>, int:<low>:<high>, choice:<a>,<b>,...
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from jaxlm.errors import UserError
from jaxlm.sweep import local, points, report, state
from jaxlm.sweep.points import Point

KINDS = ('log', 'float', 'int', 'choice')
FINAL = ('COMPLETE', 'PRUNED')


def parse_space(spec: str) -> dict[str, tuple[str, list[str]]]:
  out: dict[str, tuple[str, list[str]]] = {}
  for item in spec.split():
    field, _, definition = item.partition('=')
    kind, _, args = definition.partition(':')
    parts = args.split(',') if kind == 'choice' else args.split(':')
    if not field or kind not in KINDS or not all(parts) or (kind != 'choice' and len(parts) != 2):
      raise UserError(f'--space entry {item!r} is not field=kind:args; write e.g. '
                      "'optim.lr=log:1e-4:1e-2', 'model.num_layers=int:2:6' or "
                      "'optim.schedule=choice:cosine,constant'.")
    if field in out:
      raise UserError(f'--space names {field} twice; give each field once.')
    if kind != 'choice':
      try:
        low, high = (int(p) for p in parts) if kind == 'int' else (float(p) for p in parts)
      except ValueError:
        raise UserError(f'--space entry {item!r} has a bound that is not a number; give '
                        'numbers.') from None
      if not low < high or (kind == 'log' and low <= 0):
        raise UserError(f'--space entry {item!r} needs low < high' +
                        (' and low > 0 (a log scale)' if kind == 'log' else '') + '; fix it.')
    out[field] = (kind, parts)
  if not out:
    raise UserError("--space is empty; give what to search, e.g. --space='optim.lr=log:1e-4:1e-2'.")
  return out


def suggest(trial, space: dict[str, tuple[str, list[str]]]) -> tuple[tuple[str, str], ...]:
  overrides = []
  for field, (kind, parts) in space.items():
    if kind == 'log':
      value = trial.suggest_float(field, float(parts[0]), float(parts[1]), log=True)
    elif kind == 'float':
      value = trial.suggest_float(field, float(parts[0]), float(parts[1]))
    elif kind == 'int':
      value = trial.suggest_int(field, int(parts[0]), int(parts[1]))
    else:
      value = trial.suggest_categorical(field, parts)
    overrides.append((field, repr(value) if isinstance(value, float) else str(value)))
  return tuple(overrides)


def is_search(root: Path) -> bool:
  return (root / 'search.json').exists()


def trials_as_points(root: Path) -> list[Point]:
  """Every trial workdir of a search as a point (its parameters its overrides), in trial order."""
  settings = state.read_json(root / 'search.json')
  study = _study(root, settings, heartbeat=False)
  seen: dict[str, Point] = {}
  for t in study.get_trials(deepcopy=False):
    name = t.user_attrs.get('workdir')
    if name and name not in seen:
      seen[name] = Point(name, tuple(tuple(o) for o in t.user_attrs['overrides']))
  return list(seen.values())


def _study(root: Path, settings: dict[str, Any], heartbeat: bool = True, prune: bool = False):
  import optuna  # pylint: disable=import-outside-toplevel
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  beat = dict(heartbeat_interval=settings['heartbeat'], grace_period=settings['grace_period'],
              heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                  max_retry=settings['max_retry'])) if heartbeat else {}
  storage = optuna.storages.RDBStorage(settings['storage'], **beat)
  pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if prune else optuna.pruners.NopPruner()
  return optuna.create_study(storage=storage, study_name='jaxlm', direction='minimize',
                             load_if_exists=True, pruner=pruner,
                             sampler=optuna.samplers.TPESampler(seed=settings['seed']))


def record(root: Path, settings: dict[str, Any]) -> dict[str, Any]:
  """<root>/search.json; a root holding another search (config, space, metric) is refused."""
  state.check_root(root)
  path = root / 'search.json'
  if (root / 'sweep.json').exists():
    raise UserError(f'--root={root} holds a grid sweep; give another --root for a search.')
  if path.exists():
    old = state.read_json(path)
    for key in ('config', 'space', 'metric', 'storage'):
      if old[key] != settings[key]:
        raise UserError(f'--root={root} holds a search with {key} {old[key]!r}, not '
                        f'{settings[key]!r}; give another --root, or the same {key}.')
    # The study is the same; how this search process runs it (trials to reach, retries,
    # heartbeat) is its own.
    settings = {**old, **{k: settings[k] for k in ('trials', 'max_retry', 'heartbeat',
                                                    'grace_period')}}
  state.write_json(path, settings)
  return settings


def _val_losses(workdir: Path, seen: int) -> list[tuple[int, float]]:
  records = report.read_records(workdir)
  vals = [(r['step'], r['loss']) for r in records if r.get('split') == 'val']
  return vals[seen:]


def _state_of(trial) -> str:
  return next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number
              ).state.name


def _workdir_taken(root: Path, trial, name: str) -> str:
  """Why the workdir `name` is not this trial's to run ('' if it is): another trial of the study
  finished there, or a run is going on there (here, or on another host). Two copies of one retry
  can be queued: the heartbeat check runs in every search thread and process, and two of them
  may fail the same stale trial."""
  for other in trial.study.get_trials(deepcopy=False):
    if (other.number != trial.number and other.user_attrs.get('workdir') == name
        and other.state.name == 'COMPLETE'):
      return f'finished (trial {other.number})'
  st = state.get(root, name)
  if st['state'] == 'running' and state.alive(st) is not False:
    return f'running (pid {st.get("pid")} on {st.get("host")})'
  return ''


def objective(root: Path, settings: dict[str, Any], slots: list[dict[str, Any]],
              lock: threading.Lock, prune: bool):
  import optuna  # pylint: disable=import-outside-toplevel
  space = {f: (k, p) for f, (k, p) in settings['space_parsed'].items()}

  def run_trial(trial) -> float:
    overrides = suggest(trial, space)
    # A retry (queued below, or by the heartbeat callback, which copies the user attributes)
    # carries its original's workdir and resumes from its checkpoint.
    name = trial.user_attrs.get('workdir') or f'trial_{trial.number}'
    trial.set_user_attr('workdir', name)
    trial.set_user_attr('overrides', [list(o) for o in overrides])
    point = Point(name, overrides)
    steps = points.resolve(settings['config'], point).train.steps
    with lock:
      taken = _workdir_taken(root, trial, name)
      if taken:  # a second copy of one retry: fails without running, queues nothing, counts not
        raise RuntimeError(f'{name} is {taken}; this copy of its retry does nothing')
      slot = slots.pop(0)
      process = local.start(settings['config'], root, point, slot)  # 'running' before the lock goes
    try:
      started, reported = state.now(), 0
      while process.poll() is None:
        time.sleep(0.3)
        if prune:
          for step, loss in _val_losses(root / name, reported):
            reported += 1
            trial.report(loss, step)
            if trial.should_prune():
              process.send_signal(signal.SIGTERM)
              process.wait()
              local.outcome(root, point, steps, 0, started)
              state.put(root, name, state='pruned')
              raise optuna.TrialPruned()
      st = local.outcome(root, point, steps, process.returncode, started)
    finally:
      with lock:
        slots.append(slot)
    if st['state'] != 'finished':
      retries = trial.user_attrs.get('retries', 0)
      still_ours = _state_of(trial) == 'RUNNING'  # else the heartbeat check failed it and retries
      if still_ours and retries < settings['max_retry']:  # the same parameters, this workdir
        trial.study.enqueue_trial(trial.params, user_attrs={'workdir': name,
                                                            'retries': retries + 1})
      raise RuntimeError(f'{name} crashed at step {st["step"]}: {st["error"]}')
    value = report.row(root, point)[settings['metric']]
    if value is None:
      raise RuntimeError(f'{name} finished without a {settings["metric"]}')
    return value
  return run_trial


def main(root: Path, config: str, metric: str, parallel: int, space: str, trials: int,
         storage: str, prune: bool, max_retry: int, seed: int, heartbeat: int,
         grace_period: int) -> None:
  try:
    import optuna  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError('search needs Optuna: pip install -e ".[sweep]".') from None
  if metric not in report.METRICS:
    raise UserError(f'--metric={metric} is not one of {", ".join(report.METRICS)}; give one.')
  if trials < 1 or parallel < 1 or max_retry < 0:
    raise UserError('--trials and --parallel must be at least 1 and --max_retry at least 0; '
                    'fix them.')
  parsed = parse_space(space)
  points.resolve(config, Point('check', tuple((f, p[0].split(',')[0]) for f, (k, p) in
                                              parsed.items())))  # fields exist, values parse
  root.mkdir(parents=True, exist_ok=True)
  settings = record(root, dict(config=config, space=space, metric=metric, trials=trials, seed=seed,
                               storage=storage or f'sqlite:///{root.resolve()}/optuna.db',
                               max_retry=max_retry, heartbeat=heartbeat,
                               grace_period=grace_period))
  settings['space_parsed'] = parsed
  study = _study(root, settings, prune=prune)
  states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  done = lambda: len(study.get_trials(deepcopy=False, states=states))
  print(f'study {settings["storage"]}: {done()} of {trials} trials done', flush=True)
  lock = threading.Lock()
  slots = local.slots(parallel)

  def say(study_, trial) -> None:
    del study_
    name = trial.user_attrs.get('workdir', f'trial_{trial.number}')
    value = '' if trial.value is None else f' {metric} {trial.value:.4f}'
    print(f'trial {trial.number} ({name}, {json.dumps(trial.params)}): {trial.state.name}'
          f'{value} ({done()} of {trials} done)', flush=True)

  started = len(study.get_trials(deepcopy=False))
  budget = trials * (max_retry + 2)  # trials that may start before a search that only crashes ends
  # Rounds of exactly the trials still missing (never more: MaxTrialsCallback would let the
  # other threads' trials run on past the count); a round's failures were queued again as retries.
  while done() < trials and len(study.get_trials(deepcopy=False)) - started < budget:
    missing = trials - done()
    try:
      study.optimize(objective(root, settings, slots, lock, prune), n_trials=missing,
                     n_jobs=min(parallel, missing), callbacks=[say], catch=(RuntimeError,),
                     gc_after_trial=False)
    except ValueError as e:  # Optuna's "Cannot tell a FAIL trial."
      if 'Cannot tell' not in str(e):
        raise
      # A heartbeat came later than --grace_period, so a live trial was taken as dead and queued
      # again; its retry finds the workdir finished and reports the same figures.
      print(f'a trial ran on after it was taken as dead ({e}); its retry picks up its workdir; '
            'raise --grace_period if this recurs', flush=True)
  rows = report.write(root, trials_as_points(root), metric)
  print(report.text(rows))
  if done() < trials:
    raise UserError(f'only {done()} of {trials} trials completed after {budget} tries (see '
                    f'{root}/report.md for why the others crashed); fix that and search again.')
  best = study.best_trial
  print(f'best: trial {best.number} ({best.user_attrs["workdir"]}) {metric} {best.value:.4f} '
        f'with {json.dumps(best.params)}')
