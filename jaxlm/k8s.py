"""Kubernetes manifests for a training run (`launch/k8s.py`): a JobSet (jobset.x-k8s.io/v1alpha2)
of TPU slices on GKE (one pod per TPU host, node selectors for the accelerator and topology, one
replicated Job per slice) or of GPU nodes (one pod per node with all its GPUs).

- Coordinator: the first pod's stable name through the JobSet's headless service,
  <name>-<job>-0-0.<name> (network.enableDNSHostnames). On TPUs JAX reads the hosts from the
  variables GKE gives each pod; across slices the MEGASCALE_* variables come from JobSet's labels.
  On GPUs the process id is the pod's completion index (JOB_COMPLETION_INDEX).
- Failures: a pod that fails makes its Job fail at once (backoffLimit 0) and JobSet restarts the
  whole set, which resumes from the latest checkpoint, at most `max_restarts` times; a pod evicted
  or preempted (condition DisruptionTarget: spot reclaim, maintenance, node drain) fails its Job
  through the pod failure policy, and JobSet's rule for that reason restarts without counting.
- SIGTERM before a pod is stopped: the run checkpoints and stops within
  terminationGracePeriodSeconds.
- The workdir is a bucket (gs://): pods' own disks go with them.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

from jaxlm.errors import UserError
from jaxlm.topology import topology_desc

API_VERSION = 'jobset.x-k8s.io/v1alpha2'
# GKE's node label values for each TPU generation (cloud.google.com/gke-tpu-accelerator).
TPU_ACCELERATORS = {'v4': 'tpu-v4-podslice', 'v5p': 'tpu-v5p-slice',
                    'v5e': 'tpu-v5-lite-podslice', 'v6e': 'tpu-v6e-slice'}
COORDINATOR_PORT = 1234
GRACE_SECONDS = 300  # SIGTERM -> checkpoint -> exit: the run's time to save before SIGKILL


def tpu_slice(tpu_type: str) -> dict[str, Any]:
  """'v5p-16' -> generation, GKE accelerator label, topology, hosts, chips a host."""
  try:
    kind, desc = topology_desc(tpu_type.replace('v5litepod', 'v5e'))
  except UserError as e:
    raise UserError(str(e).replace('--topology=', '--tpu_type=').replace(
        'v5e-N or v6e-N', 'v5litepod-N or v6e-N')) from None
  shape = desc.split(':')[1]
  chips = math.prod(int(s) for s in shape.split('x'))
  per_host = chips if chips <= (8 if kind in ('v5e', 'v6e') else 4) else 4
  return dict(kind=kind, accelerator=TPU_ACCELERATORS[kind], topology=shape, chips=chips,
              hosts=chips // per_host, chips_per_host=per_host)


def _name(name: str) -> str:
  if not re.fullmatch(r'[a-z]([-a-z0-9]{0,38}[a-z0-9])?', name):
    raise UserError(f'--name={name!r} is not a Kubernetes JobSet name; use at most 40 lowercase '
                    'letters, digits and dashes, starting with a letter.')
  return name


def train_command(config: str, workdir: str, overrides: list[str],
                  extra: list[str] = ()) -> list[str]:
  return ['python', '-m', 'jaxlm.train', f'--config={config}', f'--config.workdir={workdir}',
          '--config.distributed.initialize=true', *extra, *overrides]


def _label_env(name: str, label: str) -> dict[str, Any]:
  return dict(name=name, valueFrom=dict(fieldRef=dict(fieldPath=f"metadata.labels['{label}']")))


def jobset(*, name: str, image: str, config: str, workdir: str, overrides: list[str],
           accelerator: str, tpu_type: str = '', num_slices: int = 1, nodes: int = 1,
           gpus_per_node: int = 8, gpu_type: str = 'nvidia-h100-80gb', max_restarts: int = 10,
           spot: bool = False, service_account: str = '') -> dict[str, Any]:
  """The JobSet as a dict (yaml.safe_dump it for kubectl apply)."""
  _name(name)
  if not workdir.startswith('gs://'):
    raise UserError(f'--workdir={workdir!r} is not a bucket; pods lose their own disks when they '
                    'stop, so give a gs:// workdir every pod writes to.')
  if not image:
    raise UserError('--image is empty; give the container image with jaxlm installed.')
  job = 'slice' if accelerator == 'tpu' else 'workers'
  coordinator = f'{name}-{job}-0-0.{name}'
  node_selector: dict[str, str] = {}
  env: list[dict[str, Any]] = [dict(name='PYTHONUNBUFFERED', value='1')]
  annotations: dict[str, str] = {}
  if accelerator == 'tpu':
    if num_slices < 1:
      raise UserError(f'--num_slices={num_slices} is invalid: expected 1 or more.')
    s = tpu_slice(tpu_type)
    pods, replicas = s['hosts'], num_slices
    node_selector = {'cloud.google.com/gke-tpu-accelerator': s['accelerator'],
                     'cloud.google.com/gke-tpu-topology': s['topology']}
    resources = {'google.com/tpu': s['chips_per_host']}
    # One slice per node pool (JobSet's exclusive placement), as GKE's TPU docs and XPK do.
    annotations['alpha.jobset.sigs.k8s.io/exclusive-topology'] = 'cloud.google.com/gke-nodepool'
    if num_slices > 1:  # libtpu's multi-slice (DCN) rendezvous; JAX reads the same variables
      env += [dict(name='MEGASCALE_COORDINATOR_ADDRESS', value=coordinator),
              _label_env('MEGASCALE_NUM_SLICES', 'jobset.sigs.k8s.io/replicatedjob-replicas'),
              _label_env('MEGASCALE_SLICE_ID', 'jobset.sigs.k8s.io/job-index')]
    command = ['bash', '-c', 'exec ' + shlex.join(train_command(config, workdir, overrides))]
    ports = [8471, 8080]
  elif accelerator == 'gpu':
    if nodes < 1 or gpus_per_node < 1:
      raise UserError('--nodes and --gpus_per_node must be 1 or more; fix them.')
    pods, replicas = nodes, 1
    node_selector = {'cloud.google.com/gke-accelerator': gpu_type}
    resources = {'nvidia.com/gpu': gpus_per_node}
    extra = [f'--config.distributed.coordinator_address={coordinator}:{COORDINATOR_PORT}',
             f'--config.distributed.num_processes={nodes}']
    command = ['bash', '-c', 'exec ' + shlex.join(train_command(config, workdir, overrides, extra))
               + ' --config.distributed.process_id="$JOB_COMPLETION_INDEX"']
    ports = [COORDINATOR_PORT]
  else:
    raise UserError(f'--accelerator={accelerator!r} is not tpu or gpu; give one.')
  if spot:
    node_selector['cloud.google.com/gke-spot'] = 'true'
  pod_spec: dict[str, Any] = dict(
      restartPolicy='Never', nodeSelector=node_selector,
      terminationGracePeriodSeconds=GRACE_SECONDS,
      containers=[dict(name='jaxlm', image=image, command=command, env=env,
                       ports=[dict(containerPort=p) for p in ports],
                       resources=dict(limits=resources))])
  if spot:
    pod_spec['tolerations'] = [dict(key='cloud.google.com/gke-spot', operator='Equal',
                                    value='true', effect='NoSchedule')]
  if service_account:
    pod_spec['serviceAccountName'] = service_account
  return dict(
      apiVersion=API_VERSION, kind='JobSet',
      metadata=dict(name=name, annotations=annotations) if annotations else dict(name=name),
      spec=dict(
          failurePolicy=dict(maxRestarts=max_restarts, rules=[dict(
              name='preemptionIsNotAFailure', action='RestartJobSetAndIgnoreMaxRestarts',
              onJobFailureReasons=['PodFailurePolicy'])]),
          network=dict(enableDNSHostnames=True, subdomain=name),
          replicatedJobs=[dict(name=job, replicas=replicas, template=dict(spec=dict(
              parallelism=pods, completions=pods, completionMode='Indexed', backoffLimit=0,
              podFailurePolicy=dict(rules=[dict(action='FailJob', onPodConditions=[
                  dict(type='DisruptionTarget')])]),
              template=dict(spec=pod_spec))))]))


def xpk_command(*, name: str, image: str, config: str, workdir: str, overrides: list[str],
                tpu_type: str, num_slices: int, cluster: str = '<cluster>') -> list[str]:
  """The same TPU run through XPK (`xpk workload create`), for its users."""
  return ['xpk', 'workload', 'create', f'--cluster={cluster}', f'--workload={name}',
          f'--tpu-type={tpu_type}', f'--num-slices={num_slices}', f'--docker-image={image}',
          '--max-restarts=10', '--command=' + shlex.join(train_command(config, workdir,
                                                                         overrides))]


def prepare_jobset(*, name: str, image: str, prepare_args: list[str], tasks: int,
                   parallelism: int, cpus: int, mount: str, claim: str = '', bucket: str = '',
                   spot: bool = False, service_account: str = '') -> dict[str, Any]:
  """jaxlm.prepare across pods, as a JobSet of three Jobs run one after the other (dependsOn):
  `plan` (one pod), `tasks` (an indexed Job: pod i runs --task=i/N; a pod evicted or preempted is
  retried without counting, a refused command (status 2) is not retried), and `finalize` (one
  pod). The output directory must be on the volume every pod mounts at `mount`: a
  ReadWriteMany claim (Filestore, NFS) or a bucket through the Cloud Storage FUSE CSI driver.
  Re-applied after a failure, it resumes: the plan is the same and complete chunks are kept."""
  _name(name)
  if tasks < 1 or parallelism < 1 or cpus < 1:
    raise UserError('--tasks, --parallelism and --cpus must be 1 or more; fix them.')
  if bool(claim) == bool(bucket):
    raise UserError('give the shared volume the output is on: --claim=<a ReadWriteMany '
                    'PersistentVolumeClaim> or --bucket=<a Cloud Storage bucket> (one of them).')
  output = next((a.split('=', 1)[1] for a in prepare_args if a.startswith('--output=')), '')
  if not output or not (output.rstrip('/') + '/').startswith(mount.rstrip('/') + '/'):
    raise UserError(f'give jaxlm.prepare an --output below the mount point {mount} after `--` '
                    f'(it was {output or "not given"}): every pod writes there.')
  if any(a.startswith(('--plan', '--task', '--finalize', '--runner', '--workers'))
         for a in prepare_args):
    raise UserError('leave --plan, --task, --finalize, --runner and --workers out of the flags '
                    'after `--`: the Jobs add them.')
  prepare = shlex.join(['python', '-m', 'jaxlm.prepare', *prepare_args, f'--workers={cpus}'])
  volume: dict[str, Any] = dict(name='data')
  if claim:
    volume['persistentVolumeClaim'] = dict(claimName=claim)
  else:
    volume['csi'] = dict(driver='gcsfuse.csi.storage.gke.io',
                         volumeAttributes=dict(bucketName=bucket))
  pod_meta = dict(annotations={'gke-gcsfuse/volumes': 'true'}) if bucket else {}

  def job(step: str, command: str, **spec) -> dict[str, Any]:
    pod: dict[str, Any] = dict(
        restartPolicy='Never', volumes=[volume],
        containers=[dict(name='prepare', image=image, command=['bash', '-c', command],
                         resources=dict(requests=dict(cpu=str(cpus)),
                                        limits=dict(cpu=str(cpus))),
                         volumeMounts=[dict(name='data', mountPath=mount)])])
    if spot:
      pod['nodeSelector'] = {'cloud.google.com/gke-spot': 'true'}
      pod['tolerations'] = [dict(key='cloud.google.com/gke-spot', operator='Equal',
                                 value='true', effect='NoSchedule')]
    if service_account:
      pod['serviceAccountName'] = service_account
    template = dict(spec=pod, **({'metadata': pod_meta} if pod_meta else {}))
    return dict(name=step, replicas=1, template=dict(spec=dict(**spec, template=template)))

  retries = dict(podFailurePolicy=dict(rules=[
      dict(action='Ignore', onPodConditions=[dict(type='DisruptionTarget')]),
      dict(action='FailJob', onExitCodes=dict(containerName='prepare', operator='In',
                                              values=[2]))]), backoffLimit=3)
  plan = job('plan', f'exec {prepare} --plan', **retries)
  array = job('tasks', f'exec {prepare} --task="$JOB_COMPLETION_INDEX/{tasks}"',
              completionMode='Indexed', completions=tasks, parallelism=min(parallelism, tasks),
              backoffLimitPerIndex=3, maxFailedIndexes=tasks, podFailurePolicy=dict(rules=[
                  dict(action='Ignore', onPodConditions=[dict(type='DisruptionTarget')]),
                  dict(action='FailIndex', onExitCodes=dict(containerName='prepare',
                                                            operator='In', values=[2]))]))
  array['dependsOn'] = [dict(name='plan', status='Complete')]
  final = job('finalize', f'exec {prepare} --finalize', **retries)
  final['dependsOn'] = [dict(name='tasks', status='Complete')]
  return dict(apiVersion=API_VERSION, kind='JobSet', metadata=dict(name=name),
              spec=dict(failurePolicy=dict(maxRestarts=0), replicatedJobs=[plan, array, final]))


def write_manifest(manifest: dict[str, Any], output) -> None:
  """Prints a manifest as YAML, or writes it to the file the flag `output` names (a path that
  cannot be written is one sentence) and says how to start it."""
  import sys  # pylint: disable=import-outside-toplevel
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  import yaml  # pylint: disable=import-outside-toplevel
  from jaxlm import cli  # pylint: disable=import-outside-toplevel
  from jaxlm.data.tokenizers import atomic_write  # pylint: disable=import-outside-toplevel
  text = yaml.safe_dump(manifest, sort_keys=False)
  if not output.value:
    sys.stdout.write(text)
    return
  cli.require_output(output, is_file=True)
  atomic_write(Path(output.value), text.encode())
  print(f'wrote {output.value}; start it with: kubectl apply -f {output.value}')
