"""Prepare a corpus once: documents -> token ids -> ArrayRecord shards + manifest.json.

A source (see sources.py: text files, JSONL, a SeqIO task, a TFDS dataset) is cut into chunks,
and each chunk becomes one training and one validation shard, written by a pool of workers:

  <output>/train-00007.arrayrecord       one record per document: its token ids, int32 ('<i4')
  <output>/train-00007.lengths.npy       the token count of each record, for planning batches
  <output>/validation-00007.arrayrecord  (and its .lengths.npy)
  <output>/chunks/00007.counts.npy       how often each token id occurs in its training shard
  <output>/chunks/00007.json             that chunk's counts; written last, so it marks it complete
  <output>/tokenizer/                    the tokenizer: trained on a sample, built, or copied in
  <output>/settings.json                 the settings, written first: a different preparation is
                                         never written into this directory
  <output>/plan.json                     the settings and every chunk (files, byte ranges, sizes
                                         and times, the documents before it): the unit list
  <output>/token_counts.npy              the chunks' token counts summed (int64 [vocab]: what
                                         masked LM's frequency weighting reads)
  <output>/manifest.json                 written last and atomically: tokenizer, counts, shards

Validation documents are chosen by a hash of their text (and the seed) against `val_fraction`,
or are the first `val_docs` documents, or (val_tail) every document gives the last val_fraction
of its tokens to validation and the rest to training (for one long text this is nanoGPT's split);
a source with its own validation split keeps it. Everything is a function of the source and the
settings, not of the number of workers or of interruptions: a killed run, re-run, keeps the
complete chunks and ends with the same bytes. Memory stays flat: a worker holds one batch of
documents.

The work has three parts, which run in one process (`prepare`) or apart:

  make_plan        settings.json, the tokenizer and plan.json (once, by one process)
  prepare_chunk    one chunk -> its shards and its record (data/chunk.py: any process, any
                   host, any order, as often as needed: a complete chunk is left alone, and each
                   attempt writes to names of its own, renamed into place, so two attempts of one
                   chunk at once, or a retried one, leave the same bytes)
  finalize         checks every chunk is complete, then writes token_counts.npy and the manifest

A job array runs them as `jaxlm.prepare --plan`, N x `--task=i/N`, `--finalize`; Apache Beam as
one pipeline (data/beam.py). Every way ends with the same bytes.
"""

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from jaxlm.data.chunk import (SHARD_OPTIONS, SPLITS, Settings, as_dir, atomic_json, complete,
                              counts_path, plain, prepare_chunk, save_npy, shard_path)
from jaxlm.data.sources import Chunk, documents, plan_chunks
from jaxlm.data.tf_sources import is_tf_source
from jaxlm.data.tokenizers import Tokenizer, build_tokenizer, open_tokenizer
from jaxlm.errors import UserError, exiting_with, interrupts_ignored

FORMAT = 2  # of the prepared files; data/prepared.py reads this format only
TOKEN_COUNTS = 'token_counts.npy'
PLAN = 'plan.json'

_WORKER: dict = {}


def _init_worker(settings: Settings, output: str) -> None:
  _WORKER['settings'], _WORKER['output'] = settings, Path(output)
  _WORKER['tokenizer'] = open_tokenizer(Path(output) / 'tokenizer', settings.tokenizer)


def _worker_chunk(chunk: Chunk) -> dict:
  return prepare_chunk(_WORKER['settings'], _WORKER['output'], chunk, _WORKER['tokenizer'])


def settings_record(s: Settings) -> dict:
  """What settings.json holds, as it reads back: a preparation into a directory (or a bucket)
  whose record differs is another preparation, never written over it."""
  return plain(dict(format=FORMAT, shard_options=SHARD_OPTIONS, **dataclasses.asdict(s)))


def cleaning_record(source: str) -> dict | None:
  """The record of the jaxlm.clean run whose kept documents `source` is (<output>/kept, or files
  in it): its recipe, settings and counts, so the prepared data (and every run trained on it) name
  how the corpus was cleaned. None for any other source."""
  if not source or '://' in source:
    return None
  path = Path(source).expanduser()
  kept = next((p for p in (path, *path.parents) if p.name == 'kept'), None)
  record = kept.parent / 'clean.json' if kept else None
  if record is None or not record.is_file():
    return None
  value = json.loads(record.read_text())
  if not value.get('complete'):
    raise UserError(f'{source} is the output of a jaxlm.clean run that has not finished (see '
                    f'{record}); run the same jaxlm.clean command again to finish it first.')
  return value


def prepared_tokenizer(output: Path, s: Settings, chunks: Sequence[Chunk] = ()) -> Tokenizer:
  """The preparation's tokenizer, kept in <output>/tokenizer: byte, a given SentencePiece model,
  or one trained (a character set collected) on the first sample_mb of `chunks`."""
  directory = Path(output) / 'tokenizer'
  try:
    return open_tokenizer(directory, s.tokenizer)  # byte, or made by an earlier run
  except UserError:
    pass
  texts, budget = [], int(s.sample_mb * 2**20)
  if not s.tokenizer_path:
    for chunk in chunks:
      for text in documents(chunk, s.text_field, **s.tf_options()):
        if budget <= 0:
          break
        texts.append(text[:budget])
        budget -= len(texts[-1])
  return build_tokenizer(directory, s.tokenizer, texts, s.vocab_size, s.tokenizer_path)


def _number_documents(chunks: list[Chunk], s: Settings) -> list[Chunk]:
  """For val_docs: each chunk learns how many documents come before it (a first pass)."""
  seen, numbered = 0, []
  for chunk in chunks:
    numbered.append(dataclasses.replace(chunk, first_doc=seen))
    seen += sum(1 for _ in documents(chunk, s.text_field, **s.tf_options()))
  return numbered


def _pool(workers: int, s: Settings, output: Path):
  """Spawned worker processes (fresh interpreters: forking a process that runs JAX's threads
  hangs). They start with SIGINT ignored, which exec keeps: a Ctrl-C reaches the whole process
  group, and the main process alone ends the pool (see errors.exiting_with)."""
  with interrupts_ignored():
    return multiprocessing.get_context('spawn').Pool(workers, _init_worker, (s, str(output)))


def make_plan(s: Settings, output: Path) -> list[Chunk]:
  """The first part (one process): settings.json (refusing a directory that holds another
  preparation), the chunks (numbered, for val_docs), the tokenizer, and plan.json."""
  output = Path(output)
  chunks = plan_chunks(s.source, s.chunk_mb, **s.tf_options())
  wanted = _wanted(s)
  settings_path = output / 'settings.json'
  if settings_path.exists() and json.loads(settings_path.read_text()) != wanted:
    raise UserError(f'{output} already holds a preparation with other settings (see '
                    f'{settings_path}); give a new --output, or the same settings to resume it.')
  atomic_json(settings_path, wanted)
  if s.val_docs:
    chunks = _number_documents(chunks, s)
  prepared_tokenizer(output, s, chunks)
  atomic_json(output / PLAN, dict(settings=wanted,
                                   chunks=[plain(dataclasses.asdict(c)) for c in chunks]))
  return chunks


def _wanted(s: Settings) -> dict:
  wanted = settings_record(s)
  cleaning = cleaning_record(s.source)
  if cleaning:
    wanted['cleaning'] = cleaning
  return wanted


def read_plan(s: Settings, output: Path) -> list[Chunk]:
  """The chunks of the plan in `output`, made with the same settings as `s`."""
  path = Path(output) / PLAN
  try:
    plan = json.loads(path.read_text())
  except FileNotFoundError:
    raise UserError(f'{output} has no chunk plan ({PLAN}); run the same command with --plan '
                    'first (once, before the tasks).') from None
  except ValueError:
    raise UserError(f'{path} is damaged (not JSON); run the same command with --plan '
                    'again.') from None
  wanted = _wanted(s)
  if plan.get('settings') != wanted:
    theirs = plan.get('settings') or {}
    differ = sorted(k for k in set(wanted) | set(theirs) if wanted.get(k) != theirs.get(k))
    shown = ', '.join(f'{k}: {wanted.get(k)!r} here, {theirs.get(k)!r} in the plan'
                      for k in differ[:3])
    raise UserError(f'these flags differ from the plan in {path} ({shown}); give every task and '
                    'the finalize step the same flags as --plan.')
  return [Chunk.from_record(c) for c in plan['chunks']]


def run_chunks(s: Settings, output: Path, chunks: Sequence[Chunk], workers: int = 0,
               progress: bool = True, done: Callable[[dict], None] | None = None) -> dict:
  """Prepares the chunks not yet complete with a pool of `workers` processes (0: one per CPU this
  process may run on: a SLURM task's, a container's), showing chunks done and tokens/s; returns
  {index: record} of all of them. `done` is called with each chunk's record, those complete
  before included, as it is complete."""
  output = Path(output)
  records = {c.index: r for c in chunks if (r := complete(output, c)) is not None}
  todo = [c for c in chunks if c.index not in records]
  for record in records.values():
    if done:
      done(record)
  workers = workers or len(os.sched_getaffinity(0))  # (the CPUs this process may use)
  bar = tqdm(total=len(chunks), initial=len(records), unit='chunk', dynamic_ncols=True,
             disable=not progress)
  docs = tokens = 0
  with bar, contextlib.ExitStack() as stack:
    # Files, TFDS shards and the shards of a SeqIO task that a module registers go to a pool of
    # worker processes; a SeqIO task registered here only is prepared in this process.
    in_pool = not is_tf_source(s.source) or s.source.startswith('tfds:') or s.seqio_module
    if workers > 1 and len(todo) > 1 and in_pool:
      pool = stack.enter_context(_pool(min(workers, len(todo)), s, output))
      stack.enter_context(exiting_with(pool.terminate))
      results = pool.imap_unordered(_worker_chunk, todo)
    else:
      _init_worker(s, str(output))
      results = map(_worker_chunk, todo)
    for record in results:
      records[record['chunk']['index']] = record
      if done:
        done(record)
      docs += record['documents_read']
      tokens += sum(counts['tokens'] for counts in record['counts'].values())
      seconds = max(bar.format_dict['elapsed'], 1e-9)
      bar.set_postfix(docs=f'{docs:,} ({docs / seconds:,.0f}/s)',
                      tokens=f'{tokens:,} ({tokens / seconds:,.0f}/s)', refresh=False)
      bar.update(1)
  return records


def task_chunks(chunks: Sequence[Chunk], task: int, tasks: int) -> list[Chunk]:
  """Task i of N prepares the chunks whose index is i modulo N."""
  return [c for c in chunks if c.index % tasks == task]


def finalize(s: Settings, output: Path, chunks: Sequence[Chunk],
             tok: Tokenizer | None = None) -> dict:
  """The last part: every chunk complete (else an error naming the missing ones, and no
  manifest), temporary files of killed attempts removed, token_counts.npy and the manifest.
  `output` may be a bucket location (then `tok` is the plan's tokenizer, kept locally)."""
  output = as_dir(output)
  records = {c.index: r for c, r in zip(chunks, _each(lambda c: complete(output, c), chunks,
                                                      output)) if r is not None}
  missing = [c for c in chunks if c.index not in records]
  if missing:
    named = ', '.join(f'{c.index} ({Path(c.paths[0]).name})' for c in missing[:8])
    more = f' and {len(missing) - 8} more' if len(missing) > 8 else ''
    raise UserError(f'{len(missing)} of {len(chunks)} chunks are not complete in {output}: '
                    f'{named}{more}; run the tasks that prepare them (--task=i/N with i = '
                    'chunk modulo N) again, then --finalize.')
  if isinstance(output, Path):  # (nothing is written to a bucket under a temporary name)
    for stale in output.rglob('*.tmp'):  # killed attempts' files (every chunk is done)
      stale.unlink(missing_ok=True)
  tok = tok or open_tokenizer(output / 'tokenizer', s.tokenizer)
  splits = _totals(output, records, s)
  counts = np.zeros(tok.vocab_size, np.int64)
  for chunk_counts in _each(lambda c: counts_path(output, c.index).read_bytes(), chunks, output):
    counts += np.load(io.BytesIO(chunk_counts))
  save_npy(output / TOKEN_COUNTS, counts)
  manifest = dict(format=FORMAT, settings=dataclasses.asdict(s), dtype='<i4',
                  source_files=len({p for c in chunks if c.stamps for p in c.paths}),
                  splits=splits, token_counts=TOKEN_COUNTS,
                  tokenizer=dict(kind=s.tokenizer, fingerprint=tok.fingerprint,
                                 vocab_size=tok.vocab_size, eos_id=tok.eos_id))
  cleaning = cleaning_record(s.source)
  if cleaning:
    manifest['cleaning'] = cleaning
  atomic_json(output / 'manifest.json', manifest)
  return manifest


def _each(read: Callable, chunks: Sequence[Chunk], output) -> Iterator:
  """read(chunk) for every chunk, in order: on a bucket 32 at a time, a window of 64 chunks held
  at once (each read is a few requests of tens of milliseconds: 10,000 chunks one after another
  would take minutes), locally one by one."""
  if isinstance(output, Path):
    yield from map(read, chunks)
    return
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    for start in range(0, len(chunks), 64):
      yield from pool.map(read, chunks[start:start + 64])


def prepare(s: Settings, output: Path, workers: int = 0, progress: bool = True) -> dict:
  """Prepares `s.source` into `output` (resuming a killed run there); returns the manifest."""
  chunks = make_plan(s, output)
  run_chunks(s, output, chunks, workers, progress)
  return finalize(s, output, chunks)


def _totals(output: Path, records: dict, s: Settings) -> dict:
  """Per split: the counts and the shards in order; an empty split is an error."""
  splits, order = {}, sorted(records)
  for split in SPLITS:
    totals = dict(documents=0, tokens=0, bytes=0)
    for index in order:
      for k in totals:
        totals[k] += records[index]['counts'][split][k]
    totals['shards'] = [shard_path(output, split, i).name for i in order]
    totals['lengths'] = [shard_path(output, split, i, '.lengths.npy').name for i in order]
    totals['shard_bytes'] = [records[i]['shard_bytes'][split] for i in order]
    totals['digests'] = [records[i]['digests'][split] for i in order]  # sha256 of each shard's ids
    splits[split] = totals
  train, val = splits['train']['documents'], splits['validation']['documents']
  if not train and not val:
    raise UserError(f'the corpus {s.source or "(shipped)"} holds no text; point it at non-empty '
                    'UTF-8 documents.')
  if not train or not val:
    empty = 'training' if not train else 'validation'
    raise UserError(f'the {empty} split of {s.source or "the shipped corpus"} is empty ({train} '
                    f'train, {val} validation documents); change the validation fraction '
                    '(--val_fraction / data.val_fraction) or --val_docs, or give more documents.')
  return splits
