"""Reading a prepared dataset (see prepare.py): its manifest, tokenizer, and documents by index.

Opening checks what can be checked cheaply, so that a damaged dataset is one sentence at start-up
rather than an error deep in training: the manifest's format, every shard and lengths file
present with the size the manifest records, and the record counts. Documents are read through
Grain's ArrayRecordDataSource, only when asked for, with a small cache (a long document feeds
many consecutive windows).
"""

import collections
import hashlib
import json
from pathlib import Path

import numpy as np

from jaxlm import paths
from jaxlm.data.chunk import SPLITS
from jaxlm.data.prepare import FORMAT
from jaxlm.data.tokenizers import Tokenizer, open_tokenizer
from jaxlm.errors import UserError

CACHE_BYTES = 64 * 2**20  # decoded documents kept per process


def is_prepared(path: str) -> bool:
  return bool(path) and (paths.path(path) / 'manifest.json').is_file()


class Split:
  """One split's documents: `lengths` [N] tokens each, and `doc(i)` -> int32 token ids."""

  def __init__(self, directory: Path, info: dict, name: str):
    self.directory, self.name = directory, name
    self.paths = [str(directory / shard) for shard in info['shards']]
    lengths = []
    for shard, lengths_file, size in zip(info['shards'], info['lengths'], info['shard_bytes']):
      path = directory / shard
      if not path.is_file() or not (directory / lengths_file).is_file():
        raise UserError(f'{path if not path.is_file() else directory / lengths_file} is missing '
                        f'from the prepared dataset {directory}; run jaxlm.prepare again with the '
                        'same flags to complete it.')
      if path.stat().st_size != size:
        raise UserError(f'{path} is truncated or changed ({path.stat().st_size} bytes, the '
                        f'manifest says {size}); run jaxlm.prepare again with the same flags to '
                        'rewrite it.')
      try:
        lengths.append(np.load(directory / lengths_file))
      except (OSError, ValueError):
        raise UserError(f'{directory / lengths_file} cannot be read; delete it and run '
                        'jaxlm.prepare again with the same flags.') from None
    self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    self.shard_documents = [len(x) for x in lengths]
    if len(self.lengths) != info['documents'] or int(self.lengths.sum()) != info['tokens']:
      raise UserError(f'the {name} split of {directory} does not hold what its manifest says '
                      f'({len(self.lengths)} documents, {int(self.lengths.sum())} tokens); run '
                      'jaxlm.prepare again into a new directory.')
    self.tokens, self.bytes = info['tokens'], info['bytes']
    self.digest = hashlib.sha256(json.dumps(info['digests']).encode()).hexdigest()  # its ids
    self._source = None
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._cached_bytes = 0
    self.reads = 0  # records read from disk in this process (for tests and benchmarks)

  def __getstate__(self):  # pickled into Grain's worker processes: no open files, no cache
    state = dict(self.__dict__, _source=None, _cache=collections.OrderedDict(), _cached_bytes=0)
    return state

  def _open(self):
    import grain  # pylint: disable=import-outside-toplevel
    try:
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    except Exception as e:  # pylint: disable=broad-except  # riegeli's errors for a bad file
      raise UserError(f'the shards of {self.directory} cannot be read ({str(e)[:200]}); run '
                      'jaxlm.prepare again with the same flags.') from None
    if len(self._source) != len(self.lengths):
      raise UserError(f'the {self.name} shards of {self.directory} hold {len(self._source)} '
                      f'records, not {len(self.lengths)}; run jaxlm.prepare again.')

  def doc(self, i: int) -> np.ndarray:
    """The token ids of document i (read-only int32)."""
    return self.docs([i])[int(i)]

  def docs(self, ids) -> dict[int, np.ndarray]:
    """{i: token ids} for the documents `ids`, those not cached read in one batched call (Grain's
    __getitems__: a few microseconds a record, where one __getitem__ costs a thread-pool round
    trip of about half a millisecond)."""
    out, missing = {}, []
    for i in ids:
      i = int(i)
      hit = self._cache.get(i)
      if hit is None:
        missing.append(i)
      else:
        self._cache.move_to_end(i)
        out[i] = hit
    if missing:
      if self._source is None:
        self._open()
      missing = sorted(set(missing))
      for i, record in zip(missing, self._source.__getitems__(missing)):
        ids_i = np.frombuffer(record, '<i4').astype(np.int32, copy=False)
        out[i] = ids_i
        if ids_i.nbytes <= CACHE_BYTES // 4:
          self._cache[i] = ids_i
          self._cached_bytes += ids_i.nbytes
      self.reads += len(missing)
      while self._cached_bytes > CACHE_BYTES:
        self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
    return out


def _mounted_or_copied(url: str) -> Path:
  mount = paths.mounted(url)
  if mount is not None and (mount / 'manifest.json').is_file():
    print(f'Reading the prepared dataset {url} through the gcsfuse mount {mount}', flush=True)
    return mount
  from jaxlm.data.staging import local_copy  # pylint: disable=import-outside-toplevel
  return local_copy(url)


class Prepared:
  """A prepared dataset: manifest, tokenizer, and its train and validation splits."""

  def __init__(self, path: str):
    self.location = str(path)  # as given: a directory, or a gs:// URL (read through a gcsfuse
    if paths.is_url(path):  # mount of its bucket, or else a local copy: paths.py says why)
      self.directory = _mounted_or_copied(str(path))
    else:
      self.directory = Path(path).expanduser()
    manifest_path = self.directory / 'manifest.json'
    if not manifest_path.is_file():
      raise UserError(f'{self.directory} is not a prepared dataset (it has no manifest.json); '
                      'prepare it with python -m jaxlm.prepare, or finish that run.')
    raw = manifest_path.read_bytes()
    try:
      self.manifest = json.loads(raw)
      for split in SPLITS:
        self.manifest['splits'][split]['digests']  # pylint: disable=pointless-statement
    except (ValueError, KeyError, TypeError):
      raise UserError(f'{manifest_path} is not a jaxlm manifest; prepare the data again.') from None
    if self.manifest.get('format') != FORMAT:
      raise UserError(f'{self.directory} was prepared by another version of jaxlm (format '
                      f'{self.manifest.get("format")}, this one reads {FORMAT}); prepare it '
                      'again into a new directory.')
    self.name = paths.path(path).name
    self.splits = {split: Split(self.directory, self.manifest['splits'][split], split)
                   for split in SPLITS}
    # What a checkpoint was trained on: the token ids (prepare hashed each shard's) and the
    # tokenizer, not where they came from, so a moved corpus is still the same data.
    key = hashlib.sha256(self.manifest['tokenizer']['fingerprint'].encode())
    for split in SPLITS:
      key.update(json.dumps(self.manifest['splits'][split]['digests']).encode())
    self.fingerprint = key.hexdigest()[:16]
    kind = self.manifest['tokenizer']['kind']
    self.tokenizer: Tokenizer = open_tokenizer(self.directory / 'tokenizer', kind)
    if self.tokenizer.fingerprint != self.manifest['tokenizer']['fingerprint']:
      raise UserError(f'the tokenizer in {self.directory / "tokenizer"} is not the one the data '
                      'was prepared with; restore it, or prepare the data again.')

  def token_counts(self) -> np.ndarray | None:
    """How often each token id occurs in the training split (int64 [vocab]), as jaxlm.prepare
    counted it; None for a preparation made before it counted."""
    name = self.manifest.get('token_counts')
    return np.load(self.directory / name) if name else None

  @property
  def train(self) -> Split:
    return self.splits['train']

  @property
  def validation(self) -> Split:
    return self.splits['validation']
