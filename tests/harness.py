"""Running jaxlm's commands in subprocesses, as a user would, for the fault-tolerance tests."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / 'tests'
SHIPPED = ROOT / 'jaxlm' / 'data' / 'tinyshakespeare.txt'


def write_config(path: Path, **fields: Any) -> Path:
  """A config file: tests/tiny.py's tiny_config() with dotted-field overrides."""
  lines = ['from tiny import tiny_config', '', '', 'def get_config():', '  c = tiny_config()']
  lines += [f'  c.{field} = {value!r}' for field, value in fields.items()]
  path.write_text('\n'.join(lines + ['  return c', '']))
  return path


def env(**extra: str) -> dict[str, str]:
  """The environment of the commands the tests start: this checkout, the CPU, and the session's
  persistent compilation cache (conftest.py), so the same tiny programs compile once for all the
  commands that run them (a tiny training command takes about half the time)."""
  cache = os.environ.get('JAXLM_TEST_XLA_CACHE')
  compiled = dict(JAX_COMPILATION_CACHE_DIR=cache,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0') if cache else {}
  return dict(os.environ, PYTHONPATH=f'{TESTS}{os.pathsep}{ROOT}', JAX_PLATFORMS='cpu',
              **{**compiled, **extra})


def command(*args: str, module: str = 'jaxlm.train', script: Path | None = None) -> list[str]:
  return [sys.executable, *([str(script)] if script else ['-m', module]), *args]


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=ROOT, env=kw.pop('env', env()), capture_output=True, text=True,
                        timeout=timeout, **kw)


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
  out = open(log, 'w')
  return subprocess.Popen(cmd, cwd=ROOT, env=kw.pop('env', env()), stdout=out,
                          stderr=subprocess.STDOUT, **kw)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 300,
               log: Path | None = None) -> None:
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f'process ended ({process.returncode}) before the condition held:\n'
                           + (log.read_text()[-3000:] if log else ''))
    if time.time() > deadline:
      process.kill()
      raise AssertionError('timed out waiting for the condition')
    time.sleep(0.05)


def logged_losses(workdir: Path) -> dict[int, list[float]]:
  """Every training loss logged per step, in order (a resumed run logs some steps again)."""
  path = Path(workdir) / 'metrics.jsonl'
  out: dict[int, list[float]] = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:  # a line cut short by SIGKILL
        continue
      if record.get('split') == 'train':
        out.setdefault(record['step'], []).append(record['loss'])
  return out


def last_step(workdir: Path) -> int:
  return max(logged_losses(workdir), default=0)


def digest(path: Path) -> dict[str, str]:
  """{relative file path: sha256} of a directory tree: to check nothing in it changed."""
  path = Path(path)
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob('*')) if p.is_file()}
