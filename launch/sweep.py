"""Run (or print) a grid of jaxlm.train overrides, one workdir per point.

  python launch/sweep.py --config=configs/shakespeare_char.py \
      --grid='optim.lr=1e-3,3e-3 model.num_layers=4,6' --dry_run

Each point runs `python -m jaxlm.train --config=<config> --config.workdir=<root>/<name> ...`
in turn (or, with --dry_run, is printed for a cluster scheduler to pick up). A point whose run
already finished resumes, finds nothing to do and moves on, so re-running a sweep is safe.
"""

import itertools
import shlex
import subprocess
import sys

from absl import app, flags

_CONFIG = flags.DEFINE_string('config', 'configs/base.py', 'Base config file.')
_GRID = flags.DEFINE_string('grid', '', "Space-separated 'field=v1,v2' axes of the grid.")
_ROOT = flags.DEFINE_string('root', 'runs/sweep', 'Parent directory of the runs.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands instead of running them.')


def points(grid: str) -> list[list[tuple[str, str]]]:
  axes = []
  for axis in grid.split():
    field, _, values = axis.partition('=')
    if not values:
      raise app.UsageError(f'grid axis {axis!r} is not field=v1,v2,...')
    axes.append([(field, v) for v in values.split(',')])
  return [list(p) for p in itertools.product(*axes)]


def command(point: list[tuple[str, str]]) -> list[str]:
  name = '_'.join(f'{f.split(".")[-1]}={v}' for f, v in point) or 'default'
  return ([sys.executable, '-m', 'jaxlm.train', f'--config={_CONFIG.value}',
           f'--config.workdir={_ROOT.value}/{name}'] +
          [f'--config.{f}={v}' for f, v in point])


def main(argv: list[str]) -> None:
  del argv
  for point in points(_GRID.value):
    cmd = command(point)
    print(shlex.join(cmd), flush=True)
    if not _DRY_RUN.value:
      subprocess.run(cmd, check=True)


if __name__ == '__main__':
  app.run(main)
