"""The device mesh: config -> a `jax.sharding.Mesh` over (dcn, data, fsdp, tensor); multi-host.

`dcn` is data parallelism across slices (TPU slices joined by the data-center network, mesh.dcn
of them): only gradients cross it, once a step. The other axes lie within a slice.

The mesh uses Auto axis types: the compiler propagates shardings (GSPMD) from the parameters, the
batch and the few activation constraints at block boundaries, rather than every op carrying one.
"""

import math
import os
from typing import Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxlm import cluster
from jaxlm.config import MESH_AXES
from jaxlm.errors import UserError


def configure_backend(cfg: ConfigDict) -> None:
  """Sets what JAX reads when it starts its backends: `cfg.xla_flags`, and on a CPU host
  `cfg.cpu_devices` single-threaded devices.

  cpu_devices=0 means one per core, as many as the micro-batch divides evenly (3 cores and a batch
  of 16 give 2 devices). Must run before JAX starts; afterwards (a test that chose its own device
  count, say) it changes nothing. Accelerator hosts are unaffected by the CPU settings: only the
  CPU backend, which they use for host work, sees them.
  """
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if xla_bridge.backends_are_initialized():  # No public API tells this.
    return
  skip_absent_tpu()
  xla_flags = f'{os.environ.get("XLA_FLAGS", "")} {cfg.xla_flags}'.strip()
  micro = cfg.train.batch_size // cfg.train.grad_accum
  n = cfg.cpu_devices or max(d for d in range(1, (os.cpu_count() or 1) + 1) if micro % d == 0)
  if n > 1:
    jax.config.update('jax_num_cpu_devices', n)
    if '--xla_cpu_multi_thread_eigen' not in xla_flags:
      xla_flags += ' --xla_cpu_multi_thread_eigen=false'
  os.environ['XLA_FLAGS'] = xla_flags.strip()


def tpu_chips() -> int:
  """The TPU chips this host has (JAX's own check, by PCI ids; 1 if JAX cannot tell)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
    return hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except (ImportError, AttributeError):
    return 1


def skip_absent_tpu() -> None:
  """Leaves JAX's TPU backend out on a host without TPU chips, before JAX starts its backends.

  With libtpu installed (the `tpu` extra, which jaxlm.compile uses to compile for TPU topologies
  on any host) JAX tries the TPU backend on every start, and libtpu prints errors about
  TPU_ACCELERATOR_TYPE and worker hostnames where there is no TPU: noise on a healthy run. JAX
  already skips CUDA without a visible GPU; this does the same for TPUs (by the chips' PCI ids,
  as JAX's own check). JAX_PLATFORMS, when set, is the user's choice and is left alone;
  compiling for a topology loads libtpu on its own and is unaffected.
  """
  try:  # private API (JAX 0.10-0.12): without it, the noise stays and nothing else changes
    if os.environ.get('JAX_PLATFORMS') or jax.config.jax_platforms:
      return
    import dataclasses  # pylint: disable=import-outside-toplevel
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    factories = xla_bridge._backend_factories  # pylint: disable=protected-access
    if 'tpu' in factories and not tpu_chips():
      def absent():
        raise RuntimeError('no TPU chip on this host')
      # The registration stays (lowering rules for TPU, compiling for a topology, need it); its
      # start fails at once, quietly (fail_quietly, as JAX registers it), without loading libtpu.
      factories['tpu'] = dataclasses.replace(factories['tpu'], factory=absent)
  except (ImportError, AttributeError, TypeError):
    pass


def initialize_distributed(cfg: ConfigDict) -> None:
  """Starts `jax.distributed` when the config asks for it (one call per process, before any JAX
  use).

  Under SLURM jaxlm.cluster sets the coordinator, process count, process id and local devices;
  on TPU VMs, GKE and Open MPI clusters JAX detects them; the config fields win over both.
  """
  if not cfg.distributed.initialize:
    return
  args = cluster.distributed_arguments(cfg)  # checked (a loopback coordinator...) before joining
  # Processes that compute on CPUs (tests, launch/local.py) exchange data through Gloo; on
  # accelerator hosts this setting only concerns host-side computations.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**args)


def mesh_shape(mesh_cfg: ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """Resolves the -1 in (dcn, data, fsdp, tensor) and checks the product equals the device
  count."""
  sizes = [mesh_cfg.get(a, 1) for a in MESH_AXES]
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise UserError(
          f'the mesh axes {dict(zip(MESH_AXES, sizes))} do not divide the {num_devices} devices; '
          'change config fields mesh.dcn, mesh.data, mesh.fsdp or mesh.tensor.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(
        f'the mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
        f'{num_devices} are available; change config fields mesh.dcn, mesh.data, mesh.fsdp or '
        'mesh.tensor.')
  return tuple(sizes)


def make_mesh(cfg: ConfigDict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the (dcn, data, fsdp, tensor) mesh over `devices` (all devices by default) and checks
  that the batch and the model divide over it. With mesh.dcn > 1 on devices that know their slice
  (TPUs), each dcn index is one slice; elsewhere (CPU tests) consecutive devices stand in."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(cfg.mesh, len(devices))
  check_divisibility(cfg, dict(zip(MESH_AXES, shape)))
  axis_types = (jax.sharding.AxisType.Auto,) * len(shape)
  slices = shape[0]
  if slices > 1 and devices[0].platform == 'tpu':
    found = len({getattr(d, 'slice_index', 0) for d in devices})
    if found != slices:
      raise UserError(f'config field mesh.dcn={slices} asks for {slices} slices but the devices '
                      f'form {found}; set mesh.dcn={found}.')
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    grid = mesh_utils.create_hybrid_device_mesh((1, *shape[1:]), (slices, 1, 1, 1), devices)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)
  if slices > 1:
    n = len(devices) // slices
    per_slice = [jax.make_mesh(shape[1:], MESH_AXES[1:], axis_types=axis_types[1:],
                               devices=devices[i * n:(i + 1) * n]).devices
                 for i in range(slices)]
    return jax.sharding.Mesh(np.stack(per_slice), MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def check_divisibility(cfg: ConfigDict, sizes: dict[str, int]) -> None:
  """The batch must split evenly over the batch axes, and heads over the tensor axis."""
  batch_axes = [a.strip() for a in cfg.mesh.rules.activation_batch.split(',') if a.strip()]
  shards = math.prod(sizes[a] for a in batch_axes)
  micro = cfg.train.batch_size // cfg.train.grad_accum
  if micro % shards:
    raise UserError(
        f'config field train.batch_size={cfg.train.batch_size} (in {cfg.train.grad_accum} '
        f'micro-batches of {micro}) does not divide over the {shards} devices of the batch axes '
        f'{"x".join(batch_axes)}; make each micro-batch a multiple of {shards}.')
  m, tensor = cfg.model, sizes['tensor']
  for field in ('num_heads', 'num_kv_heads'):
    heads = m[field] or m.num_heads
    if heads % tensor:
      raise UserError(
          f'config field model.{field}={heads} is not divisible by mesh.tensor={tensor}; '
          'tensor parallelism splits whole heads, so pick a tensor degree that divides both.')
