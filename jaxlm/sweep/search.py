"""`launch/sweep.py search`: search beyond grids with Optuna (the `sweep` extra). The study lives
in SQLite in the sweep root (or an RDB URL that several machines share, --storage); each trial is
one jaxlm.train run in <root>/trial_<n>, its state and log kept as a sweep point's.

- A trial whose run crashes or is killed is queued again with the same parameters and resumes
  from its own checkpoint (the retry keeps the original trial's workdir); at most --max_retry
  times.
- A search process that dies leaves its trials RUNNING (their runs checkpoint and stop: they get
  SIGTERM when their parent dies). Before each round a search process, holding
  <root>/search.lock, fails every RUNNING trial whose run is gone (its process ended, on this
  host; on another host, no heartbeat in its state file for --grace_period seconds) and queues it
  again, so the next search process (or another one sharing the root) resumes it. (Optuna's own
  heartbeat did this in every optimize thread at once: with two threads on SQLite, one stale
  trial was queued twice, and a live one was failed under load; one checker at a time does not.)
- --prune stops a trial whose validation loss at an eval_every step is worse than the median of
  the earlier trials' at that step (Optuna's MedianPruner).
- The search ends once the study holds --trials complete (or pruned) trials; running it again
  with more --trials goes on.

Space: space-separated 'field=kind:args', kind one of log:<low>:<high> (log-uniform float),
float:<low>:<high>, int:<low>:<high>, choice:<a>,<b>,...
"""

from __future__ import annotations

import concurrent.futures
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
HEARTBEAT_SECONDS = 10  # a running trial's state file gets the time this often
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
  study = _study(root, settings)
  seen: dict[str, Point] = {}
  for t in study.get_trials(deepcopy=False):
    name = t.user_attrs.get('workdir')
    if name and name not in seen:
      seen[name] = Point(name, tuple(tuple(o) for o in t.user_attrs['overrides']))
  return list(seen.values())


def _study(root: Path, settings: dict[str, Any], prune: bool = False):
  import optuna  # pylint: disable=import-outside-toplevel
  del root
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  storage = optuna.storages.RDBStorage(settings['storage'])
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
    # The study is the same; how this search process runs it (trials to reach, retries, grace
    # period) is its own.
    settings = {**old, **{k: settings[k] for k in ('trials', 'max_retry', 'grace_period')}}
  state.write_json(path, settings)
  return settings


def _val_losses(workdir: Path, seen: int) -> list[tuple[int, float]]:
  records = report.read_records(workdir)
  vals = [(r['step'], r['loss']) for r in records if r.get('split') == 'val']
  return vals[seen:]


def _workdir_taken(root: Path, trial, name: str) -> str:
  """Why the workdir `name` is not this trial's to run ('' if it is): another trial of the study
  finished there, or a run is going on there (here, or on another host)."""
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
    # A retry (queued below or by requeue_dead) carries its original's workdir and resumes from
    # its checkpoint.
    name = trial.user_attrs.get('workdir') or f'trial_{trial.number}'
    trial.set_user_attr('workdir', name)
    trial.set_user_attr('overrides', [list(o) for o in overrides])
    point = Point(name, overrides)
    steps = points.resolve(settings['config'], point).train.steps
    with lock:
      taken = _workdir_taken(root, trial, name)
      if taken:  # fails without running, queues nothing, counts not
        raise RuntimeError(f'{name} is {taken}; this copy of its retry does nothing')
      slot = slots.pop(0)
      process = local.start(settings['config'], root, point, slot)  # 'running' before the lock goes
    try:
      started, reported, beat = state.now(), 0, state.now()
      while process.poll() is None:
        time.sleep(0.3)
        if state.now() - beat > HEARTBEAT_SECONDS:  # for searches on other hosts
          beat = state.now()
          state.put(root, name, heartbeat=beat)
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
      if retries < settings['max_retry']:  # the same parameters, resuming this workdir
        trial.study.enqueue_trial(trial.params, user_attrs={'workdir': name,
                                                            'retries': retries + 1})
      raise RuntimeError(f'{name} crashed at step {st["step"]}: {st["error"]}')
    value = report.row(root, point)[settings['metric']]
    if value is None:
      raise RuntimeError(f'{name} finished without a {settings["metric"]}')
    return value
  return run_trial


def requeue_dead(study, root: Path, settings: dict[str, Any], say=print) -> None:
  """Fails each RUNNING trial whose run is gone and queues it again (one search process at a
  time, under <root>/search.lock): its process ended (this host), or its state file has had no
  heartbeat for --grace_period seconds (another host); a trial that never got a workdir, after
  --grace_period since it started."""
  import fcntl  # pylint: disable=import-outside-toplevel
  import optuna  # pylint: disable=import-outside-toplevel
  with open(root / 'search.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    now = state.now()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      name = t.user_attrs.get('workdir')
      st = state.get(root, name) if name else {}
      if st.get('state') == 'running':
        live = state.alive(st)
        if live is None:
          live = now - st.get('heartbeat', st.get('started', now)) < settings['grace_period']
      else:  # no run yet, or its outcome recorded but not told
        live = now - t.datetime_start.timestamp() < settings['grace_period']
      if live:
        continue
      study.tell(t.number, state=optuna.trial.TrialState.FAIL)
      retries = t.user_attrs.get('retries', 0)
      if name and retries < settings['max_retry']:
        study.enqueue_trial(t.params, user_attrs={'workdir': name, 'retries': retries + 1})
      say(f'trial {t.number} ({name}) was left running by a search that ended; queued again')


def run_round(study, run_trial, trials: int, threads: int, say) -> None:
  """`trials` trials, `threads` at a time: what study.optimize(n_jobs=threads) does, with each
  trial taken from the queue and told its outcome under one lock. Optuna's own threads may pop
  the same queued trial twice from SQLite (read, then write, in two connections); two threads then
  ran one trial, and the second tell of it failed ('Cannot tell a FAIL trial')."""
  import optuna  # pylint: disable=import-outside-toplevel
  lock = threading.Lock()

  def one(_) -> None:
    with lock:
      trial = study.ask()
    value, outcome = None, optuna.trial.TrialState.COMPLETE
    try:
      value = run_trial(trial)
    except optuna.TrialPruned:
      outcome = optuna.trial.TrialState.PRUNED
    except RuntimeError as e:  # a crashed run, or a copy with nothing to do: the trial fails
      outcome = optuna.trial.TrialState.FAIL
      print(f'trial {trial.number}: {e}', flush=True)
    except BaseException:  # (anything else ends the search, as it ended Optuna's optimize)
      with lock:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
      raise
    with lock:
      told = study.tell(trial, value if outcome == optuna.trial.TrialState.COMPLETE else None,
                        state=None if outcome == optuna.trial.TrialState.COMPLETE else outcome)
    say(study, told)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(one, range(trials)))


def main(root: Path, config: str, metric: str, parallel: int, space: str, trials: int,
         storage: str, prune: bool, max_retry: int, seed: int, grace_period: int) -> None:
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
                               max_retry=max_retry, grace_period=grace_period))
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
    requeue_dead(study, root, settings, say=lambda line: print(line, flush=True))
    missing = trials - done()
    run_round(study, objective(root, settings, slots, lock, prune), missing,
              min(parallel, missing), say)
  rows = report.write(root, trials_as_points(root), metric)
  print(report.text(rows))
  if done() < trials:
    raise UserError(f'only {done()} of {trials} trials completed after {budget} tries (see '
                    f'{root}/report.md for why the others crashed); fix that and search again.')
  best = study.best_trial
  print(f'best: trial {best.number} ({best.user_attrs["workdir"]}) {metric} {best.value:.4f} '
        f'with {json.dumps(best.params)}')
