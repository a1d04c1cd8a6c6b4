"""The input pipeline: windows and packed rows are what they claim, batches are the same for any
host split and worker count and resume exactly, hosts read only their part, mixtures keep their
proportions, and a packed row's documents never see each other."""

import collections
import json
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import resolved_model
from jaxlm import paths as jaxlm_paths
from jaxlm.data.pipeline import TrainBatches, train_rows
from jaxlm.data.prepare import Settings, prepare
from jaxlm.data import rows as rows_module
from jaxlm.data.prepared import Prepared
from jaxlm.data.rows import ConcatRows, PackedRows, first_fit, first_fit_blocks, padded_slice
from jaxlm.data.sources import SHIPPED_CORPUS as SHIPPED

L = 16
EOS = 256  # the byte tokenizer's


def _prepare(tmp, name, texts, val_docs=3):
  src = tmp / f'{name}.jsonl'
  src.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts))
  prepare(Settings(source=str(src), tokenizer='byte', val_docs=val_docs, chunk_mb=0.002),
          tmp / name, workers=1, progress=False)
  return tmp / name


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  """Byte-tokenized speeches (2 to ~400 tokens, many longer than L), in several shards; and two
  datasets told apart by their letters (upper and lower case), to mix."""
  tmp = tmp_path_factory.mktemp('pipeline')
  speeches = [s for s in SHIPPED.read_text().split('\n\n')[:60] if s] + ['a', 'Hi']
  assert len(set(speeches)) == len(speeches)
  return dict(
      speeches=(_prepare(tmp, 'speeches', speeches), speeches[3:]),
      upper=_prepare(tmp, 'upper', [t.upper() for t in speeches]),
      lower=_prepare(tmp, 'lower', [t.lower() for t in speeches]),
      words=_prepare(tmp, 'words', sorted(set(SHIPPED.read_text()[:5000].split()))))


def _docs(split):
  return [split.doc(i).tolist() for i in range(len(split.lengths))]


def test_padded_slice_is_a_slice_of_the_padded_document():
  doc = np.arange(10, 15, dtype=np.int32)
  for lead, trail in [(None, None), (99, None), (None, 98), (99, 98)]:
    full = ([lead] if lead is not None else []) + doc.tolist() + (
        [trail] if trail is not None else [])
    for a in range(len(full) + 1):
      for b in range(a, len(full) + 2):
        assert padded_slice(doc, a, b, lead, trail).tolist() == full[a:b], (lead, trail, a, b)


def test_concat_rows_are_the_windows_of_the_document_stream(datasets):
  split = Prepared(datasets['speeches'][0]).train
  stream = [t for d in _docs(split) for t in d + [EOS]]
  for stride in (L, 5):
    rows = ConcatRows(split, EOS, L, stride, seed=1)
    n = rows.windows
    assert n == (len(stream) - L - 1) // stride + 1
    grid = [tuple(stream[s:s + L + 1]) for s in range(0, n * stride, stride)]
    epochs = []
    for k in range(2 * n):
      r = rows.row(k)
      assert r['targets'][:-1].tolist() == r['inputs'][1:].tolist() and r['mask'].all()
      epochs.append(tuple(r['inputs'].tolist() + r['targets'][-1:].tolist()))
    first, second = epochs[:n], epochs[n:]
    assert collections.Counter(first) == collections.Counter(second) == collections.Counter(grid)
    assert first != second  # each window once per epoch, in a new order each epoch


def _segments_of(row):
  """[(inputs, targets, positions)] of each segment of a packed row."""
  out = []
  for s in range(1, int(row['segment_ids'].max()) + 1):
    at = row['segment_ids'] == s
    out.append((row['inputs'][at].tolist(), row['targets'][at].tolist(),
                row['positions'][at].tolist()))
  return out


@pytest.mark.parametrize('max_docs', [0, 2])
def test_packed_rows_hold_every_piece_of_every_document_once_per_epoch(datasets, max_docs):
  split = Prepared(datasets['speeches'][0]).train
  rows = PackedRows(split, EOS, L, seed=3, max_docs=max_docs)
  expected = collections.Counter()  # each document's pieces: [eos]+doc+[eos] cut into L pairs
  for d in _docs(split):
    seq = [EOS] + d + [EOS]
    for a in range(0, len(seq) - 1, L):
      m = min(L, len(seq) - 1 - a)
      expected[(tuple(seq[a:a + m]), tuple(seq[a + 1:a + m + 1]))] += 1
  assert any(len(d) + 1 > L for d in _docs(split))  # long documents are split
  n_rows = len(rows.plan(0)[1]) - 1
  seen, filled = collections.Counter(), 0
  for k in range(n_rows):
    row = rows.row(k)
    seg = row['segment_ids']
    k_segments = int(seg.max())
    assert 1 <= k_segments and (not max_docs or k_segments <= max_docs)
    used = int((seg > 0).sum())
    assert (seg[:used] > 0).all() and not seg[used:].any()  # padding only at the end
    assert (np.diff(seg[:used]) >= 0).all() and set(seg[:used]) == set(range(1, k_segments + 1))
    assert (row['mask'] == (seg > 0)).all()
    for inputs, targets, positions in _segments_of(row):
      assert positions == list(range(len(inputs)))  # restart at every document
      seen[(tuple(inputs), tuple(targets))] += 1
    filled += used
  assert seen == expected
  if not max_docs:
    assert filled / (n_rows * L) > 0.9  # first-fit packs tightly
  assert rows.row(n_rows)['inputs'].tolist() != rows.row(0)['inputs'].tolist()  # epoch 2: new order
  assert len(rows.plan(1)[0]) == len(rows.plan(0)[0])


def test_first_fit():
  assert first_fit([3, 3, 2, 4, 1], 5, bins=2) == [[0, 2], [1, 4], [3]]  # full rows close
  assert first_fit([1, 1, 1], 5, bins=2, max_items=2) == [[0, 1], [2]]
  assert first_fit([5, 5], 5, bins=1) == [[0], [1]]


def test_first_fit_blocks_is_first_fit_on_each_block():
  """The vectorised packer: below two blocks exactly first_fit; above, first_fit on each block,
  block after block (random sizes, capacities, open rows and item limits)."""
  rng = np.random.default_rng(0)
  for _ in range(150):
    n, cap, bins, most = (int(rng.integers(0, 200)), int(rng.integers(1, 40)),
                          int(rng.integers(1, 6)), int(rng.integers(0, 4)))
    sizes, block = rng.integers(1, cap + 1, n), int(rng.integers(8, 64))
    cuts = np.linspace(0, n, max(1, n // block) + 1).astype(int)
    expected = [[int(a) + i for i in r] for a, b in zip(cuts[:-1], cuts[1:])
                for r in first_fit(sizes[a:b].tolist(), cap, bins, most)]
    for vectorise_from in (1, 128):  # numpy across the blocks; first_fit block by block
      items, starts = first_fit_blocks(sizes, cap, bins, most, block, vectorise_from)
      assert [items[a:b].tolist() for a, b in zip(starts[:-1], starts[1:])] == expected
    if n < 2 * block:
      assert expected == first_fit(sizes.tolist(), cap, bins, most)


def _batches(path_or_paths, packing, rows, workers=0, seed=0, weights=None):
  paths = path_or_paths if isinstance(path_or_paths, list) else [path_or_paths]
  splits = [Prepared(p).train for p in paths]
  sources = train_rows(splits, packing=packing, length=L, eos=EOS, seed=seed)
  return TrainBatches(sources, weights or [1.0] * len(splits), 8, rows, workers=workers), splits


@pytest.mark.parametrize('packing', ['concat', 'pack'])
def test_batches_resume_exactly_and_do_not_depend_on_workers(datasets, packing):
  path = datasets['speeches'][0]
  whole, _ = _batches(path, packing, range(8))
  expected = [next(whole) for _ in range(12)]
  resumed, _ = _batches(path, packing, range(8))
  next(resumed)
  resumed.set_state(dict(next_batch=5))
  for j in range(5, 12):
    for k, v in next(resumed).items():
      np.testing.assert_array_equal(v, expected[j][k])
  assert resumed.get_state()['next_batch'] == 12
  with_workers, _ = _batches(path, packing, range(8), workers=2)
  try:
    with_workers.set_state(dict(next_batch=3))
    for j in range(3, 7):
      np.testing.assert_array_equal(next(with_workers)['inputs'], expected[j]['inputs'])
  finally:
    with_workers.close()
  other_seed, _ = _batches(path, packing, range(8), seed=1)
  assert not np.array_equal(next(other_seed)['inputs'], expected[0]['inputs'])


@pytest.mark.parametrize('packing', ['concat', 'pack', 'mixture'])
@pytest.mark.parametrize('hosts', [2, 4])
def test_hosts_read_disjoint_rows_whose_union_is_the_global_batch(datasets, packing, hosts,
                                                                   monkeypatch):
  """Each simulated host gets its own rows of the one-host batches, and reads from disk only the
  documents of its rows (counted with the document cache off)."""
  monkeypatch.setattr('jaxlm.data.prepared.CACHE_BYTES', 0)
  paths = ([datasets['upper'], datasets['lower']] if packing == 'mixture' else
           datasets['speeches'][0])
  kind = 'concat' if packing == 'mixture' else packing
  whole, whole_splits = _batches(paths, kind, range(8), weights=[2.0, 1.0][:len(paths)]
                                 if packing == 'mixture' else None)
  parts = [_batches(paths, kind, range(h * 8 // hosts, (h + 1) * 8 // hosts),
                    weights=[2.0, 1.0] if packing == 'mixture' else None) for h in range(hosts)]
  _check_hosts(whole, whole_splits, parts)


def _check_hosts(whole, whole_splits, parts):
  """The hosts' rows side by side are the one-host batches, and each host read (counted at the
  source) at most its share of what one host reads plus one shard of documents per split."""
  for _ in range(10):
    want = next(whole)
    got = [next(b) for b, _ in parts]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])
  total = sum(s.reads for s in whole_splits)
  shard = sum(max(s.shard_documents) for s in whole_splits)  # documents
  for _, splits in parts:
    got = sum(s.reads for s in splits)
    assert 0 < got <= total / len(parts) + shard, (got, total, shard)


def test_hosts_read_a_bucket_in_place_through_a_gcsfuse_mount(datasets, tmp_path, monkeypatch):
  """gs://bucket/... with a gcsfuse mount of that bucket in the mount table is read in place
  (never copied), each of 4 simulated hosts reading only its share, as from a local directory."""
  monkeypatch.setattr('jaxlm.data.prepared.CACHE_BYTES', 0)
  mount = tmp_path / 'mount point'
  shutil.copytree(datasets['speeches'][0], mount / 'sets' / 'speeches')
  escaped = str(mount).replace(' ', '\\040')
  (tmp_path / 'mounts').write_text(f'proc /proc proc rw 0 0\nother {tmp_path} fuse.gcsfuse rw 0 0\n'
                                   f'data-bucket {tmp_path} fuse.sshfs rw 0 0\n'
                                   f'data-bucket {escaped} fuse.gcsfuse rw 0 0\n')
  monkeypatch.setattr('jaxlm.paths.MOUNTS', str(tmp_path / 'mounts'))

  def copied(url):
    raise AssertionError(f'{url} was copied')
  monkeypatch.setattr('jaxlm.data.staging.local_copy', copied)
  url = 'gs://data-bucket/sets/speeches'
  assert jaxlm_paths.mounted(url) == mount / 'sets' / 'speeches'
  assert jaxlm_paths.mounted('gs://data-bucket') == mount
  assert jaxlm_paths.mounted('gs://data') is None and jaxlm_paths.mounted(str(mount)) is None
  whole, whole_splits = _batches(datasets['speeches'][0], 'pack', range(8))
  parts = [_batches(url, 'pack', range(2 * h, 2 * h + 2)) for h in range(4)]
  assert all(s.directory == mount / 'sets' / 'speeches' for _, splits in parts for s in splits)
  _check_hosts(whole, whole_splits, parts)


def test_mixture_proportions_within_three_sigma(datasets):
  weights = [0.7, 0.3]
  batches, _ = _batches([datasets['upper'], datasets['lower']], 'concat', range(8),
                        weights=weights)
  sources, rows = [], []
  for _ in range(1250):  # 10,000 rows
    b = next(batches)
    sources += b['source'].tolist()
    rows += list(b['inputs'])
  n = len(sources)
  share = sources.count(0) / n
  assert abs(share - weights[0]) < 3 * np.sqrt(weights[0] * weights[1] / n)
  for source, row in zip(sources, rows):  # the rows do come from the dataset named
    letters = bytes(int(t) for t in row if t < 256).decode('utf-8', 'ignore')
    assert not any(c.islower() if source == 0 else c.isupper() for c in letters)
  again, _ = _batches([datasets['upper'], datasets['lower']], 'concat', range(8), weights=weights)
  assert next(again)['source'].tolist() == sources[:8]  # deterministic


def test_a_staged_mixture_keeps_each_stages_shares_and_resumes_across_a_stage(datasets):
  """data.mixture stages: one stage is Grain's own mix, row for row; over 200 batches of each of
  two stages the realised shares are within 3 sigma of that stage's weights; every dataset's rows
  go on across the change (each row once, none skipped); a resume just before the change reads
  the same batches; a dataset with weight 0 is left out of its stage."""
  from jaxlm.data.pipeline import StagedSelection, _Tagged
  import grain
  one = StagedSelection([0], [[0.7, 0.3]])
  mixed = grain.MapDataset.mix([grain.MapDataset.source(_Tagged(range(10**9), i))
                                for i in range(2)], [0.7, 0.3])
  assert [one[g] for g in range(1000)] == [mixed[g][:2] for g in range(1000)]
  selection = StagedSelection([0, 1600, 3200], [[0.9, 0.1], [0.3, 0.7], [0.0, 1.0]])
  picks = [selection[g] for g in range(4000)]
  for i in range(2):
    rows = [r for d, r in picks if d == i]
    assert rows == list(range(len(rows)))  # each row once, in order, across the stages
  assert all(d == 1 for d, _ in picks[3200:])

  def staged():
    paths = [datasets['upper'], datasets['lower']]
    splits = [Prepared(p).train for p in paths]
    sources = train_rows(splits, packing='concat', length=L, eos=EOS, seed=0)
    return TrainBatches(sources, [0.3, 0.7], 8, range(8), stages=[(0, [0.9, 0.1]),
                                                                   (200, [0.3, 0.7])])
  run = staged()
  batches = [next(run) for _ in range(400)]
  for stage, (weights, part) in enumerate((([0.9, 0.1], batches[:200]),
                                           ([0.3, 0.7], batches[200:]))):
    share = np.mean(np.concatenate([b['source'] for b in part]) == 0)
    n = 8 * len(part)
    assert abs(share - weights[0]) < 3 * np.sqrt(weights[0] * weights[1] / n), (stage, share)
  resumed = staged()
  resumed.set_state(dict(next_batch=198))
  for want in batches[198:204]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.fixture(scope='module')
def tiny_model():
  from flax import nnx
  from jaxlm.model.transformer import Transformer
  cfg = resolved_model('llama', vocab=257)
  return nnx.merge(*nnx.split(Transformer(cfg, rngs=nnx.Rngs(0))))


def _token_losses(model, inputs, targets, positions=None, segment_ids=None):
  logits = model(jnp.asarray(inputs)[None], None if positions is None else
                 jnp.asarray(positions)[None],
                 segment_ids=None if segment_ids is None else jnp.asarray(segment_ids)[None])
  logp = jax.nn.log_softmax(logits[0].astype(jnp.float32))
  return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(targets)[:, None], -1)[:, 0])


def test_a_packed_row_scores_each_document_as_if_alone(datasets, tiny_model):
  """The loss of every token of a packed row equals its document's evaluated alone (float32,
  1e-5), and changing one document never changes another's losses."""
  split = Prepared(datasets['words']).train
  rows = PackedRows(split, EOS, L, seed=0)
  row = next(rows.row(k) for k in range(50) if len(rows[k]) >= 3)
  packed = _token_losses(tiny_model, row['inputs'], row['targets'], row['positions'],
                         row['segment_ids'])
  for s in range(1, int(row['segment_ids'].max()) + 1):
    at = row['segment_ids'] == s
    alone = _token_losses(tiny_model, row['inputs'][at], row['targets'][at])
    np.testing.assert_allclose(packed[at], alone, rtol=1e-5, atol=1e-5)
  changed = row['inputs'].copy()
  first = row['segment_ids'] == 1
  changed[first] = (changed[first] + 7) % 256  # another document A
  again = _token_losses(tiny_model, changed, row['targets'], row['positions'], row['segment_ids'])
  assert not np.allclose(again[first], packed[first])
  np.testing.assert_array_equal(again[~first], packed[~first])  # B, C, ... not at all


def test_train_batches_follow_the_config(datasets, tmp_path):
  """data.train_batches reads the packing fields of a config (a smoke test of the wiring)."""
  from jaxlm import data
  from tiny import tiny_config
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus, cfg.data.packing, cfg.data.max_docs_per_row = (
      str(datasets['speeches'][0]), 'pack', 2)
  run = data.open_run_data(cfg, tmp_path / 'run')
  batch = next(data.train_batches(run, cfg, L, range(8)))
  assert batch['segment_ids'].shape == (8, L) and batch['segment_ids'].max() <= 2


@pytest.mark.parametrize('align', [0, L])
def test_a_host_reads_only_the_documents_of_its_evaluation_windows(datasets, align, monkeypatch):
  """Evaluation windows read on demand (DocumentStream) equal those of the whole stream in memory
  (document_stream), for every field; 4 simulated hosts each read (counted at the source, the
  document cache off) at most a quarter of what one host reads plus one shard of documents, and
  their rows side by side are the one-host batches bit for bit."""
  from jaxlm.data.pipeline import DocumentStream, document_stream, eval_batches
  monkeypatch.setattr('jaxlm.data.prepared.CACHE_BYTES', 0)
  path = datasets['words']
  split = Prepared(path).train
  docs = [split.doc(i) for i in range(len(split.lengths))]
  tokens, weights, documents = document_stream(docs, EOS, align)
  expected = list(eval_batches(tokens, L, 8, weights=weights, segments=documents))
  one = Prepared(path).train
  stream = DocumentStream(one.lengths, one.docs, EOS, align)
  assert len(stream) == len(tokens) and stream.targets == weights.sum()
  for want, got in zip(expected, eval_batches(stream, L, 8, segments='documents'), strict=True):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  hosts = [Prepared(path).train for _ in range(4)]
  batches = [eval_batches(DocumentStream(h.lengths, h.docs, EOS, align), L, 8,
                          rows=range(2 * i, 2 * i + 2), segments='documents')
             for i, h in enumerate(hosts)]
  for want, *got in zip(expected, *batches, strict=True):
    for key in want:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])
  manifest = json.loads((path / 'manifest.json').read_text())
  shard = max(len(np.load(path / n)) for n in manifest['splits']['train']['lengths'])
  assert len(manifest['splits']['train']['lengths']) > 4 and one.reads >= len(docs)
  for h in hosts:
    assert 0 < h.reads <= one.reads / 4 + shard, (h.reads, one.reads, shard)


def test_a_packed_epoch_is_planned_once_per_host(datasets, monkeypatch, tmp_path):
  """The first PackedRows of a host to plan an epoch leaves the plan in jaxlm's cache; another
  (a Grain worker's pickled copy, which carries no plans) maps it rather than planning again,
  and gives the same rows; other data or settings are planned anew; the cache keeps the last two
  epochs."""
  monkeypatch.setenv('JAXLM_CACHE', str(tmp_path))
  calls = []
  real = rows_module.first_fit_blocks
  monkeypatch.setattr(rows_module, 'first_fit_blocks',
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  split = Prepared(datasets['speeches'][0]).train
  first = PackedRows(split, EOS, L, seed=0)
  want = [first[k] for k in range(20)]
  assert len(calls) == 1
  worker = pickle.loads(pickle.dumps(first))
  assert [worker[k] for k in range(20)] == want and len(calls) == 1
  assert isinstance(worker.plan(0)[0], np.memmap)
  other = PackedRows(split, EOS, L, seed=1)
  assert [other[k] for k in range(20)] != want and len(calls) == 2
  upper = Prepared(datasets['upper']).train
  for s, length, max_docs, eos in ((split, L, 1, EOS), (split, L // 2, 0, EOS),
                                   (upper, L, 0, EOS), (split, L, 0, None)):
    PackedRows(s, eos, length, seed=0, max_docs=max_docs).plan(0)
  assert len(calls) == 2 + 4  # (every field of the key counts)
  for epoch in range(1, 4):
    first.plan(epoch)
  kept = sorted(p.name.split('-')[1] for p in (tmp_path / 'plans').glob('*.done'))
  assert kept == ['0.done'] * 5 + ['2.done', '3.done'], kept  # (the others' epoch 0)
  assert len(list((tmp_path / 'plans').glob('*.npy'))) == 2 * 7


def test_a_resume_plans_only_the_epoch_it_resumes_in(datasets, monkeypatch):
  """A packed run's state holds the rows of each epoch so far: resumed in its third epoch, it
  plans that epoch alone (not the two before it), and its batches are the same; a state without
  them (a checkpoint from before) still resumes the same, planning every epoch."""
  path = datasets['speeches'][0]
  run, _ = _batches(path, 'pack', range(8))
  per_epoch = len(run.sources[0].plan(0)[1]) - 1
  start = (2 * per_epoch + per_epoch // 2) // 8  # a batch in the middle of epoch 2
  run.set_state(dict(next_batch=start))
  next(run)
  state = run.get_state()
  assert state['next_batch'] == start + 1 and len(state['epoch_rows']['0']) == 4  # 0, 3 ends
  expected = [next(run) for _ in range(3)]
  planned = []
  real = PackedRows.plan

  def counted(self, epoch):
    if epoch not in self._plans:
      planned.append(epoch)
    return real(self, epoch)

  monkeypatch.setattr(PackedRows, 'plan', counted)
  for saved, epochs in ((state, [2]), (dict(next_batch=start + 1), [0, 1, 2])):
    planned.clear()
    resumed, _ = _batches(path, 'pack', range(8))
    resumed.set_state(saved)
    for want in expected:
      for key, value in next(resumed).items():
        np.testing.assert_array_equal(value, want[key])
    assert planned == epochs
