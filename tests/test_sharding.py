"""Sharding: the rules table, parameter placement, and sharded training equal to one device."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import build_training, random_batch, tiny_config
from jaxlm import sharding
from jaxlm.errors import UserError
from jaxlm.mesh import make_mesh, mesh_shape

RULES = (('activation_batch', ('data', 'fsdp')), ('activation_length', ()),
         ('activation_embed', ()), ('embed', ('fsdp',)), ('mlp', ('tensor',)),
         ('heads', ('tensor',)), ('vocab', ('tensor',)), ('length', ()))


def test_logical_to_spec():
  """Activations and weights name their axes apart: the activations' batch takes fsdp while the
  weights' embed does too, and neither needs the other to give way."""
  assert sharding.logical_to_spec(sharding.ACTIVATION_AXES, RULES) == \
      P(('data', 'fsdp'), None, None)
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  assert sharding.logical_to_spec(('embed', 'mlp'), RULES, mesh) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('layers', 'embed', 'heads', 'head_dim'), RULES, mesh) == \
      P(None, 'fsdp', 'tensor', None)
  # A dimension its mesh axes do not divide is replicated: 65 characters over 2 tensor shards.
  assert sharding.logical_to_spec(('vocab', 'embed'), RULES, mesh, (65, 32)) == P(None, 'fsdp')
  # The activations' width can be sharded apart from the weights' (over tensor, say).
  apart = dict(RULES, activation_embed=('tensor',))
  assert sharding.logical_to_spec(sharding.ACTIVATION_AXES, tuple(apart.items()), mesh) == \
      P(('data', 'fsdp'), None, 'tensor')


def test_two_axes_of_one_array_on_one_mesh_axis_are_refused():
  """No silent first-claim: a table that puts the activations' width on fsdp, which their batch
  already takes, is one sentence naming both rules."""
  clash = tuple(dict(RULES, activation_embed=('fsdp',)).items())
  with pytest.raises(UserError, match=r"mesh.rules.activation_batch and "
                                      r"mesh.rules.activation_embed both map onto the mesh axis "
                                      r"'fsdp'"):
    sharding.logical_to_spec(sharding.ACTIVATION_AXES, clash)


@pytest.mark.parametrize('shape,hosts,expected', [
    ((8, 1, 1), 2, [range(0, 8), range(8, 16)]),  # data across hosts: disjoint halves
    ((2, 2, 2), 4, [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]),  # data x fsdp
    ((1, 1, 8), 2, [range(16), range(16)]),  # tensor across hosts: both hold every row
    ((2, 1, 4), 4, [range(8), range(8), range(8, 16), range(8, 16)]),  # data and tensor
])
def test_host_rows_follow_the_position_along_the_batch_axes(shape, hosts, expected):
  """Simulated hosts of 8 // hosts consecutive devices each: a host's rows are those its devices
  hold; hosts that differ only along `tensor` hold (and must read) the same rows."""
  mesh = jax.make_mesh(shape, ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices())
  batch_sh = sharding.batch_sharding(mesh, RULES)
  per_host = 8 // hosts
  got = [sharding.host_rows(batch_sh, 16, jax.devices()[h * per_host:(h + 1) * per_host])
         for h in range(hosts)]
  assert [list(r) for r in got] == [list(r) for r in expected]
  assert list(sharding.host_rows(batch_sh, 16)) == list(range(16))  # one process: everything


def test_dcn_is_the_outer_data_axis_of_whole_slices():
  """mesh.dcn=2 on 8 devices: each dcn index holds one slice's devices (consecutive ones on a
  CPU, slice_index on a TPU), and the batch splits over dcn first."""
  cfg = tiny_config()
  cfg.mesh.dcn, cfg.mesh.fsdp = 2, 2
  mesh = make_mesh(cfg)
  assert dict(mesh.shape) == dict(dcn=2, data=2, fsdp=2, tensor=1)
  assert sorted(d.id for d in mesh.devices[0].flat) == list(range(4))
  batch_sh = sharding.batch_sharding(mesh, sharding.rules_from_config(cfg.mesh))
  assert batch_sh.spec[0] == ('dcn', 'data', 'fsdp')
  rows = sharding.host_rows(batch_sh, 16, jax.devices()[:4])
  assert list(rows) == list(range(8))  # the first slice holds the first half of the batch


def test_mesh_shape_resolution_and_errors():
  cfg = tiny_config()
  assert mesh_shape(cfg.mesh, 8) == (1, 8, 1, 1)
  cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2
  assert mesh_shape(cfg.mesh, 8) == (1, 2, 2, 2)
  cfg.mesh.dcn = 2
  assert mesh_shape(cfg.mesh, 8) == (2, 1, 2, 2)
  cfg.mesh.dcn = 1
  cfg.mesh.data = 3
  with pytest.raises(UserError, match='needs 12 devices but 8'):
    mesh_shape(cfg.mesh, 8)


def test_batch_and_heads_must_divide_the_mesh():
  cfg = tiny_config()
  cfg.train.batch_size = 6
  with pytest.raises(UserError, match='train.batch_size=6'):
    make_mesh(cfg)
  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.tensor = 1, 8
  with pytest.raises(UserError, match='model.num_heads=4 is not divisible by mesh.tensor=8'):
    make_mesh(cfg)


def test_parameters_are_created_sharded():
  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  _, setup, _, _ = build_training(cfg)
  state = setup.init()
  q = state.params['blocks']['attn']['qkv']['kernel']  # [layers, D, K, G + 2, E]
  assert q.sharding.spec == P(None, 'fsdp', 'tensor', None, None)
  shard = q.addressable_shards[0].data
  assert shard.shape == (2, 16, 1, 4, 8)  # only this device's quarter exists on it
  mu = state.opt_state[1].mu['blocks']['attn']['qkv']['kernel']
  assert mu.sharding.spec == q.sharding.spec  # Adam moments follow their parameter


def test_embeddings_are_sharded_in_storage_and_in_the_step():
  """The tables keep their (vocab, embed) sharding, in the state and inside the step: no
  constraint replicates the whole V x D table (or so its gradient) on every device."""
  cfg = tiny_config('gpt2')
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  _, setup, step, batch_sh = build_training(cfg)
  state = setup.init()
  assert state.params['embed']['table'].sharding.spec == P('tensor', 'fsdp')
  assert state.params['pos_embed'].sharding.spec == P(None, 'fsdp')
  assert state.opt_state[1].mu['embed']['table'].sharding.spec == P('tensor', 'fsdp')
  lowered = step.lower(state, jax.device_put(random_batch(8, 16), batch_sh)).as_text()
  constraints = [l for l in lowered.splitlines()  # Shardy's form, or GSPMD's
                 if 'sdy.sharding_constraint' in l or 'custom_call @Sharding' in l]
  assert constraints  # (the activations are constrained, so the search sees constraints)
  V, D, L = 64, 32, 16
  for shape in (f'tensor<{V}x{D}xf32>', f'tensor<{L}x{D}xf32>'):  # the tables
    assert not [l for l in constraints if shape in l], shape


def test_undivided_dimensions_are_reported():
  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  cfg.model.vocab_multiple = 1  # 61 tokens: no tensor split
  _, setup, _, _ = build_training(cfg)
  assert sorted(setup.undivided) == ['embed/table: vocab=61 over tensor=2',
                                     'head/kernel: vocab=61 over tensor=2']
  assert setup.shardings.params['embed']['table'].spec == P(None, 'fsdp')
  cfg.model.vocab_multiple = 8
  assert build_training(cfg)[1].undivided == []


def _variant_config(variant):
  """tiny_config of a model variant; '<variant>-muon' trains it with Muon."""
  model, _, optimizer = variant.partition('-')
  cfg = tiny_config(model)
  cfg.optim.name = optimizer or cfg.optim.name
  return cfg


@functools.cache
def _single_device_losses(variant):
  cfg = _variant_config(variant)
  cfg.mesh.data = 1
  return _losses(cfg, 1)[0]


def _losses(cfg, num_devices, steps=5):
  _, setup, step, batch_sh = build_training(cfg, num_devices)
  state = setup.init()
  losses = []
  for _ in range(steps):
    batch = jax.device_put(random_batch(cfg.train.batch_size, cfg.model.max_seq_len), batch_sh)
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return np.array(losses), state


@pytest.mark.parametrize('shape', [(1, 1, 8, 1), (1, 2, 2, 2), (1, 8, 1, 1), (2, 2, 2, 1)])
@pytest.mark.parametrize('variant', ['llama', 'gpt2', 'llama-muon'])
def test_sharded_training_equals_one_device(shape, variant):
  """(dcn, data, fsdp, tensor) meshes of 8 devices: the losses of one device. dcn=2 stands for
  two slices (consecutive devices here) that share only the batch. With Muon, its Newton-Schulz
  iterations run on the sharded weights (XLA gathers what each matrix product needs)."""
  expected = _single_device_losses(variant)
  cfg = _variant_config(variant)
  cfg.mesh.dcn, cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = shape
  got, _ = _losses(cfg, 8)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  assert expected[-1] < expected[0]
