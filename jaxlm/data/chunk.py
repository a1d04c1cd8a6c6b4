"""One chunk of a preparation (see prepare.py): its documents -> token ids -> one training and
one validation shard, their lengths and token counts, and the chunk's record, written last.

`prepare_chunk` runs in any process, on any host, in any order and as often as needed: a
complete chunk is left alone, and each attempt writes to names of its own (host, process and a
random part), renamed into place, so two attempts of one chunk at once, or a retried one, leave
the same bytes. Texts are encoded a batch at a time (`text_batches`, `encode_arrays`); memory
stays flat: a worker holds one batch of documents (at most 1,024 or about 1 MiB of text, or one
longer document).
"""

import dataclasses
import functools
import hashlib
import io
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from jaxlm import paths
from jaxlm.data.sources import Chunk, documents, file_stamp
from jaxlm.data.tokenizers import Tokenizer, atomic_write, encode_arrays, open_tokenizer
from jaxlm.errors import UserError

# ArrayRecord's options for the shards: a record per chunk (random access); snappy, which writes
# 3x and reads 2x faster than the default zstd:3, for 9% more bytes (docs/BENCHMARKS.md).
SHARD_OPTIONS = 'group_size:1,snappy'
SPLITS = ('train', 'validation')


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
  keyed = _seeded(s.seed).copy()
  keyed.update(raw)
  return int.from_bytes(keyed.digest()[:8], 'little') / 2**64 < s.val_fraction


@functools.lru_cache(maxsize=None)
def _seeded(seed: int):
  """SHA-256 that has read '<seed>\\0' (copied for each document, not hashed again)."""
  return hashlib.sha256(f'{seed}\0'.encode())


def shard_path(output: Path, split: str, index: int, suffix: str = '.arrayrecord') -> Path:
  return as_dir(output) / f'{split}-{index:05d}{suffix}'


def as_dir(output):
  """A prepared dataset's directory: a pathlib.Path, or an epath.Path for a gs:// location (which
  the finalize step and the completeness checks read directly; chunks are written locally)."""
  return paths.path(str(output)) if paths.is_url(str(output)) else Path(output)


def file_size(path) -> int | None:
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
          n = len(ids)
          if not n:
            continue  # no text: nothing to learn or to score
          record = ids.astype('<i4', copy=False).tobytes()
          writers[split].write(record)
          if split == 'train':
            token_counts.add(ids)
          digests[split].update(n.to_bytes(8, 'little'))
          digests[split].update(record)
          lengths[split].append(n)
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
  save_npy(counts_path(output, chunk.index), token_counts.total())
  for split in SPLITS:
    save_npy(shard_path(output, split, chunk.index, '.lengths.npy'),
             np.asarray(lengths[split], np.int32))
    os.replace(tmps[split], shard_path(output, split, chunk.index))
    sizes[split] = shard_path(output, split, chunk.index).stat().st_size
  record = dict(chunk=plain(dataclasses.asdict(chunk)), counts=counts, documents_read=read,
                shard_bytes=sizes,
                digests={split: digests[split].hexdigest() for split in SPLITS})
  atomic_json(output / 'chunks' / f'{chunk.index:05d}.json', record)
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


def counts_path(output: Path, index: int) -> Path:
  return output / 'chunks' / f'{index:05d}.counts.npy'


def save_npy(path: Path, array: np.ndarray) -> None:
  npy = io.BytesIO()
  np.save(npy, array)
  atomic_write(path, npy.getvalue())


def plain(value):
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
  if record.get('chunk') != plain(dataclasses.asdict(chunk)) or file_size(counts_path(
      output, chunk.index)) is None:  # (a chunk prepared before token counts is prepared again)
    return None
  for split in SPLITS:
    if file_size(shard_path(output, split, chunk.index, '.lengths.npy')) is None or (
        file_size(shard_path(output, split, chunk.index)) != record['shard_bytes'][split]):
      return None
  return record


def atomic_json(path: Path, value: dict) -> None:
  atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode())
