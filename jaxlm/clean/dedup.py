"""Deduplication's own steps around datatrove's: each task's documents indexed by their input
position, the kept member of every cluster chosen (the first in input order, whatever the tasks)
and the others removed with a trace."""

import io
import json
from pathlib import Path

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from jaxlm.data.tokenizers import atomic_write


def _load_rank_index(folder: Path, rank: int) -> tuple[np.ndarray, list[str]]:
  data = np.load(folder / f'{rank:05d}.npy')
  ids = (folder / f'{rank:05d}.ids').read_text(encoding='utf-8').split('\n')[:-1]
  return data, ids


INDEX_DTYPE = np.dtype([('pos', '<u8'), ('hash', '<u8')])


class IndexDocuments(PipelineStep):
  """Before a deduplication: each task's documents in the order it sees them, with their input
  position, id and (for exact deduplication) a 64-bit hash of their text."""
  name = 'index'
  type = 'jaxlm'

  def __init__(self, folder: str, exact: bool):
    super().__init__()
    self.folder, self.exact = folder, exact

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    # pylint: disable-next=import-outside-toplevel
    from datatrove.utils.hashing import HashConfig, create_hash_func
    hash_text = create_hash_func(HashConfig(precision=64, hash_fc='xxhash'), str)
    rows, ids = [], io.StringIO()
    for doc in data:
      rows.append((doc.metadata['_pos'], hash_text(doc.text) if self.exact else 0))
      ids.write(doc.id.replace('\n', ' ') + '\n')
      yield doc
    folder = Path(self.folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f'{rank:05d}.ids', ids.getvalue().encode('utf-8'))
    buffer = io.BytesIO()
    np.save(buffer, np.array(rows, dtype=INDEX_DTYPE))
    atomic_write(folder / f'{rank:05d}.npy', buffer.getvalue())


REMOVAL_DTYPE = np.dtype([('pos', '<u8'), ('keeper', '<u8'), ('size', '<u4')])


class ChooseKept(PipelineStep):
  """One task after the index (and, for MinHash, datatrove's clustering): every group of
  duplicates keeps its first member in input order, whatever the tasks were; the others are
  listed with the kept one (removals.npy sorted by position, kept.json: position -> id)."""
  name = 'choose kept'
  type = 'jaxlm'

  def __init__(self, index: str, output: str, tasks: int, clusters: str = ''):
    super().__init__()
    self.index, self.output, self.tasks, self.clusters = index, output, tasks, clusters

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    index = Path(self.index)
    positions, groups = [], []
    loaded = [_load_rank_index(index, r) for r in range(self.tasks)]  # (rows, ids) per task
    for r, (rows, _) in enumerate(loaded):
      if self.clusters:  # datatrove's (document number in the task, cluster) pairs
        path = Path(self.clusters) / f'{r:06d}.clusters'
        if not path.exists():
          continue
        pairs = np.fromfile(path, dtype='<u4').reshape(-1, 2)
        positions.append(rows['pos'][pairs[:, 0]])
        groups.append(pairs[:, 1].astype('<u8'))
        continue
      positions.append(rows['pos'])
      groups.append(rows['hash'])
    pos = np.concatenate(positions) if positions else np.zeros(0, '<u8')
    group = np.concatenate(groups) if groups else np.zeros(0, '<u8')
    order = np.lexsort((pos, group))  # by group, then input order
    pos, group = pos[order], group[order]
    starts = (np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group)
              else np.zeros(0, int))
    sizes = np.diff(np.r_[starts, len(group)])
    first = np.repeat(pos[starts], sizes)
    size = np.repeat(sizes, sizes)
    duplicate = pos != first
    removals = np.zeros(int(duplicate.sum()), REMOVAL_DTYPE)
    removals['pos'], removals['keeper'] = pos[duplicate], first[duplicate]
    removals['size'] = size[duplicate]
    removals.sort(order='pos')
    keepers = np.unique(removals['keeper'])
    kept = {}
    for rows, ids in loaded:
      for j in np.flatnonzero(np.isin(rows['pos'], keepers)):
        kept[str(int(rows['pos'][j]))] = ids[j]
    output = Path(self.output)
    output.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, removals)
    atomic_write(output / 'removals.npy', buffer.getvalue())
    atomic_write(output / 'kept.json', json.dumps(kept, sort_keys=True).encode())
    self.stat_update('removed', value=len(removals))
    return data


class DropDuplicates(PipelineStep):
  """Removes the documents ChooseKept listed, each with the id of its cluster's kept document."""
  name = 'drop duplicates'
  type = 'jaxlm'

  def __init__(self, step: str, chosen: str, exclusion_writer):
    super().__init__()
    self.step, self.chosen, self.exclusion_writer = step, chosen, exclusion_writer

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
    chosen = Path(self.chosen)
    removals = np.load(chosen / 'removals.npy')
    kept = json.loads((chosen / 'kept.json').read_text())
    with self.exclusion_writer as removed:
      for doc in data:
        pos = np.uint64(doc.metadata['_pos'])  # (a Python int against uint64: float64, inexact)
        i = np.searchsorted(removals['pos'], pos)
        if i < len(removals) and removals['pos'][i] == pos:
          keeper = int(removals['keeper'][i])
          doc.metadata.update(filter_reason='duplicate', duplicate_of=kept[str(keeper)],
                              cluster_size=int(removals['size'][i]))
          removed.write(doc, rank)
          continue
        yield doc
