"""Write a Kubernetes JobSet manifest for a training run on GKE (jaxlm/k8s.py has what it holds).

  python launch/k8s.py --name=llama --image=us-docker.pkg.dev/me/jaxlm:1 --accelerator=tpu \
      --tpu_type=v5p-16 --num_slices=2 --workdir=gs://bucket/runs/llama \
      --output=llama.yaml -- --config=configs/llama_1b.py --config.train.steps=10000
  kubectl apply -f llama.yaml

  python launch/k8s.py --name=gpt2 --image=... --accelerator=gpu --nodes=4 --gpus_per_node=8 \
      --workdir=gs://bucket/runs/gpt2 -- --config=configs/gpt2_124m.py

Everything after `--` is the training command's flags (--config first). Without --output the
manifest is printed. --xpk prints the equivalent `xpk workload create` command instead.
"""

from absl import flags

from jaxlm import cli, k8s
from jaxlm.errors import UserError

_NAME = flags.DEFINE_string('name', 'jaxlm', 'The JobSet\'s name (and its pods\' DNS subdomain).')
_IMAGE = flags.DEFINE_string('image', '', 'Container image with jaxlm installed (required).')
_ACCEL = flags.DEFINE_enum('accelerator', 'tpu', ['tpu', 'gpu'], 'TPU slices or GPU nodes.')
_TPU = flags.DEFINE_string('tpu_type', 'v5p-8', 'TPU slice type: v4-N, v5p-N, v5litepod-N, v6e-N.')
_SLICES = flags.DEFINE_integer('num_slices', 1, 'TPU slices (multi-slice over DCN when > 1).')
_NODES = flags.DEFINE_integer('nodes', 1, 'GPU nodes (one pod each).')
_GPUS = flags.DEFINE_integer('gpus_per_node', 8, 'GPUs each GPU pod asks for.')
_GPU_TYPE = flags.DEFINE_string('gpu_type', 'nvidia-h100-80gb', 'GKE accelerator label of the GPU '
                                'node pool.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'The run\'s workdir: a gs:// bucket path.')
_RESTARTS = flags.DEFINE_integer('max_restarts', 10, 'Restarts after failures (preemptions do not '
                                 'count).')
_SPOT = flags.DEFINE_bool('spot', False, 'Schedule on spot VMs (tolerating their taint).')
_SA = flags.DEFINE_string('service_account', '', 'Kubernetes service account of the pods '
                          '(Workload Identity, for the bucket).')
_OUTPUT = flags.DEFINE_string('output', '', 'Manifest file to write (default: print it).')
_XPK = flags.DEFINE_bool('xpk', False, 'Print the equivalent `xpk workload create` command.')


def main(argv: list[str]) -> None:
  train = argv[1:]
  if not train or not train[0].startswith('--config='):
    raise UserError('give the training flags after `--`, --config=<file> first, e.g. '
                    '`-- --config=configs/llama_1b.py`.')
  cli.check_config_file(train[0].split('=', 1)[1])
  if any(a.startswith('--config.workdir=') for a in train):
    raise UserError('give the workdir as --workdir=gs://..., not --config.workdir after `--`.')
  cli.require(_RESTARTS, _RESTARTS.value >= 0, 'a number >= 0')
  config, overrides = train[0].split('=', 1)[1], train[1:]
  if _XPK.value:
    if _ACCEL.value != 'tpu':
      raise UserError('--xpk writes TPU workloads here; give --accelerator=tpu.')
    import shlex  # pylint: disable=import-outside-toplevel
    print(shlex.join(k8s.xpk_command(name=_NAME.value, image=_IMAGE.value, config=config,
                                     workdir=_WORKDIR.value, overrides=overrides,
                                     tpu_type=_TPU.value, num_slices=_SLICES.value)))
    return
  manifest = k8s.jobset(
      name=_NAME.value, image=_IMAGE.value, config=config, workdir=_WORKDIR.value,
      overrides=overrides, accelerator=_ACCEL.value, tpu_type=_TPU.value,
      num_slices=_SLICES.value, nodes=_NODES.value, gpus_per_node=_GPUS.value,
      gpu_type=_GPU_TYPE.value, max_restarts=_RESTARTS.value, spot=_SPOT.value,
      service_account=_SA.value)
  k8s.write_manifest(manifest, _OUTPUT)


if __name__ == '__main__':
  cli.run(main, positional=True)
