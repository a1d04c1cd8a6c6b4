"""Prepare a corpus once: documents -> token ids -> ArrayRecord shards + manifest.json.

A source is UTF-8 text files (each file one document) or JSONL files, plain or gzip-compressed,
with one document per line in a text field (FineWeb, SlimPajama, the Pile). The files are cut
into chunks of about `chunk_mb` (at line boundaries for JSONL), and each chunk becomes one
training and one validation shard, written by a pool of worker processes:

  <output>/train-00007.arrayrecord    one record per document: its token ids, little-endian int32
  <output>/validation-00007.arrayrecord
  <output>/chunks/00007.json          that chunk's counts; written last, so it marks it complete
  <output>/tokenizer/                 the tokenizer (a SentencePiece model trained on a sample)
  <output>/manifest.json              written last and atomically: tokenizer, counts, shards

Everything is a function of the source and the settings, not of the number of workers or of
interruptions: a document goes to validation when a hash of its text (and the seed) falls below
`val_fraction`, or when it is among the first `val_docs` documents. A killed run, re-run, keeps
the complete chunks and ends with the same bytes. Memory stays flat: a worker holds one chunk.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from jaxlm.data.pipeline import corpus_files, read_text
from jaxlm.data.tokenizers import Tokenizer, load_tokenizer
from jaxlm.errors import UserError

FORMAT = 1
SPLITS = ('train', 'validation')


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the prepared bytes depend on (recorded in the manifest)."""
  source: str  # a text or JSONL file, a directory or a glob
  tokenizer: str = 'sentencepiece'  # 'sentencepiece', 'char' or 'byte'
  tokenizer_path: str = ''  # an existing SentencePiece model; '' trains one on a sample
  vocab_size: int = 8192  # of the SentencePiece model trained on the sample
  sample_mb: float = 100.0  # text the tokenizer is trained (or the characters collected) on
  text_field: str = 'text'  # the JSONL field that holds a document's text
  val_fraction: float = 0.01  # of the documents, chosen by a hash of their text
  val_docs: int = 0  # > 0: the first val_docs documents instead
  seed: int = 0  # of the validation hash
  chunk_mb: float = 64.0  # input bytes per chunk (a shard pair)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Bytes [start, stop) of one input file (start and stop at line starts for JSONL)."""
  index: int
  path: str
  start: int
  stop: int
  first_doc: int  # only for val_docs: the number of documents before this chunk (else 0)


def is_jsonl(path: Path) -> bool:
  return path.name.endswith(('.jsonl', '.jsonl.gz', '.json.gz', '.ndjson'))


def _open(path: Path):
  return gzip.open(path, 'rb') if path.name.endswith('.gz') else open(path, 'rb')


def plan_chunks(files: Sequence[Path], chunk_mb: float) -> list[Chunk]:
  """Cuts the files into chunks. A text file is one document, so one chunk; a plain JSONL file
  is cut every ~chunk_mb at the next line start; a gzip file cannot be cut, so it is one chunk."""
  size = max(int(chunk_mb * 2**20), 1)
  chunks = []
  for path in files:
    total = path.stat().st_size
    if not is_jsonl(path) or path.name.endswith('.gz') or total <= size:
      chunks.append(Chunk(len(chunks), str(path), 0, total, 0))
      continue
    with open(path, 'rb') as f:
      start = 0
      while start < total:
        f.seek(min(start + size, total))
        f.readline()  # to the start of the next line
        stop = min(f.tell(), total)
        chunks.append(Chunk(len(chunks), str(path), start, stop, 0))
        start = stop
  return chunks


def documents(chunk: Chunk, text_field: str) -> Iterator[str]:
  """The documents of a chunk, in order; a bad JSONL line is an error naming file and line."""
  path = Path(chunk.path)
  if not is_jsonl(path):
    yield read_text(path)
    return
  whole = path.name.endswith('.gz') or chunk.start == 0 and chunk.stop == path.stat().st_size
  with _open(path) as f:
    f.seek(0 if whole else chunk.start)
    position, line_no = chunk.start, 1
    while whole or position < chunk.stop:
      line = f.readline()
      if not line:
        break
      if line.strip():
        where = (f'line {line_no} of {path}' if chunk.start == 0 else
                 f'the line at byte {position} of {path}')
        yield _field(line, text_field, where)
      position, line_no = position + len(line), line_no + 1


def _field(line: bytes, field: str, where: str) -> str:
  try:
    record = json.loads(line)
  except ValueError:
    raise UserError(f'{where} is not JSON; fix or remove that line.') from None
  if not isinstance(record, dict) or not isinstance(record.get(field), str):
    raise UserError(f'{where} has no text field {field!r}; set --text_field to the field that '
                    'holds the text.')
  return record[field]


def in_validation(text: str, index: int, s: Settings) -> bool:
  if s.val_docs:
    return index < s.val_docs
  digest = hashlib.sha256(f'{s.seed}\0'.encode() + text.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'little') / 2**64 < s.val_fraction


def _shard(output: Path, split: str, index: int) -> Path:
  return output / f'{split}-{index:05d}.arrayrecord'


_WORKER: dict = {}


def _init_worker(settings: Settings, output: str) -> None:
  _WORKER['settings'], _WORKER['output'] = settings, Path(output)
  _WORKER['tokenizer'] = prepared_tokenizer(Path(output), settings)


def _prepare_chunk(chunk: Chunk) -> dict:
  """Writes one chunk's two shards (to temporary names, then renamed) and its record."""
  # pylint: disable-next=import-outside-toplevel  # (only the workers write)
  from array_record.python.array_record_module import ArrayRecordWriter
  s, output, tok = _WORKER['settings'], _WORKER['output'], _WORKER['tokenizer']
  counts = {split: dict(documents=0, tokens=0, bytes=0) for split in SPLITS}
  writers, tmps = {}, {}
  for split in SPLITS:
    tmps[split] = _shard(output, split, chunk.index).with_suffix('.tmp')
    writers[split] = ArrayRecordWriter(str(tmps[split]), 'group_size:1')
  try:
    for i, text in enumerate(documents(chunk, s.text_field)):
      split = 'validation' if in_validation(text, chunk.first_doc + i, s) else 'train'
      ids = np.asarray(tok.encode(text), '<i4')
      writers[split].write(ids.tobytes())
      c = counts[split]
      c['documents'], c['tokens'] = c['documents'] + 1, c['tokens'] + len(ids)
      c['bytes'] += len(text.encode('utf-8'))
  finally:
    for w in writers.values():
      w.close()
  for split in SPLITS:
    os.replace(tmps[split], _shard(output, split, chunk.index))
  record = dict(chunk=dataclasses.asdict(chunk), counts=counts)
  _atomic_json(output / 'chunks' / f'{chunk.index:05d}.json', record)
  return record


def prepared_tokenizer(output: Path, s: Settings, chunks: Sequence[Chunk] = ()) -> Tokenizer:
  """The preparation's tokenizer: byte, an existing SentencePiece model, or one trained (a
  character set collected) on the first sample_mb of `chunks`, kept in <output>/tokenizer."""
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
  cfg = ConfigDict(dict(tokenizer=s.tokenizer, tokenizer_path=s.tokenizer_path,
                        tokenizer_vocab_size=s.vocab_size))
  directory = output / 'tokenizer'
  if s.tokenizer == 'byte' or s.tokenizer_path or any(directory.glob('*.json')):
    return load_tokenizer(cfg, [], None, directory)  # given, or built by an earlier run
  texts, budget = [], int(s.sample_mb * 2**20)
  for chunk in chunks:
    for text in documents(chunk, s.text_field):
      if budget <= 0:
        break
      texts.append(text[:budget])
      budget -= len(texts[-1])
  sample = directory / 'sample.txt'
  sample.parent.mkdir(parents=True, exist_ok=True)
  sample.write_text('\n'.join(texts), encoding='utf-8')
  try:
    return load_tokenizer(cfg, [sample], texts, directory, replace_stale=True)
  finally:
    sample.unlink()


def _atomic_json(path: Path, value: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
  os.replace(tmp, path)


def prepare(s: Settings, output: Path, workers: int = 0) -> dict:
  """Prepares `s.source` into `output` (resuming a killed run there); returns the manifest."""
  output = Path(output)
  files = corpus_files(s.source)
  settings_path = output / 'settings.json'
  wanted = dict(format=FORMAT, **dataclasses.asdict(s))
  if settings_path.exists() and json.loads(settings_path.read_text()) != wanted:
    raise UserError(f'{output} already holds a preparation with other settings (see '
                    f'{settings_path}); give a new --output, or the same settings to resume it.')
  _atomic_json(settings_path, wanted)
  chunks = plan_chunks(files, s.chunk_mb)
  if s.val_docs:  # the first val_docs documents: count the documents before each chunk first
    seen, numbered = 0, []
    for chunk in chunks:
      numbered.append(dataclasses.replace(chunk, first_doc=seen))
      seen += sum(1 for _ in documents(chunk, s.text_field))
    chunks = numbered
  tok = prepared_tokenizer(output, s, chunks)
  records = {}
  for chunk in chunks:
    done = output / 'chunks' / f'{chunk.index:05d}.json'
    if done.exists() and all(_shard(output, sp, chunk.index).exists() for sp in SPLITS):
      record = json.loads(done.read_text())
      if record['chunk'] == dataclasses.asdict(chunk):  # (the same bytes of the same file)
        records[chunk.index] = record
  todo = [c for c in chunks if c.index not in records]
  workers = workers or os.cpu_count() or 1
  bar = tqdm(total=len(chunks), initial=len(records), unit='chunk', dynamic_ncols=True)
  docs = tokens = 0
  with bar, contextlib.ExitStack() as stack:
    if workers > 1 and len(todo) > 1:  # fresh interpreters: forking a process that runs JAX's
      pool = stack.enter_context(multiprocessing.get_context('spawn').Pool(  # threads can hang
          min(workers, len(todo)), _init_worker, (s, str(output))))
      results = pool.imap_unordered(_prepare_chunk, todo)
    else:
      _init_worker(s, str(output))
      results = map(_prepare_chunk, todo)
    for record in results:
      records[record['chunk']['index']] = record
      train = record['counts']['train']
      docs, tokens = docs + train['documents'], tokens + train['tokens']
      bar.set_postfix(train_docs=f'{docs:,}', train_tokens=f'{tokens:,}', refresh=False)
      bar.update(1)
  splits = {}
  for split in SPLITS:
    totals = dict(documents=0, tokens=0, bytes=0)
    for index in sorted(records):
      for k in totals:
        totals[k] += records[index]['counts'][split][k]
    totals['shards'] = [_shard(output, split, i).name for i in sorted(records)]
    splits[split] = totals
  if not splits['train']['documents'] or not splits['validation']['documents']:
    empty = 'training' if not splits['train']['documents'] else 'validation'
    raise UserError(f'the {empty} split of {s.source} is empty ({splits["train"]["documents"]} '
                    f'train, {splits["validation"]["documents"]} validation documents); change '
                    '--val_fraction or --val_docs, or give more documents.')
  manifest = dict(
      format=FORMAT, settings=dataclasses.asdict(s), dtype='<i4', source_files=len(files),
      tokenizer=dict(kind=s.tokenizer, fingerprint=tok.fingerprint, vocab_size=tok.vocab_size,
                     eos_id=tok.eos_id), splits=splits)
  _atomic_json(output / 'manifest.json', manifest)
  return manifest
