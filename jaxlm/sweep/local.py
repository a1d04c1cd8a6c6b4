"""Running a sweep's points on this machine, up to --parallel at once, each pinned to its own
GPUs (CUDA_VISIBLE_DEVICES) or, without GPUs, its own CPU cores; a crashed point is recorded and
the sweep goes on. Also the single point a scheduler's array task runs (`point`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jaxlm import cluster
from jaxlm.errors import UserError, exiting_with
from jaxlm.sweep import state
from jaxlm.sweep.points import Point


def command(config: str, root: Path, point: Point) -> list[str]:
  return [sys.executable, '-m', 'jaxlm.train', f'--config={config}',
          f'--config.workdir={root / point.name}', *point.args()]


def slots(parallel: int, env: dict[str, str] | None = None,
          cpus: list[int] | None = None, gpus: int | None = None) -> list[dict[str, Any]]:
  """What each of `parallel` concurrent points gets: {'env': {...}} with its GPUs where the host
  has GPUs, else {'cpus': [...]}, its share of this process's CPU cores."""
  env = dict(os.environ) if env is None else env
  visible = cluster.gpu_list(env)
  if gpus is None:
    gpus = len(visible) if visible is not None else cluster.nvidia_devices()
  names = visible if visible is not None else [str(i) for i in range(gpus)]
  if gpus:
    if parallel > gpus:
      raise UserError(f'--parallel={parallel} points need a GPU each, but this host has {gpus}; '
                      f'give --parallel={gpus} or less.')
    per = gpus // parallel
    return [dict(env={'CUDA_VISIBLE_DEVICES': ','.join(names[i * per:(i + 1) * per])})
            for i in range(parallel)]
  cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
  if parallel >= len(cpus):  # a core each (shared round-robin if there are fewer cores)
    return [dict(cpus=[cpus[i % len(cpus)]]) for i in range(parallel)]
  per = len(cpus) // parallel
  return [dict(cpus=cpus[i * per:(i + 1) * per]) for i in range(parallel)]


def outcome(root: Path, point: Point, steps: int, code: int, started: float) -> dict[str, Any]:
  """Records how a run of `point` ended: finished (status 0 and the last step reached), or
  crashed at the step it reached, with its status and the last lines of its log."""
  st = state.get(root, point.name)
  step = state.last_step(root / point.name)
  wall = st.get('wall_s', 0.0) + state.now() - started
  if code == 0 and step >= steps:
    return state.put(root, point.name, state='finished', step=step, exit_code=0, pid=None,
                     ended=state.now(), wall_s=wall, last_lines=[], error=None)
  lines = state.tail(root / 'logs' / f'{point.name}.log')
  errors = [line for line in lines if re.match(r'(error: |[\w.]*(Error|Exception)\b)', line)]
  reason = (errors[-1] if errors else f'stopped before step {steps}' if code == 0
            else f'exit status {code}')
  return state.put(root, point.name, state='crashed', step=step, exit_code=code, pid=None,
                   ended=state.now(), wall_s=wall, last_lines=lines, error=reason)


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a child between fork and exec only calls


def _pinned_and_tied(cpus: list[int] | None):
  """In the child before exec: its CPU cores, and SIGTERM (checkpoint and stop) when the sweep
  process that started it dies (Linux's PR_SET_PDEATHSIG), so no run outlives its sweep unseen."""
  def setup() -> None:
    if cpus:
      os.sched_setaffinity(0, cpus)
    with contextlib.suppress(OSError, AttributeError):
      _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  return setup


def start(config: str, root: Path, point: Point, slot: dict[str, Any]) -> subprocess.Popen:
  log = root / 'logs' / f'{point.name}.log'
  log.parent.mkdir(parents=True, exist_ok=True)
  cpus = slot.get('cpus')
  with open(log, 'a') as out:
    out.write(f'--- attempt {state.get(root, point.name).get("attempts", 0) + 1} '
              f'{time.strftime("%Y-%m-%d %H:%M:%S")} on {socket.gethostname()}\n')
    out.flush()
    process = subprocess.Popen(
        command(config, root, point), stdout=out, stderr=subprocess.STDOUT,
        env={**os.environ, **slot.get('env', {})}, preexec_fn=_pinned_and_tied(cpus),
        start_new_session=True)  # a Ctrl-C reaches the sweep alone, which stops them (SIGTERM)
  st = state.get(root, point.name)
  state.put(root, point.name, state='running', pid=process.pid, host=socket.gethostname(),
            started=state.now(), attempts=st.get('attempts', 0) + 1, slot=slot)
  return process


def to_run(root: Path, points: list[Point], log=print) -> list[Point]:
  """The points a (re-)run of the sweep starts: pending and crashed ones, and running ones whose
  process is gone; finished ones are skipped and running ones left alone."""
  out = []
  for p in points:
    st = state.get(root, p.name)
    if st['state'] == 'finished':
      continue
    if st['state'] == 'running':
      live = state.alive(st)
      if live is None:
        log(f'{p.name}: running on {st.get("host")} (pid {st.get("pid")}); left alone')
        continue
      if live:
        log(f'{p.name}: still running (pid {st["pid"]}); left alone')
        continue
      state.put(root, p.name, state='crashed', error='its process ended without a word '
                '(the sweep that ran it was killed)', pid=None)
    out.append(p)
  return out


def run(config: str, root: Path, points: list[Point], steps: dict[str, int], parallel: int,
        log=print) -> dict[str, dict[str, Any]]:
  """Runs `points` (resuming each from its own checkpoint), `parallel` at a time; returns the final
  state of each."""
  free = slots(parallel)
  queue = list(points)
  running: dict[int, tuple[subprocess.Popen, Point, float]] = {}
  results = {}

  def stop_all():  # SIGINT/SIGTERM: each run checkpoints and stops; re-running the sweep resumes
    for process, _, _ in running.values():
      process.send_signal(signal.SIGTERM)
    for slot, (process, point, started) in running.items():
      outcome(root, point, steps[point.name], process.wait(), started)

  with exiting_with(stop_all):
    while queue or running:
      for slot in range(parallel):
        if slot not in running and queue:
          point = queue.pop(0)
          log(f'{point.name}: started')
          running[slot] = (start(config, root, point, free[slot]), point, state.now())
      time.sleep(0.2)
      for slot, (process, point, started) in list(running.items()):
        code = process.poll()
        if code is None:
          continue
        del running[slot]
        st = outcome(root, point, steps[point.name], code, started)
        results[point.name] = st
        log(f'{point.name}: {describe(st)}')
  return results


def describe(st: dict[str, Any]) -> str:
  if st['state'] == 'crashed':
    return f'crashed at step {st.get("step", 0)} ({st.get("error")})'
  if st['state'] == 'finished':
    return f'finished at step {st["step"]} in {st.get("wall_s", 0):.0f} s'
  return st['state']


def run_one(config: str, root: Path, point: Point, steps: int) -> int:
  """One point in the foreground (a SLURM array task or an indexed Job's pod): SIGTERM (a
  preemption, or the time limit's warning) is passed on, the run checkpoints, and the point is
  recorded as crashed at its step, to be resumed by the scheduler's retry. Returns the exit status:
  0 finished, 1 crashed (retry it; 2 is kept for a refused command, which a retry cannot mend)."""
  process = start(config, root, point, {})
  started = state.now()

  def stop():
    process.send_signal(signal.SIGTERM)
    outcome(root, point, steps, process.wait(), started)

  with exiting_with(stop):
    code = process.wait()
  st = outcome(root, point, steps, code, started)
  print(f'{point.name}: {describe(st)}', flush=True)
  return 0 if st['state'] == 'finished' else 1  # 1, not 2: a scheduler retries it
