"""The input pipeline: prepared splits -> rows -> a weighted mixture -> this host's part of each
global batch, on Grain; and the document streams that evaluation scores.

Training: each dataset's rows (rows.py) are a Grain `MapDataset`; several datasets are mixed by
`MapDataset.mix`, which interleaves them deterministically in the given proportions. Global batch
j is rows j*B .. j*B+B-1 of that stream whatever the number of hosts, and a host reads only its
`rows` of it (sharding.host_rows): hosts split along the batch axes read disjoint rows, hosts that
differ only along other axes (tensor, say) read the same ones. Batches are read ahead in a thread,
or in `workers` Grain worker processes; because batch j is a pure function of j, the batches are
the same with any number of workers, and the iterator's whole state is the next batch index.

Evaluation: a split's documents as one token stream in which every token of the text is predicted
exactly once: each document is preceded by the end-of-sequence id, which is context only (weight
0), so end-of-document predictions (which stand for no text) are not scored either. A run that
packs documents evaluates each one alone, cut where its training pieces are cut.
"""

import bisect
import functools
import os
import sys
import threading
import time
from typing import Iterator, Sequence

import grain
import numpy as np

from jaxlm.data.prepared import Split
from jaxlm.data.rows import ConcatRows, PackedRows, padded_slice
from jaxlm.errors import worker_signals

Batch = dict[str, np.ndarray]


def dataset_seed(seed: int, index: int) -> int:
  """A 32-bit seed per dataset of a mixture, so that two datasets are not shuffled alike."""
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class _Tagged:
  """A row source whose plans also say which dataset of the mixture they come from, and which of
  its rows they are."""

  def __init__(self, rows, index: int):
    self.rows, self.index = rows, index

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, k: int) -> tuple[int, int, list]:
    return self.index, k, self.rows[k]


class HostBatch:
  """Global batch j -> this host's rows of it, stacked: [len(rows), L] arrays, and `source` [b],
  the dataset each row comes from (for the mixture metrics; not fed to the model).

  The rows' plans come first (from lengths only); then every document they need is read in one
  batched call per dataset, and the rows are assembled.
  """

  def __init__(self, plans: grain.MapDataset, sources: Sequence, global_batch: int,
               host_rows: Sequence[int]):
    self.plans, self.sources, self.global_batch = plans, list(sources), global_batch
    self.host_rows = [int(r) for r in host_rows]

  def __call__(self, j: int) -> Batch:
    plans = [self.plans[j * self.global_batch + r] for r in self.host_rows]
    docs = {}
    for i, rows in enumerate(self.sources):
      wanted = {d for source, _, plan in plans if source == i for d, _, _ in plan}
      if wanted:
        docs[i] = rows.split.docs(sorted(wanted))
    items = [self.sources[i].assemble(plan, docs[i]) for i, _, plan in plans]
    batch = {k: np.stack([item[k] for item in items]) for k in items[0]}
    batch['source'] = np.array([i for i, _, _ in plans], np.int32)
    return batch


def train_rows(splits: Sequence[Split], *, packing: str, length: int, eos: int | None, seed: int,
               stride: int = 0, max_docs: int = 0) -> list:
  """Each dataset's row source (rows.py) over its train split."""
  return [PackedRows(split, eos, length, dataset_seed(seed, i), max_docs) if packing == 'pack'
          else ConcatRows(split, eos, length, stride or length, dataset_seed(seed, i))
          for i, split in enumerate(splits)]


def _proportions(weights: Sequence[float]) -> tuple[int, ...]:
  """Grain's integer proportions of positive weights (the smallest scaled to 100)."""
  return tuple(int(w * 100 / min(weights)) for w in weights)


def _interleaved(k: int, proportions: tuple[int, ...]) -> tuple[int, int]:
  """(dataset, its row) at position k of Grain's deterministic interleave of datasets in these
  integer proportions (grain.MapDataset.mix): dataset 0 takes its share of every prefix, then
  dataset 1 of what remains, and so on."""
  remaining, k0, k1 = sum(proportions), k, k + 1
  for i, p in enumerate(proportions):
    n0, n1 = k0 * (remaining - p) // remaining, k1 * (remaining - p) // remaining
    if k0 - n0 != k1 - n1:
      return i, k1 - n1 - 1
    remaining, k0, k1 = remaining - p, n0, n1
  raise AssertionError('unreachable: the last dataset takes what remains')


def _counts(k: int, proportions: tuple[int, ...]) -> list[int]:
  """How many of positions 0..k-1 of the interleave each dataset takes."""
  out, remaining = [], sum(proportions)
  for p in proportions:
    rest = k * (remaining - p) // remaining
    out.append(k - rest)
    remaining, k = remaining - p, rest
  return out


class StagedSelection(grain.transforms.DatasetSelectionMap):
  """Global row g -> (dataset, its row) for mixture weights that change at given rows
  (data.mixture stages): in the stage that holds g, Grain's interleave of the datasets with a
  positive weight there, each dataset's rows continuing from where the earlier stages left them.
  A pure function of g, in constant time: resuming inside or across a stage reads the same rows."""

  def __init__(self, starts: Sequence[int], weights: Sequence[Sequence[float]]):
    self.starts = [int(a) for a in starts]
    self.active = [[i for i, w in enumerate(ws) if w > 0] for ws in weights]
    self.proportions = [_proportions([ws[i] for i in active])
                        for ws, active in zip(weights, self.active)]
    n = len(weights[0])
    self.offsets = [[0] * n]  # each dataset's rows used before each stage
    for k in range(1, len(self.starts)):
      done = _counts(self.starts[k] - self.starts[k - 1], self.proportions[k - 1])
      offsets = list(self.offsets[-1])
      for i, c in zip(self.active[k - 1], done):
        offsets[i] += c
      self.offsets.append(offsets)

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, g: int) -> tuple[int, int]:
    k = bisect.bisect_right(self.starts, g) - 1
    j, row = _interleaved(g - self.starts[k], self.proportions[k])
    i = self.active[k][j]
    return i, self.offsets[k][i] + row


def mixed_plans(sources: Sequence, weights: Sequence[float],
                stages: Sequence[tuple[int, Sequence[float]]] = ()) -> grain.MapDataset:
  """The endless stream of row plans, (dataset index, row index, plan), mixed in the given
  proportions, or by `stages`: (first global row, weights) each, the first at row 0."""
  streams = [grain.MapDataset.source(_Tagged(rows, i)) for i, rows in enumerate(sources)]
  if len(stages) > 1:
    return grain.MapDataset.select_from_datasets(streams, StagedSelection(
        [a for a, _ in stages], [w for _, w in stages]))
  return streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, list(weights))


class TrainBatches:
  """An endless, checkpointable iterator of this host's part of each global batch."""

  def __init__(self, sources: Sequence, weights: Sequence[float], global_batch: int,
               host_rows: Sequence[int], *, workers: int = 0, prefetch: int = 2,
               stages: Sequence[tuple[int, Sequence[float]]] = ()):
    """`stages`: (first step, weights) of each stage of a staged mixture (one batch a step)."""
    self.sources = list(sources)
    self.plans = mixed_plans(sources, weights, [(step * global_batch, w) for step, w in stages])
    self.global_batch = global_batch
    host_batch = HostBatch(self.plans, sources, global_batch, host_rows)
    self.batches = grain.MapDataset.range(sys.maxsize).map(host_batch)
    self.workers, self.prefetch = workers, prefetch
    self.position = 0  # the next global batch
    self._iterator = None

  def _open(self):
    ds = self.batches[self.position:].to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.prefetch))
    # Batches cross from the workers pickled, not in shared memory: a few MB each, and Grain's
    # shared-memory blocks outlive an iterator closed early (leaked at exit).
    ds = grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(min_shm_size=2**62))
    if self.workers:
      from absl import flags  # pylint: disable=import-outside-toplevel
      if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults outside a
        flags.FLAGS.mark_as_parsed()  # jaxlm command, in tests and notebooks)
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.workers, per_worker_buffer_size=self.prefetch),
                          worker_init_fn=functools.partial(_worker_init, os.getpid()))
    return iter(ds)

  def __iter__(self) -> 'TrainBatches':
    return self

  def __next__(self) -> Batch:
    if self._iterator is None:
      self._iterator = self._open()
    batch = next(self._iterator)
    self.position += 1
    return batch

  def get_state(self) -> dict:
    """The next batch, and for packed datasets the rows of each epoch so far (`epoch_rows`), so
    that a resume plans only the epoch it resumes in, not every epoch before it."""
    state: dict = dict(next_batch=self.position)
    last: dict[int, int] = {}  # each packed dataset's last row read so far
    g = self.position * self.global_batch - 1
    packed = {i for i, s in enumerate(self.sources) if hasattr(s, 'epoch_rows')}
    while g >= 0 and packed - set(last) and g >= (self.position - 4) * self.global_batch:
      i, k, _ = self.plans[g]
      last.setdefault(i, k)
      g -= 1
    state['epoch_rows'] = {str(i): self.sources[i].epoch_rows(k) for i, k in last.items()
                           if i in packed}
    return state

  def set_state(self, state: dict) -> None:
    self.close()
    self.position = int(state['next_batch'])
    for i, counts in state.get('epoch_rows', {}).items():
      self.sources[int(i)].set_epoch_rows(counts)

  def close(self) -> None:
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


def _worker_init(parent: int, worker_index: int, worker_count: int) -> None:
  """Runs in each Grain worker. A Ctrl-C reaches the whole process group: the trainer stops after
  the step and closes its workers, so they ignore SIGINT (and take SIGTERM's default action,
  whatever the process they were started from had). A watch ends the worker when the trainer is
  gone (a SIGKILLed trainer would otherwise leave it running)."""
  del worker_index, worker_count
  worker_signals()

  def watch():
    while os.getppid() == parent:
      time.sleep(1)
    os._exit(0)
  threading.Thread(target=watch, daemon=True, name='jaxlm-exit-with-parent').start()


def document_stream(docs: Sequence[np.ndarray], eos: int | None,
                    align: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Documents (token ids) as one stream for evaluation: (tokens, the weight of each token as a
  target, the document of each token: 1, 2, ... and 0 for padding).

  With an end-of-sequence id each document is [eos] + ids, the eos weighted 0. Without one
  (characters), a document's first token cannot be predicted and counts as context. With
  align = L each document is padded (weight 0) to a multiple of L, so that windows of L start
  where it starts and every L tokens after, as the pieces of packed training do: a window then
  holds one document, which sees nothing of any other.
  """
  tokens, weights, documents = [], [], []
  for ids in docs:
    ids = np.asarray(ids, np.int32)
    if eos is not None:
      ids = np.concatenate([[eos], ids]).astype(np.int32)
    if not len(ids):
      continue
    n = -(-len(ids) // align) * align if align else len(ids)
    t, w, d = np.zeros(n, np.int32), np.zeros(n, np.float32), np.zeros(n, np.int32)
    t[:len(ids)], w[1:len(ids)], d[:len(ids)] = ids, 1, len(tokens) + 1
    tokens.append(t)
    weights.append(w)
    documents.append(d)
  if not tokens:
    return np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32)
  return np.concatenate(tokens), np.concatenate(weights), np.concatenate(documents)


class DocumentStream:
  """Documents laid out as document_stream lays them, from their lengths alone: `read(spans)`
  gives positions [a, b) of (tokens, weights, documents) for each span, reading only the
  documents the spans overlap, in one batched call. So a host scores its rows of a validation
  split without holding (or reading) the rest of it. `fetch(ids)` -> {id: token ids} reads
  documents by their index in `lengths`."""

  def __init__(self, lengths: np.ndarray, fetch, eos: int | None, align: int = 0):
    sizes = np.asarray(lengths, np.int64) + (eos is not None)
    self.doc = np.nonzero(sizes > 0)[0]  # (an empty document without eos is left out)
    self.sizes = sizes[self.doc]
    padded = -(-self.sizes // align) * align if align else self.sizes
    self.offsets = np.concatenate([[0], np.cumsum(padded)])
    self.fetch, self.eos = fetch, eos
    self.targets = int((self.sizes - 1).sum())  # positions with weight 1

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def read(self, spans: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, ...]]:
    n = len(self.doc)  # (spans may run past the end: padding)
    first = [min(int(np.searchsorted(self.offsets, a, 'right')) - 1, n) for a, _ in spans]
    last = [min(int(np.searchsorted(self.offsets, b, 'left')), n) if b > a else f
            for (a, b), f in zip(spans, first)]
    wanted = sorted({int(self.doc[j]) for f, l in zip(first, last) for j in range(f, l)})
    docs = self.fetch(wanted) if wanted else {}
    out = []
    for (a, b), f, l in zip(spans, first, last):
      tokens, weights = np.zeros(b - a, np.int32), np.zeros(b - a, np.float32)
      documents = np.zeros(b - a, np.int32)
      for j in range(f, l):
        base, size = int(self.offsets[j]), int(self.sizes[j])
        lo, hi = max(a, base), min(b, base + size)  # (positions past `size` are padding)
        if lo >= hi:
          continue
        # ([eos] + the document)[lo - base:hi - base], without building it for every window
        tokens[lo - a:hi - a] = padded_slice(docs[int(self.doc[j])], lo - base, hi - base,
                                             self.eos, None)
        weights[lo - a:hi - a] = np.arange(lo - base, hi - base) > 0
        documents[lo - a:hi - a] = j + 1
      out.append((tokens, weights, documents))
    return out


class ArrayStream:
  """A stream already in memory (document_stream's arrays), read as DocumentStream is."""

  def __init__(self, tokens: np.ndarray, weights: np.ndarray | None = None,
               documents: np.ndarray | None = None):
    self.tokens = np.asarray(tokens, np.int32)
    self.weights = np.ones(len(tokens), np.float32) if weights is None else weights
    self.documents = np.ones(len(tokens), np.int32) if documents is None else documents

  def __len__(self) -> int:
    return len(self.tokens)

  def read(self, spans: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, ...]]:
    return [(self.tokens[a:b], self.weights[a:b], self.documents[a:b]) for a, b in spans]


def eval_batches(tokens, seq_len: int, batch_size: int, *,
                 weights: np.ndarray | None = None, max_batches: int = 0,
                 rows: Sequence[int] | None = None,
                 segments: np.ndarray | str | None = None) -> Iterator[Batch]:
  """This host's `rows` (default: all) of [batch_size, seq_len] batches that predict every token
  of a stream but the first exactly once. The last window and the last batch are padded with
  mask 0. The stream is `tokens` (an array) with `weights` (default all 1), the mask of each
  token as a target, or a DocumentStream (or ArrayStream), of which only the windows of `rows`
  are read. With max_batches > 0 only the first max_batches batches are produced.

  For a bidirectional model (masked LM), `segments` gives what each input token may attend to
  (equal ids; 0 for padding): an array [len(tokens)], or for a stream 'documents' (its document
  numbers) or 'present' (1 for every token, 0 for padding); the batches carry it as
  `segment_ids`, each input token's own weight as `input_mask`, and each row's global index as
  `index` [rows, 1].
  """
  if isinstance(tokens, (DocumentStream, ArrayStream)):
    stream = tokens
  else:
    stream = ArrayStream(tokens, weights, None if isinstance(segments, str) else segments)
    segments = None if segments is None else 'documents'
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  n_targets = len(stream) - 1
  n_windows = -(-n_targets // seq_len)
  n_batches = -(-n_windows // batch_size)
  if max_batches:
    n_batches = min(n_batches, max_batches)
  fields = ('inputs', 'targets', 'mask') + (('segment_ids', 'input_mask')
                                             if segments is not None else ())
  for b in range(n_batches):
    batch = {k: np.zeros((len(rows), seq_len), np.float32 if 'mask' in k else np.int32)
             for k in fields}
    starts = [(b * batch_size + int(r)) * seq_len for r in rows]
    counts = [max(0, min(seq_len, n_targets - start)) for start in starts]
    parts = stream.read([(s, s + n + 1) if n else (s, s) for s, n in zip(starts, counts)])
    for i, (n, (tok, w, docs)) in enumerate(zip(counts, parts)):
      batch['inputs'][i, :n] = tok[:n]
      batch['targets'][i, :n] = tok[1:n + 1]
      batch['mask'][i, :n] = w[1:n + 1]
      if segments is not None:
        batch['segment_ids'][i, :n] = docs[:n] if segments == 'documents' else docs[:n] > 0
        batch['input_mask'][i, :n] = w[:n]
    if segments is not None:
      batch['index'] = (b * batch_size + rows[:, None]).astype(np.int32)
    yield batch
