"""Where documents come from, and how a source is cut into chunks, jaxlm.prepare's units of work.

A source is one of:

- UTF-8 text files (a file, a directory or a glob; '' is the shipped tinyshakespeare): each file
  is one document;
- JSONL files (.jsonl, .ndjson, .jsonl.gz, .json.gz), one document per line in a text field, the
  format of FineWeb, SlimPajama and the Pile;
- 'seqio:<task or mixture>' or 'tfds:<name>' (the TensorFlow extra, see tf_sources): each example
  is one document, and the source's own validation split, when it has one, is kept.

A chunk is a run of documents that one worker prepares into one shard per split: small text
files grouped up to about chunk_mb, a plain JSONL file cut every ~chunk_mb at a line start, a
gzip file whole (it cannot be cut), a shard of a SeqIO or TFDS split. A chunk records the size and
modification time of its files, so a file changed since is prepared again.
"""

import contextlib
import dataclasses
import functools
import glob
import gzip
import json
import zlib
from pathlib import Path
from typing import Callable, Iterator

import orjson

from jaxlm import paths
from jaxlm.data import tf_sources
from jaxlm.errors import UserError

SHIPPED_CORPUS = Path(__file__).with_name('tinyshakespeare.txt')


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Documents of one or more files (or of one SeqIO/TFDS split) prepared together."""
  index: int
  paths: tuple[str, ...]  # text files (each a document), one JSONL file, or 'seqio:x' / 'tfds:x'
  start: int = 0  # JSONL: bytes [start, stop) of the file, both at line starts
  stop: int = 0
  first_doc: int = 0  # the number of documents before this chunk (set only for val_docs)
  split: str = ''  # '' chooses by the holdout rule; else the source's own split, kept
  shard: int = 0  # SeqIO and TFDS: shard `shard` of `shards` of the split
  shards: int = 1
  stamps: tuple[tuple[int, int], ...] = ()  # (size, mtime_ns) of each file

  @classmethod
  def from_record(cls, record: dict) -> 'Chunk':
    """The chunk a plan or a chunk record holds (as JSON reads it back: lists for tuples)."""
    return cls(**{**record, 'paths': tuple(record['paths']),
                  'stamps': tuple(tuple(s) for s in record['stamps'])})


def corpus_files(pattern: str) -> list:
  """'' -> the shipped corpus; else a file, a directory (every file below it) or a glob, local or
  on a gs:// bucket (where a glob may have wildcards in its last part only)."""
  if not pattern:
    return [SHIPPED_CORPUS]
  if paths.is_url(pattern):
    files = _bucket_files(pattern)
  else:
    path = Path(pattern).expanduser()
    if path.is_file():
      return [path]
    if path.is_dir():
      files = sorted(p for p in path.rglob('*') if p.is_file() and not p.name.startswith('.'))
    else:
      files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
  if not files:
    raise UserError(f'the corpus {pattern!r} matches no file; give a UTF-8 text or JSONL file, a '
                    'directory or a glob (or leave data.corpus empty for the shipped corpus).')
  return files


def _bucket_files(url: str) -> list:
  path = paths.path(url)
  if glob.has_magic(url):
    if glob.has_magic(str(path.parent)):
      raise UserError(f'the corpus {url!r} has wildcards before its last part, which a bucket '
                      'cannot list cheaply; give a directory, or wildcards in the file name only.')
    return sorted(p for p in path.parent.glob(path.name) if p.is_file())
  if path.is_file():
    return [path]
  scheme = url.split('://', 1)[0]
  return sorted(paths.path(f'{scheme}://{top}') / name for top, _, names in path.walk()
                for name in names if not name.startswith('.'))


def read_text(path: Path) -> str:
  """A file's text; bytes that are not UTF-8 are an error that names the file and the offset."""
  data = paths.path(path).read_bytes()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); '
                    're-encode it as UTF-8 or leave it out of the corpus.') from None


def is_jsonl(path: Path) -> bool:
  return Path(path).name.endswith(('.jsonl', '.jsonl.gz', '.json.gz', '.ndjson'))


def file_stamp(path: Path) -> tuple[int, int]:
  """(size, mtime in ns): what tells a file changed since it was prepared."""
  if paths.is_url(path):
    st = paths.path(path).stat()
    return st.length, int(st.mtime * 10**9)
  st = Path(path).stat()
  return st.st_size, st.st_mtime_ns


def plan_chunks(source: str, chunk_mb: float, **tf_options) -> list[Chunk]:
  """Cuts a source into chunks (see the module docstring). tf_options: seqio_module, data_dir."""
  if tf_sources.is_tf_source(source):
    parts = [(split, k, n) for split in tf_sources.splits(source, **tf_options)
             for n in [tf_sources.shards(source, split, **tf_options)] for k in range(n)]
    return [Chunk(i, (source,), split=split, shard=k, shards=n)
            for i, (split, k, n) in enumerate(parts)]
  size = max(int(chunk_mb * 2**20), 1)
  chunks: list[Chunk] = []
  texts: list[tuple[Path, tuple[int, int]]] = []  # text files waiting to be grouped

  def flush_texts():
    if texts:
      chunks.append(Chunk(len(chunks), tuple(str(p) for p, _ in texts),
                          stamps=tuple(s for _, s in texts)))
      texts.clear()

  for path in corpus_files(source):
    stamp = file_stamp(path)
    total = stamp[0]
    if not is_jsonl(path):
      if texts and sum(s[0] for _, s in texts) + total > size:
        flush_texts()
      texts.append((path, stamp))
      continue
    if path.name.endswith('.gz') or total <= size:
      chunks.append(Chunk(len(chunks), (str(path),), 0, total, stamps=(stamp,)))
      continue
    with paths.path(path).open('rb') as f:
      start = 0
      while start < total:
        f.seek(min(start + size, total))
        f.readline()  # to the start of the next line
        stop = min(f.tell(), total)
        chunks.append(Chunk(len(chunks), (str(path),), start, stop, stamps=(stamp,)))
        start = stop
  flush_texts()
  return chunks


def documents(chunk: Chunk, text_field: str = 'text', **tf_options) -> Iterator[str]:
  """The documents of a chunk, in order; a bad JSONL line is an error naming file and line."""
  first = chunk.paths[0]
  if tf_sources.is_tf_source(first):
    yield from tf_sources.documents(first, chunk.split, text_field, shard=chunk.shard,
                                    shards=chunk.shards, **tf_options)
    return
  path = paths.path(first)
  if not is_jsonl(path):
    for p in chunk.paths:
      yield read_text(p)
    return
  whole = path.name.endswith('.gz') or chunk.start == 0 and chunk.stop == file_stamp(path)[0]
  with contextlib.ExitStack() as stack:
    f = stack.enter_context(path.open('rb'))
    if path.name.endswith('.gz'):
      f = stack.enter_context(gzip.open(f, 'rb'))
    f.seek(0 if whole else chunk.start)
    position, line_no = chunk.start, 1
    while whole or position < chunk.stop:
      line = _read_line(f, path, line_no)
      if not line:
        break
      if line.strip():
        yield _field(line, text_field, functools.partial(
            _where, path, line_no, position if chunk.start else None))
      position, line_no = position + len(line), line_no + 1


def _read_line(f, path, line_no: int) -> bytes:
  """The next line; a damaged gzip file (truncated, not gzip, a wrong checksum) is one sentence."""
  try:
    return f.readline()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    reason = ' '.join(str(e).split()) or type(e).__name__
    raise UserError(f'{path} is not a whole gzip file ({reason}, reading line {line_no}); '
                    'download or compress it again, or leave it out of the corpus (nothing '
                    'was prepared from it).') from None


def _where(path, line_no: int, position: int | None) -> str:
  """A line's place for a message: its number, or its byte offset in a chunk that starts
  part-way into the file."""
  return f'line {line_no} of {path}' if position is None else \
      f'the line at byte {position} of {path}'


def _field(line: bytes, field: str, where: Callable[[], str]) -> str:
  """The text of one JSONL line: parsed by orjson, several times faster than json; a line orjson
  refuses (not UTF-8 or not JSON, a lone surrogate, NaN) goes through json, which says why or
  accepts it as json always has (`where()` names the line in its messages)."""
  try:
    record = orjson.loads(line)
  except orjson.JSONDecodeError:
    return _slow_field(line, field, where)
  text = record.get(field) if isinstance(record, dict) else None
  return text if isinstance(text, str) else _slow_field(line, field, where)


def _slow_field(line: bytes, field: str, where: Callable[[], str]) -> str:
  place = where()
  try:
    record = json.loads(line)
  except UnicodeDecodeError as e:
    raise UserError(f'{place} is not UTF-8 (byte {e.start} of the line is '
                    f'{line[e.start:e.start + 1]!r}); re-encode the file as UTF-8.') from None
  except ValueError:
    raise UserError(f'{place} is not JSON; fix or remove that line.') from None
  if not isinstance(record, dict) or not isinstance(record.get(field), str):
    raise UserError(f'{place} has no text field {field!r}; set the text field (--text_field, or '
                    'data.text_field) to the one that holds the text.')
  text = record[field]
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:  # JSON's escapes allow lone surrogates ("\ud800")
    raise UserError(f'{place} holds a lone surrogate ({text[e.start]!r} at character {e.start} '
                    f'of its {field!r}), which is not text; fix or remove that line.') from None
  return text


def describe(source: str) -> str:
  """A short name for a source, for directory names and messages."""
  if not source:
    return SHIPPED_CORPUS.stem
  if tf_sources.is_tf_source(source):
    return source.replace(':', '-').replace('/', '-')
  stem = Path(source.rstrip('/*')).name or 'corpus'
  return ''.join(c if c.isalnum() or c in '-_.' else '-' for c in stem)[:40]

