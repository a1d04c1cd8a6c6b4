"""Sweeps of jaxlm.train runs: a grid or list of points, run here in parallel, or handed to SLURM
or Kubernetes; a report of every point; and search with Optuna. (`launch/sweep.py` is this.)

  python launch/sweep.py --config=configs/shakespeare_char.py \\
      --grid='optim.lr=1e-3,3e-3 model.num_layers=4,6' --root=runs/sweep --parallel=2
  python launch/sweep.py --points=points.txt ...   # one point a line: 'optim.lr=1e-3 ...'
  python launch/sweep.py ... --set='train.steps=600' # the same overrides for every point
  python launch/sweep.py --root=runs/sweep          # again: finished points skipped, crashed resume
  python launch/sweep.py ... --emit=slurm           # <root>/sweep.sbatch, a job array
  python launch/sweep.py ... --emit=k8s --image=... # <root>/sweep-job.yaml, an indexed Job
  python launch/sweep.py report --root=runs/sweep [--metric=val_loss --baseline=<point>]
  python launch/sweep.py search --config=... --space='optim.lr=log:1e-4:1e-2' --trials=20

Each point is `python -m jaxlm.train --config=<config> --config.workdir=<root>/<point> <overrides>`;
its state (pending, running, finished, crashed at step N with its last log lines) is in
<root>/state/<point>.json while the sweep runs (jaxlm/sweep/state.py has the layout).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from absl import flags

from jaxlm import cli
from jaxlm.errors import UserError

COMMANDS = ('run', 'report', 'point', 'search')

_CONFIG = flags.DEFINE_string('config', None, 'Config file of every point (default: the one the '
                              "sweep root records, else configs/base.py).")
_GRID = flags.DEFINE_string('grid', '', "Space-separated 'field=v1,v2' axes of a grid.")
_POINTS = flags.DEFINE_string('points', '', 'A file with one point a line (its overrides '
                              "space-separated: 'optim.lr=1e-3 model.num_layers=2').")
_SET = flags.DEFINE_string('set', '', "Space-separated 'field=value' overrides every point gets "
                           "(not part of the points' names), e.g. 'train.steps=600'.")
_ROOT = flags.DEFINE_string('root', 'runs/sweep', 'The sweep root: state, logs, reports and one '
                            'workdir per point.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Points run at once (here: each on its own GPUs '
                                 'or CPU cores; --emit: the most the scheduler runs at once).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the points\' commands; run nothing.')
_EMIT = flags.DEFINE_enum('emit', '', ['', 'slurm', 'k8s'], 'Write the sweep for a scheduler '
                          'instead of running it: a SLURM job array or an indexed Kubernetes Job '
                          '(--root must then be storage every task or pod shares).')
_IMAGE = flags.DEFINE_string('image', '', '--emit=k8s: the container image (jaxlm installed, '
                             'its checkout at /jaxlm).')
_GPUS = flags.DEFINE_integer('gpus_per_point', 1, '--emit=k8s: GPUs each pod asks for (0: none).')
_INDEX = flags.DEFINE_integer('index', -1, 'point: which point of the sweep (0-based).')
_METRIC = flags.DEFINE_string('metric', 'val_loss', 'report/search: what ranks the points: '
                              'val_loss (final), best_val_loss or bits_per_byte; lower is better.')
_SPACE = flags.DEFINE_string('space', '', "search: space-separated 'field=kind:args' with kind "
                             'log:<low>:<high>, float:<low>:<high>, int:<low>:<high> or '
                             'choice:<a>,<b>,...')
_TRIALS = flags.DEFINE_integer('trials', 20, 'search: complete (or pruned) trials to reach.')
_STORAGE = flags.DEFINE_string('storage', '', 'search: the Optuna study\'s RDB URL (default: '
                               'SQLite in the sweep root; a shared database for several '
                               'machines).')
_PRUNE = flags.DEFINE_bool('prune', False, 'search: stop trials whose validation loss is worse '
                           'than the median of earlier trials at the same step.')
_MAX_RETRY = flags.DEFINE_integer('max_retry', 2, 'search: times a crashed, killed or stale trial '
                                  'is queued again (it resumes from its checkpoint).')
_SEED = flags.DEFINE_integer('seed', 0, 'search: the sampler\'s seed.')
_GRACE = flags.DEFINE_integer('grace_period', 120, 'search: seconds without a heartbeat after '
                              'which a trial running on another host is taken as dead (its '
                              'search process was killed) and queued again.')
_BASELINE = flags.DEFINE_string('baseline', '', 'report: the point the others are compared with '
                                '(default: the first).')


def _chosen(argv: list[str]) -> str:
  if len(argv) == 1:
    return 'run'
  if len(argv) == 2 and argv[1] in COMMANDS:
    return argv[1]
  raise UserError(f'unexpected arguments {argv[1:]}; give one of {", ".join(COMMANDS)} (or '
                  'nothing, to run), then --flags.')


def _points(root: Path):
  from jaxlm.sweep import points, state  # pylint: disable=import-outside-toplevel
  if _GRID.value and _POINTS.value:
    raise UserError('give --grid or --points, not both.')
  recorded = state.load(root)[0] if (root / 'sweep.json').exists() else None
  config = _CONFIG.value or recorded or 'configs/base.py'
  cli.check_config_file(config)
  if _GRID.value:
    chosen = points.grid(_GRID.value)
  elif _POINTS.value:
    chosen = points.from_file(_POINTS.value)
  elif recorded:
    chosen = state.load(root)[1]
  else:
    raise UserError(f'--root={root} holds no sweep yet; give its points with --grid or --points.')
  if _SET.value:
    chosen = points.with_common(chosen, _SET.value)
  points.check_unique(chosen)
  steps = {p.name: points.resolve(config, p).train.steps for p in chosen}
  return config, chosen, steps


def run(root: Path) -> None:
  from jaxlm.sweep import local, report, scheduler, state  # pylint: disable=import-outside-toplevel
  cli.require(_PARALLEL, _PARALLEL.value >= 1, 'at least 1')
  state.check_root(root)
  config, chosen, steps = _points(root)
  if _DRY_RUN.value:
    for p in chosen:
      print(shlex.join(local.command(config, root, p)))
    return
  if _EMIT.value == 'k8s' and not _IMAGE.value:
    raise UserError('--emit=k8s needs --image=<a container image with jaxlm>; give one.')
  everything = state.record(root, config, chosen)
  if _EMIT.value == 'slurm':
    path = root / 'sweep.sbatch'
    (root / 'logs').mkdir(parents=True, exist_ok=True)  # SLURM opens --output there, not makes it
    scheduler.write(path, scheduler.slurm_array(str(root), everything, _PARALLEL.value,
                                                str(Path.cwd())), executable=True)
    print(f'wrote {path}; submit it with: sbatch {path}')
    return
  if _EMIT.value == 'k8s':
    path = root / 'sweep-job.yaml'
    name = 'jaxlm-sweep-' + ''.join(c if c.isalnum() else '-' for c in root.name.lower())[:40]
    scheduler.write(path, scheduler.indexed_job(str(root), everything, _PARALLEL.value,
                                                _IMAGE.value, name.strip('-'), _GPUS.value))
    print(f'wrote {path}; start it with: kubectl apply -f {path}')
    return
  todo = local.to_run(root, chosen)
  if len(todo) < len(chosen):
    print(f'{len(chosen) - len(todo)} of {len(chosen)} points finished or running; '
          f'{len(todo)} to run', flush=True)
  results = local.run(config, root, todo, steps, _PARALLEL.value,
                      log=lambda line: print(line, flush=True))
  rows = report.write(root, everything)
  print(report.text(rows))
  crashed = [name for name, st in results.items() if st['state'] == 'crashed']
  if crashed:
    raise UserError(f'{len(crashed)} of {len(todo)} points crashed ({", ".join(crashed)}; their '
                    f'last lines are in {root}/report.md); run the sweep again to resume them.')


def point(root: Path) -> None:
  from jaxlm.sweep import local, points, state  # pylint: disable=import-outside-toplevel
  config, everything = state.load(root)
  if not 0 <= _INDEX.value < len(everything):
    raise UserError(f'--index={_INDEX.value} is not a point of the sweep in {root}, which has '
                    f'{len(everything)}; give 0 to {len(everything) - 1}.')
  chosen = everything[_INDEX.value]
  if state.get(root, chosen.name)['state'] == 'finished':
    print(f'{chosen.name}: finished already; nothing to do')
    return
  steps = points.resolve(config, chosen).train.steps
  sys.exit(local.run_one(config, root, chosen, steps))


def show_report(root: Path) -> None:
  from jaxlm.sweep import report, search, state  # pylint: disable=import-outside-toplevel
  state.check_root(root)
  if search.is_search(root):
    everything = search.trials_as_points(root)
  else:
    everything = state.load(root)[1]
  rows = report.write(root, everything, _METRIC.value, _BASELINE.value)
  print(report.text(rows))
  print(f'wrote {root}/report.md, report.csv and report.png')


def state_check(root: Path) -> None:
  from jaxlm.sweep import state  # pylint: disable=import-outside-toplevel
  state.check_root(root)


def main(argv: list[str]) -> None:
  chosen = _chosen(argv)
  root = Path(_ROOT.value)
  if chosen == 'report':
    show_report(root)
  elif chosen == 'point':
    point(root)
  elif chosen == 'search':
    from jaxlm.sweep import search  # pylint: disable=import-outside-toplevel
    state_check(root)
    search.main(root, config=_CONFIG.value or 'configs/base.py', metric=_METRIC.value,
                parallel=_PARALLEL.value, space=_SPACE.value, trials=_TRIALS.value,
                storage=_STORAGE.value, prune=_PRUNE.value, max_retry=_MAX_RETRY.value,
                seed=_SEED.value, grace_period=_GRACE.value)
  else:
    run(root)


def command() -> None:
  cli.run(main, positional=True)


if __name__ == '__main__':
  command()
