"""jaxlm.cluster: the jax.distributed arguments of each process of a faked SLURM job, and a
coordinator that the other nodes cannot reach refused."""

import pytest

from jaxlm import cluster
from jaxlm.configs import base
from jaxlm.errors import UserError


def slurm_env(nodelist='gpu[001-003,007]', tasks_per_node=8, node=0, local=0, **extra):
  nodes = len(cluster.expand_hostlist(nodelist))
  env = dict(SLURM_JOB_ID='4242', SLURM_STEP_NODELIST=nodelist, SLURM_JOB_NODELIST=nodelist,
             SLURM_NNODES=str(nodes), SLURM_NTASKS=str(nodes * tasks_per_node),
             SLURM_STEP_TASKS_PER_NODE=f'{tasks_per_node}(x{nodes})', SLURM_NODEID=str(node),
             SLURM_LOCALID=str(local), SLURM_PROCID=str(node * tasks_per_node + local),
             SLURMD_NODENAME=cluster.expand_hostlist(nodelist)[node])
  env.update(extra)
  return env


def arguments(env, resolve=lambda host: '10.0.0.1', **fields):
  cfg = base.get_config()
  cfg.distributed.initialize = True
  cfg.distributed.update(fields)
  return cluster.distributed_arguments(cfg, env, resolve)


@pytest.mark.parametrize('hostlist, names', [
    ('gpu[001-003,007]', ['gpu001', 'gpu002', 'gpu003', 'gpu007']),
    ('node7', ['node7']),
    ('a[8-10],b1', ['a8', 'a9', 'a10', 'b1']),
    ('r[1-2]n[01-02]', ['r1n01', 'r1n02', 'r2n01', 'r2n02']),
    ('gpu[009-011]-ib,cpu[1,3]', ['gpu009-ib', 'gpu010-ib', 'gpu011-ib', 'cpu1', 'cpu3']),
])
def test_host_lists_expand_as_slurm_writes_them(hostlist, names):
  assert cluster.expand_hostlist(hostlist) == names


def test_task_counts_expand():
  assert cluster.expand_counts('8(x3),4') == [8, 8, 8, 4]
  assert cluster.expand_counts('1') == [1]


def test_one_process_per_gpu_over_four_nodes():
  """8 tasks a node, all 8 GPUs visible to each: task l drives GPU l; ids count across nodes."""
  for node, local in [(0, 0), (0, 7), (2, 3), (3, 5)]:
    args = arguments(slurm_env(node=node, local=local, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7'))
    assert args == dict(coordinator_address=f'gpu001:{4242 % 4096 + 61440}', num_processes=32,
                        process_id=node * 8 + local, local_device_ids=[local],
                        initialization_timeout=900)


def test_one_process_per_gpu_bound_by_slurm():
  """--gpus-per-task=1: SLURM shows each task only its GPU, which is device 0 of the process."""
  env = slurm_env(node=1, local=6, CUDA_VISIBLE_DEVICES='6', SLURM_GPUS_PER_TASK='1')
  assert arguments(env)['local_device_ids'] == [0]
  env = slurm_env(node=1, local=6, CUDA_VISIBLE_DEVICES='0')  # bound through cgroups alone
  assert arguments(env)['local_device_ids'] == [0]


def test_one_process_per_node_drives_every_gpu():
  """The MaxText bug: JAX's detection would give [SLURM_LOCALID] = [0], one GPU of eight."""
  env = slurm_env(tasks_per_node=1, node=2, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7')
  args = arguments(env)
  assert args['local_device_ids'] == list(range(8))
  assert (args['num_processes'], args['process_id']) == (4, 2)
  # No CUDA_VISIBLE_DEVICES: the GPUs the host has.
  env.pop('CUDA_VISIBLE_DEVICES')
  assert cluster.slurm_local_devices(env, count_gpus=lambda: 4) == [0, 1, 2, 3]
  assert cluster.slurm_local_devices(env, count_gpus=lambda: 0) is None  # a CPU job


def test_tasks_share_a_nodes_gpus_in_order():
  env = slurm_env(tasks_per_node=4, node=0, local=3, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7')
  assert arguments(env)['local_device_ids'] == [6, 7]
  with pytest.raises(UserError, match='cannot share its 8 GPUs evenly'):
    arguments(slurm_env(tasks_per_node=3, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7'))


def test_config_fields_win():
  env = slurm_env(local=2, CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7')
  args = arguments(env, coordinator_address='10.1.2.3:5000', local_device_ids='2,3', timeout=60)
  assert args['coordinator_address'] == '10.1.2.3:5000'
  assert args['local_device_ids'] == [2, 3] and args['initialization_timeout'] == 60
  assert arguments(env, coordinator_port=7000)['coordinator_address'] == 'gpu001:7000'


def test_outside_slurm_jax_detects_what_the_config_leaves_unset():
  assert arguments({}) == dict(initialization_timeout=900)
  assert arguments({}, coordinator_address='127.0.0.1:1234', num_processes=2, process_id=1) == dict(
      coordinator_address='127.0.0.1:1234', num_processes=2, process_id=1,
      initialization_timeout=900)


def test_a_coordinator_other_nodes_cannot_reach_is_refused():
  env = slurm_env(node=1)
  with pytest.raises(UserError, match='loopback address, but the job spans 4 nodes'):
    arguments(env, coordinator_address='localhost:1234')
  with pytest.raises(UserError, match='loopback address, but the job spans 4 nodes'):
    arguments(env, coordinator_address='127.0.0.1:1234')
  # The first node's name maps to 127.0.1.1 on this node (Debian's /etc/hosts): refused here ...
  with pytest.raises(UserError, match='gpu001 resolves to the loopback address 127.0.1.1 on '
                                      'gpu002'):
    arguments(env, resolve=lambda host: '127.0.1.1')
  # ... but not on the coordinator's own node, where loopback reaches it.
  assert arguments(slurm_env(node=0), resolve=lambda host: '127.0.1.1')['process_id'] == 0

  def unknown(host):
    raise OSError('no such host')
  with pytest.raises(UserError, match='gpu001 does not resolve on gpu002'):
    arguments(env, resolve=unknown)
  # One node: loopback is where the coordinator is.
  one = slurm_env(nodelist='gpu005', node=0)
  assert arguments(one, coordinator_address='localhost:1234')['num_processes'] == 8


@pytest.mark.parametrize('hostlist', ['gpu[001-003', 'gpu001]', 'gpu[a-b]'])
def test_a_damaged_host_list_is_one_sentence(hostlist):
  with pytest.raises(UserError, match='SLURM host list'):
    cluster.expand_hostlist(hostlist)


def test_training_refuses_a_loopback_coordinator_on_two_nodes(tmp_path):
  """jaxlm.train under a faked 2-node SLURM step with coordinator localhost: one sentence, before
  jax.distributed would wait for the other node until the timeout."""
  import harness
  config = harness.write_config(tmp_path / 'cfg.py', workdir=str(tmp_path / 'run'))
  env = {k: v for k, v in slurm_env(nodelist='gpu[1-2]', tasks_per_node=1, node=1).items()}
  result = harness.run_forked(harness.command(
      f'--config={config}', '--config.distributed.initialize=true',
      '--config.distributed.coordinator_address=localhost:1234'), extra_env=env)
  harness.assert_one_sentence(result, 'the coordinator localhost:1234 is a loopback address, but '
                              'the job spans 2 nodes; set config field '
                              'distributed.coordinator_address')
  assert not (tmp_path / 'run').exists()
