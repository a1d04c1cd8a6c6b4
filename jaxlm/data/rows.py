"""Training rows from one prepared split, addressable by a global row index k = 0, 1, 2, ...

- `ConcatRows` (data.packing='concat'): the documents, each followed by the end-of-sequence id,
  form one stream, cut into windows of L+1 tokens every `stride`; an epoch visits every window
  once in an order shuffled with the seed (Grain's index_shuffle, new each epoch). Attention runs
  across document boundaries, as in nanoGPT and most pretraining.
- `PackedRows` (data.packing='pack'): each document becomes (input, target) pairs that start
  from the end-of-sequence id as a beginning-of-document token, [eos] + ids -> ids + [eos];
  a document longer than L is split into pieces of L. An epoch shuffles the pieces and packs them
  first-fit into rows of L (in blocks of 4096 pieces, packed side by side), with `segment_ids`
  1..k and positions restarting at each piece, so attention never crosses a document and no row
  holds more than `max_docs` pieces.

Row k is a plan first, computed from the documents' lengths alone (prepare stored them): a list
of document spans. So every host computes the same rows without reading any text, and then reads
only the documents of the rows it feeds, in one batched read per batch (`assemble` builds a row
from its plan and those documents). That is what makes the global batches independent of the
number of hosts and of data workers, and a resumed run exact: row k is a pure function of
(data, seed, k).
Shape letters: L length.
"""

import fcntl
import hashlib
import json
import os
import sys

import numpy as np
from grain.experimental import index_shuffle

from jaxlm import paths
from jaxlm.data.prepared import Split
from jaxlm.data.tokenizers import atomic_write
from jaxlm.errors import UserError

PACK_BINS = 16  # rows open at once while packing: more pack tighter, fewer plan faster
PACK_BLOCK = 4096  # pieces packed as one first-fit sequence; the blocks are packed side by side
PLAN_FORMAT = 1  # of cached plans: a change to how PackedRows plans an epoch must increase it


def padded_slice(doc: np.ndarray, a: int, b: int, lead: int | None,
                 trail: int | None) -> np.ndarray:
  """x[a:b] for x = [lead] + doc + [trail] (lead or trail None: absent), without building x."""
  parts = []
  offset = 0
  if lead is not None:
    if a == 0 < b:
      parts.append(np.array([lead], np.int32))
    offset = 1
  lo, hi = max(a - offset, 0), min(b - offset, len(doc))
  if lo < hi:
    parts.append(doc[lo:hi])
  if trail is not None and a <= offset + len(doc) < b:
    parts.append(np.array([trail], np.int32))
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


class _Rows:
  """An endless sequence of row plans (document spans), with `assemble(plan, docs)`."""
  split: Split

  def __len__(self) -> int:
    return sys.maxsize

  def row(self, k: int) -> dict[str, np.ndarray]:
    """Row k, read and assembled (for tests and one-off use; batches read many rows at once)."""
    plan = self[k]
    return self.assemble(plan, self.split.docs([d for d, _, _ in plan]))


class ConcatRows(_Rows):
  """Windows of L+1 tokens over the stream of documents (see the module docstring)."""

  def __init__(self, split: Split, eos: int | None, length: int, stride: int, seed: int):
    self.split, self.eos, self.length, self.stride, self.seed = split, eos, length, stride, seed
    self.sizes = split.lengths.astype(np.int64) + (eos is not None)
    self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
    total = int(self.offsets[-1])
    if total < length + 1:
      raise UserError(
          f'the training split of {split.directory} has {total} tokens, fewer than one sequence '
          f'of model.max_seq_len+1={length + 1}; use a larger corpus or a shorter '
          'model.max_seq_len.')
    self.windows = (total - length - 1) // stride + 1

  def spans(self, start: int, stop: int) -> list[tuple[int, int, int]]:
    """(document, lo, hi) pieces of tokens [start, stop) of the stream; lo and hi index the
    document followed by its end-of-sequence id."""
    d = int(np.searchsorted(self.offsets, start, 'right')) - 1
    out = []
    while d < len(self.sizes) and self.offsets[d] < stop:
      base = int(self.offsets[d])
      out.append((d, max(start - base, 0), min(stop - base, int(self.sizes[d]))))
      d += 1
    return out

  def __getitem__(self, k: int) -> list[tuple[int, int, int]]:
    """Row k's plan: the spans of its window (see assemble)."""
    epoch, i = divmod(int(k), self.windows)
    w = index_shuffle(i, max_index=self.windows - 1, seed=(self.seed + epoch) % 2**32, rounds=4)
    return self.spans(w * self.stride, w * self.stride + self.length + 1)

  def assemble(self, plan: list, docs: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """A row from its plan and the documents it names."""
    window = np.concatenate([padded_slice(docs[d], lo, hi, None, self.eos) for d, lo, hi in plan])
    return dict(inputs=window[:-1], targets=window[1:], mask=np.ones(self.length, np.float32))


def first_fit(sizes: list[int], capacity: int, bins: int, max_items: int = 0) -> list[list[int]]:
  """Packs items (by position) into rows of `capacity`: each goes into the first open row with
  room (and fewer than max_items items, 0 = no limit); when none has room, the fullest of `bins`
  open rows is closed. A row is closed as soon as it is full. Rows come out as they close."""
  done: list[list[int]] = []
  rows: list[list[int]] = []
  room: list[int] = []
  for i, n in enumerate(sizes):
    for b, r in enumerate(room):
      if n <= r:
        break
    else:
      b = -1
    if b < 0:
      if len(rows) == bins:
        full = room.index(min(room))
        done.append(rows.pop(full))
        room.pop(full)
      rows.append([])
      room.append(capacity)
      b = len(rows) - 1
    rows[b].append(i)
    room[b] -= n
    if room[b] == 0 or len(rows[b]) == max_items:
      done.append(rows.pop(b))
      room.pop(b)
  return done + rows


def first_fit_blocks(sizes: np.ndarray, capacity: int, bins: int, max_items: int = 0,
                     block: int = PACK_BLOCK,
                     vectorise_from: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """first_fit on consecutive blocks of about `block` items (one block below 2 x block items):
  (items in row order, row starts into them), block 0's rows first, each block's rows as
  first_fit gives them. From `vectorise_from` blocks on, all blocks go a step at a time in numpy
  (a step costs about the same for 1 block as for 100, so fewer go through first_fit itself):
  10M pieces plan in seconds, in arrays rather than lists (docs/BENCHMARKS.md)."""
  sizes = np.asarray(sizes)
  n = len(sizes)
  S = max(1, n // block)  # blocks
  start = np.linspace(0, n, S + 1).astype(np.int64)
  if S < vectorise_from:
    rows = [np.asarray(r, np.int64) + a for a, b in zip(start[:-1], start[1:])
            for r in first_fit(sizes[a:b].tolist(), capacity, bins, max_items)]
    items = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return items, np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
  length = start[1:] - start[:-1]
  room = np.zeros((S, bins), np.int64)
  count = np.zeros((S, bins), np.int64)
  row = np.full((S, bins), -1, np.int64)  # each slot's open row (its number in the block), or -1
  age = np.zeros((S, bins), np.int64)  # the step its row opened at: first_fit's list order
  opened = np.zeros(S, np.int64)  # rows each block has opened
  row_of = np.empty(n, np.int32 if n < 2**31 else np.int64)  # its row: number in block * S + block
  closes = []  # [row, block, step, phase, age] of rows as they close (the order rows come out)
  never = np.int64(1) << 62
  for t in range(int(length.max()) if n else 0):
    s = np.nonzero(length > t)[0]
    item = start[s] + t
    size = sizes[item]
    fits = (row[s] >= 0) & (room[s] >= size[:, None])
    slot = np.where(fits, age[s], never).argmin(1)  # the first open row with room
    new = ~fits[np.arange(len(s)), slot]
    if new.any():  # none: a new row, after closing the fullest (the first of ties) if all open
      b = s[new]
      full = b[(row[b] >= 0).all(1)]
      victim = (room[full] * (np.int64(1) << 40) + age[full]).argmin(1)
      closes.append(np.stack([row[full, victim] * S + full, full, np.full(len(full), t),
                              np.zeros(len(full), np.int64), age[full, victim]]))
      row[full, victim] = -1
      free = (row[b] < 0).argmax(1)
      row[b, free], room[b, free], count[b, free], age[b, free] = opened[b], capacity, 0, t
      opened[b] += 1
      slot[new] = free
    room[s, slot] -= size
    count[s, slot] += 1
    row_of[item] = row[s, slot] * S + s
    done = (room[s, slot] == 0) | ((count[s, slot] == max_items) if max_items else False)
    b, slot = s[done], slot[done]
    closes.append(np.stack([row[b, slot] * S + b, b, np.full(len(b), t),
                            np.ones(len(b), np.int64), age[b, slot]]))
    row[b, slot] = -1
  b, slot = np.nonzero(row >= 0)  # still open at the end: last, in the order they opened
  closes.append(np.stack([row[b, slot] * S + b, b, np.full(len(b), n), np.full(len(b), 2),
                          age[b, slot]]))
  closes = np.concatenate(closes, axis=1)
  order = np.lexsort((closes[4], closes[3], closes[2], closes[1]))
  rank = np.zeros(int(closes[0].max()) + 1 if closes.shape[1] else 0, row_of.dtype)
  rank[closes[0, order]] = np.arange(len(order))
  item_rank = rank[row_of]
  del row_of
  items = np.argsort(item_rank, kind='stable')  # (within a row: in item order, as appended)
  return items, np.concatenate([[0], np.cumsum(np.bincount(item_rank, minlength=len(order)))])


def cached_plan(key: str, epoch: int, compute) -> tuple[np.ndarray, ...]:
  """The arrays `compute()` gives for (key, epoch), through this host's cache
  (JAXLM_CACHE/plans/<key>-<epoch>.<i>.npy, memory-mapped): the first process to ask computes and
  writes them (each renamed into place, then a .done mark) while the others wait on a lock, then
  map them. Epochs before epoch - 1 of the same key are removed as a new one is written. A cache that
  cannot be written leaves each process computing its own."""
  try:
    directory = paths.cache_dir('plans')
    lock = (directory / f'{key}.lock').open('a', encoding='utf-8')
  except OSError:
    return compute()
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    done = directory / f'{key}-{epoch}.done'
    if done.is_file():
      count = int(done.read_text())
      return tuple(np.load(directory / f'{key}-{epoch}.{i}.npy', mmap_mode='r')
                   for i in range(count))
    arrays = compute()
    try:
      for i, array in enumerate(arrays):
        tmp = directory / f'{key}-{epoch}.{i}.{os.getpid()}.tmp'
        with open(tmp, 'wb') as f:
          np.save(f, array)
        os.replace(tmp, directory / f'{key}-{epoch}.{i}.npy')
      atomic_write(done, str(len(arrays)).encode())
      for old in directory.glob(f'{key}-*.done'):
        if int(old.name[len(key) + 1:-len('.done')]) < epoch - 1:
          old.unlink()
          for f in directory.glob(f'{old.name[:-len("done")]}*.npy'):
            f.unlink(missing_ok=True)
    except OSError:  # a full or read-only disk: the plan still serves this process
      pass
    return arrays


class PackedRows(_Rows):
  """Whole documents packed into rows of L (see the module docstring)."""

  def __init__(self, split: Split, eos: int | None, length: int, seed: int, max_docs: int = 0,
               bins: int = PACK_BINS):
    self.split, self.length, self.seed = split, length, seed
    self.max_docs, self.bins = max_docs, bins
    self.lead = self.trail = eos
    pairs = split.lengths.astype(np.int64) + (1 if eos is not None else -1)
    pairs = np.maximum(pairs, 0)  # (a one-token document without eos has nothing to predict)
    per_doc = -(-pairs // length)
    # int32 (documents, positions and pieces of one split stay below 2**31): half the memory
    self.piece_doc = np.repeat(np.arange(len(pairs), dtype=np.int32), per_doc)
    first = np.concatenate([[0], np.cumsum(per_doc)[:-1]])
    self.piece_start = ((np.arange(len(self.piece_doc)) - np.repeat(first, per_doc)) *
                        length).astype(np.int32)
    self.piece_len = np.minimum(length, pairs[self.piece_doc] - self.piece_start).astype(np.int32)
    if not len(self.piece_doc):
      raise UserError(f'the training split of {split.directory} has no token to predict; give a '
                      'larger corpus.')
    self._row_counts: list[int] = [0]  # rows before each planned epoch
    self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __getstate__(self):  # pickled into Grain's workers: the epochs' row counts go along (a
    return dict(self.__dict__, _plans={})  # worker plans only the epochs it reads), not plans

  def epoch_rows(self, k: int) -> list[int]:
    """The rows before each epoch up to the end of the one that holds row k (planning those not
    counted yet): what a checkpoint keeps, so that a resume plans only its own epoch."""
    self._locate(k)
    return list(self._row_counts)

  def set_epoch_rows(self, counts: list[int]) -> None:
    """Row counts that epoch_rows gave (in a checkpoint's data state)."""
    counts = [int(c) for c in counts]
    if counts[:1] != [0] or any(b <= a for a, b in zip(counts, counts[1:])):
      raise ValueError(f'epoch row counts {counts[:4]}... are not 0 then increasing')
    if len(counts) > len(self._row_counts):
      self._row_counts = counts

  def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(pieces in row order, row starts into them) of one epoch: computed by the first process
    of this host that asks, and memory-mapped by the others (Grain's workers) from the copy it
    left in jaxlm's cache (see cached_plan)."""
    if epoch not in self._plans:
      def compute():
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.piece_doc))
        items, starts = first_fit_blocks(self.piece_len[order], self.length, self.bins,
                                         self.max_docs)
        return order[items].astype(np.int32), starts
      key = hashlib.sha256(json.dumps([PLAN_FORMAT, self.split.digest, self.length, self.seed,
                                       self.max_docs, self.bins, self.lead]).encode())
      self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}  # keep a few
      self._plans[epoch] = cached_plan(key.hexdigest()[:24], epoch, compute)
    return self._plans[epoch]

  def _locate(self, k: int) -> tuple[int, int]:
    while k >= self._row_counts[-1]:
      epoch = len(self._row_counts) - 1
      self._row_counts.append(self._row_counts[-1] + len(self.plan(epoch)[1]) - 1)
    epoch = int(np.searchsorted(self._row_counts, k, 'right')) - 1
    return epoch, k - self._row_counts[epoch]

  def __getitem__(self, k: int) -> list[tuple[int, int, int]]:
    """Row k's plan: its pieces, (document, first pair, pairs) each (see assemble)."""
    epoch, r = self._locate(int(k))
    order, starts = self.plan(epoch)
    return [(int(self.piece_doc[p]), int(self.piece_start[p]), int(self.piece_len[p]))
            for p in order[starts[r]:starts[r + 1]]]

  def assemble(self, plan: list, docs: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """A row from its plan and the documents it names."""
    L = self.length
    out = dict(inputs=np.zeros(L, np.int32), targets=np.zeros(L, np.int32),
               mask=np.zeros(L, np.float32), segment_ids=np.zeros(L, np.int32),
               positions=np.zeros(L, np.int32))
    at = 0
    for segment, (d, a, m) in enumerate(plan, 1):
      doc = docs[d]
      out['inputs'][at:at + m] = padded_slice(doc, a, a + m, self.lead, self.trail)
      out['targets'][at:at + m] = padded_slice(doc, a + 1, a + m + 1, self.lead, self.trail)
      out['mask'][at:at + m] = 1
      out['segment_ids'][at:at + m] = segment
      out['positions'][at:at + m] = np.arange(m)
      at += m
    return out
