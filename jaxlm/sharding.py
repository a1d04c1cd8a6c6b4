"""Logical axes -> mesh axes: the rules table, activation constraints and shardings for state and batch.

Model code names the axes of every weight (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`,
`vocab`, `length`, `layers`) and of every block-boundary activation (`activation_batch`,
`activation_length`, `activation_embed`, `activation_heads`, `activation_kv_heads`) with logical
names, kept apart as MaxText keeps them, so that an activation's width can be sharded apart from
the weights' (FSDP shards weight `embed` over `fsdp` while the activations' batch takes `fsdp`);
only this module knows the mesh. The rules table itself is `config.mesh.rules`, so it can be
overridden per hardware without touching code. A table that maps two axes of one array onto the
same mesh axis is refused in one sentence, naming them.
"""

import contextlib
import contextvars
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from jaxlm.errors import UserError

Rules = tuple[tuple[str, tuple[str, ...]], ...]

# The logical axes of a token batch [B, L], and of the activations between blocks [B, L, D].
BATCH_AXES = ('activation_batch', 'activation_length')
ACTIVATION_AXES = ('activation_batch', 'activation_length', 'activation_embed')


def rules_from_config(mesh_cfg: ConfigDict) -> Rules:
  """`mesh.rules` ({'embed': 'fsdp', ...}) as the ((logical, (mesh axes...)), ...) table flax uses."""
  return tuple((logical, tuple(a.strip() for a in axes.split(',') if a.strip()))
               for logical, axes in mesh_cfg.rules.items())


def logical_to_spec(axes: Sequence[str | None], rules: Rules, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec.

  Given `mesh` and `shape`, a dimension that its mesh axes do not divide is replicated instead (a
  65-character vocabulary over 2 tensor shards, say), so any model runs on any mesh;
  `undivided` lists the parameters where that happened. Two axes mapped onto one mesh axis are
  a UserError (a mesh axis can split an array along one dimension only).
  """
  return _resolve(axes, rules, mesh, shape)[0]


def _resolve(axes, rules, mesh, shape) -> tuple[PartitionSpec, list[str]]:
  """(spec, ['vocab=65 over tensor=2', ...] for the dimensions replicated because undivided)."""
  table = dict(rules)
  used: dict[str, str] = {}
  spec, dropped = [], []
  for i, name in enumerate(axes):
    mesh_axes = tuple(table.get(name, ())) if name else ()
    for a in mesh_axes:
      if a in used:
        raise UserError(f'config fields mesh.rules.{used[a]} and mesh.rules.{name} both map onto '
                        f'the mesh axis {a!r}, and one array has both axes '
                        f'({", ".join(map(str, axes))}); map one of them elsewhere (a mesh axis '
                        'splits one dimension of an array).')
    if mesh is not None:
      mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
      if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
        over = 'x'.join(f'{a}={mesh.shape[a]}' for a in mesh_axes)
        dropped.append(f'{name}={shape[i]} over {over}')
        mesh_axes = ()
    used.update({a: name for a in mesh_axes})
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return PartitionSpec(*spec), dropped


def undivided(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> list[str]:
  """'path: dim=size over axis=n' for every parameter dimension that the rules shard but the mesh
  does not divide, and that is therefore replicated (the trainer logs these once)."""
  out = []
  for path, variable in nnx.to_flat_state(abstract_state):
    axes = variable.get_metadata().get('out_sharding') or (None,) * variable.ndim
    for reason in _resolve(axes, rules, mesh, variable.shape)[1]:
      out.append(f'{"/".join(map(str, path))}: {reason}')
  return out


_CURRENT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    'jaxlm_mesh', default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """Makes `mesh` and `rules` current for `constrain`; usable inside a traced function too."""
  token = _CURRENT.set((mesh, rules))
  try:
    yield
  finally:
    _CURRENT.reset(token)


def current() -> tuple[Mesh, Rules] | None:
  """The (mesh, rules) of the enclosing `use_mesh`, if any."""
  return _CURRENT.get()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical axis names; a no-op outside `use_mesh`."""
  active = current()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(axes, rules, mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def param_shardings(abstract_state: nnx.State, mesh: Mesh, rules: Rules) -> dict[str, Any]:
  """NamedShardings for a model's parameters, as a pure dict shaped like `nnx.to_pure_dict(state)`.

  Each `nnx.Param` carries its logical axes in the `out_sharding` metadata (the scanned layer
  stack adds `layers` in front).
  """
  def one(variable: nnx.Variable) -> NamedSharding:
    axes = variable.get_metadata().get('out_sharding') or (None,) * variable.ndim
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, variable.shape))

  shardings = jax.tree.map(one, abstract_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  return nnx.to_pure_dict(shardings)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Sharding of a [B, L, ...] batch: the batch dimension over the batch axes of the rules."""
  return NamedSharding(mesh, logical_to_spec(BATCH_AXES[:ndim], rules, mesh))


def host_rows(batch_sh: NamedSharding, global_batch: int,
              devices: Sequence[jax.Device] | None = None) -> np.ndarray:
  """The rows of a [global_batch, ...] batch that this process's devices (or `devices`, to
  simulate a host in tests) hold, in order.

  A host feeds exactly these rows (see jax.make_array_from_process_local_data): its position along
  the mesh's batch axes decides them, as MaxText derives its data index from the mesh. Hosts
  split along the batch axes get disjoint rows; hosts that differ only along other axes (say
  `tensor` spanning two hosts) get the same rows, and so must read the same data.
  """
  shape = (global_batch,) + (1,) * (len(batch_sh.spec) - 1)
  mine = set(batch_sh.addressable_devices if devices is None else devices)
  rows = set()
  for device, index in batch_sh.devices_indices_map(shape).items():
    if device in mine:
      rows.update(range(global_batch)[index[0]])
  return np.asarray(sorted(rows), np.int64)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
