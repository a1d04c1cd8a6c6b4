"""The datatrove pipeline steps jaxlm adds around datatrove's own: reading inputs with a global
order, counting, extraction, language and PII adapted, decontamination with the task document
named, and writing the outputs byte for byte (deduplication's own steps: dedup.py).

Every document carries two internal fields while it is cleaned (dropped from what is written):
`_pos`, its place in the input order (reference corpus first, then input file, then document in
the file), and `_key`, the name of the file it is written to (one per input file), so that every
output is a function of the input alone, never of how many tasks ran it.
"""

import functools
import gzip
import hashlib
import io
import json
import zlib
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont import NGramsDecontFilter
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import ExtractorSandbox
from datatrove.pipeline.filters import LanguageFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.lid import FastTextLID

from jaxlm.data.tokenizers import atomic_write

INTERNAL = ('_pos', '_key', 'file_path')  # (file_path: datatrove's reader of the work files)
JSONL = ('.jsonl', '.jsonl.gz', '.json.gz', '.ndjson')
WARC = ('.warc', '.warc.gz', '.arc.gz')


def position(file_index: int, doc_index: int, reference: bool = False) -> int:
  """A document's place in the input order as one integer (reference corpus first)."""
  return (0 if reference else 1) << 62 | file_index << 32 | doc_index


def source_key(file_index: int, reference: bool = False) -> str:
  return f'{"ref" if reference else ""}{file_index:05d}'


def writer(folder: str) -> JsonlWriter:
  """Intermediate documents, one plain JSONL file per input file (named by `_key`)."""
  return JsonlWriter(folder, output_filename='${_key}.jsonl', compression=None)


def kind(path: str) -> str:
  name = Path(path).name.lower()
  return 'warc' if name.endswith(WARC) else 'jsonl' if name.endswith(JSONL) else 'text'


class Damaged(Exception):
  """An input that cannot be read at all (a damaged gzip or WARC file): the run stops."""


def write_error(folder: str, key: str, message: str) -> None:
  path = Path(folder) / f'{key}.txt'
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(message)


class ReadInputs(PipelineStep):
  """Text files (one document each), JSONL (one per line, text in `text_field`) and web archives
  (one per response record, marked for `extract`; one that is not HTML is recorded as removed).
  Task `rank` reads files rank, rank + N...

  A line or file that is not UTF-8, a line that is not JSON or has no text field goes to
  removed/read with its rule (nothing is dropped without a record); a damaged .gz or WARC file
  stops the run with a sentence in `errors`. `sample` < 1 keeps a fixed share of the documents,
  chosen by a hash of (seed, id)."""
  name = 'read'
  type = 'jaxlm'

  def __init__(self, files: list[str], text_field: str, sample: float, seed: int,
               removed: str, errors: str):
    super().__init__()
    self.files, self.text_field, self.sample, self.seed = files, text_field, sample, seed
    self.removed, self.errors = removed, errors

  def _sampled(self, doc_id: str) -> bool:
    if self.sample >= 1:
      return True
    digest = hashlib.blake2b(f'{self.seed}:{doc_id}'.encode(), digest_size=8).digest()
    return int.from_bytes(digest, 'little') / 2**64 < self.sample

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    with writer(self.removed) as removed:
      for i in range(rank, len(self.files), world_size):
        path = self.files[i]
        reader = {'warc': self._warc, 'jsonl': self._jsonl, 'text': self._text}[kind(path)]
        try:
          for n, doc in enumerate(reader(path)):
            doc.id = f'{path}/{n}'
            doc.metadata.update(source=path, index=n, _pos=position(i, n), _key=source_key(i))
            if not self._sampled(doc.id):
              self.stat_update('not_sampled')
              continue
            self.stat_update('documents')
            if 'filter_reason' in doc.metadata:
              removed.write(doc, rank)
              continue
            yield doc
        except Damaged as e:
          write_error(self.errors, source_key(i), str(e))
          raise

  @staticmethod
  def _unreadable(reason: str, text: str = '') -> Document:
    return Document(text=text, id='', metadata={'filter_reason': reason})

  def _text(self, path: str):
    data = Path(path).read_bytes()
    try:
      yield Document(text=data.decode('utf-8'), id='')
    except UnicodeDecodeError as e:
      yield self._unreadable(f'not_utf8 (byte {e.start})', data.decode('utf-8', 'replace'))

  def _jsonl(self, path: str):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      line_no = 0
      while True:
        try:
          line = f.readline()
        except (EOFError, OSError, zlib.error) as e:  # (gzip.BadGzipFile is an OSError)
          reason = ' '.join(str(e).split()) or type(e).__name__
          raise Damaged(f'{path} is not a whole gzip file ({reason}, after line {line_no}); '
                        'compress or download it again, or leave it out of --input.') from None
        if not line:
          return
        line_no += 1
        if not line.strip():
          continue
        try:
          text = line.decode('utf-8')
        except UnicodeDecodeError as e:
          yield self._unreadable(f'not_utf8 (line {line_no}, byte {e.start})',
                                 line.decode('utf-8', 'replace'))
          continue
        try:
          record = json.loads(text)
        except ValueError:
          yield self._unreadable(f'not_json (line {line_no})', text)
          continue
        if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
          yield self._unreadable(f'no_text_field (line {line_no}: no string {self.text_field!r})',
                                 text)
          continue
        body = record.pop(self.text_field)
        try:
          body.encode('utf-8')
        except UnicodeEncodeError:  # a lone surrogate from a JSON escape
          yield self._unreadable(f'not_utf8 (line {line_no}, a lone surrogate)', text)
          continue
        yield Document(text=body, id='', metadata={'line': line_no, **(
            {'fields': record} if record else {})})

  def _warc(self, path: str):
    # pylint: disable=import-outside-toplevel
    from datatrove.pipeline.readers.warc import process_record
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed
    def damaged(reason: str) -> Damaged:
      return Damaged(f'{path} is not a whole web archive ({reason}); download it again, or leave '
                     'it out of --input.')

    if path.endswith('.gz'):  # warcio reads a truncated gzip file without a word: check it
      try:
        with gzip.open(path, 'rb') as g:
          while g.read(1 << 20):
            pass
      except (EOFError, OSError, zlib.error) as e:
        raise damaged(' '.join(str(e).split())[:160] or type(e).__name__) from None
    try:
      with open(path, 'rb') as f:
        for n, record in enumerate(ArchiveIterator(f)):
          if record.format != 'warc' or not record.rec_headers.get_header('WARC-Record-ID'):
            raise damaged(f'record {n} has no WARC header')
          if record.rec_type not in ('response', 'conversion'):  # requests, metadata: no page
            self.stat_update('warc_records_not_pages')
            continue
          url = record.rec_headers.get_header('WARC-Target-URI')
          extracted = process_record(record)
          if not extracted:  # a page that is not HTML (or text it cannot decode): recorded
            doc = self._unreadable('not_html')
            doc.metadata['url'] = url
            yield doc
            continue
          yield Document(text=extracted['text'], id='', metadata=dict(
              html=True, url=extracted['url'], date=extracted['date'],
              warc_record_id=extracted['id']))
    except (ArchiveLoadFailed, EOFError, OSError, ValueError) as e:
      raise damaged(' '.join(str(e).split())[:160] or type(e).__name__) from None


class ReadReference(PipelineStep):
  """The kept documents of an earlier cleaning (--dedup_against): first in the input order, so a
  duplicate of one of them is removed from the new corpus and never the reverse."""
  name = 'read reference'
  type = 'jaxlm'

  def __init__(self, files: list[str]):
    super().__init__()
    self.files = files

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    if data:
      yield from data
    for i in range(rank, len(self.files), world_size):
      with gzip.open(self.files[i], 'rt', encoding='utf-8') as f:
        for n, line in enumerate(f):
          row = json.loads(line)
          yield Document(text=row['text'], id=row['id'], metadata=dict(
              _pos=position(i, n, reference=True), _key=source_key(i, reference=True)))


class Tally(PipelineStep):
  """Counts the documents and UTF-8 bytes that pass (into <folder>/<rank>.json)."""
  name = 'tally'
  type = 'jaxlm'

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    documents = size = 0
    for doc in data:
      documents += 1
      size += len(doc.text.encode('utf-8'))
      yield doc
    atomic_write(Path(self.folder) / f'{rank:05d}.json',
                 json.dumps(dict(documents=documents, bytes=size)).encode())


def tally(folder: Path) -> dict:
  """The counts of a Tally folder, summed over tasks."""
  total = dict(documents=0, bytes=0)
  for path in sorted(Path(folder).glob('*.json')):
    for k, v in json.loads(path.read_text()).items():
      total[k] += v
  return total


class Extract(Trafilatura):
  """trafilatura on the documents read from web archives (metadata html); other documents pass.
  One that yields no text (or times out) goes to the exclusion writer with its reason."""

  def __init__(self, exclusion_writer=None, **params):
    super().__init__(**params)
    self.exclusion_writer = exclusion_writer

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
    with self.exclusion_writer as removed, ExtractorSandbox(timeout=self.timeout) as sandbox:
      for doc in data:
        if not doc.metadata.pop('html', False):
          yield doc
          continue
        self.stat_update('total')
        try:  # (a removed page keeps its HTML, to read what was dropped)
          text = sandbox.process_document(doc.text, self.extract) or ''
          reason = '' if text.strip() else 'no_text'
          if not reason:
            doc.text = text
        except TimeoutError:
          reason = 'timeout'
        except Exception as e:  # pylint: disable=broad-except  # trafilatura's own errors
          reason = f'error ({type(e).__name__})'
        if reason:
          doc.metadata['filter_reason'] = reason
          removed.write(doc, rank)
          self.stat_update('dropped')
          continue
        yield doc


class PathLID(FastTextLID):
  """A fastText language identifier read from a file (lid.176 or GlotLID): nothing downloaded."""

  def __init__(self, model: str, languages: list[str] | None):
    super().__init__(languages)
    self.path = model

  @property
  def model(self):
    if self._model is None:
      from fasttext.FastText import _FastText  # pylint: disable=import-outside-toplevel
      self._model = _FastText(self.path)
    return self._model


class Language(LanguageFilter):
  """datatrove's language filter with the model from a path; the language and its score stay in
  a removed document's metadata. Labels may be 'en' (lid.176) or 'eng_Latn' (GlotLID)."""

  def __init__(self, model: str, languages: str | list, language_threshold: float,
               exclusion_writer=None):
    BaseFilter.__init__(self, exclusion_writer)  # pylint: disable=non-parent-init-called
    if isinstance(languages, str):
      languages = [x.strip() for x in languages.split(',') if x.strip()]
    self.languages = languages or None
    self.language_threshold = language_threshold
    self.backend = 'ft176'
    self.label_only, self.keep_top_pairs_threshold = False, -1
    self.model = PathLID(model, self.languages)

  def filter(self, doc: Document):
    if super().filter(doc):
      return True
    return False, f'{doc.metadata["language"]} {doc.metadata["language_score"]:.2f}'


class StablePII(PIIFormatter):
  """datatrove's PII masking, with the stand-ins chosen per document (the first of each list for
  a document's first match, and so on): datatrove cycles them over a task's whole stream, which
  would make the output depend on how documents are split into tasks."""

  def format(self, text: str) -> str:
    self.emails_replacer._replace_i = 0  # pylint: disable=protected-access
    self.ip_replacer._replace_i = 0  # pylint: disable=protected-access
    return super().format(text)


class Decontaminate(NGramsDecontFilter):
  """datatrove's n-gram decontamination against jaxlm's index, which keeps for every n-gram the
  task and the number of the task document it came from (datatrove's keeps the task only)."""

  def __init__(self, index: str, n_grams: int, find_query_ngrams: bool, exclusion_writer=None):
    # pylint: disable-next=import-outside-toplevel
    from datatrove.pipeline.decont import NGramsDecontConfig
    super().__init__(index_folder=index, exclusion_writer=exclusion_writer,
                     config=NGramsDecontConfig(n_grams=n_grams,
                                               find_query_ngrams=find_query_ngrams))
    self.index = index

  def load_index_hashes(self):
    with np.load(Path(self.index) / 'index.npz') as z:
      self._index_hashes = dict(zip(z['hashes'].tolist(), z['docs'].tolist()))
    self._task_docs = json.loads((Path(self.index) / 'docs.json').read_text())

  def filter(self, doc: Document):
    if self._index_hashes is None:
      self.load_index_hashes()
    # pylint: disable-next=import-outside-toplevel
    from datatrove.utils.text import ngrams, simplify_text
    tokens = self.tokenizer.word_tokenize(simplify_text(doc.text, self.config.norm_config))
    for gram in map(' '.join, ngrams(tokens, self.config.n_grams)):
      hit = self._index_hashes.get(self.hash_func(gram))
      if hit is not None:
        task, number = self._task_docs[hit]
        doc.metadata.update(contaminated_task=task, contaminated_doc=number,
                            contaminated_ngram=gram)
        return False, task
    return True


def build_decontamination_index(folder: Path, task_docs: list[tuple[str, int, str, str]],
                                n_grams: int, find_query_ngrams: bool) -> dict[str, int]:
  """datatrove's n-gram hashes of every (task, document number, query, answer): index.npz maps
  each hash to a task document (the first to hold it); returns the n-grams per task."""
  # pylint: disable=import-outside-toplevel
  import types
  from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontIndexer
  from datatrove.utils.hashing import create_hash_func
  from datatrove.utils.word_tokenizers import load_word_tokenizer
  # datatrove's own n-gram hashing (NGramsDecontIndexer.compute_hashes), without the indexer's
  # lighteval dependency: jaxlm reads the task documents through lm-eval instead.
  config = NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=find_query_ngrams)
  indexer = types.SimpleNamespace(config=config, tokenizer=load_word_tokenizer('eng'),
                                  hash_func=create_hash_func(config.hash_config))
  compute_hashes = functools.partial(NGramsDecontIndexer.compute_hashes, indexer)
  first: dict[int, int] = {}
  per_task: dict[str, int] = {}
  docs = []
  for task, number, query, answer in task_docs:
    hashes = compute_hashes(answer, query)
    per_task[task] = per_task.get(task, 0) + len(set(hashes))
    for h in hashes:
      first.setdefault(h, len(docs))
    docs.append([task, number])
  folder.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, hashes=np.array(list(first), dtype='<u8'),
           docs=np.array(list(first.values()), dtype='<u4'))
  atomic_write(folder / 'index.npz', buffer.getvalue())
  atomic_write(folder / 'docs.json', json.dumps(docs).encode())
  return per_task


def gzip_bytes(text: str) -> bytes:
  """Gzip with no name and no time in its header: the same text, the same bytes."""
  buffer = io.BytesIO()
  with gzip.GzipFile(filename='', mode='wb', fileobj=buffer, mtime=0) as f:
    f.write(text.encode('utf-8'))
  return buffer.getvalue()


def kept_record(row: dict) -> dict:
  meta = {k: v for k, v in row.get('metadata', {}).items() if k not in INTERNAL}
  return dict(id=row['id'], text=row.get('text', ''), metadata=meta)


def removed_record(row: dict, step: str) -> dict:
  meta = {k: v for k, v in row.get('metadata', {}).items() if k not in INTERNAL}
  reason = meta.pop('filter_reason', '')
  out = dict(id=row['id'], step=step, rule=f'{step}:{reason}' if reason else step)
  for k in ('duplicate_of', 'cluster_size', 'contaminated_task', 'contaminated_doc',
            'contaminated_ngram'):
    if k in meta:
      out[k] = meta.pop(k)
  out.update(text=row.get('text', ''), metadata=meta)
  return out


def dumps(row: dict) -> str:
  return json.dumps(row, ensure_ascii=False, sort_keys=False, separators=(',', ':')) + '\n'


class Assemble(PipelineStep):
  """The outputs: <output>/kept/<file>.jsonl.gz from the last documents and
  <output>/removed/<step>/<file>.jsonl.gz from each step's removals, one file per input file, in
  input order, as gzip with a fixed header (task rank takes files rank, rank + N, ...)."""
  name = 'assemble'
  type = 'jaxlm'

  def __init__(self, work: str, output: str, last: str, steps: list[str]):
    super().__init__()
    self.work, self.output, self.last, self.steps = work, output, last, steps

  def jobs(self) -> list[tuple[Path, Path, str]]:
    work, output, jobs = Path(self.work), Path(self.output), []
    for src in sorted((work / self.last).glob('*.jsonl')):
      jobs.append((src, output / 'kept' / f'{src.stem}.jsonl.gz', ''))
    for step in self.steps:
      for src in sorted((work / 'removed' / step).glob('*.jsonl')):
        jobs.append((src, output / 'removed' / step / f'{src.stem}.jsonl.gz', step))
    return jobs

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    for src, dst, step in self.jobs()[rank::world_size]:
      rows = (json.loads(line) for line in src.read_text(encoding='utf-8').splitlines())
      text = ''.join(dumps(removed_record(r, step) if step else kept_record(r)) for r in rows)
      atomic_write(dst, gzip_bytes(text))
    return data
