"""The launch scripts: SLURM's batch script, TPU VMs through a faked gcloud, Kubernetes manifests
against JobSet's schema, the sweep's grid, and a CPU rehearsal of the GPU benchmark script."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

import harness


def test_sweep_prints_one_command_per_grid_point(tmp_path):
  result = subprocess.run(
      [sys.executable, 'launch/sweep.py', '--config=configs/shakespeare_char.py',
       '--grid=optim.lr=1e-3,3e-3 model.num_layers=2,4', f'--root={tmp_path}', '--dry_run'],
      cwd=harness.ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 4
  assert f'--config.workdir={tmp_path}/lr=3e-3_num_layers=2' in lines[2]
  assert '--config.optim.lr=3e-3' in lines[2] and '--config.model.num_layers=2' in lines[2]


def test_gpu_check_rehearses_on_cpu(tmp_path):
  """A smoke test of launch/gpu_check.sh with tiny models: every variant is measured (its JSON
  has a train figure, written by jaxlm.bench) and is a row of the final table; the cuDNN check
  says it was skipped rather than passing."""
  env = harness.env(GPU_CHECK_TINY='1', PYTHON=sys.executable)
  result = subprocess.run(['launch/gpu_check.sh', str(tmp_path)], cwd=harness.ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'stopped' not in result.stdout, result.stdout[-3000:]
  assert 'skipped: no GPU here' in result.stdout
  table = result.stdout.split('variant ')[-1]
  names = ['gpt2', 'gpt2_scan1', 'gpt2_autodiff_loss', 'gpt2_triton_on', 'llama_dots',
           'llama_dots_attention', 'llama_autodiff_loss', 'llama_triton_on']
  for name in names:
    figures = json.loads((tmp_path / f'{name}.json').read_text())
    assert figures['train']['tokens_per_s'] > 0
    row = next(line for line in table.splitlines() if line.split()[:1] == [name])
    assert 'not measured' not in row
  remat = lambda name: json.loads((tmp_path / f'{name}.json').read_text())['config']['remat']
  assert (remat('llama_dots'), remat('llama_dots_attention')) == ('dots', 'dots_attention')


def test_bench_writes_each_figure_as_it_is_measured(tmp_path):
  """jaxlm.bench hands over (and the CLI writes) the train figures before eval is measured."""
  from tiny import tiny_config
  from jaxlm import bench
  cfg = tiny_config(workdir=str(tmp_path))
  cfg.model.vocab_size = 64
  seen = []
  bench.run(cfg, ['train', 'eval'], 2, 1,
            emit=lambda results, name: seen.append((name, sorted(results))))
  names = [name for name, _ in seen]
  assert names == ['config', 'train', 'eval']
  assert 'train' in seen[1][1] and 'eval' not in seen[1][1]


def test_prepare_benchmark_prints_its_figures(tmp_path):
  """A smoke test of launch/bench_prepare.py on a 1 MiB corpus: it runs every mode and prints a
  line of figures for each, a share of the ceiling beside each way of preparing (the figures
  themselves are in docs/BENCHMARKS.md)."""
  result = subprocess.run(
      [sys.executable, 'launch/bench_prepare.py', '--size_mb=1', '--chunk_mb=0.25',
       '--modes=ceiling,workers:2,array:2,beam:2', f'--workdir={tmp_path / "scratch"}'],
      cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith(('ceiling', 'workers:',
                                                                   'array:', 'beam:'))]
  assert [l.split(' ')[0] for l in lines] == ['ceiling', 'workers:2:', 'array:2:', 'beam:2:']
  assert all('MiB/s' in l and 'CPU s' in l and 'peak RSS' in l and 'of ceiling x 2' in l
             for l in lines[1:])
  assert not (tmp_path / 'scratch').exists()  # it cleans up after itself


def test_tpu_presets_round_the_micro_batch_to_the_chips():
  """launch/tpu_presets.py compiles each preset as configured except for what the slice calls
  for: Llama 1B's micro-batches on 4 chips, GPT-2's one batch on 128, and a micro-batch rounded
  up to a multiple of the chips (not the whole batch: 16 rows in 4 micro-batches on 8 chips
  become 4 of 8)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('tpu_presets',
                                                harness.ROOT / 'launch' / 'tpu_presets.py')
  presets = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(presets)
  cfg, changed = presets.for_slice('llama_1b', 'v5p-8', 4)
  assert (cfg.train.batch_size, cfg.train.grad_accum, changed) == (512, 16, ['grad_accum=16'])
  cfg, changed = presets.for_slice('gpt2_124m', 'v5p-256', 128)  # 480 rows in one batch
  assert (cfg.train.batch_size, changed) == (512, ['grad_accum=1', 'batch_size=512'])
  presets.ACCUM['base', 'test'] = 4  # base: 16 rows, so micro-batches of 4, rounded up to 8
  cfg, changed = presets.for_slice('base', 'test', 8)
  assert (cfg.train.batch_size, changed) == (32, ['grad_accum=4', 'batch_size=32'])


def test_entry_points_share_the_config_flag_in_one_process():
  """Importing two jaxlm entry points in one process (as the test files do, in whatever order
  pytest-xdist gives them to a worker) defines --config once, not twice (a DuplicateFlagError)."""
  result = subprocess.run([sys.executable, '-c', 'import jaxlm.compile, jaxlm.bench'],
                          cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_tpu_presets_refuses_an_unknown_preset_in_one_sentence():
  result = subprocess.run([sys.executable, 'launch/tpu_presets.py', '--presets=base,nope'],
                          cwd=harness.ROOT, env=harness.env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert 'error: --presets=base,nope is invalid' in result.stderr and not result.stdout


def fake_slurm(tmp_path, **extra):
  """An environment where `srun` runs its command here and `scontrol` records its arguments: one
  task of a one-node SLURM job 77."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text('#!/bin/sh\nshift\nexec "$@"\n')  # drops --kill-on-bad-exit
  (bin_dir / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
  for tool in ('srun', 'scontrol'):
    (bin_dir / tool).chmod(0o755)
  return harness.env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                     JAXLM_PYTHON=sys.executable, SLURM_JOB_ID='77',
                     SLURM_STEP_NODELIST='localhost',
                     SLURM_NTASKS='1', SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NODEID='0',
                     SLURM_STEP_TASKS_PER_NODE='1', CUDA_VISIBLE_DEVICES='', **extra)


def test_slurm_script_checkpoints_and_requeues_before_the_time_limit(tmp_path):
  """SLURM's USR1 warning (--signal=B:USR1@300) to launch/slurm.sbatch: the run checkpoints and
  stops, the job is requeued (`scontrol requeue 77`), and the requeued script resumes from that
  checkpoint to the end. The run goes through jax.distributed with SLURM's variables."""
  workdir = tmp_path / 'run'
  config = harness.write_config(tmp_path / 'cfg.py', workdir=str(workdir), **{
      'train.steps': 40, 'checkpoint.every': 20, 'train.eval_every': 40, 'cpu_devices': 1,
      'distributed.coordinator_port': harness.free_port()})
  env = fake_slurm(tmp_path)
  log = tmp_path / 'attempt1.log'
  job = harness.start(['bash', 'launch/slurm.sbatch', str(config)], log, env=env)
  harness.wait_until(lambda: harness.last_step(workdir) >= 3, job, log=log)
  job.send_signal(signal.SIGUSR1)
  assert job.wait(timeout=120) == 0, log.read_text()[-3000:]
  first = log.read_text()
  assert 'requeueing job 77' in first and 'Stopped by SIGTERM' in first, first[-3000:]
  stopped = harness.last_step(workdir)
  assert 3 <= stopped < 40
  assert (tmp_path / 'scontrol.log').read_text() == 'requeue 77\n'
  again = harness.run(['bash', 'launch/slurm.sbatch', str(config)], env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  steps = sorted(harness.logged_losses(workdir))
  assert steps[-1] == 40 and steps == list(range(1, 41))  # resumed, not started over
  assert 'step      1 ' not in again.stdout + again.stderr


def test_tpu_vm_dry_run_prints_the_exact_gcloud_commands():
  """Two v5p-16 slices (2 workers each) created as spot queued resources: the create command, the
  clean-up of each slice, then one ssh per worker that mounts the buckets and trains with its
  slice's multi-slice variables."""
  result = subprocess.run(
      [sys.executable, 'launch/tpu_vm.py', '--name=qr', '--zone=us-east5-a', '--project=p',
       '--num_slices=2', '--tpu_type=v5p-16', '--create', '--spot', '--runtime_version=v2-alpha',
       '--gcsfuse=gs://data-b/,c', '--dry_run', '--', '--config=configs/llama_1b.py',
       '--config.workdir=gs://b/run'],
      cwd=harness.ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  from jaxlm import tpu_vm
  where = '--zone=us-east5-a --project=p'
  clean = shlex.quote(f'--command={tpu_vm.CLEANUP}')

  def worker(tpu, w, slice_id):
    env = ('MEGASCALE_COORDINATOR_ADDRESS=\'<qr-0 worker 0 IP>:8080\' MEGASCALE_NUM_SLICES=2 '
           f'MEGASCALE_SLICE_ID={slice_id} MEGASCALE_PORT=8080')
    mounts = ''.join(f'mkdir -p /tmp/gcsfuse/{b} && {{ mountpoint -q /tmp/gcsfuse/{b} || gcsfuse '
                     f'-o ro --implicit-dirs {b} /tmp/gcsfuse/{b}; }} && ' for b in ('data-b', 'c'))
    command = (f'{mounts}cd ~/jaxlm && {env} exec .venv/bin/python -m jaxlm.train '
               '--config=configs/llama_1b.py --config.workdir=gs://b/run '
               '--config.distributed.initialize=true')
    return (f'gcloud compute tpus tpu-vm ssh {tpu} {where} --worker={w} '
            + shlex.quote(f'--command={command}'))
  assert result.stdout.splitlines() == [
      f'gcloud compute tpus queued-resources create qr {where} --accelerator-type=v5p-16 '
      '--runtime-version=v2-alpha --node-count=2 --node-prefix=qr --spot',
      f'gcloud compute tpus tpu-vm ssh qr-0 {where} --worker=all {clean}',
      f'gcloud compute tpus tpu-vm ssh qr-1 {where} --worker=all {clean}',
      worker('qr-0', 0, 0), worker('qr-0', 1, 0), worker('qr-1', 0, 1), worker('qr-1', 1, 1)]


FAKE_GCLOUD = '''#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
if args[:4] == ['compute', 'tpus', 'tpu-vm', 'describe']:
  print(json.dumps({{'networkEndpoints': [{{'ipAddress': '10.0.%s.%d' % (args[4][-1], i)}}
                                         for i in range(2)]}}))
elif args[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh']:
  flag = lambda name: next(a.split('=', 1)[1] for a in args if a.startswith(f'--{{name}}='))
  if flag('worker') != 'all':  # the clean-up is only recorded: here it would stop this machine's
    os.execvpe('bash', ['bash', '-c', flag('command')],  # jaxlm processes
               dict(os.environ, TPU_WORKER_ID=flag('worker')))
'''

FAKE_WORKER = '''#!{python}
import json, os, sys, time
me = os.environ.get('MEGASCALE_SLICE_ID', '0') + '-' + os.environ['TPU_WORKER_ID']
with open(f'{out}/worker-{{me}}.json', 'w') as f:
  json.dump(dict(argv=sys.argv[1:], env={{k: v for k, v in os.environ.items()
                                         if k.startswith('MEGASCALE')}}), f)
print(f'worker {{me}} step 1', flush=True)
if me == '0-1':
  time.sleep(1)
  print('RuntimeError: the TPU fell over', flush=True)
  sys.exit(3)
time.sleep(120)
'''


def test_tpu_vm_first_failing_worker_stops_the_others(tmp_path):
  """A faked gcloud runs each worker's command here: worker 1 of slice 0 fails after a second; the
  launcher prints its last lines, stops the other three (their ssh ends, the clean-up runs on each
  slice again) and exits 1. Each worker had its own log and its slice's variables."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(FAKE_GCLOUD.format(python=sys.executable))
  (tmp_path / 'python').write_text(FAKE_WORKER.format(python=sys.executable, out=tmp_path))
  for path in (bin_dir / 'gcloud', tmp_path / 'python'):
    path.chmod(0o755)
  calls = tmp_path / 'gcloud.log'
  env = harness.env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                    FAKE_GCLOUD_LOG=str(calls))
  started = time.time()
  result = subprocess.run(
      [sys.executable, 'launch/tpu_vm.py', '--name=qr', '--zone=z', '--num_slices=2',
       f'--repo={tmp_path}', '--python=./python', f'--logs={tmp_path}/logs', '--',
       '--config=configs/base.py', '--config.workdir=gs://b/run'],
      cwd=harness.ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert time.time() - started < 60  # the sleeping workers were stopped, not waited for
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'worker 1 of qr-0 failed (status 3)' in result.stdout, result.stdout
  assert 'RuntimeError: the TPU fell over' in result.stdout
  assert 'error: a worker failed with status 3' in result.stderr
  assert 'Traceback' not in result.stderr
  logs = sorted(p.name for p in (tmp_path / 'logs').iterdir())
  assert logs == ['qr-0-w0.log', 'qr-0-w1.log', 'qr-1-w0.log', 'qr-1-w1.log']
  assert 'worker 1-0 step 1' in (tmp_path / 'logs' / 'qr-1-w0.log').read_text()
  record = json.loads((tmp_path / 'worker-1-1.json').read_text())
  assert record['env'] == dict(MEGASCALE_COORDINATOR_ADDRESS='10.0.0.0:8080',
                               MEGASCALE_NUM_SLICES='2', MEGASCALE_SLICE_ID='1',
                               MEGASCALE_PORT='8080')
  assert record['argv'] == ['-m', 'jaxlm.train', '--config=configs/base.py',
                            '--config.workdir=gs://b/run', '--config.distributed.initialize=true']
  kinds = [(a[3], a[4], next((x for x in a if x.startswith('--worker=')), ''))
           for a in map(json.loads, calls.read_text().splitlines())]
  cleanups = [i for i, k in enumerate(kinds) if k[2] == '--worker=all']
  workers = [i for i, k in enumerate(kinds) if k[0] == 'ssh' and k[2] != '--worker=all']
  assert len(cleanups) == 4 and len(workers) == 4
  assert cleanups[1] < workers[0] and cleanups[2] > workers[-1]  # before starting, after failing


def _schema():
  return json.loads((harness.TESTS / 'data' / 'jobset_v1alpha2_schema.json').read_text())['schema']


def _unknown_fields(value, schema, where='') -> list[str]:
  """Fields of `value` the schema does not name (Kubernetes would drop them without a word)."""
  out = []
  if isinstance(value, dict) and 'properties' in schema:
    for key, item in value.items():
      if key not in schema['properties']:
        out.append(f'{where}.{key}')
      else:
        out += _unknown_fields(item, schema['properties'][key], f'{where}.{key}')
  elif isinstance(value, list) and 'items' in schema:
    for i, item in enumerate(value):
      out += _unknown_fields(item, schema['items'], f'{where}[{i}]')
  return out


def check_against_jobset_schema(manifest, schema=None):
  import jsonschema
  schema = schema or _schema()
  jsonschema.validate(manifest, schema)
  assert _unknown_fields(manifest, schema) == []


def k8s_manifest(tmp_path, *args):
  out = tmp_path / 'jobset.yaml'
  result = subprocess.run(
      [sys.executable, 'launch/k8s.py', '--image=img:1', '--workdir=gs://b/run',
       f'--output={out}', *args],
      cwd=harness.ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return yaml.safe_load(out.read_text())


def test_k8s_jobset_for_tpu_slices_follows_the_schema(tmp_path):
  manifest = k8s_manifest(tmp_path, '--name=llama', '--accelerator=tpu', '--tpu_type=v5p-16',
                          '--num_slices=2', '--spot', '--', '--config=configs/llama_1b.py',
                          '--config.train.steps=100')
  check_against_jobset_schema(manifest)
  assert (manifest['apiVersion'], manifest['kind']) == ('jobset.x-k8s.io/v1alpha2', 'JobSet')
  spec = manifest['spec']
  assert spec['failurePolicy']['rules'] == [dict(
      name='preemptionIsNotAFailure', action='RestartJobSetAndIgnoreMaxRestarts',
      onJobFailureReasons=['PodFailurePolicy'])]
  assert spec['network'] == dict(enableDNSHostnames=True, subdomain='llama')
  (job,) = spec['replicatedJobs']
  assert (job['name'], job['replicas']) == ('slice', 2)
  js = job['template']['spec']
  assert (js['parallelism'], js['completions'], js['backoffLimit']) == (2, 2, 0)
  assert js['podFailurePolicy']['rules'] == [dict(action='FailJob', onPodConditions=[
      dict(type='DisruptionTarget')])]
  pod = js['template']['spec']
  assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': 'tpu-v5p-slice',
                                 'cloud.google.com/gke-tpu-topology': '2x2x2',
                                 'cloud.google.com/gke-spot': 'true'}
  (container,) = pod['containers']
  assert container['resources'] == {'limits': {'google.com/tpu': 4}}
  env = {e['name']: e for e in container['env']}
  assert env['MEGASCALE_COORDINATOR_ADDRESS']['value'] == 'llama-slice-0-0.llama'
  assert env['MEGASCALE_SLICE_ID']['valueFrom']['fieldRef']['fieldPath'] == (
      "metadata.labels['jobset.sigs.k8s.io/job-index']")
  assert container['command'] == ['bash', '-c', (
      'exec python -m jaxlm.train --config=configs/llama_1b.py --config.workdir=gs://b/run '
      '--config.distributed.initialize=true --config.train.steps=100')]
  assert manifest['metadata']['annotations'] == {
      'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}


def test_k8s_jobset_for_gpu_nodes_follows_the_schema(tmp_path):
  manifest = k8s_manifest(tmp_path, '--name=gpt2', '--accelerator=gpu', '--nodes=4',
                          '--gpus_per_node=8', '--', '--config=configs/gpt2_124m.py')
  check_against_jobset_schema(manifest)
  (job,) = manifest['spec']['replicatedJobs']
  js = job['template']['spec']
  assert (job['replicas'], js['parallelism'], js['completionMode']) == (1, 4, 'Indexed')
  (container,) = js['template']['spec']['containers']
  assert container['resources'] == {'limits': {'nvidia.com/gpu': 8}}
  assert js['template']['spec']['nodeSelector'] == {
      'cloud.google.com/gke-accelerator': 'nvidia-h100-80gb'}
  command = container['command'][2]
  assert ('--config.distributed.coordinator_address=gpt2-workers-0-0.gpt2:1234 '
          '--config.distributed.num_processes=4 '
          '--config.distributed.process_id="$JOB_COMPLETION_INDEX"') in command
  assert subprocess.run(['bash', '-n', '-c', command]).returncode == 0


def test_k8s_schema_check_catches_a_misspelt_field():
  """The check above can fail: a field JobSet does not know, or one of the wrong type."""
  import jsonschema
  from jaxlm import k8s
  manifest = k8s.jobset(name='x', image='i', config='c.py', workdir='gs://b/r', overrides=[],
                        accelerator='tpu', tpu_type='v5p-8')
  check_against_jobset_schema(manifest)
  manifest['spec']['replicatedJobs'][0]['template']['spec']['paralelism'] = 2
  assert _unknown_fields(manifest, _schema()) == [
      '.spec.replicatedJobs[0].template.spec.paralelism']
  manifest['spec']['replicatedJobs'][0]['replicas'] = 'two'
  with pytest.raises(jsonschema.ValidationError):
    jsonschema.validate(manifest, _schema())


def test_sweep_indexed_job_follows_the_job_schema():
  """The sweep's indexed Job (jaxlm/sweep/scheduler.py) against the Job schema JobSet embeds."""
  from jaxlm.sweep import points, scheduler
  job = yaml.safe_load(scheduler.indexed_job('/mnt/s', points.grid('optim.lr=1,2'), 2, 'img',
                                             'jaxlm-sweep-s', 1))
  job_schema = _schema()['properties']['spec']['properties']['replicatedJobs']['items'][
      'properties']['template']
  check_against_jobset_schema({'spec': job['spec']}, job_schema)


def test_xpk_command_for_the_same_run(tmp_path):
  result = subprocess.run(
      [sys.executable, 'launch/k8s.py', '--name=llama', '--image=img:1', '--tpu_type=v5p-16',
       '--num_slices=2', '--workdir=gs://b/run', '--xpk', '--', '--config=configs/llama_1b.py'],
      cwd=harness.ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == (
      'xpk workload create \'--cluster=<cluster>\' --workload=llama --tpu-type=v5p-16 '
      '--num-slices=2 --docker-image=img:1 --max-restarts=10 \'--command=python -m jaxlm.train '
      '--config=configs/llama_1b.py --config.workdir=gs://b/run '
      '--config.distributed.initialize=true\'')


def test_bench_optim_walks_its_rate_grid_past_an_edge_and_counts_a_diverged_run(tmp_path,
                                                                               monkeypatch):
  """launch/bench_optim.py: while the best rate is the highest (or lowest) tried, the sweep goes
  one ratio further that way, at most twice; an interior best ends it. A run whose loss became
  non-finite scores infinity, so it is never the best, and counts as finished for --resume."""
  import importlib.util
  monkeypatch.syspath_prepend(str(harness.ROOT / 'launch'))  # (it imports case_study beside it)
  spec = importlib.util.spec_from_file_location('bench_optim',
                                                harness.ROOT / 'launch' / 'bench_optim.py')
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)

  def walk(loss):
    sweep = {}
    for r in bench.grid([0.5, 1.0, 2.0], sweep):
      sweep[r] = (None, dict(val=loss(r)))
    return sorted(sweep)
  assert walk(lambda r: (r - 1.0) ** 2) == [0.5, 1.0, 2.0]  # interior best: no extension
  assert walk(lambda r: (r - 4.0) ** 2) == [0.5, 1.0, 2.0, 4.0, 8.0]  # 4 then worse at 8
  assert walk(lambda r: -r) == [0.5, 1.0, 2.0, 4.0, 8.0]  # at most two steps
  assert walk(lambda r: r) == [0.125, 0.25, 0.5, 1.0, 2.0]  # downwards too
  diverged = tmp_path / 'run'
  diverged.mkdir()
  assert not bench.finished(diverged, 10)
  (diverged / bench.DIVERGED).write_text('')
  assert bench.finished(diverged, 10) and bench.result(diverged)['val'] == float('inf')
  assert walk(lambda r: float('inf') if r > 1.0 else -r) == [0.5, 1.0, 2.0]
