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
complete chunks and ends with the same bytes. Memory stays flat: a worker holds one document.

The work has three parts, which run in one process (`prepare`) or apart:

  make_plan        settings.json, the tokenizer and plan.json (once, by one process)
  prepare_chunk    one chunk -> its shards and its record (any process, any host, any order, as
                   often as needed: a complete chunk is left alone, and each attempt writes to
                   names of its own, renamed into place, so two attempts of one chunk at once, or
                   a retried one, leave the same bytes)
  finalize         checks every chunk is complete, then writes token_counts.npy and the manifest

A job array runs them as `jaxlm.prepare --plan`, N x `--task=i/N`, `--finalize`; Apache Beam as
one pipeline (data/beam.py). Every way ends with the same bytes.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import secrets
import socket
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from jaxlm import paths
from jaxlm.data.sources import Chunk, documents, file_stamp, plan_chunks
from jaxlm.data.tf_sources import is_tf_source
from jaxlm.data.tokenizers import (Tokenizer, atomic_write, build_tokenizer, encode_arrays,
                                   open_tokenizer)
from jaxlm.errors import UserError, exiting_with, interrupts_ignored

FORMAT = 2
# ArrayRecord's options for the shards: a record per chunk (random access); snappy, which writes
# 3x and reads 2x faster than the default zstd:3, for 9% more bytes (docs/BENCHMARKS.md).
SHARD_OPTIONS = 'group_size:1,snappy'
SPLITS = ('train', 'validation')
TOKEN_COUNTS = 'token_counts.npy'
PLAN = 'plan.json'


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the prepared bytes depend on (recorded in settings.json and the manifest)."""
  source: str  # text or JSONL files (a file, a directory or a glob), 'seqio:x' or 'tfds:x'
  tokenizer: str = 'sentencepiece'  # 'sentencepiece', 'char' or 'byte'
  tokenizer_path: str = ''  # an existing SentencePiece model; '' trains one on a sample
  vocab_size: int = 8192  # of the SentencePiece model trained on the sample
  sample_mb: float = 100.0  # text the tokenizer is trained (or the characters collected) on
  text_field: str = 'text'  # the JSONL field (SeqIO or TFDS feature) that holds the text
  val_fraction: float = 0.01  # of the documents, chosen by a hash of their text
  val_docs: int = 0  # > 0: the first val_docs documents instead
  val_tail: bool = False  # the last val_fraction of every document's tokens instead
  seed: int = 0  # of the validation hash
  chunk_mb: float = 64.0  # input bytes per chunk (a shard pair)
  seqio_module: str = ''  # imported to register a SeqIO task
  data_dir: str = ''  # TFDS data_dir ('' is TFDS's default)

  def tf_options(self) -> dict:
    return dict(seqio_module=self.seqio_module, data_dir=self.data_dir)


def in_validation(raw: bytes, index: int, s: Settings) -> bool:
  """Whether the document with UTF-8 text `raw`, number `index`, is in the validation split."""
  if s.val_docs:
    return index < s.val_docs
  digest = hashlib.sha256(f'{s.seed}\0'.encode() + raw).digest()
  return int.from_bytes(digest[:8], 'little') / 2**64 < s.val_fraction


def shard_path(output: Path, split: str, index: int, suffix: str = '.arrayrecord') -> Path:
  return as_dir(output) / f'{split}-{index:05d}{suffix}'


def as_dir(output):
  """A prepared dataset's directory: a pathlib.Path, or an epath.Path for a gs:// location (which
  the finalize step and the completeness checks read directly; chunks are written locally)."""
  return paths.path(str(output)) if paths.is_url(str(output)) else Path(output)


def _size(path) -> int | None:
  """A file's size in bytes, None when it does not exist (local or on a bucket)."""
  try:
    st = path.stat()
  except OSError:
    return None
  return st.st_size if hasattr(st, 'st_size') else st.length


def text_batches(texts: Iterable[str], chars: int = 2**20, docs: int = 1024) -> Iterator[list[str]]:
  """The texts in lists of up to `docs` texts or about `chars` characters (a longer text alone),
  each encoded by one tokenizer call."""
  batch, size = [], 0
  for text in texts:
    batch.append(text)
    size += len(text)
    if size >= chars or len(batch) >= docs:
      yield batch
      batch, size = [], 0
  if batch:
    yield batch


def _parts(text: str, ids: np.ndarray, index: int, split: str, s: Settings, tok: Tokenizer):
  """(split, token ids, UTF-8 bytes) of what one document, encoded as `ids`, contributes."""
  if split or not s.val_tail:
    raw = text.encode('utf-8')
    split = split or ('validation' if in_validation(raw, index, s) else 'train')
    return [(split, ids, len(raw))]
  cut = len(ids) - int(len(ids) * s.val_fraction)
  sizes = np.asarray(tok.token_bytes(text), np.int64)
  return [('train', ids[:cut], int(sizes[:cut].sum())),
          ('validation', ids[cut:], int(sizes[cut:].sum()))]


_WORKER: dict = {}


def _init_worker(settings: Settings, output: str) -> None:
  _WORKER['settings'], _WORKER['output'] = settings, Path(output)
  _WORKER['tokenizer'] = open_tokenizer(Path(output) / 'tokenizer', settings.tokenizer)


def _worker_chunk(chunk: Chunk) -> dict:
  return prepare_chunk(_WORKER['settings'], _WORKER['output'], chunk, _WORKER['tokenizer'])


def attempt_name() -> str:
  """A name no other attempt shares (host, process and a random part), for temporary files."""
  return f'{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}'


def prepare_chunk(s: Settings, output: Path, chunk: Chunk, tok: Tokenizer | None = None) -> dict:
  """Writes one chunk's shards and lengths (to names of this attempt, then renamed) and its
  record; returns the record. A chunk already complete is left as it is."""
  output = Path(output)
  record = complete(output, chunk)
  if record is not None:
    return record
  _check_stamps(chunk)
  tok = tok or open_tokenizer(output / 'tokenizer', s.tokenizer)
  try:
    return _write_chunk(s, output, chunk, tok)
  except FileNotFoundError:
    # Another attempt finished the chunk and the finalize step removed this one's temporary
    # files: the chunk is complete, with the same bytes.
    record = complete(output, chunk)
    if record is None:
      raise
    return record


def _check_stamps(chunk: Chunk) -> None:
  for path, stamp in zip(chunk.paths, chunk.stamps):
    if tuple(file_stamp(path)) != tuple(stamp):
      raise UserError(f'{path} changed since the chunk plan was made (its size or modification '
                      'time differ); make the plan again (jaxlm.prepare --plan, or the same '
                      'command without --task) so the changed file is prepared afresh.')


def _write_chunk(s: Settings, output: Path, chunk: Chunk, tok: Tokenizer) -> dict:
  # pylint: disable-next=import-outside-toplevel  # (only the workers write)
  from array_record.python.array_record_module import ArrayRecordWriter
  lengths = {split: [] for split in SPLITS}
  digests = {split: hashlib.sha256() for split in SPLITS}  # of the token ids, record by record
  writers, tmps, read = {}, {}, 0
  token_counts = TokenCounter(tok.vocab_size)  # of the training split
  attempt = attempt_name()
  for split in SPLITS:
    tmps[split] = shard_path(output, split, chunk.index, f'.{attempt}.tmp')
    writers[split] = ArrayRecordWriter(str(tmps[split]), SHARD_OPTIONS)
  text_bytes = dict.fromkeys(SPLITS, 0)
  try:
    for texts in text_batches(documents(chunk, s.text_field, **s.tf_options())):
      for text, encoded in zip(texts, encode_arrays(tok, texts)):
        parts = _parts(text, encoded, chunk.first_doc + read, chunk.split, s, tok)
        read += 1
        for split, ids, n_bytes in parts:
          if not len(ids):
            continue  # no text: nothing to learn or to score
          record = ids.astype('<i4', copy=False).tobytes()
          writers[split].write(record)
          if split == 'train':
            token_counts.add(ids)
          digests[split].update(len(ids).to_bytes(8, 'little'))
          digests[split].update(record)
          lengths[split].append(len(ids))
          text_bytes[split] += n_bytes
  except BaseException:
    for split in SPLITS:
      writers[split].close()
      tmps[split].unlink(missing_ok=True)
    raise
  for w in writers.values():
    w.close()
  counts = {split: dict(documents=len(lengths[split]), tokens=int(sum(lengths[split])),
                        bytes=text_bytes[split]) for split in SPLITS}
  sizes = {}
  _save_npy(_counts_path(output, chunk.index), token_counts.total())
  for split in SPLITS:
    _save_npy(shard_path(output, split, chunk.index, '.lengths.npy'),
              np.asarray(lengths[split], np.int32))
    os.replace(tmps[split], shard_path(output, split, chunk.index))
    sizes[split] = shard_path(output, split, chunk.index).stat().st_size
  record = dict(chunk=_plain(dataclasses.asdict(chunk)), counts=counts, documents_read=read,
                shard_bytes=sizes,
                digests={split: digests[split].hexdigest() for split in SPLITS})
  _atomic_json(output / 'chunks' / f'{chunk.index:05d}.json', record)
  return record


class TokenCounter:
  """How often each id occurs, counted a million tokens at a time (one bincount per document
  would cost a pass over the whole vocabulary for every short document)."""

  def __init__(self, vocab_size: int):
    self.counts, self.pending, self.size = np.zeros(vocab_size, np.int64), [], 0

  def add(self, ids: np.ndarray) -> None:
    self.pending.append(ids)
    self.size += len(ids)
    if self.size >= 2**20:
      self.total()

  def total(self) -> np.ndarray:
    if self.pending:
      self.counts += np.bincount(np.concatenate(self.pending), minlength=len(self.counts))
      self.pending, self.size = [], 0
    return self.counts


def _counts_path(output: Path, index: int) -> Path:
  return output / 'chunks' / f'{index:05d}.counts.npy'


def _save_npy(path: Path, array: np.ndarray) -> None:
  npy = io.BytesIO()
  np.save(npy, array)
  atomic_write(path, npy.getvalue())


def settings_record(s: Settings) -> dict:
  """What settings.json holds, as it reads back: a preparation into a directory (or a bucket)
  whose record differs is another preparation, never written over it."""
  return _plain(dict(format=FORMAT, shard_options=SHARD_OPTIONS, **dataclasses.asdict(s)))


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


def _plain(value):
  """As it reads back from JSON (tuples become lists), for comparisons with saved records."""
  return json.loads(json.dumps(value))


def complete(output: Path, chunk: Chunk) -> dict | None:
  """The record of a chunk an earlier run finished (the same files, shards of the recorded
  sizes), or None. `output` may be a bucket location."""
  output = as_dir(output)
  done = output / 'chunks' / f'{chunk.index:05d}.json'
  try:
    record = json.loads(done.read_text())
  except (OSError, ValueError):
    return None
  if record.get('chunk') != _plain(dataclasses.asdict(chunk)) or _size(_counts_path(
      output, chunk.index)) is None:  # (a chunk prepared before token counts is prepared again)
    return None
  for split in SPLITS:
    if _size(shard_path(output, split, chunk.index, '.lengths.npy')) is None or (
        _size(shard_path(output, split, chunk.index)) != record['shard_bytes'][split]):
      return None
  return record


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


def _atomic_json(path: Path, value: dict) -> None:
  atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())


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
  _atomic_json(settings_path, wanted)
  if s.val_docs:
    chunks = _number_documents(chunks, s)
  prepared_tokenizer(output, s, chunks)
  _atomic_json(output / PLAN, dict(settings=wanted,
                                   chunks=[_plain(dataclasses.asdict(c)) for c in chunks]))
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
  records = {c.index: r for c in chunks if (r := complete(output, c)) is not None}
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
  for c in chunks:
    counts += np.load(io.BytesIO(_counts_path(output, c.index).read_bytes()))
  _save_npy(output / TOKEN_COUNTS, counts)
  manifest = dict(format=FORMAT, settings=dataclasses.asdict(s), dtype='<i4',
                  source_files=len({p for c in chunks if c.stamps for p in c.paths}),
                  splits=splits, token_counts=TOKEN_COUNTS,
                  tokenizer=dict(kind=s.tokenizer, fingerprint=tok.fingerprint,
                                 vocab_size=tok.vocab_size, eos_id=tok.eos_id))
  cleaning = cleaning_record(s.source)
  if cleaning:
    manifest['cleaning'] = cleaning
  _atomic_json(output / 'manifest.json', manifest)
  return manifest


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
