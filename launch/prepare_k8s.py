"""Write the Kubernetes JobSet that prepares a corpus across pods (jaxlm/k8s.py, prepare_jobset):
a plan Job, an indexed Job of N tasks, then a finalize Job; the bytes are those of one host.

  python launch/prepare_k8s.py --name=prep-web --image=us-docker.pkg.dev/me/jaxlm:1 \
      --tasks=64 --parallelism=16 --cpus=16 --bucket=my-corpora --mount=/data \
      --output=prep-web.yaml -- --source='/data/web/*.jsonl.gz' --output=/data/prepared/web
  kubectl apply -f prep-web.yaml

Everything after `--` is jaxlm.prepare's flags (without --plan, --task, --finalize or --workers:
the Jobs add them); its --output must be below --mount, on the volume every pod mounts (a
ReadWriteMany --claim, or a --bucket through GKE's Cloud Storage FUSE CSI driver). If a task
fails for good, `kubectl delete jobset <name>` and apply the file again: the plan is the same
and the complete chunks are kept. Without --output the manifest is printed.
"""

from absl import flags

from jaxlm import cli, k8s
from jaxlm.errors import UserError

_NAME = flags.DEFINE_string('name', 'jaxlm-prepare', "The JobSet's name.")
_IMAGE = flags.DEFINE_string('image', '', 'Container image with jaxlm installed (required).')
_TASKS = flags.DEFINE_integer('tasks', 8, 'Tasks (pods of the indexed Job), each a share of the '
                              'chunks.')
_PARALLEL = flags.DEFINE_integer('parallelism', 8, 'Tasks running at once.')
_CPUS = flags.DEFINE_integer('cpus', 8, 'CPUs of each pod (its worker processes).')
_CLAIM = flags.DEFINE_string('claim', '', 'A ReadWriteMany PersistentVolumeClaim to mount.')
_BUCKET = flags.DEFINE_string('bucket', '', 'A Cloud Storage bucket to mount (GCS FUSE CSI).')
_MOUNT = flags.DEFINE_string('mount', '/data', 'Where the pods mount the volume.')
_SPOT = flags.DEFINE_bool('spot', False, 'Schedule on spot VMs (tolerating their taint).')
_SA = flags.DEFINE_string('service_account', '', 'Kubernetes service account of the pods '
                          '(Workload Identity, for the bucket).')
_OUTPUT = flags.DEFINE_string('output', '', 'Manifest file to write (default: print it).')


def main(argv: list[str]) -> None:
  prepare_args = argv[1:]
  if not prepare_args:
    raise UserError("give jaxlm.prepare's flags after `--`, e.g. `-- --source=/data/web "
                    '--output=/data/prepared/web`.')
  cli.require(_IMAGE, bool(_IMAGE.value), 'a container image with jaxlm installed')
  manifest = k8s.prepare_jobset(
      name=_NAME.value, image=_IMAGE.value, prepare_args=prepare_args, tasks=_TASKS.value,
      parallelism=_PARALLEL.value, cpus=_CPUS.value, mount=_MOUNT.value, claim=_CLAIM.value,
      bucket=_BUCKET.value, spot=_SPOT.value, service_account=_SA.value)
  k8s.write_manifest(manifest, _OUTPUT)


if __name__ == '__main__':
  cli.run(main, positional=True)
