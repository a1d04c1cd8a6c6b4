"""Train on every worker of one or several Cloud TPU VM slices (jaxlm/tpu_vm.py has what it does:
stale processes and libtpu's lock file cleared first, a log per worker, the first failure stops
the rest, multi-slice variables).

  python launch/tpu_vm.py --name=my-v5p-16 --zone=us-east5-a -- \
      --config=configs/llama_1b.py --config.workdir=gs://bucket/runs/llama
  python launch/tpu_vm.py --name=my-qr --num_slices=2 --create --tpu_type=v5p-16 \
      --runtime_version=v2-alpha-tpuv5 --spot --zone=us-east5-a -- --config=...
  python launch/tpu_vm.py ... --dry_run            # print the gcloud commands, run nothing

Everything after `--` goes to `python -m jaxlm.train` on every worker. The checkout and its
virtual environment must be at --repo on every worker (the same path), and the workdir must be
shared by all hosts (a gs:// path, with the `gcs` extra installed on every worker). With
--gcsfuse=<bucket> (gcsfuse installed on the workers), a prepared dataset on that bucket is read
in place rather than copied whole to every worker.
"""

import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import flags

from jaxlm import cli, tpu_vm
from jaxlm.errors import UserError, exiting_with

_NAME = flags.DEFINE_string('name', None, 'The TPU VM (or, with --num_slices > 1, the prefix of '
                            'the slices <name>-0, <name>-1, ...).', required=True)
_ZONE = flags.DEFINE_string('zone', None, 'The zone of the TPU VMs.', required=True)
_PROJECT = flags.DEFINE_string('project', '', 'Google Cloud project (default: gcloud\'s).')
_SLICES = flags.DEFINE_integer('num_slices', 1, 'Slices joined over the data-center network.')
_TPU_TYPE = flags.DEFINE_string('tpu_type', '', 'Accelerator type (v5p-16, v5litepod-16, ...): '
                                'for --create, and the worker count of --dry_run.')
_CREATE = flags.DEFINE_bool('create', False, 'Create the slices first (a queued resource) and '
                            'wait until they are ACTIVE.')
_RUNTIME = flags.DEFINE_string('runtime_version', 'tpu-ubuntu2204-base', '--create: TPU software '
                               'version.')
_SPOT = flags.DEFINE_bool('spot', False, '--create: spot (preemptible) slices.')
_REPO = flags.DEFINE_string('repo', '~/jaxlm', 'The jaxlm checkout on every worker.')
_PYTHON = flags.DEFINE_string('python', '.venv/bin/python', 'Python on the workers (relative to '
                              '--repo).')
_LOGS = flags.DEFINE_string('logs', 'logs/tpu_vm', 'Local directory of the per-worker logs.')
_GCSFUSE = flags.DEFINE_list('gcsfuse', [], 'Buckets to mount read-only with gcsfuse on every '
                              'worker first (installed there), so that a prepared dataset on one '
                              'is read in place, each host reading only its share.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the gcloud commands instead of running them.')


def gcloud_output(cmd: list[str]) -> str:
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  except FileNotFoundError:
    raise UserError('gcloud is not installed here; install the Google Cloud CLI, or use '
                    '--dry_run to see the commands.') from None
  if result.returncode:
    last = (result.stderr.strip().splitlines() or ['no output'])[-1]
    raise UserError(f'`{shlex.join(cmd[:6])} ...` failed ({last}); check --name, --zone and '
                    '--project.')
  return result.stdout


def wait_active(target: tpu_vm.Target) -> None:
  while True:
    state = gcloud_output(tpu_vm.queued_state(target)).strip()
    print(f'queued resource {target.name}: {state}', flush=True)
    if state == 'ACTIVE':
      return
    if state in ('FAILED', 'SUSPENDED'):
      raise UserError(f'the queued resource {target.name} is {state}; delete it and try another '
                      'zone or --tpu_type.')
    time.sleep(30)


def main(argv: list[str]) -> None:
  train = argv[1:]
  if not train or not any(a.startswith('--config=') for a in train):
    raise UserError('give the training flags after `--`, with --config=<file>, e.g. '
                    '`-- --config=configs/llama_1b.py --config.workdir=gs://bucket/run`.')
  cli.require(_SLICES, _SLICES.value >= 1, 'at least 1 slice')
  if _CREATE.value and not _TPU_TYPE.value:
    raise UserError('--create needs --tpu_type (e.g. v5p-16); give one.')
  buckets = [b.removeprefix('gs://').rstrip('/') for b in _GCSFUSE.value]
  for bucket in buckets:
    if not bucket or '/' in bucket:
      raise UserError(f'--gcsfuse takes bucket names (e.g. --gcsfuse=my-data), not {bucket!r}; '
                      'give the bucket alone: a dataset below it is found through the mount.')
  target = tpu_vm.Target(_NAME.value, _ZONE.value, _PROJECT.value, _SLICES.value)
  hosts = None
  if _TPU_TYPE.value:
    from jaxlm import k8s  # pylint: disable=import-outside-toplevel
    hosts = k8s.tpu_slice(_TPU_TYPE.value)['hosts']
  if _DRY_RUN.value:
    if hosts is None:
      raise UserError('--dry_run needs --tpu_type (it says how many workers each slice has); '
                      'give one.')
    if _CREATE.value:
      print(shlex.join(tpu_vm.create(target, _TPU_TYPE.value, _RUNTIME.value, _SPOT.value)))
    for tpu in target.slices():
      print(shlex.join(tpu_vm.cleanup(target, tpu)))
    ips = [[f'<{tpu} worker {w} IP>' for w in range(hosts)] for tpu in target.slices()]
    for _, _, cmd in tpu_vm.plan(target, ips, _REPO.value, _PYTHON.value, train, buckets):
      print(shlex.join(cmd))
    return
  if _CREATE.value:
    subprocess.run(tpu_vm.create(target, _TPU_TYPE.value, _RUNTIME.value, _SPOT.value),
                   check=True)
    wait_active(target)
  ips = [tpu_vm.endpoints(gcloud_output(tpu_vm.describe(target, tpu)), tpu)
         for tpu in target.slices()]

  def stop_remote():
    for tpu in target.slices():
      subprocess.run(tpu_vm.cleanup(target, tpu), check=False, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
  print(f'clearing earlier jaxlm processes and stale libtpu lock files on {len(ips)} slice(s)',
        flush=True)
  stop_remote()
  with exiting_with(stop_remote):
    code = tpu_vm.run_all(tpu_vm.plan(target, ips, _REPO.value, _PYTHON.value, train, buckets),
                          Path(_LOGS.value), stop_remote,
                          say=lambda line: print(line, flush=True))
  if code:
    print(f'error: a worker failed with status {code} (its lines are above); fix it and run the '
          'same command again (training resumes from its checkpoint).', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main, positional=True)
