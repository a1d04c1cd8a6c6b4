"""Run a multi-host training on this one machine: N processes, one JAX process each, joined by
jax.distributed over localhost (Gloo collectives on CPU). For trying multi-host code paths (data
sharding by host, multi-process checkpoints, preemption) without a cluster.

  python launch/local.py --processes=2 -- --config=configs/shakespeare_char.py \
      --config.workdir=runs/two_hosts

Everything after `--` goes to `python -m jaxlm.train` in every process. Process 0's output is
shown; the others' goes to <workdir>/process_<i>.log (a local mirror's, for a gs:// workdir). Exits
with the first non-zero status.
"""

import signal
import subprocess
import sys

from absl import flags

from jaxlm import cli, cluster, paths
from jaxlm.errors import exit_on_signals

_PROCESSES = flags.DEFINE_integer('processes', 2, 'How many processes (hosts) to start.')
_DEVICES = flags.DEFINE_integer('devices_per_process', 1, 'CPU devices in each process.')


def main(argv: list[str]) -> None:
  cli.require(_PROCESSES, _PROCESSES.value >= 1, 'at least 1 process')
  cli.require(_DEVICES, _DEVICES.value >= 1, 'at least 1 device per process')
  train_args = argv[1:]
  workdir = next((a.split('=', 1)[1] for a in train_args if a.startswith('--config.workdir=')),
                 'runs/local')
  paths.check('--config.workdir', workdir)
  logs = paths.local_dir(workdir)
  logs.mkdir(parents=True, exist_ok=True)
  address = f'127.0.0.1:{cluster.free_port()}'
  processes = []
  for i in range(_PROCESSES.value):
    cmd = [sys.executable, '-m', 'jaxlm.train', *train_args,
           '--config.distributed.initialize=true',
           f'--config.distributed.coordinator_address={address}',
           f'--config.distributed.num_processes={_PROCESSES.value}',
           f'--config.distributed.process_id={i}', f'--config.cpu_devices={_DEVICES.value}']
    out = None if i == 0 else open(logs / f'process_{i}.log', 'w')
    processes.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None))
  def stop_all():  # pass a stop on: each process checkpoints and ends (JAX's preemption notice)
    for p in processes:
      p.send_signal(signal.SIGTERM)
    for p in processes:
      p.wait()
  exit_on_signals(stop_all)
  codes = [p.wait() for p in processes]
  sys.exit(next((c for c in codes if c), 0))


if __name__ == '__main__':
  cli.run(main, positional=True)
