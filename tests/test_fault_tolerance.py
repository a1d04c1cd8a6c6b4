"""Fault tolerance, end to end in subprocesses: SIGKILL (mid-save too), SIGTERM, torn and corrupt
checkpoints, a full disk, a changed device count, and non-finite losses."""

import json
import os
import re
import shutil
import signal
import sys
import time

import jax
import numpy as np
import psutil
import pytest

import harness
from conftest import TINY_TEXT, tiny_config
from jaxlm import trainer
from jaxlm.errors import UserError
from jaxlm.restore import load_trained

STEPS = 8
COMMON = {
    'train.steps': STEPS, 'checkpoint.every': 2, 'checkpoint.keep': 3, 'train.eval_every': 100,
    'train.sample_tokens': 0, 'model.dropout': 0.1,  # resumed randomness must match too
    'optim.decay_steps': STEPS,  # the schedule must not depend on where a run stops
    'cpu_devices': 2,  # two single-threaded devices, whatever the machine
}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """The config file, and the per-step losses of an uninterrupted run."""
  tmp = tmp_path_factory.mktemp('ft')
  (tmp / 'corpus.txt').write_text(TINY_TEXT)
  cfg = harness.write_config(tmp / 'cfg.py', **COMMON, **{'data.corpus': str(tmp / 'corpus.txt')})
  # (in a fork of the harness's warmed-up process; every interrupted run is a process of its own)
  result = harness.run_forked(harness.command(f'--config={cfg}',
                                              f'--config.workdir={tmp / "ref"}'))
  assert result.returncode == 0, result.stderr[-3000:]
  expected = {step: values[-1] for step, values in harness.logged_losses(tmp / 'ref').items()}
  assert sorted(expected) == list(range(1, STEPS + 1))
  return tmp, cfg, expected


def _assert_same_run(workdir, expected):
  """Every loss logged in workdir, re-executed steps included, equals the uninterrupted run's."""
  got = harness.logged_losses(workdir)
  assert sorted(got) == sorted(expected)
  for step, values in got.items():
    assert all(v == expected[step] for v in values), (step, values, expected[step])


def test_sigkill_at_several_steps_and_mid_save_resumes_bit_for_bit(setup):
  tmp, cfg, expected = setup
  work = tmp / 'killed'
  cmd = harness.command(f'--config={cfg}', f'--config.workdir={work}')
  for kill_after in (3, 5):  # between checkpoints 2 and 4, then 4 and 6
    log = tmp / f'kill{kill_after}.log'
    p = harness.start(cmd, log)
    harness.wait_until(lambda: harness.last_step(work) >= kill_after, p, log=log)
    p.send_signal(signal.SIGKILL)
    p.wait()
  # Kill while the save of step 6 is in flight: its temporary directory exists, unfinished.
  log = tmp / 'kill-mid-save.log'
  p = harness.start(harness.command(f'--config={cfg}', f'--config.workdir={work}',
                                    script=harness.TESTS / 'stall_save.py'), log,
                    env=harness.env(JAXLM_TEST_STALL_SAVE='6'))
  harness.wait_until(lambda: 'stalling the save of step 6' in log.read_text(), p, log=log)
  assert list((work / 'checkpoints').glob('6.orbax-checkpoint-tmp*'))
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (work / 'checkpoints' / '6').exists()
  result = harness.run_forked(cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step 4' in result.stdout + result.stderr
  assert not list((work / 'checkpoints').glob('*tmp*'))  # the leftover was cleaned up
  _assert_same_run(work, expected)


@pytest.fixture(scope='module')
def packed(setup):
  """Packing settings over a JSONL corpus of 300 speeches, and an uninterrupted run's losses."""
  tmp, cfg, _ = setup
  docs = tmp / 'speeches.jsonl'
  speeches = harness.SHIPPED.read_text().split('\n\n')[:300]
  docs.write_text(''.join(json.dumps({'text': t}) + '\n' for t in speeches))
  args = [f'--config.data.corpus={docs}', '--config.data.packing=pack',
          '--config.data.val_split=documents', '--config.data.max_docs_per_row=3']
  ref = harness.run_forked(harness.command(f'--config={cfg}',
                                           f'--config.workdir={tmp / "pack_ref"}', *args))
  assert ref.returncode == 0, ref.stderr[-3000:]
  expected = {step: v[-1] for step, v in harness.logged_losses(tmp / 'pack_ref').items()}
  return args, expected


def test_packed_run_with_two_workers_resumes_after_sigkill(setup, packed):
  """Packed rows of many documents, read by two Grain worker processes: killed and re-run, the
  losses of every step equal an uninterrupted run's (which read its batches in-process)."""
  tmp, cfg, _ = setup
  args, expected = packed
  work = tmp / 'pack_killed'
  cmd = harness.command(f'--config={cfg}', f'--config.workdir={work}', *args,
                        '--config.data.workers=2')
  log = tmp / 'pack_kill.log'
  p = harness.start(cmd, log)
  harness.wait_until(lambda: (work / 'checkpoints' / '2').exists() and
                     harness.last_step(work) >= 3, p, log=log)
  workers = psutil.Process(p.pid).children(recursive=True)
  p.send_signal(signal.SIGKILL)
  p.wait()
  result = harness.run_forked(cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'Resuming from step [2-7]\b', result.stdout + result.stderr)
  _assert_same_run(work, expected)
  assert len(workers) >= 2
  gone, alive = psutil.wait_procs(workers, timeout=10)  # the killed run's workers end too
  assert not alive, alive


@pytest.fixture(scope='module')
def staged(setup):
  """A staged mixture of two prepared datasets whose weights change at step 5."""
  from jaxlm.data.prepare import Settings, prepare
  tmp, _, _ = setup
  speeches = harness.SHIPPED.read_text().split('\n\n')[:200]
  sets = []
  for name, texts in (('upper', [t.upper() for t in speeches]), ('lower', speeches)):
    (tmp / f'{name}.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
    prepare(Settings(source=str(tmp / f'{name}.jsonl'), tokenizer='byte', val_docs=4),
            tmp / f'staged_{name}', progress=False)
    sets.append(tmp / f'staged_{name}')
  return [f'--config.data.mixture={sets[0]}:0.8,{sets[1]}:0.2@0; {sets[0]}:0.2,{sets[1]}:0.8@5',
          '--config.data.corpus=']


@pytest.mark.parametrize('optimizer,schedule', [('muon', 'wsd'),
                                                ('schedule_free_adamw', 'constant')])
def test_new_optimizers_and_a_mixture_stage_change_resume_bit_for_bit_after_sigkill(
    setup, staged, optimizer, schedule):
  """Muon with a warm-up-stable-decay schedule, and schedule-free AdamW, on a staged mixture
  (the weights change at step 5): killed after step 3 and re-run from checkpoint 2 or 4 (the
  optimizer's state restored, the stage change ahead), every step's loss equals an
  uninterrupted run's."""
  tmp, cfg, _ = setup
  args = [*staged, f'--config.optim.name={optimizer}', f'--config.optim.schedule={schedule}']
  ref = harness.run_forked(harness.command(f'--config={cfg}',
                                           f'--config.workdir={tmp / f"{optimizer}_ref"}', *args))
  assert ref.returncode == 0, ref.stderr[-3000:]
  expected = {step: v[-1] for step, v in harness.logged_losses(tmp / f'{optimizer}_ref').items()}
  work = tmp / f'{optimizer}_killed'
  cmd = harness.command(f'--config={cfg}', f'--config.workdir={work}', *args)
  log = tmp / f'{optimizer}_kill.log'
  p = harness.start(cmd, log)
  harness.wait_until(lambda: (work / 'checkpoints' / '2').exists() and
                     harness.last_step(work) >= 3, p, log=log)
  p.send_signal(signal.SIGKILL)
  p.wait()
  result = harness.run_forked(cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.search(r'Resuming from step [24]\b', result.stdout + result.stderr)
  _assert_same_run(work, expected)
  shares = [json.loads(line) for line in (work / 'metrics.jsonl').read_text().splitlines()]
  assert any(any(k.startswith('mix/') for k in r) for r in shares)  # the realised shares, logged


def test_ctrl_c_with_grain_workers_stops_once_with_a_checkpoint(setup, packed):
  """Ctrl-C in a terminal signals the whole process group, Grain's workers included: the run
  stops after the step with a checkpoint, exit 0, and no worker adds an error line."""
  tmp, cfg, _ = setup
  args, _ = packed
  work = tmp / 'ctrl_c'
  log = tmp / 'ctrl_c.log'
  p = harness.start(harness.command(f'--config={cfg}', f'--config.workdir={work}', *args,
                                    '--config.data.workers=2', '--config.train.steps=100000'),
                    log, start_new_session=True)
  harness.wait_until(lambda: harness.last_step(work) >= 3, p, log=log)
  os.killpg(p.pid, signal.SIGINT)
  assert p.wait(timeout=120) == 0, log.read_text()[-3000:]
  out = log.read_text()
  assert re.search(r'Stopped by SIGINT after step (\d+); checkpoint \1 is in', out), out[-2000:]
  assert 'error' not in out.lower() and 'Traceback' not in out, out[-3000:]


def test_sigterm_stops_with_a_checkpoint_and_exit_0(setup):
  tmp, cfg, expected = setup
  work = tmp / 'sigterm'
  long = harness.command(f'--config={cfg}', f'--config.workdir={work}',
                         '--config.train.steps=100000', '--config.checkpoint.every=100000')
  log = tmp / 'sigterm.log'
  p = harness.start(long, log)
  harness.wait_until(lambda: harness.last_step(work) >= 3, p, log=log)
  p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=120) == 0
  text = log.read_text()
  assert 'Stopped by SIGTERM after step' in text and 'Run the same command to resume' in text
  stopped = int(text.split('Stopped by SIGTERM after step ')[1].split(';')[0])
  assert (work / 'checkpoints' / str(stopped)).is_dir()  # saved at the very step it stopped
  # Resuming goes on from exactly there: the losses match an uninterrupted run of that length.
  ref = tmp / f'ref{stopped + 2}'
  for w in (ref, work):
    result = harness.run_forked(harness.command(f'--config={cfg}', f'--config.workdir={w}',
                                                f'--config.train.steps={stopped + 2}'))
    assert result.returncode == 0, result.stderr[-3000:]
  want = {s: v[-1] for s, v in harness.logged_losses(ref).items()}
  _assert_same_run(work, want)


def _truncate_largest_array_file(step_dir, every=False):
  """Cuts the largest array data file of a checkpoint in half (every one with every=True)."""
  files = sorted((step_dir / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  for path in files if every else files[-1:]:
    with open(path, 'r+b') as f:
      f.truncate(path.stat().st_size // 2)


def test_torn_latest_checkpoint_falls_back_to_the_previous_one(setup):
  tmp, cfg, expected = setup
  work = tmp / 'torn'
  shutil.copytree(tmp / 'ref', work)
  _truncate_largest_array_file(work / 'checkpoints' / '8')
  (work / 'checkpoints' / '6' / 'meta' / 'metadata').write_text('{not json')
  # The same command: the run must restart from 4, the newest readable checkpoint.
  result = harness.run_forked(harness.command(f'--config={cfg}', f'--config.workdir={work}'))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout + result.stderr
  assert 'checkpoint 8' in out and 'cannot be read' in out and 'Resuming from step 4' in out
  moved = sorted(p.name.split('-')[0] for p in (work / 'corrupt-checkpoints').iterdir())
  assert moved == ['6', '8']  # kept for inspection, not deleted
  new = harness.logged_losses(work)
  for step in (5, 6, 7, 8):
    assert new[step][-1] == expected[step]


def test_no_readable_checkpoint_stops_and_changes_nothing(setup):
  tmp, cfg, _ = setup
  work = tmp / 'allbad'
  shutil.copytree(tmp / 'ref', work)
  for step in (4, 6, 8):
    _truncate_largest_array_file(work / 'checkpoints' / str(step))
  before = harness.digest(work)
  result = harness.run_forked(harness.command(f'--config={cfg}', f'--config.workdir={work}'))
  assert result.returncode == 2
  assert 'error: none of the checkpoints in' in result.stderr and 'Traceback' not in result.stderr
  after = harness.digest(work)
  assert after.pop('.lock') != before.pop('.lock')  # (only who held the workdir last changed)
  assert after == before  # not overwritten, not trained from scratch


def test_disk_full_during_a_save(setup):
  tmp, cfg, _ = setup
  work = tmp / 'full'
  shutil.copytree(tmp / 'ref', work)
  before = harness.digest(work / 'checkpoints')

  result = harness.run(harness.command(f'--config={cfg}', f'--config.workdir={work}',
                                       '--config.train.steps=10',
                                       script=harness.TESTS / 'small_disk.py'))
  assert result.returncode == 2, result.stderr[-3000:]
  [error] = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert error.startswith('error: writing checkpoint 10 to') and 'checkpoint 8 is intact' in error
  assert 'Traceback' not in result.stderr
  after = harness.digest(work / 'checkpoints')
  assert {k: after.get(k) for k in before} == before  # every existing file as it was


def test_resume_onto_another_device_count_and_mesh(setup):
  tmp, cfg, expected = setup
  work = tmp / 'topology'
  # 4 steps fully sharded over 8 devices, then 4 more on 1 device...
  for devices, steps, mesh in ((8, 4, ('1', '-1')), (1, STEPS, ('-1', '1'))):
    result = harness.run_forked(harness.command(
        f'--config={cfg}', f'--config.workdir={work}', f'--config.cpu_devices={devices}',
        f'--config.train.steps={steps}', f'--config.mesh.data={mesh[0]}',
        f'--config.mesh.fsdp={mesh[1]}'))
    assert result.returncode == 0, result.stderr[-3000:]
  got = {s: v[-1] for s, v in harness.logged_losses(work).items()}
  # ...track the 2-device run to float32 rounding (other devices sum in another order).
  np.testing.assert_allclose([got[s] for s in range(1, STEPS + 1)],
                             [expected[s] for s in range(1, STEPS + 1)], atol=2e-5)


@pytest.mark.parametrize('policy', ['abort', 'skip'])
def test_non_finite_loss(tmp_path, corpus_file, policy):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = str(corpus_file)
  cfg.optim.lr, cfg.optim.clip_norm, cfg.optim.warmup_steps = 1e30, 0.0, 0  # diverges at once
  cfg.train.on_nonfinite = policy
  if policy == 'abort':
    with pytest.raises(UserError, match=r'the (loss|gradient norm) became non-finite at step '
                                        r'\d+ .* set train.on_nonfinite=skip'):
      trainer.run(cfg)
    assert not list((tmp_path / 'run' / 'checkpoints').glob('[0-9]*'))  # nothing non-finite kept
  else:
    result = trainer.run(cfg)
    assert result['train']['skipped_steps'] >= 1
    params = load_trained(str(tmp_path / 'run')).params  # what was saved is still finite
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('dtype,policy', [('float16', 'abort'), ('float32', 'skip')])
def test_updates_skipped_in_a_row_abort(tmp_path, corpus_file, dtype, policy):
  """A loss that stays non-finite is not skipped forever: train.max_skips in a row abort, also
  under float16 (where skips are how loss scaling works) and with on_nonfinite=skip."""
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = str(corpus_file)
  cfg.model.dtype, cfg.train.on_nonfinite = dtype, policy
  cfg.optim.lr, cfg.optim.clip_norm, cfg.optim.warmup_steps = 1e30, 0.0, 0  # diverges at once
  cfg.train.steps, cfg.train.max_skips, cfg.checkpoint.every = 12, 4, 100
  with pytest.raises(UserError, match=r'\d+ updates in a row were skipped .* lower optim.lr '
                                      r'\(train.max_skips=4\)'):
    trainer.run(cfg)
  assert not list((tmp_path / 'run' / 'checkpoints').glob('[0-9]*'))


def test_keep_period_keeps_every_kth_checkpoint(tmp_path, corpus_file):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus = str(corpus_file)
  cfg.train.steps, cfg.checkpoint.every, cfg.checkpoint.keep = 10, 1, 2
  cfg.checkpoint.keep_period = 4
  cfg.train.sample_tokens = 0
  trainer.run(cfg)
  kept = sorted(int(p.name) for p in (tmp_path / 'run' / 'checkpoints').iterdir()
                if p.name.isdigit())
  assert kept == [4, 8, 9, 10]


@pytest.mark.parametrize('axis', ['data', 'tensor', 'data-pack'])
def test_two_processes_equal_one_and_resume_in_one(setup, packed, axis):
  """Two JAX processes on this machine (launch/local.py) split along `data` (each host reads
  half of every batch) or along `tensor` (both read the whole batch): the losses of 5 steps are
  those of the one-process run on two devices; then the run resumes in a single process. With
  packed documents, each host plans every row and reads only its own rows' documents."""
  tmp, cfg, expected = setup
  data_args = []
  if axis == 'data-pack':
    data_args, expected = packed
  work = tmp / f'two_hosts_{axis}'
  mesh = ['--config.mesh.data=1', '--config.mesh.tensor=2'] if axis == 'tensor' else []
  result = harness.run([sys.executable, 'launch/local.py', '--processes=2', '--',
                        f'--config={cfg}', f'--config.workdir={work}', '--config.train.steps=5',
                        *mesh, *data_args])
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  got = harness.logged_losses(work)
  assert sorted(got) == [1, 2, 3, 4, 5] and all(len(v) == 1 for v in got.values())  # process 0
  # The same global batches and updates (float32 rounding: the all-reduces sum in another order).
  np.testing.assert_allclose([got[s][0] for s in range(1, 6)],
                             [expected[s] for s in range(1, 6)], atol=2e-5)
  assert (work / 'checkpoints' / '5').is_dir()
  result = harness.run_forked(harness.command(f'--config={cfg}', f'--config.workdir={work}',
                                              '--config.train.steps=7', *mesh, *data_args))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step 5' in result.stdout + result.stderr
  got = harness.logged_losses(work)
  np.testing.assert_allclose([got[s][0] for s in (6, 7)], [expected[s] for s in (6, 7)], atol=2e-5)


def test_eval_and_generate_fall_back_past_a_torn_checkpoint(setup):
  """Like training, the readers use the newest checkpoint whose parameters read back whole (and
  move nothing); a torn checkpoint asked for by --step is one sentence. (Readers restore the
  parameters alone, so every array file is torn here: damage to the optimizer state alone would
  not stop them, nor should it.)"""
  tmp, _, _ = setup
  work = tmp / 'torn_eval'
  shutil.copytree(tmp / 'ref', work)
  _truncate_largest_array_file(work / 'checkpoints' / '8', every=True)
  before = harness.digest(work / 'checkpoints')
  for module in ('jaxlm.eval', 'jaxlm.generate'):
    result = harness.run_forked(harness.command(f'--workdir={work}', '--max_new_tokens=4',
                                                module=module))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'warning: checkpoint 8' in result.stderr and 'using checkpoint 6' in result.stderr
    assert 'Traceback' not in result.stderr
  assert (work / 'eval' / '6.json').exists() and not (work / 'eval' / '8.json').exists()
  result = harness.run_forked(harness.command(f'--workdir={work}', '--step=8', module='jaxlm.eval'))
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert 'error: checkpoint 8 in' in result.stderr and 'give another --step' in result.stderr
  assert harness.digest(work / 'checkpoints') == before


def test_eval_and_generate_apply_the_runs_backend_settings(setup):
  """cpu_devices and xla_flags of the run reach eval and generate: they are applied before
  anything (Orbax included) starts JAX's backends."""
  tmp, _, _ = setup
  work = tmp / 'backend'
  shutil.copytree(tmp / 'ref', work)
  dump = tmp / 'xla_dump'
  for meta in (work / 'checkpoints').glob('*/meta/metadata'):
    saved = json.loads(meta.read_text())
    saved['config']['cpu_devices'], saved['config']['xla_flags'] = 3, f'--xla_dump_to={dump}'
    meta.write_text(json.dumps(saved))
  for module, args in (('jaxlm.eval', ['--batch_size=3']),
                       ('jaxlm.generate', ['--max_new_tokens=4'])):
    shutil.rmtree(dump, ignore_errors=True)
    result = harness.run_forked(harness.command(f'--workdir={work}', *args, module=module))
    assert result.returncode == 0, result.stderr[-3000:]
    assert '3 cpu device(s)' in result.stdout, result.stdout[-2000:]
    assert list(dump.iterdir()), module  # XLA wrote its dump: the flag was applied


def test_one_run_per_workdir_and_no_stale_lock_after_a_crash(setup):
  """A second run on a workdir in use refuses before writing anything; once the first is
  killed (its lock dies with it), the same command resumes."""
  tmp, cfg, expected = setup
  work = tmp / 'locked'
  long_run = harness.command(f'--config={cfg}', f'--config.workdir={work}',
                             '--config.train.steps=100000')  # still running when the second starts
  log = tmp / 'locked.log'
  p = harness.start(long_run, log)
  harness.wait_until(lambda: harness.last_step(work) >= 3, p, log=log)
  second = harness.run(harness.command(f'--config={cfg}', f'--config.workdir={work}',
                                       '--config.data.tokenizer=byte'))
  assert p.poll() is None, 'the first run ended before the second started'
  before = harness.digest(work / 'data')
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert second.returncode == 2 and 'Traceback' not in second.stderr
  assert f'error: the workdir {work} is in use by another jaxlm run (pid {p.pid} on' in \
      second.stderr, second.stderr[-2000:]
  assert harness.digest(work / 'data') == before  # (the byte run prepared nothing)
  got = harness.logged_losses(work)
  assert all(got[s][0] == expected[s] for s in range(1, STEPS + 1))
  latest = max(int(d.name) for d in (work / 'checkpoints').iterdir() if d.name.isdigit())
  result = harness.run_forked(long_run[:-1] + [f'--config.train.steps={latest + 1}'])
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming from step {latest}' in result.stdout + result.stderr


def _catches(pid, signum):
  """Whether process `pid` has a handler of its own for `signum` (Linux: SigCgt in its status)."""
  status = open(f'/proc/{pid}/status').read()
  mask = int(next(l.split()[1] for l in status.splitlines() if l.startswith('SigCgt:')), 16)
  return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize('signum,moment', [
    (signal.SIGINT, 'start-up'), (signal.SIGTERM, 'start-up'), (signal.SIGINT, 'first compile'),
    (signal.SIGTERM, 'first compile')])
def test_a_signal_outside_the_loop_ends_cleanly(setup, signum, moment):
  """SIGINT or SIGTERM before the loop (while Python imports JAX, or while the first step
  compiles) is one sentence and 128 + the signal's number: no traceback, no crash."""
  tmp, cfg, _ = setup
  work = tmp / f'signal-{signum}-{moment}'
  log = tmp / f'signal-{signum}-{moment}.log'
  p = harness.start(harness.command(f'--config={cfg}', f'--config.workdir={work}'), log)
  if moment == 'start-up':  # inside the config check and the imports of JAX that follow it, as
    # soon as the command has its handlers (SIGTERM's, which Python leaves at its default; a
    # fixed sleep raced a slow start on a busy host)
    harness.wait_until(lambda: _catches(p.pid, signal.SIGTERM), p, log=log)
  else:
    harness.wait_until(lambda: 'jaxlm |' in log.read_text(), p, log=log)  # then it compiles
  p.send_signal(signum)
  assert p.wait(timeout=120) == 128 + signum, log.read_text()[-3000:]
  out = log.read_text()
  assert 'Traceback' not in out and 'Segmentation' not in out, out[-3000:]
  errors = [l for l in out.splitlines() if l.startswith('error: ')]
  assert errors == [f'error: stopped by {signal.Signals(signum).name} before the command '
                    'finished; what was already saved is kept: run the same command again to '
                    'resume (or redo) it.'], out[-2000:]
  assert 'compiled the train step' not in out or moment == 'first compile'
