"""jaxlm.prepare: prepared token ids equal direct tokenization; workers and kills do not change
the bytes; bad inputs are one sentence naming the file and line; a job array (its SLURM and
Kubernetes recipes too) and Beam give one host's bytes, whatever fails or runs twice."""

import gzip
import json
import os
import re
import signal
import sys
import time

import numpy as np
import psutil
import pytest

import harness
from jaxlm.data.prepare import Settings, prepare, prepared_tokenizer
from jaxlm.data.prepared import Prepared
from jaxlm.data.sources import documents, plan_chunks
from jaxlm import errors
from jaxlm.errors import UserError
from tiny import TINY_TEXT

SHIPPED = open(harness.ROOT / 'jaxlm' / 'data' / 'tinyshakespeare.txt', encoding='utf-8').read()


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """Speeches of the shipped corpus as documents: a plain JSONL, a gzip JSONL, two text files."""
  tmp = tmp_path_factory.mktemp('source')
  speeches = [p for p in SHIPPED.split('\n\n') if p.strip()][:1500]
  with open(tmp / 'a.jsonl', 'w', encoding='utf-8') as f:
    for s in speeches[:1000]:
      f.write(json.dumps({'text': s, 'meta': 1}) + '\n')
  with gzip.open(tmp / 'b.jsonl.gz', 'wt', encoding='utf-8') as f:
    for s in speeches[1000:]:
      f.write(json.dumps({'text': s}) + '\n')
  (tmp / 'c.txt').write_text('Caf\u00e9 cr\u00e8me \u2014 a document of its own.\n')
  (tmp / 'd.txt').write_text(TINY_TEXT)
  return tmp, speeches + [(tmp / 'c.txt').read_text(), TINY_TEXT]


def _read(output, split):
  import grain
  manifest = json.loads((output / 'manifest.json').read_text())
  paths = [str(output / name) for name in manifest['splits'][split]['shards']]
  records = grain.sources.ArrayRecordDataSource(paths)
  docs = [np.frombuffer(records[i], '<i4').tolist() for i in range(len(records))]
  lengths = np.concatenate([np.load(output / n) for n in manifest['splits'][split]['lengths']])
  assert lengths.tolist() == [len(d) for d in docs]  # the lengths that plan batches are right
  return docs


@pytest.mark.parametrize('tokenizer', ['byte', 'sentencepiece'])
def test_prepared_ids_equal_tokenizing_the_documents(source, tmp_path, tokenizer):
  src, texts = source
  s = Settings(source=str(src), tokenizer=tokenizer, vocab_size=400, val_fraction=0.1,
               chunk_mb=0.05)
  assert len(plan_chunks(s.source, s.chunk_mb)) > 4  # a.jsonl is cut in pieces
  manifest = prepare(s, tmp_path / 'out', workers=2)
  tok = prepared_tokenizer(tmp_path / 'out', s)
  got = _read(tmp_path / 'out', 'train') + _read(tmp_path / 'out', 'validation')
  assert sorted(got) == sorted(tok.encode(t) for t in texts)  # every document once, as encoded
  val = manifest['splits']['validation']
  assert 0.05 < val['documents'] / len(texts) < 0.15
  assert manifest['splits']['train']['documents'] + val['documents'] == len(texts)
  assert sum(m['bytes'] for m in manifest['splits'].values()) == \
      sum(len(t.encode()) for t in texts)
  assert manifest['tokenizer']['fingerprint'] == tok.fingerprint
  # The training split's token counts, for masked LM's frequency weighting; a preparation made
  # before jaxlm counted (no counts) gets them when prepared again.
  counts = np.load(tmp_path / 'out' / manifest['token_counts'])
  np.testing.assert_array_equal(counts, np.bincount(np.concatenate(_read(tmp_path / 'out',
                                                                         'train')),
                                                    minlength=tok.vocab_size))
  for old in [*(tmp_path / 'out' / 'chunks').glob('*.counts.npy'),
              tmp_path / 'out' / manifest['token_counts']]:
    old.unlink()
  prepare(s, tmp_path / 'out', workers=2)
  np.testing.assert_array_equal(np.load(tmp_path / 'out' / manifest['token_counts']), counts)


def test_workers_and_a_kill_do_not_change_the_bytes(source, tmp_path):
  _, texts = source
  src = tmp_path / 'big.jsonl'  # ~2 MB in ~100 chunks: long enough to be killed half-way
  src.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts * 8))
  args = [f'--source={src}', '--tokenizer=byte', '--chunk_mb=0.02', '--val_fraction=0.1']
  one = harness.run_forked(harness.command(*args, f'--output={tmp_path / "one"}',
                                           '--workers=1', module='jaxlm.prepare'))
  assert one.returncode == 0, one.stderr[-2000:]
  two = harness.run_forked(harness.command(*args, f'--output={tmp_path / "two"}',
                                           '--workers=2', module='jaxlm.prepare'))
  assert two.returncode == 0, two.stderr[-2000:]
  expected = harness.digest(tmp_path / 'one')
  assert harness.digest(tmp_path / 'two') == expected
  killed = tmp_path / 'killed'
  cmd = harness.command(*args, f'--output={killed}', '--workers=1', module='jaxlm.prepare')
  p = harness.start(cmd, tmp_path / 'kill.log')
  harness.wait_until(lambda: len(list((killed / 'chunks').glob('*.json'))) >= 2, p,
                     log=tmp_path / 'kill.log')
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (killed / 'manifest.json').exists()
  again = harness.run_forked(cmd)
  assert again.returncode == 0, again.stderr[-2000:]
  assert harness.digest(killed) == expected


def test_ctrl_c_stops_the_workers_with_one_line(source, tmp_path):
  """A Ctrl-C reaches the whole process group: one line and status 130, no worker tracebacks,
  no leaked semaphores; the same command then finishes the preparation."""
  _, texts = source
  src = tmp_path / 'big.jsonl'  # ~10 MB in ~200 chunks: busy for several seconds
  src.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts * 40))
  out = tmp_path / 'out'
  cmd = harness.command(f'--source={src}', '--tokenizer=byte', '--chunk_mb=0.05',
                        f'--output={out}', '--workers=2', module='jaxlm.prepare')
  log = tmp_path / 'ctrl_c.log'
  p = harness.start(cmd, log, start_new_session=True)
  harness.wait_until(lambda: len(list((out / 'chunks').glob('*.json'))) >= 2, p, log=log)
  workers = [c for c in psutil.Process(p.pid).children()
             if 'resource_tracker' not in c.cmdline()[-1]]
  assert len(workers) == 2
  os.kill(workers[0].pid, signal.SIGINT)  # a worker ignores SIGINT: it leaves it to the main one
  time.sleep(0.5)
  assert workers[0].is_running() and workers[0].status() != psutil.STATUS_ZOMBIE
  os.killpg(p.pid, signal.SIGINT)
  assert p.wait(timeout=60) == 130
  time.sleep(1)  # (the resource tracker reports leaks as it exits)
  text = log.read_text()
  assert 'Traceback' not in text and 'leaked' not in text, text[-3000:]
  assert text.count('error') == 1 and errors.STOPPED.format('SIGINT') in text, text[-3000:]
  again = harness.run(cmd)
  assert again.returncode == 0, again.stderr[-2000:]


def test_first_documents_as_validation(source, tmp_path):
  src, texts = source
  s = Settings(source=str(src / 'a.jsonl'), tokenizer='byte', val_docs=7, chunk_mb=0.05)
  manifest = prepare(s, tmp_path / 'out', workers=2)
  assert manifest['splits']['validation']['documents'] == 7
  assert _read(tmp_path / 'out', 'validation') == [list(t.encode()) for t in texts[:7]]


def test_bad_sources_and_outputs(source, tmp_path):
  src, _ = source
  (tmp_path / 'bad.jsonl').write_text('{"text": "fine"}\n\n{"text": "cut sh\n')
  with pytest.raises(UserError, match=r'line 3 of .*bad.jsonl is not JSON'):
    prepare(Settings(source=str(tmp_path / 'bad.jsonl'), tokenizer='byte'), tmp_path / 'o1')
  (tmp_path / 'nofield.jsonl').write_text('{"content": "x"}\n')
  with pytest.raises(UserError, match=r"line 1 of .*nofield.jsonl has no text field 'text'"):
    prepare(Settings(source=str(tmp_path / 'nofield.jsonl'), tokenizer='byte'), tmp_path / 'o2')
  prepare(Settings(source=str(src / '*.txt'), tokenizer='byte', val_docs=1), tmp_path / 'o3')
  with pytest.raises(UserError, match='the training split of .* is empty'):
    prepare(Settings(source=str(src / '*.txt'), tokenizer='byte', val_docs=2), tmp_path / 'o4')
  before = harness.digest(tmp_path / 'o3')
  with pytest.raises(UserError, match='already holds a preparation with other settings'):
    prepare(Settings(source=str(src), tokenizer='byte'), tmp_path / 'o3')
  assert harness.digest(tmp_path / 'o3') == before
  assert list(documents(plan_chunks(str(src / 'c.txt'), 1)[0])) == [(src / 'c.txt').read_text()]


def test_tail_holdout_splits_every_document_and_counts_its_bytes(source, tmp_path):
  src, _ = source
  text = (src / 'd.txt').read_text() + 'caf\u00e9 \u65e5\u672c'  # multi-byte characters at the end
  (tmp_path / 'one.txt').write_text(text)
  s = Settings(source=str(tmp_path / 'one.txt'), tokenizer='sentencepiece', vocab_size=300,
               val_fraction=0.2, val_tail=True)
  manifest = prepare(s, tmp_path / 'out', workers=1)
  tok = prepared_tokenizer(tmp_path / 'out', s)
  (train,), (val,) = _read(tmp_path / 'out', 'train'), _read(tmp_path / 'out', 'validation')
  ids = tok.encode(text)
  assert train + val == ids and len(val) == int(len(ids) * 0.2)
  counts = manifest['splits']
  assert counts['validation']['bytes'] == len(tok.decode(val).encode())  # exact: identity
  assert counts['train']['bytes'] + counts['validation']['bytes'] == len(text.encode())


def test_damaged_shards_are_errors_and_prepare_repairs_them(source, tmp_path):
  src, _ = source
  s = Settings(source=str(src / 'a.jsonl'), tokenizer='byte', val_docs=3, chunk_mb=0.05)
  prepare(s, tmp_path / 'out', workers=1)
  expected = harness.digest(tmp_path / 'out')
  shard = tmp_path / 'out' / 'train-00001.arrayrecord'
  shard.write_bytes(shard.read_bytes()[:-100])
  with pytest.raises(UserError, match=r'train-00001.arrayrecord is truncated or changed'):
    Prepared(tmp_path / 'out')
  (tmp_path / 'out' / 'train-00000.lengths.npy').unlink()
  with pytest.raises(UserError, match=r'train-00000.lengths.npy is missing from the '):
    Prepared(tmp_path / 'out')
  prepare(s, tmp_path / 'out', workers=1)  # the same settings: redoes just those chunks
  assert harness.digest(tmp_path / 'out') == expected
  assert Prepared(tmp_path / 'out').train.doc(0).tolist() == _read(tmp_path / 'out', 'train')[0]


# Preparing across machines: a job array (--plan, --task=i/N, --finalize) and Apache Beam give
# the bytes of one host, whatever fails or runs twice on the way.

KINDS = ['byte', 'char', 'sentencepiece', 'huggingface']


@pytest.fixture(scope='module')
def corpus(source, tmp_path_factory):
  """About 3,000 documents in two JSONL files (each cut into several chunks), and a tokenizer.json;
  with byte ids, one host's preparation of it (the bytes every other way must give)."""
  from tiny import bpe_tokenizer
  _, texts = source
  tmp = tmp_path_factory.mktemp('corpus')
  for name, part in [('a.jsonl', texts * 2), ('b.jsonl', texts[::-1])]:
    (tmp / 'src').mkdir(exist_ok=True)
    (tmp / 'src' / name).write_text(''.join(json.dumps({'text': t}) + '\n' for t in part))
  hf = bpe_tokenizer(tmp / 'hf')
  reference = tmp / 'one_host'
  prepare(_settings(tmp, 'byte', hf), reference, workers=1, progress=False)
  return tmp, hf, harness.digest(reference)


def _settings(tmp, kind, hf):
  return Settings(source=str(tmp / 'src'), tokenizer=kind, vocab_size=400, chunk_mb=0.04,
                  tokenizer_path=str(hf) if kind == 'huggingface' else '', val_fraction=0.1)


def _flags(tmp):
  """jaxlm.prepare's flags for _settings(tmp, 'byte', ...): the commands' reference."""
  return [f'--source={tmp / "src"}', '--tokenizer=byte', '--chunk_mb=0.04', '--val_fraction=0.1',
          '--vocab_size=400']


@pytest.mark.parametrize('kind', KINDS)
def test_a_job_array_gives_the_bytes_of_one_host(corpus, tmp_path, kind):
  """--plan, then the tasks of 3 in a shuffled order, then --finalize: every file's sha256 (the
  manifest's included) equals one host's; a finalize before the last task names its chunks and
  writes no manifest."""
  from jaxlm.data.prepare import finalize, make_plan, read_plan, run_chunks, task_chunks
  tmp, hf, expected = corpus
  s = _settings(tmp, kind, hf)
  if kind != 'byte':
    prepare(s, tmp_path / 'one', workers=2, progress=False)
    expected = harness.digest(tmp_path / 'one')
  out = tmp_path / 'array'
  chunks = make_plan(s, out)
  assert len(chunks) >= 6
  for task in (2, 0):
    run_chunks(s, out, task_chunks(read_plan(s, out), task, 3), workers=1, progress=False)
  late = ', '.join(f'{c.index} ({os.path.basename(c.paths[0])})' for c in chunks
                   if c.index % 3 == 1)
  with pytest.raises(UserError, match=f'{len(chunks) // 3} of {len(chunks)} chunks are not '
                     f'complete in .*: {re.escape(late)}; run the tasks'):
    finalize(s, out, read_plan(s, out))
  assert not (out / 'manifest.json').exists()
  run_chunks(s, out, task_chunks(read_plan(s, out), 1, 3), workers=1, progress=False)
  finalize(s, out, read_plan(s, out))
  assert harness.digest(out) == expected


def _chunk_files(out, index):
  """The files one chunk wrote: its shards, their lengths, its counts and its record."""
  return sorted([*out.glob(f'*-{index:05d}.*'), *(out / 'chunks').glob(f'{index:05d}.*')])


def test_a_source_failing_part_way_is_finished_by_a_rerun(corpus, tmp_path, monkeypatch):
  """A source that raises at document k (a dropped connection): the chunks complete before it
  stay as they were (not rewritten), the re-run gives one host's bytes."""
  from jaxlm.data import chunk as module
  tmp, hf, expected = corpus
  s, out, real, read = _settings(tmp, 'byte', hf), tmp_path / 'out', module.documents, [0]

  def failing(chunk, *args, **kwargs):
    for text in real(chunk, *args, **kwargs):
      read[0] += 1
      if read[0] == 1500:
        raise ConnectionResetError('the bucket dropped the connection')
      yield text

  monkeypatch.setattr(module, 'documents', failing)
  with pytest.raises(ConnectionResetError):
    prepare(s, out, workers=1, progress=False)
  monkeypatch.undo()
  done = sorted(int(p.name[:5]) for p in (out / 'chunks').glob('*.json'))
  assert 0 < len(done) < len(json.loads((out / 'plan.json').read_text())['chunks'])
  before = {p: p.stat().st_mtime_ns for i in done for p in _chunk_files(out, i)}
  assert len(before) == 6 * len(done)
  prepare(s, out, workers=1, progress=False)
  assert harness.digest(out) == expected
  assert {p: p.stat().st_mtime_ns for p in before} == before


def test_two_attempts_of_one_chunk_at_once(corpus, tmp_path, monkeypatch):
  """Two attempts of one chunk writing at the same time both finish with the same record; an
  attempt that fails half-way (an engine's cancelled duplicate) does not disturb the other's
  files: each writes to names of its own; a slow duplicate whose files the finalize step removed
  (another attempt had finished the chunk) ends with that chunk's record."""
  import threading
  from concurrent.futures import ThreadPoolExecutor
  from jaxlm.data import chunk as module
  from jaxlm.data.prepare import finalize, make_plan, prepare_chunk, run_chunks
  tmp, hf, expected = corpus
  s, out, real = _settings(tmp, 'byte', hf), tmp_path / 'out', module.documents
  chunks = make_plan(s, out)
  both_writing, other_failed = threading.Barrier(2, timeout=30), threading.Event()
  slow_writing, finalized = threading.Event(), threading.Event()

  def paced(chunk, *args, **kwargs):
    for i, text in enumerate(real(chunk, *args, **kwargs)):
      if i == 1 and chunk.index < 2:
        both_writing.wait()  # both attempts have their shards open
        if threading.current_thread().name.endswith('_0') and chunk.index == 1:
          raise RuntimeError('cancelled')
        if chunk.index == 1:
          assert other_failed.wait(30)
      if i == 1 and chunk.index == 2 and threading.current_thread().name.endswith('_0'):
        slow_writing.set()
        assert finalized.wait(30)
      yield text

  monkeypatch.setattr(module, 'documents', paced)
  with ThreadPoolExecutor(2) as pool:
    records = list(pool.map(lambda _: prepare_chunk(s, out, chunks[0]), range(2)))
  assert records[0] == records[1]
  with ThreadPoolExecutor(2) as pool:
    cancelled, survivor = (pool.submit(prepare_chunk, s, out, chunks[1]) for _ in range(2))
    with pytest.raises(RuntimeError, match='cancelled'):
      cancelled.result()
    other_failed.set()
    survivor.result()
  with ThreadPoolExecutor(1) as pool:
    slow = pool.submit(prepare_chunk, s, out, chunks[2])
    assert slow_writing.wait(30)
    run_chunks(s, out, chunks, workers=1, progress=False)  # (chunk 2 too, by this thread)
    finalize(s, out, chunks)  # (which removes the slow attempt's temporary files)
    finalized.set()
    assert slow.result() == json.loads((out / 'chunks' / '00002.json').read_text())
  monkeypatch.undo()
  assert harness.digest(out) == expected


def test_plan_tasks_finalize_and_beam_on_the_command_line(corpus, tmp_path):
  """The commands: --plan, --task=1/2 and --task=0/2 at once, --finalize; and a Beam pipeline on
  the DirectRunner with 2 worker processes: one host's bytes each time."""
  tmp, hf, expected = corpus
  args = _flags(tmp)
  out = tmp_path / 'array'

  def prep(*more, wait=True):
    cmd = harness.command(*args, f'--output={out}', *more, module='jaxlm.prepare')
    if not wait:
      return harness.start(cmd, tmp_path / f'{more[0][2:].replace("/", "_")}.log')
    result = harness.run(cmd)
    assert result.returncode == 0, result.stderr[-2000:]
    return result

  assert 'planned 18 chunk(s)' in prep('--plan').stdout
  tasks = [prep('--task=1/2', wait=False), prep('--task=0/2', wait=False)]
  assert [p.wait(timeout=120) for p in tasks] == [0, 0]
  assert re.search(r'validation: [\d,]+ documents, [\d,]+ tokens, [\d,]+ bytes in 18 shard',
                   prep('--finalize').stdout)
  assert harness.digest(out) == expected
  out = tmp_path / 'beam'
  beam = prep('--runner=DirectRunner', '--', '--direct_num_workers=2',
              '--direct_running_mode=multi_processing')
  assert 'with Beam (DirectRunner)' in beam.stdout
  assert harness.digest(out) == expected


def test_the_slurm_job_array_recipe(corpus, tmp_path):
  """launch/prepare_slurm.sh with a stand-in `sbatch` that runs each job as it is submitted (the
  array's tasks in a shuffled order): the plan, the array after it (afterok), the finalize job after
  every task (afterany); one host's bytes."""
  tmp, _, expected = corpus
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text(f'''#!/usr/bin/env bash
echo "$@" >> {tmp_path}/sbatch.log
id=$(( $(wc -l < {tmp_path}/sbatch.log) + 100 ))
for a in "$@"; do
  case $a in --array=*) array=${{a#--array=0-}};; --wrap=*) wrap=${{a#--wrap=}};; esac
done
if [[ -n ${{array:-}} ]]; then
  for i in $(seq 0 "${{array%%%*}}" | shuf); do
    SLURM_ARRAY_TASK_ID=$i sh -c "$wrap" >> {tmp_path}/jobs.log 2>&1 || exit 1
  done
else
  sh -c "$wrap" >> {tmp_path}/jobs.log 2>&1 || exit 1
fi
echo "$id;cluster"
''')
  (bin_dir / 'sbatch').chmod(0o755)
  out = tmp_path / 'prepared'
  env = harness.env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', JAXLM_PYTHON=sys.executable,
                    JAXLM_LOGS=str(tmp_path / 'logs'), JAXLM_PARALLEL='2')
  result = harness.run(['bash', 'launch/prepare_slurm.sh', '3', *_flags(tmp), f'--output={out}'],
                       env=env)
  assert result.returncode == 0, (result.stderr + (tmp_path / 'jobs.log').read_text())[-3000:]
  assert 'submitted: plan 101, tasks 102 (0-2), finalize 103' in result.stdout
  submitted = (tmp_path / 'sbatch.log').read_text().splitlines()
  assert submitted[0].endswith('--plan')
  assert '--dependency=afterok:101' in submitted[1] and '--array=0-2%2' in submitted[1]
  assert submitted[1].endswith('--task=$SLURM_ARRAY_TASK_ID/3')
  assert '--dependency=afterany:102' in submitted[2] and submitted[2].endswith('--finalize')
  assert harness.digest(out) == expected


def test_the_kubernetes_jobset_recipe(corpus, tmp_path):
  """launch/prepare_k8s.py's JobSet follows JobSet's schema (no field Kubernetes would drop), runs
  plan, tasks, finalize in that order (dependsOn), and its pods' commands, run here in order
  (task pods with their completion index), give one host's bytes."""
  import shlex
  import yaml
  from test_launch import check_against_jobset_schema
  tmp, _, expected = corpus
  out, manifest_file = tmp_path / 'data' / 'prepared', tmp_path / 'prep.yaml'
  result = harness.run([sys.executable, 'launch/prepare_k8s.py', '--name=prep', '--image=img:1',
                        '--tasks=2', '--parallelism=4', '--cpus=1', '--bucket=corpora',
                        f'--mount={tmp_path / "data"}', f'--output={manifest_file}', '--',
                        *_flags(tmp), f'--output={out}'])
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = yaml.safe_load(manifest_file.read_text())
  check_against_jobset_schema(manifest)
  jobs = manifest['spec']['replicatedJobs']
  assert [j['name'] for j in jobs] == ['plan', 'tasks', 'finalize']
  assert [j.get('dependsOn') for j in jobs] == [
      None, [dict(name='plan', status='Complete')], [dict(name='tasks', status='Complete')]]
  tasks = jobs[1]['template']['spec']
  assert (tasks['completionMode'], tasks['completions'], tasks['parallelism']) == (
      'Indexed', 2, 2)
  bin_dir = tmp_path / 'bin'  # `python` in the image is this interpreter here
  bin_dir.mkdir()
  (bin_dir / 'python').write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
  (bin_dir / 'python').chmod(0o755)
  env = harness.env(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  for job in jobs:
    spec = job['template']['spec']
    command = spec['template']['spec']['containers'][0]['command']
    for index in range(spec.get('completions', 1))[::-1]:
      ran = harness.run(command, env={**env, 'JOB_COMPLETION_INDEX': str(index)})
      assert ran.returncode == 0, (shlex.join(command), ran.stderr[-3000:])
  assert harness.digest(out) == expected


def test_finalize_reads_a_buckets_chunks_concurrently_and_in_order(tmp_path):
  """The finalize step's per-chunk reads (records, shard sizes, token counts) run 32 at a time on
  a bucket, where each is a few network requests, and one by one locally; either way the results
  come in the chunks' order."""
  import threading
  import time
  from jaxlm.data.prepare import _each
  lock, active, peak = threading.Lock(), [0], [0]

  def read(chunk):
    with lock:
      active[0] += 1
      peak[0] = max(peak[0], active[0])
    time.sleep(0.01 * (chunk % 3))  # later chunks finish first
    with lock:
      active[0] -= 1
    return chunk * 2

  chunks = list(range(100))
  assert list(_each(read, chunks, 'gs://bucket/prepared')) == [2 * c for c in chunks]
  assert 8 < peak[0] <= 32
  peak[0] = 0
  assert list(_each(read, chunks, tmp_path)) == [2 * c for c in chunks] and peak[0] == 1
