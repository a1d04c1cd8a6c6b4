"""A sweep handed to a scheduler, which then owns placement and retries: a SLURM job array (one
array index per point, requeued before its time limit) or an indexed Kubernetes Job (one completion
index per point; a preempted pod does not count against its retries). Each index runs
`launch/sweep.py point --root=<root> --index=<i>`, which resumes the point from its checkpoint and
records its state in the shared sweep root."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from jaxlm.sweep.points import Point


def point_command(root: str, index: str, python: str = 'python') -> str:
  """The shell command of array index `index` (a shell variable, expanded by the shell)."""
  return f'{python} launch/sweep.py point --root={shlex.quote(root)} --index="{index}"'


def slurm_array(root: str, points: list[Point], parallel: int, repo: str) -> str:
  """A batch script for `sbatch`: array index i runs point i. USR1 five minutes before the time
  limit: the point checkpoints and the array task is requeued (and resumes)."""
  limit = f'%{parallel}' if parallel > 1 else ''
  run = point_command(root, '$SLURM_ARRAY_TASK_ID', '"$python"')
  names = '\n'.join(f'#   {i}: {p.name}' for i, p in enumerate(points))
  return f"""#!/usr/bin/env bash
# jaxlm sweep of {len(points)} points in {root}, one SLURM array task per point:
{names}
# Submit with `sbatch [--partition=... --gpus=1 --time=...] {root}/sweep.sbatch`; add resources on
# that command line. Re-submitting is safe: finished points are skipped, crashed ones resume.
#SBATCH --job-name=jaxlm-sweep
#SBATCH --array=0-{len(points) - 1}{limit}
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output={root}/logs/slurm-%A_%a.out
set -uo pipefail
cd {shlex.quote(repo)}
python=${{JAXLM_PYTHON:-.venv/bin/python}}
requeue() {{
  kill -TERM "$task" 2>/dev/null
  wait "$task"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
  exit 0
}}
trap requeue USR1
trap 'kill -TERM "$task" 2>/dev/null; wait "$task"; exit 143' TERM
{run} &
task=$!
wait "$task"
"""


def indexed_job(root: str, points: list[Point], parallel: int, image: str, name: str,
                gpus: int, workdir: str = '/jaxlm') -> str:
  """A Kubernetes Job (completionMode Indexed) whose completion index i runs point i; retries per
  index, and a pod evicted or preempted (condition DisruptionTarget) is retried without counting.
  The sweep root must be storage every pod mounts (a bucket, or a shared volume)."""
  resources = {'limits': {'nvidia.com/gpu': gpus}} if gpus else {}
  container = dict(
      name='point', image=image, workingDir=workdir,
      command=['bash', '-c', point_command(root, '$JOB_COMPLETION_INDEX')],
      **({'resources': resources} if resources else {}))
  job = dict(
      apiVersion='batch/v1', kind='Job',
      metadata=dict(name=name, labels={'app.kubernetes.io/name': 'jaxlm-sweep'}),
      spec=dict(
          completionMode='Indexed', completions=len(points), parallelism=parallel,
          backoffLimitPerIndex=3, maxFailedIndexes=len(points),
          podFailurePolicy=dict(rules=[
              dict(action='Ignore', onPodConditions=[dict(type='DisruptionTarget')]),
              # Status 2 is a refused command (a bad root or index): retrying cannot help.
              dict(action='FailIndex', onExitCodes=dict(containerName='point', operator='In',
                                                        values=[2]))]),
          template=dict(spec=dict(restartPolicy='Never', containers=[container]))))
  header = ''.join(f'# {i}: {p.name}\n' for i, p in enumerate(points))
  return (f'# jaxlm sweep of {len(points)} points in {root}: kubectl apply -f <this file>\n'
          + header + yaml.safe_dump(job, sort_keys=False))


def write(path: Path, text: str, executable: bool = False) -> None:
  from jaxlm.sweep import state  # pylint: disable=import-outside-toplevel
  state.atomic_write(path, text.encode())
  if executable:
    path.chmod(0o755)
