"""One training command on every worker of one or several Cloud TPU VM slices (`launch/tpu_vm.py`),
through `gcloud compute tpus tpu-vm ssh`, one ssh per worker:

- before starting, on every worker: jaxlm processes left from an earlier run are stopped (SIGTERM,
  then SIGKILL after 30 s) and libtpu's lock file is removed if no process holds the TPU any more
  (a crashed run leaves /tmp/libtpu_lockfile behind and the next one cannot open the chips:
  jax #10192);
- each worker's output goes to <logs>/<slice>-w<i>.log;
- the first worker that fails stops the others (their processes checkpoint on SIGTERM) and its
  last lines are printed; SIGINT or SIGTERM to the launcher does the same;
- several slices (--num_slices, named <name>-0, <name>-1, ... as queued resources' --node-prefix
  names them) are joined over the data-center network: each worker gets MEGASCALE_NUM_SLICES,
  MEGASCALE_SLICE_ID and MEGASCALE_COORDINATOR_ADDRESS (slice 0's first worker), which libtpu and
  JAX's cluster detection read;
- --create makes the slices first as a queued resource (spot if asked) and waits until they are
  ACTIVE;
- --gcsfuse=<bucket>,... mounts each bucket read-only with gcsfuse on every worker first
  (/tmp/gcsfuse/<bucket>), so that a prepared dataset gs://<bucket>/... is read in place, each
  host reading only the records of its rows, instead of copied whole to every host.

Every gcloud command is built by a function here (tested against expected text); --dry_run prints
them instead of running them.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jaxlm.errors import UserError

MEGASCALE_PORT = 8080
GCSFUSE_ROOT = '/tmp/gcsfuse'
PROCESS_PATTERN = r'[p]ython.* -m jaxlm\.'  # [p]: pkill's own shell does not match itself
CLEANUP = (
    f"pkill -TERM -f '{PROCESS_PATTERN}'; "
    f"for i in $(seq 30); do pgrep -f '{PROCESS_PATTERN}' >/dev/null || break; sleep 1; done; "
    f"pkill -KILL -f '{PROCESS_PATTERN}'; "
    'if ! sudo lsof -t /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1; then '
    'sudo rm -f /tmp/libtpu_lockfile; fi; true')


@dataclass(frozen=True)
class Target:
  name: str  # the TPU VM's name (or the queued resource's, with several slices)
  zone: str
  project: str = ''
  num_slices: int = 1

  def slices(self) -> list[str]:
    return [self.name] if self.num_slices == 1 else [f'{self.name}-{i}'
                                                      for i in range(self.num_slices)]

  def where(self) -> list[str]:
    return [f'--zone={self.zone}'] + ([f'--project={self.project}'] if self.project else [])


def describe(target: Target, tpu: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', tpu, *target.where(), '--format=json']


def ssh(target: Target, tpu: str, worker: str, command: str) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu, *target.where(),
          f'--worker={worker}', f'--command={command}']


def cleanup(target: Target, tpu: str) -> list[str]:
  return ssh(target, tpu, 'all', CLEANUP)


def create(target: Target, tpu_type: str, runtime_version: str, spot: bool) -> list[str]:
  nodes = ([f'--node-id={target.name}'] if target.num_slices == 1 else
           [f'--node-count={target.num_slices}', f'--node-prefix={target.name}'])
  return ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', target.name, *target.where(),
          f'--accelerator-type={tpu_type}', f'--runtime-version={runtime_version}', *nodes,
          *(['--spot'] if spot else [])]


def queued_state(target: Target) -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', target.name,
          *target.where(), '--format=value(state.state)']


def mount_command(bucket: str) -> str:
  """Mounts `bucket` read-only with gcsfuse at /tmp/gcsfuse/<bucket> unless it is mounted there:
  jaxlm then reads a prepared dataset gs://<bucket>/... in place (paths.mounted)."""
  point = shlex.quote(f'{GCSFUSE_ROOT}/{bucket}')
  return (f'mkdir -p {point} && {{ mountpoint -q {point} || gcsfuse -o ro --implicit-dirs '
          f'{shlex.quote(bucket)} {point}; }}')


def worker_command(repo: str, python: str, train_args: list[str], env: dict[str, str],
                   buckets: Sequence[str] = ()) -> str:
  """The shell command one worker runs: the buckets mounted, then the training, with this
  slice's variables."""
  exports = ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())
  train = shlex.join([python, '-m', 'jaxlm.train', *train_args,
                      '--config.distributed.initialize=true'])
  home, rest = ('~/', repo[2:]) if repo.startswith('~/') else ('', repo)  # ~ left to the shell
  mounts = ''.join(f'{mount_command(b)} && ' for b in buckets)
  return f'{mounts}cd {home}{shlex.quote(rest)} && {exports + " " if exports else ""}exec {train}'


def slice_env(target: Target, index: int, coordinator_ip: str) -> dict[str, str]:
  if target.num_slices == 1:
    return {}
  return dict(MEGASCALE_COORDINATOR_ADDRESS=f'{coordinator_ip}:{MEGASCALE_PORT}',
              MEGASCALE_NUM_SLICES=str(target.num_slices), MEGASCALE_SLICE_ID=str(index),
              MEGASCALE_PORT=str(MEGASCALE_PORT))


def endpoints(described: str, tpu: str) -> list[str]:
  """The workers' internal IPs, in worker order, from `describe --format=json`."""
  try:
    info = json.loads(described)
    ips = [e['ipAddress'] for e in info['networkEndpoints']]
  except (ValueError, KeyError, TypeError):
    raise UserError(f'gcloud did not describe the TPU VM {tpu} (no network endpoints); check '
                    'its name, --zone and --project.') from None
  if not ips:
    raise UserError(f'the TPU VM {tpu} has no workers yet; wait until it is READY.')
  return ips


def plan(target: Target, workers_per_slice: list[list[str]], repo: str, python: str,
         train_args: list[str], buckets: Sequence[str] = ()) -> list[tuple[str, int, list[str]]]:
  """(slice, worker, ssh command) of every worker; workers_per_slice holds each slice's IPs."""
  coordinator = workers_per_slice[0][0]
  out = []
  for index, (tpu, ips) in enumerate(zip(target.slices(), workers_per_slice)):
    env = slice_env(target, index, coordinator)
    for worker in range(len(ips)):
      out.append((tpu, worker, ssh(target, tpu, str(worker),
                                   worker_command(repo, python, train_args, env, buckets))))
  return out


def tail(path: Path, lines: int = 20) -> str:
  text = path.read_text(errors='replace') if path.exists() else ''
  return '\n'.join(text.splitlines()[-lines:])


def run_all(commands: list[tuple[str, int, list[str]]], logs: Path, stop_remote,
            poll: float = 0.5, say=print) -> int:
  """Starts every worker's ssh, each to its own log; returns 0 when all end well, else the status
  of the first that failed, after stopping the others (`stop_remote()` ends the remote processes,
  which checkpoint on SIGTERM) and printing its last lines."""
  logs.mkdir(parents=True, exist_ok=True)
  running = []
  for tpu, worker, cmd in commands:
    log = logs / f'{tpu}-w{worker}.log'
    with open(log, 'w') as out:
      running.append((tpu, worker, log, subprocess.Popen(cmd, stdout=out,
                                                         stderr=subprocess.STDOUT)))
  say(f'started {len(running)} workers; logs in {logs}/')
  while True:
    codes = [(t, w, log, p.poll()) for t, w, log, p in running]
    failed = next(((t, w, log, c) for t, w, log, c in codes if c not in (None, 0)), None)
    if failed:
      tpu, worker, log, code = failed
      say(f'worker {worker} of {tpu} failed (status {code}); stopping the others. Its last '
          f'lines ({log}):\n{tail(log)}')
      stop_remote()
      for _, _, _, p in running:
        if p.poll() is None:
          p.terminate()
      for _, _, _, p in running:
        p.wait()
      return code
    if all(c == 0 for *_, c in codes):
      say(f'all {len(running)} workers finished')
      return 0
    time.sleep(poll)
