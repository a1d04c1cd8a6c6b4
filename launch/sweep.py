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

from absl import flags

from jaxlm import cli
from jaxlm.errors import UserError

_CONFIG = flags.DEFINE_string('config', 'configs/base.py', 'Base config file.')
_GRID = flags.DEFINE_string('grid', '', "Space-separated 'field=v1,v2' axes of the grid.")
_ROOT = flags.DEFINE_string('root', 'runs/sweep', 'Parent directory of the runs.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands instead of running them.')


def points(grid: str) -> list[list[tuple[str, str]]]:
  axes, fields = [], set()
  for axis in grid.split():
    field, _, values = axis.partition('=')
    if not field or not values or '' in values.split(','):
      raise UserError(f'--grid axis {axis!r} is not field=v1,v2,...; write each axis as '
                      "'optim.lr=1e-3,3e-3', axes separated by spaces.")
    if field in fields:
      raise UserError(f'--grid names {field} twice; give each field one axis.')
    fields.add(field)
    axes.append([(field, v) for v in values.split(',')])
  return [list(p) for p in itertools.product(*axes)]


def command(point: list[tuple[str, str]]) -> list[str]:
  name = '_'.join(f'{f.split(".")[-1]}={v}' for f, v in point) or 'default'
  return ([sys.executable, '-m', 'jaxlm.train', f'--config={_CONFIG.value}',
           f'--config.workdir={_ROOT.value}/{name}'] +
          [f'--config.{f}={v}' for f, v in point])


def main(argv: list[str]) -> None:
  del argv
  cli.check_config_file(_CONFIG.value)
  for point in points(_GRID.value):
    cmd = command(point)
    print(shlex.join(cmd), flush=True)
    if not _DRY_RUN.value:
      result = subprocess.run(cmd, check=False)
      if result.returncode:
        raise UserError(f'the run above exited with status {result.returncode}; fix it and run '
                        'the sweep again (finished points resume and move on).')


if __name__ == '__main__':
  cli.run(main)
