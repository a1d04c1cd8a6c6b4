"""A sweep's points: sets of `--config.<field>=<value>` overrides of one config file, from a grid
or a list file, each named for its overrides and checked against the config before anything runs.

Grid: space-separated axes 'optim.lr=1e-3,3e-3 model.num_layers=2,4' (their product).
List file: one point a line, its overrides space-separated ('optim.lr=1e-3 model.num_layers=2');
blank lines and lines starting with # are skipped.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import re
from pathlib import Path

from ml_collections import ConfigDict

from jaxlm import cli, config as config_lib
from jaxlm.errors import UserError


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: tuple[tuple[str, str], ...]

  def args(self) -> list[str]:
    return [f'--config.{field}={value}' for field, value in self.overrides]

  def as_dict(self) -> dict[str, str]:
    return dict(self.overrides)


def name_of(overrides: tuple[tuple[str, str], ...]) -> str:
  """'lr=3e-3_num_layers=2': the last part of each field, as a directory name."""
  name = '_'.join(f'{f.split(".")[-1]}={v}' for f, v in overrides) or 'default'
  return re.sub(r'[^A-Za-z0-9._=+-]', '-', name)


def _assignment(text: str, where: str) -> tuple[str, str]:
  field, eq, value = text.partition('=')
  if not field or not eq or not value:
    raise UserError(f'{where} {text!r} is not field=value; write overrides as optim.lr=1e-3.')
  return field, value


def grid(spec: str) -> list[Point]:
  axes, fields = [], set()
  for axis in spec.split():
    field, _, values = axis.partition('=')
    if not field or not values or '' in values.split(','):
      raise UserError(f'--grid axis {axis!r} is not field=v1,v2,...; write each axis as '
                      "'optim.lr=1e-3,3e-3', axes separated by spaces.")
    if field in fields:
      raise UserError(f'--grid names {field} twice; give each field one axis.')
    fields.add(field)
    axes.append([(field, v) for v in values.split(',')])
  return [Point(name_of(tuple(p)), tuple(p)) for p in itertools.product(*axes)]


def from_file(path: str) -> list[Point]:
  if not Path(path).is_file():
    raise UserError(f'--points={path} is not a file; give a file with one point a line '
                    "('optim.lr=1e-3 model.num_layers=2').")
  out = []
  for number, line in enumerate(Path(path).read_text().splitlines(), 1):
    if not line.strip() or line.lstrip().startswith('#'):
      continue
    overrides = tuple(_assignment(a, f'line {number} of {path}:') for a in line.split())
    fields = [f for f, _ in overrides]
    if len(set(fields)) != len(fields):
      raise UserError(f'line {number} of {path} sets a field twice; set each field once.')
    out.append(Point(name_of(overrides), overrides))
  return out


def with_common(chosen: list[Point], spec: str) -> list[Point]:
  """Every point with the overrides of --set added (its name unchanged)."""
  common = tuple(_assignment(a, '--set entry') for a in spec.split())
  fields = [f for f, _ in common]
  if len(set(fields)) != len(fields):
    raise UserError('--set sets a field twice; set each field once.')
  for p in chosen:
    both = set(fields) & {f for f, _ in p.overrides}
    if both:
      raise UserError(f'--set and point {p.name} both set {sorted(both)[0]}; set it in one place.')
  return [Point(p.name, p.overrides + common) for p in chosen]


def load_config(path: str) -> ConfigDict:
  cli.check_config_file(path)
  file, _, argument = path.partition(':')
  spec = importlib.util.spec_from_file_location('jaxlm_sweep_config', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def _parsed(current, text: str, field: str):
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false'):
        raise ValueError
      return text.lower() == 'true'
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text.strip('\'"')
  except ValueError:
    pass
  kind = {bool: 'true or false', int: 'an integer', float: 'a number'}.get(type(current))
  if kind is None:
    raise UserError(f'{field} holds a {type(current).__name__}, which a sweep cannot set; sweep '
                    'a field holding a number, a string or true/false.')
  raise UserError(f'the value {text!r} of {field} is not {kind} like its default {current!r}; '
                  'give one.')


def resolve(config_path: str, point: Point) -> ConfigDict:
  """The config a point trains with, checked as jaxlm.train checks it (jaxlm.config.validate)."""
  cfg = load_config(config_path)
  for field, text in point.overrides:
    parent, key = cfg, field.split('.')
    for part in key[:-1]:
      parent = parent.get(part) if isinstance(parent, ConfigDict) else None
    if not isinstance(parent, ConfigDict) or key[-1] not in parent:
      raise UserError(f'the sweep sets {field}, which is not a field of {config_path}; see '
                      'configs/base.py for the fields.')
    parent[key[-1]] = _parsed(parent[key[-1]], text, field)
  try:
    config_lib.validate(cfg)
  except UserError as e:
    raise UserError(f'point {point.name}: {e}') from None
  return cfg


def check_unique(points: list[Point]) -> None:
  seen: dict[str, Point] = {}
  for p in points:
    if p.name in seen and seen[p.name] != p:
      raise UserError(f'two points are both named {p.name} ({dict(seen[p.name].overrides)} and '
                      f'{dict(p.overrides)}); make the last parts of their fields differ.')
    seen[p.name] = p
  if len(seen) != len(points):
    raise UserError('the sweep lists a point twice; list each once.')
