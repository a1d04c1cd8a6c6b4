"""launch/sweep.py: a sweep that survives a crashed point and re-runs only it, its report checked
against the points' own metrics, the scheduler outputs, and an Optuna search that retries a
killed trial."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

import harness
from tiny import TINY_TEXT

from jaxlm.errors import UserError
from jaxlm.sweep import local, points, report, scheduler, state
from jaxlm.sweep.points import Point


def sweep_config(tmp_path, **fields):
  """The tiny model on the shipped corpus (1% of it validates, all of that at each validation),
  logging every step and checkpointing every 10 of 100 steps, on one CPU device (1.3 s less
  compiling a run than the default one device per core)."""
  return harness.write_config(tmp_path / 'cfg.py', **{
      'train.steps': 100, 'checkpoint.every': 10, 'train.eval_every': 50, 'cpu_devices': 1,
      'train.sample_tokens': 0, 'train.eval_batches': 0, 'data.val_fraction': 0.01, **fields})


def sweep(*args, **kw):
  return subprocess.Popen([sys.executable, 'launch/sweep.py', *args], cwd=harness.ROOT,
                          env=harness.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def _saved(workdir):
  """The steps whose checkpoint is complete (Orbax renames a step's directory into place last)."""
  path = workdir / 'checkpoints'
  return [int(p.name) for p in path.iterdir() if p.name.isdigit()] if path.is_dir() else []


def kill_when(root, name, step, process):
  """SIGKILLs point `name`'s training process once its metrics reach `step` and a checkpoint is
  complete (an asynchronous save can still be in flight ten steps later)."""
  deadline = time.time() + 300
  while time.time() < deadline:
    st = state.get(root, name)
    if (st['state'] == 'running' and state.last_step(root / name) >= step
        and _saved(root / name)):
      os.kill(st['pid'], signal.SIGKILL)
      return
    if process.poll() is not None:
      raise AssertionError('the sweep ended before the point reached the step:\n'
                           + process.stderr.read()[-3000:])
    time.sleep(0.02)
  raise AssertionError('timed out')


def test_a_crashed_point_is_reported_and_only_it_reruns_resuming(tmp_path):
  """4 points, 2 at a time; one point killed at step 30 of 100: the other three finish, the sweep
  says which crashed at which step and exits 2; the report table, CSV and PNG exist with the
  points' own figures. Run again, only the crashed point runs, from its checkpoint (step 60 is
  not trained twice up to its last checkpoint)."""
  root = tmp_path / 'sweep'
  cfg = sweep_config(tmp_path)
  victim = 'lr=1e-3_num_layers=1'  # the first: two points are still queued when it crashes
  first = sweep(f'--config={cfg}', '--grid=optim.lr=1e-3,3e-3 model.num_layers=1,2',
                '--set=train.eval_every=25', f'--root={root}', '--parallel=2')
  kill_when(root, victim, 30, first)
  out, err = first.communicate(timeout=600)
  assert first.returncode == 2, err[-3000:]
  assert f'error: 1 of 4 points crashed ({victim};' in err, err[-3000:]
  crashed = state.get(root, victim)
  assert crashed['state'] == 'crashed' and 30 <= crashed['step'] < 100, crashed
  assert crashed['exit_code'] == -signal.SIGKILL and crashed['last_lines']
  assert f'{victim}: crashed at step {crashed["step"]}' in out
  others = [p for p in points.grid('optim.lr=1e-3,3e-3 model.num_layers=1,2') if p.name != victim]
  assert all(state.get(root, p.name)['state'] == 'finished' for p in others)
  finished_mtimes = {p.name: (root / p.name / 'metrics.jsonl').stat().st_mtime_ns for p in others}

  with open(root / 'report.csv') as f:
    rows = {r['point']: r for r in csv.DictReader(f)}
  assert rows[victim]['state'] == 'crashed'
  for p in others:  # the report's figures are the points' metrics.jsonl's
    vals = [json.loads(line) for line in (root / p.name / 'metrics.jsonl').read_text().splitlines()]
    vals = [v for v in vals if v['split'] == 'val']
    assert float(rows[p.name]['val_loss']) == vals[-1]['loss']
    assert float(rows[p.name]['best_val_loss']) == min(v['loss'] for v in vals)
    assert float(rows[p.name]['bits_per_byte']) == vals[-1]['bits_per_byte']
    assert rows[p.name]['step'] == '100'
    assert [v['step'] for v in vals] == [25, 50, 75, 100]  # --set reached every point
  md = (root / 'report.md').read_text()
  assert md.index(victim) > max(md.index(p.name) for p in others)  # crashed last
  assert (root / 'report.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  resumed_from = max(_saved(root / victim))
  again = sweep(f'--root={root}', '--parallel=2')
  out, err = again.communicate(timeout=600)
  assert again.returncode == 0, err[-3000:]
  assert '3 of 4 points finished or running; 1 to run' in out
  assert out.count(': started') == 1 and f'{victim}: started' in out
  assert {p.name: (root / p.name / 'metrics.jsonl').stat().st_mtime_ns
          for p in others} == finished_mtimes
  final = state.get(root, victim)
  assert final['state'] == 'finished' and final['attempts'] == 2
  logged = harness.logged_losses(root / victim)
  assert all(len(logged[s]) == 1 for s in range(1, resumed_from + 1))  # not trained twice
  assert sorted(logged) == list(range(1, 101))

  rows = report.table(root, state.load(root)[1])
  assert [r['state'] for r in rows] == ['finished'] * 4
  losses = [r['val_loss'] for r in rows]
  assert losses == sorted(losses) and rows[0]['best'] and not any(r['best'] for r in rows[1:])
  assert rows[0]['overrides']['train.eval_every'] == '25' and '25' not in rows[0]['point']
  printed = out.splitlines()
  assert any(line.startswith(rows[0]['point'] + ' *') for line in printed), out


def test_points_from_a_list_file_and_their_checks(tmp_path):
  listed = tmp_path / 'points.txt'
  listed.write_text('# baseline\noptim.lr=1e-3\n\noptim.lr=3e-3 model.num_layers=1\n')
  got = points.from_file(str(listed))
  assert got == [Point('lr=1e-3', (('optim.lr', '1e-3'),)),
                 Point('lr=3e-3_num_layers=1', (('optim.lr', '3e-3'), ('model.num_layers', '1')))]
  cfg = harness.write_config(tmp_path / 'cfg.py')
  resolved = points.resolve(str(cfg), got[1])
  assert (resolved.optim.lr, resolved.model.num_layers) == (3e-3, 1)
  assert type(resolved.model.num_layers) is int
  with pytest.raises(UserError, match="'2.5' of model.num_layers is not an integer"):
    points.resolve(str(cfg), Point('x', (('model.num_layers', '2.5'),)))
  assert points.resolve(str(cfg), Point('x', (('model.tie_embeddings', 'TRUE'),))
                        ).model.tie_embeddings is True
  with pytest.raises(UserError, match='both named'):
    points.check_unique([Point('lr=1', (('optim.lr', '1'),)), Point('lr=1', (('a.lr', '1'),))])


def test_states_decide_what_a_rerun_runs(tmp_path):
  """Finished: skipped. Crashed and pending: run. Running with a live process: left alone; with a
  dead one: recorded as crashed and run; on another host: left alone."""
  root = tmp_path
  names = ['done', 'crashed', 'pending', 'live', 'dead', 'elsewhere']
  pts = [Point(n, ()) for n in names]
  here = socket.gethostname()
  sleeper = subprocess.Popen(['sleep', '30'])
  gone = subprocess.Popen(['true'])
  gone.wait()
  state.put(root, 'done', state='finished')
  state.put(root, 'crashed', state='crashed')
  state.put(root, 'live', state='running', pid=sleeper.pid, host=here)
  state.put(root, 'dead', state='running', pid=gone.pid, host=here)
  state.put(root, 'elsewhere', state='running', pid=1, host=here + '-other')
  try:
    said = []
    todo = local.to_run(root, pts, log=said.append)
  finally:
    sleeper.kill()
  assert [p.name for p in todo] == ['crashed', 'pending', 'dead']
  assert state.get(root, 'dead')['state'] == 'crashed'
  assert len(said) == 2 and 'left alone' in said[0] and 'left alone' in said[1]


def test_each_parallel_point_gets_its_own_devices():
  gpus = local.slots(4, env={'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7'})
  assert [s['env']['CUDA_VISIBLE_DEVICES'] for s in gpus] == ['0,1', '2,3', '4,5', '6,7']
  with pytest.raises(UserError, match='--parallel=3 points need a GPU each'):
    local.slots(3, env={'CUDA_VISIBLE_DEVICES': '4,5'})
  cpus = local.slots(2, env={}, cpus=[0, 1, 2, 3, 4], gpus=0)
  assert cpus == [dict(cpus=[0, 1]), dict(cpus=[2, 3])]
  assert local.slots(3, env={}, cpus=[0, 1], gpus=0) == [dict(cpus=[0]), dict(cpus=[1]),
                                                         dict(cpus=[0])]


def _metrics(workdir, vals, tokens_per_s=(100.0, 300.0, 200.0)):
  workdir.mkdir(parents=True)
  lines = [dict(step=i + 1, split='train', loss=5.0, tokens_per_s=t)
           for i, t in enumerate(tokens_per_s)]
  lines += [dict(step=10 * (i + 1), split='val', loss=v, bits_per_byte=v / 2)
            for i, v in enumerate(vals)]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(line) + '\n' for line in lines))


def test_report_sorts_marks_and_compares_with_the_baseline(tmp_path):
  pts = [Point('a', (('optim.lr', '1e-3'),)), Point('b', (('optim.lr', '3e-3'),)),
         Point('c', (('optim.lr', '1e-2'),)), Point('d', (('optim.lr', '3e-2'),))]
  _metrics(tmp_path / 'a', [3.0, 2.5])
  _metrics(tmp_path / 'b', [2.8, 2.2, 2.4])  # its best (2.2) is not its last (2.4)
  _metrics(tmp_path / 'c', [2.9, 2.3])
  _metrics(tmp_path / 'd', [1.0])  # lowest, but crashed: last, never best
  for name in 'abc':
    state.put(tmp_path, name, state='finished', wall_s=12.0)
  state.put(tmp_path, 'd', state='crashed', error='exit status -9')
  rows = report.table(tmp_path, pts)
  assert [r['point'] for r in rows] == ['c', 'b', 'a', 'd']
  assert [r['best'] for r in rows] == [True, False, False, False]
  assert rows[0]['delta'] == pytest.approx(2.3 - 2.5) and rows[2]['baseline']
  assert rows[1]['best_val_loss'] == 2.2 and rows[1]['val_loss'] == 2.4
  assert rows[0]['tokens_per_s'] == 200.0 and rows[0]['bits_per_byte'] == 1.15
  by_best = report.table(tmp_path, pts, metric='best_val_loss', baseline='b')
  assert [r['point'] for r in by_best][:2] == ['b', 'c'] and by_best[0]['delta'] == 0.0
  written = report.write(tmp_path, pts)
  md = (tmp_path / 'report.md').read_text()
  assert '| c * |' in md and 'd: crashed at step 3: exit status -9' in md
  assert 'delta val_loss' in md and written[0]['point'] == 'c'
  with open(tmp_path / 'report.csv') as f:
    csv_rows = list(csv.DictReader(f))
  assert [r['point'] for r in csv_rows] == ['c', 'b', 'a', 'd']
  assert csv_rows[0]['optim.lr'] == '1e-2' and float(csv_rows[1]['best_val_loss']) == 2.2


def test_scheduler_outputs(tmp_path):
  """The SLURM array script (bash syntax, one index per point, requeue before the limit) and the
  indexed Job (every field a Job needs, preemption not counted, refused commands not retried)."""
  pts = points.grid('optim.lr=1e-3,3e-3,1e-2')
  script = scheduler.slurm_array('/shared/sweep', pts, 2, '/home/me/jaxlm')
  path = tmp_path / 'sweep.sbatch'
  path.write_text(script)
  assert subprocess.run(['bash', '-n', str(path)]).returncode == 0
  assert '#SBATCH --array=0-2%2' in script and '#SBATCH --signal=B:USR1@300' in script
  assert ('"$python" launch/sweep.py point --root=/shared/sweep --index="$SLURM_ARRAY_TASK_ID"'
          in script)
  assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in script
  assert '#   2: lr=1e-2' in script
  job = yaml.safe_load(scheduler.indexed_job('/mnt/sweep', pts, 2, 'img:1', 'jaxlm-sweep-x', 1))
  assert (job['apiVersion'], job['kind']) == ('batch/v1', 'Job')
  spec = job['spec']
  assert (spec['completionMode'], spec['completions'], spec['parallelism']) == ('Indexed', 3, 2)
  assert spec['backoffLimitPerIndex'] == 3
  rules = spec['podFailurePolicy']['rules']
  assert rules[0] == dict(action='Ignore', onPodConditions=[dict(type='DisruptionTarget')])
  assert rules[1]['action'] == 'FailIndex' and rules[1]['onExitCodes']['values'] == [2]
  pod = spec['template']['spec']
  assert pod['restartPolicy'] == 'Never'
  (container,) = pod['containers']
  assert container['image'] == 'img:1' and container['resources'] == {
      'limits': {'nvidia.com/gpu': 1}}
  assert container['command'][-1] == ('python launch/sweep.py point --root=/mnt/sweep '
                                      '--index="$JOB_COMPLETION_INDEX"')
  assert rules[1]['onExitCodes']['containerName'] == container['name']


def test_search_space_parses():
  from jaxlm.sweep import search
  space = search.parse_space('optim.lr=log:1e-4:1e-2 model.num_layers=int:1:3 '
                             'optim.schedule=choice:cosine,constant')
  assert space == {'optim.lr': ('log', ['1e-4', '1e-2']), 'model.num_layers': ('int', ['1', '3']),
                   'optim.schedule': ('choice', ['cosine', 'constant'])}
  for bad in ['optim.lr=log:1e-2:1e-4', 'optim.lr=uniform:0:1', 'x=int:1', 'x=int:a:b', '']:
    with pytest.raises(UserError):
      search.parse_space(bad)


def _running_trial_past(root, step, skip):
  for path in sorted((root / 'state').glob('trial_*.json')):
    st = state.get(root, path.stem)
    if (path.stem not in skip and st['state'] == 'running'
        and state.last_step(root / path.stem) >= step):
      return path.stem, st
  return None


def test_search_retries_killed_trials_and_names_the_best(tmp_path):
  """6 trials over optim.lr with Optuna on the tiny corpus, 2 at a time. trial_2's run is killed
  at step 30: the trial fails and a copy with the same learning rate is queued, which resumes from
  its checkpoint. Later the search process itself is killed (SIGKILL): its runs checkpoint and
  stop (SIGTERM from their parent's death), their trials stay RUNNING; the search started again
  finds their runs gone, fails and queues them again, and they resume. The study ends with 6
  complete trials, and the report and the last line name the best."""
  import optuna
  root = tmp_path / 'search'
  (tmp_path / 'corpus.txt').write_text(TINY_TEXT)
  cfg = sweep_config(tmp_path, **{'data.corpus': str(tmp_path / 'corpus.txt'),
                                  'data.val_fraction': 0.1})
  args = ('search', f'--config={cfg}', '--space=optim.lr=log:1e-3:1e-2', '--trials=6',
          f'--root={root}', '--parallel=2')
  run = sweep(*args)
  kill_when(root, 'trial_2', 30, run)
  deadline = time.time() + 300
  storage = f'sqlite:///{root}/optuna.db'
  while not any(t.user_attrs.get('retries') == 1  # the search queued trial_2's retry itself
                for t in optuna.load_study(study_name='jaxlm', storage=storage).get_trials()):
    assert run.poll() is None and time.time() < deadline, run.stderr.read()[-3000:]
    time.sleep(0.1)
  while not (found := _running_trial_past(root, 30, skip={'trial_0', 'trial_1', 'trial_2'})):
    assert run.poll() is None and time.time() < deadline, run.stderr.read()[-3000:]
    time.sleep(0.02)
  orphaned, _ = found
  run.kill()  # the search process, not its runs
  run.communicate()
  for path in (root / 'state').glob('trial_*.json'):  # its runs stop with a checkpoint
    pid = state.get(root, path.stem).get('pid')
    while pid and _alive(pid):
      assert time.time() < deadline
      time.sleep(0.05)
  again = sweep(*args)
  out, err = again.communicate(timeout=900)
  assert again.returncode == 0, err[-3000:]

  study = optuna.load_study(study_name='jaxlm', storage=storage)
  trials = study.get_trials()
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
  assert len(complete) == 6, [(t.number, t.state) for t in trials]
  assert {'trial_2', orphaned} <= {t.user_attrs['workdir'] for t in failed}
  assert len({t.user_attrs['workdir'] for t in complete}) == 6, [
      (t.number, t.state.name, t.user_attrs, t.system_attrs) for t in trials]
  for name in ('trial_2', orphaned):
    retry = next(t for t in complete if t.user_attrs['workdir'] == name)
    original = next(t for t in failed if t.user_attrs['workdir'] == name)
    assert retry.number > original.number and retry.params == original.params
    assert state.get(root, name)['attempts'] >= 2  # 3 if its retry was running at the kill
    logged = harness.logged_losses(root / name)
    assert sorted(logged) == list(range(1, 101)) and len(logged[1]) == 1  # resumed
  # Stopped by SIGTERM, the orphaned run checkpointed its last step: no step trained twice.
  assert all(len(v) == 1 for v in harness.logged_losses(root / orphaned).values())
  best = min(complete, key=lambda t: t.value)
  vals = [json.loads(line) for line in
          (root / best.user_attrs['workdir'] / 'metrics.jsonl').read_text().splitlines()]
  assert best.value == [v for v in vals if v['split'] == 'val'][-1]['loss']
  assert out.strip().splitlines()[-1].startswith(
      f'best: trial {best.number} ({best.user_attrs["workdir"]}) val_loss {best.value:.4f}')
  assert f'| {best.user_attrs["workdir"]} *' in (root / 'report.md').read_text()


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True
