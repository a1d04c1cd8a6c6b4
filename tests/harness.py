"""Running jaxlm's commands in subprocesses, as a user would, for the fault-tolerance tests."""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
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


def assert_one_sentence(result: subprocess.CompletedProcess, message: str) -> None:
  """A refused command: exit status 2, no traceback, one `error:` line holding `message` and
  ending a sentence."""
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert 'Traceback' not in result.stderr + result.stdout, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert message in errors[0], errors[0]
  assert errors[0].endswith(('.', '?', ')')), errors[0]


def env(**extra: str) -> dict[str, str]:
  """The environment of the commands the tests start: this checkout, the CPU, and the session's
  persistent compilation cache (conftest.py), so the same tiny programs compile once for all the
  commands that run them (a tiny training command takes about half the time)."""
  cache = os.environ.get('JAXLM_TEST_XLA_CACHE')
  compiled = dict(JAX_COMPILATION_CACHE_DIR=cache,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0') if cache else {}
  return dict(os.environ, PYTHONPATH=f'{TESTS}{os.pathsep}{ROOT}', JAX_PLATFORMS='cpu',
              **{**compiled, **extra})


def free_port() -> int:
  from jaxlm import cluster  # pylint: disable=import-outside-toplevel
  return cluster.free_port()


def command(*args: str, module: str = 'jaxlm.train', script: Path | None = None) -> list[str]:
  return [sys.executable, *([str(script)] if script else ['-m', module]), *args]


def run(cmd: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=ROOT, env=kw.pop('env', env()), capture_output=True, text=True,
                        timeout=timeout, **kw)


# A process that has imported what every jaxlm command imports (JAX, Flax, Orbax, Grain and jaxlm's
# library modules, about 3 s) and then forks one child per command: each child runs the command
# as `python -m` would (its module as __main__, its argv, its own stdout, stderr and exit status),
# without paying the imports again. Importing starts no thread and no JAX backend (and no command
# module, which define flags at import), so the fork is safe. For the many short commands of the
# bad-input tests; the commands that must be real processes (signals, kills, several processes)
# use `run` and `start`.
_ZYGOTE = r"""
import json, os, runpy, sys, time, traceback
import jax, flax, optax, orbax.checkpoint, grain
import jaxlm.trainer, jaxlm.restore, jaxlm.evaluation, jaxlm.hf, jaxlm.data.prepare
import jaxlm.sampling, jaxlm.warmstart
for line in sys.stdin:
  request = json.loads(line)
  pid = os.fork()
  if pid == 0:
    os.chdir(request['cwd'])
    os.environ.update(request['env'])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request['stdout']), (2, request['stderr'])):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    code = 1
    try:
      target, *args = request['argv']
      if target == '-m':
        module, *args = args
        sys.argv = [module, *args]
        runpy.run_module(module, run_name='__main__', alter_sys=True)
      else:
        sys.argv = [target, *args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        runpy.run_path(target, run_name='__main__')
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
    except BaseException:
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  deadline = time.time() + request['timeout']
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      break
    if time.time() > deadline:
      os.kill(pid, 9)
      _, status = os.waitpid(pid, 0)
      break
    time.sleep(0.01)
  print(json.dumps(dict(returncode=os.waitstatus_to_exitcode(status))), flush=True)
"""
_zygote: subprocess.Popen | None = None


def run_forked(cmd: list[str], timeout: float = 600,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """`run(cmd)` for a command of this checkout (`command(...)`), run in a fork of a process that
  has already imported what jaxlm's commands import (see _ZYGOTE): the same exit status, stdout
  and stderr as a process of its own, in a second less instead of four. `extra_env`: variables
  the command gets besides env()'s (set in the child before the command runs)."""
  global _zygote
  assert cmd[0] == sys.executable, cmd
  if _zygote is None or _zygote.poll() is not None:
    _zygote = subprocess.Popen([sys.executable, '-c', _ZYGOTE], cwd=ROOT, env=env(),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
  with tempfile.TemporaryDirectory() as tmp:
    out, err = Path(tmp) / 'stdout', Path(tmp) / 'stderr'
    _zygote.stdin.write(json.dumps(dict(argv=cmd[1:], cwd=str(ROOT), stdout=str(out),
                                        stderr=str(err), timeout=timeout,
                                        env=extra_env or {})) + '\n')
    _zygote.stdin.flush()
    reply = _zygote.stdout.readline()
    assert reply, 'the forking process ended'
    return subprocess.CompletedProcess(cmd, json.loads(reply)['returncode'],
                                       out.read_text(errors='replace'),
                                       err.read_text(errors='replace'))


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
