"""Where this process sits in a multi-host job: the arguments of `jax.distributed.initialize`.

Under SLURM jaxlm works them out itself instead of leaving them to JAX's cluster detection, which
sets `local_device_ids=[SLURM_LOCALID]`: with one process per node that process drives GPU 0 only
(the MaxText bug, maxtext #865), and with one process per GPU bound by SLURM to its GPU (where
CUDA_VISIBLE_DEVICES names one device) it asks for a device that is not there. Here:

- one task on a node (`--ntasks-per-node=1`): the process drives every GPU the task was given;
- several tasks on a node: where SLURM bound each task to its own GPUs (`--gpus-per-task`, or
  fewer GPUs visible than tasks), each drives those; otherwise the node's GPUs are split evenly
  between them in SLURM_LOCALID order;
- the coordinator is the job's first node (or `distributed.coordinator_address`) and must not
  resolve to a loopback address on the other nodes of a multi-node job (a Debian-style
  `/etc/hosts` maps a host's own name to 127.0.1.1), which would leave them waiting until the
  timeout.

Everything here is a pure function of the environment (tests fake SLURM's variables).
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

from ml_collections import ConfigDict

from jaxlm.errors import UserError


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now (for a coordinator or a server started on this machine)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def expand_hostlist(hostlist: str) -> list[str]:
  """SLURM's compressed host list as names: 'gpu[001-003,007],cpu1' -> gpu001, gpu002, gpu003,
  gpu007, cpu1; several bracket groups in one name expand as a product ('r[1-2]n[1-2]')."""
  names, depth, start = [], 0, 0
  for i, ch in enumerate(hostlist + ','):
    depth += (ch == '[') - (ch == ']')
    if depth < 0:
      raise UserError(f'the SLURM host list {hostlist!r} has an unmatched "]".')
    if ch == ',' and depth == 0:
      if hostlist[start:i]:
        names.extend(_expand_name(hostlist[start:i], hostlist))
      start = i + 1
  if depth:
    raise UserError(f'the SLURM host list {hostlist!r} has an unmatched "[".')
  return names


def _expand_name(name: str, hostlist: str) -> list[str]:
  match = re.search(r'\[([^\]]*)\]', name)
  if not match:
    return [name]
  values = []
  for part in match.group(1).split(','):
    low, _, high = part.partition('-')
    if not low.isdigit() or (high and not high.isdigit()):
      raise UserError(f'the SLURM host list {hostlist!r} has a range {part!r} that is not '
                      'numbers.')
    width = len(low)
    values.extend(str(v).zfill(width) for v in range(int(low), int(high or low) + 1))
  head, tail = name[:match.start()], name[match.end():]
  return [e for v in values for e in _expand_name(head + v + tail, hostlist)]


def expand_counts(counts: str) -> list[int]:
  """SLURM's per-node task counts: '8(x3),4' -> [8, 8, 8, 4]."""
  out = []
  for part in counts.split(','):
    match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
    if not match:
      raise UserError(f'SLURM_TASKS_PER_NODE={counts!r} is not a list such as "8(x3),4".')
    out.extend([int(match.group(1))] * int(match.group(2) or 1))
  return out


def nvidia_devices() -> int:
  """GPUs on this host when no scheduler says which are this task's (/dev/nvidia0, ...)."""
  return len(glob.glob('/dev/nvidia[0-9]*'))


def gpu_list(env: Mapping[str, str]) -> list[str] | None:
  """The GPUs this task sees, as CUDA_VISIBLE_DEVICES names them (None: not said)."""
  visible = env.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [g for g in visible.split(',') if g.strip()]
  return None


def slurm_local_devices(env: Mapping[str, str],
                        count_gpus: Callable[[], int] = nvidia_devices) -> list[int] | None:
  """The local_device_ids of this SLURM task: indices among the GPUs the process sees.

  None where the task sees no GPU (a CPU job: JAX's own choice is harmless there)."""
  node = int(env.get('SLURM_NODEID', 0))
  counts = env.get('SLURM_STEP_TASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE')
  tasks_here = expand_counts(counts)[node] if counts else 1
  local = int(env.get('SLURM_LOCALID', 0))
  visible = gpu_list(env)
  gpus = len(visible) if visible is not None else count_gpus()
  if gpus == 0:
    return None
  if 'SLURM_GPUS_PER_TASK' in env or visible is not None and gpus < tasks_here:
    return list(range(gpus))  # SLURM bound these GPUs to this task
  if gpus % tasks_here:
    raise UserError(f'{tasks_here} SLURM tasks on this node cannot share its {gpus} GPUs evenly; '
                    f'start one task per GPU (--ntasks-per-node={gpus}) or one per node '
                    '(--ntasks-per-node=1), or bind them with --gpus-per-task.')
  per = gpus // tasks_here  # one task a node: all of them
  return list(range(local * per, (local + 1) * per))


def slurm_arguments(env: Mapping[str, str], coordinator_address: str = '',
                    port: int = 0) -> dict[str, Any]:
  """jax.distributed.initialize's coordinator_address, num_processes, process_id and
  local_device_ids for this task of a SLURM job step."""
  nodes = expand_hostlist(env.get('SLURM_STEP_NODELIST') or env['SLURM_JOB_NODELIST'])
  if not coordinator_address:
    port = port or int(env['SLURM_JOB_ID']) % 2**12 + (65535 - 2**12 + 1)  # as JAX's own
    coordinator_address = f'{nodes[0]}:{port}'
  return dict(coordinator_address=coordinator_address,
              num_processes=int(env.get('SLURM_STEP_NUM_TASKS') or env['SLURM_NTASKS']),
              process_id=int(env['SLURM_PROCID']),
              local_device_ids=slurm_local_devices(env), nodes=nodes)


def is_slurm_step(env: Mapping[str, str]) -> bool:
  """Whether this process is a task of a SLURM job step (srun), not only inside an allocation."""
  return all(k in env for k in ('SLURM_JOB_ID', 'SLURM_PROCID', 'SLURM_LOCALID')) and bool(
      env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST')) and bool(
          env.get('SLURM_STEP_NUM_TASKS') or env.get('SLURM_NTASKS'))


def _is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == 'localhost' or host.endswith('.localhost')


def check_coordinator(address: str, nodes: list[str], this_node: str,
                      resolve: Callable[[str], str] = socket.gethostbyname) -> None:
  """Refuses a coordinator the other nodes of a multi-node job cannot reach: a loopback address,
  or a name that resolves to one on a node other than the coordinator's own."""
  if len(nodes) < 2:
    return
  host = address.rsplit(':', 1)[0].strip('[]')
  fix = ('set config field distributed.coordinator_address to an address of the first node '
         'that every node reaches (its IP on the cluster network)')
  if _is_loopback(host):
    raise UserError(f'the coordinator {address} is a loopback address, but the job spans '
                    f'{len(nodes)} nodes; {fix}.')
  if host == this_node:
    return
  try:
    ip = resolve(host)
  except OSError:
    raise UserError(f'the coordinator host {host} does not resolve on {this_node}; '
                    f'{fix}.') from None
  if _is_loopback(ip):
    raise UserError(f'the coordinator host {host} resolves to the loopback address {ip} on '
                    f'{this_node}, so this node cannot reach it; {fix}, or map {host} to that IP '
                    f'in /etc/hosts on {this_node}.')


def distributed_arguments(cfg: ConfigDict, env: Mapping[str, str] | None = None,
                          resolve: Callable[[str], str] = socket.gethostbyname) -> dict[str, Any]:
  """The keyword arguments of jax.distributed.initialize for the config `cfg` in `env`."""
  env = os.environ if env is None else env
  d = cfg.distributed
  args: dict[str, Any] = dict(initialization_timeout=int(d.timeout))
  if d.local_device_ids:
    args['local_device_ids'] = [int(i) for i in str(d.local_device_ids).split(',')]
  if is_slurm_step(env) and not (d.num_processes and d.process_id >= 0):
    slurm = slurm_arguments(env, d.coordinator_address, d.coordinator_port)
    nodes = slurm.pop('nodes')
    this_node = env.get('SLURMD_NODENAME') or socket.gethostname()
    check_coordinator(slurm['coordinator_address'], nodes, this_node, resolve)
    return {**slurm, **args}
  if d.coordinator_address:
    address = d.coordinator_address
    if d.coordinator_port and ':' not in address:
      address = f'{address}:{d.coordinator_port}'
    args['coordinator_address'] = address
  if d.num_processes:
    args['num_processes'] = d.num_processes
  if d.process_id >= 0:
    args['process_id'] = d.process_id
  return args
