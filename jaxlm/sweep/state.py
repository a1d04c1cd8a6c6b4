"""A sweep root on disk, readable while the sweep runs:

  <root>/sweep.json          the config file and every point's overrides (the first run writes it)
  <root>/state/<point>.json  pending | running | finished | crashed (| pruned, in a search),
                             with the step reached, the exit status, the last lines of the log,
                             attempts and wall time
  <root>/logs/<point>.log    the run's output, every attempt appended
  <root>/<point>/            the point's workdir (checkpoints, metrics.jsonl)

Every file is replaced atomically, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from jaxlm.data.tokenizers import atomic_write
from jaxlm.errors import UserError
from jaxlm.sweep.points import Point


def write_json(path: Path, value: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write(path, (json.dumps(value, indent=1) + '\n').encode())


def read_json(path: Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path} ({e}); remove it or give another --root.') from None


def check_root(root: Path) -> None:
  if root.exists() and not root.is_dir():
    raise UserError(f'--root={root} is a file; give a directory for the sweep.')


def record(root: Path, config: str, points: list[Point], kind: str = 'grid') -> list[Point]:
  """Writes (or extends) <root>/sweep.json; returns every point of the sweep. A root holding a
  sweep of another config is refused; new points join an existing sweep."""
  check_root(root)
  path = root / 'sweep.json'
  known: list[Point] = []
  if path.exists():
    sweep = read_json(path)
    if sweep.get('config') != config:
      raise UserError(f'--root={root} holds a sweep of {sweep.get("config")}, not {config}; give '
                      'another --root, or that config.')
    known = [Point(p['name'], tuple(map(tuple, p['overrides']))) for p in sweep['points']]
  by_name = {p.name: p for p in known}
  for p in points:
    if p.name in by_name and by_name[p.name] != p:
      raise UserError(f'--root={root} has a point {p.name} with other overrides '
                      f'({dict(by_name[p.name].overrides)}); give another --root.')
  everything = known + [p for p in points if p.name not in by_name]
  write_json(path, dict(config=config, kind=kind,
                        points=[dict(name=p.name, overrides=p.overrides) for p in everything]))
  return everything


def load(root: Path) -> tuple[str, list[Point]]:
  path = root / 'sweep.json'
  if not path.exists():
    raise UserError(f'--root={root} holds no sweep (no sweep.json); run the sweep first, or give '
                    'its root.')
  sweep = read_json(path)
  return sweep['config'], [Point(p['name'], tuple(map(tuple, p['overrides'])))
                           for p in sweep['points']]


def state_path(root: Path, name: str) -> Path:
  return root / 'state' / f'{name}.json'


def get(root: Path, name: str) -> dict[str, Any]:
  path = state_path(root, name)
  return read_json(path) if path.exists() else dict(state='pending', attempts=0, wall_s=0.0)


def put(root: Path, name: str, **fields: Any) -> dict[str, Any]:
  value = {**get(root, name), **fields}
  write_json(state_path(root, name), value)
  return value


def alive(st: dict[str, Any]) -> bool | None:
  """Whether a point recorded as running still runs: True or False on this host, None (not
  known) for a point running on another host."""
  if st.get('host') != socket.gethostname():
    return None
  try:
    os.kill(int(st['pid']), 0)
  except (OSError, KeyError, ValueError):
    return False
  return True


def last_step(workdir: Path) -> int:
  """The last training step in <workdir>/metrics.jsonl (0 before the first)."""
  step = 0
  path = workdir / 'metrics.jsonl'
  if path.exists():
    for line in path.read_text(errors='replace').splitlines():
      try:
        rec = json.loads(line)
      except ValueError:  # a line cut short by a kill
        continue
      if rec.get('split') == 'train':
        step = rec['step']
  return step


def tail(path: Path, lines: int = 12) -> list[str]:
  if not path.exists():
    return []
  with open(path, 'rb') as f:
    f.seek(max(0, path.stat().st_size - 16384))
    return f.read().decode(errors='replace').splitlines()[-lines:]


def now() -> float:
  return time.time()
