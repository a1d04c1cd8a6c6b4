"""Data: a run's prepared datasets, the training batches and the validation stream.

There is one path: training always reads prepared data (prepare.py) through Grain. `data.corpus`
names a prepared dataset directory (one with a manifest.json), or a source (text or JSONL files,
'seqio:<task>', 'tfds:<name>'; '' is the shipped corpus) that is prepared into
<workdir>/data/<name>-<key>/ on first use by the same code as `python -m jaxlm.prepare`, the key
a digest of the preparation settings and of the files' sizes and times (a changed corpus is
prepared anew beside the old one, never over it). `data.mixture` mixes prepared datasets by weight,
in stages whose weights change at given steps if asked.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from ml_collections import ConfigDict

from jaxlm import paths
from jaxlm.data.chunk import Settings
from jaxlm.data.prepared import Prepared, Split, is_prepared
from jaxlm.data.staging import prepare_to
from jaxlm.data.sources import corpus_files, describe, file_stamp, read_text
from jaxlm.data.tf_sources import is_tf_source
from jaxlm.data.tokenizers import (HuggingFaceTokenizer, SentencePieceTokenizer, Tokenizer,
                                   document_start)
from jaxlm.errors import UserError


class RunData(NamedTuple):
  tokenizer: Tokenizer
  datasets: list[Prepared]
  weights: list[float]  # of the mixture (its last stage's, for a staged one): what validation
  #                       and the token frequencies weigh the datasets by
  stages: tuple = ()  # a staged mixture's (first step, weights) of each stage; () for one stage

  def record(self, workdir: Path) -> list[dict]:
    """What a checkpoint records of its data: each dataset's name, path and fingerprint."""
    out = []
    for ds in self.datasets:
      if paths.is_url(ds.location):
        path = ds.location.removeprefix(str(workdir).rstrip('/') + '/')
      else:
        path = ds.directory.absolute()
        try:
          path = path.relative_to(Path(workdir).absolute())  # a workdir can move with its data
        except ValueError:
          pass
      out.append(dict(name=ds.name, path=str(path), fingerprint=ds.fingerprint))
    return out

  def token_frequencies(self) -> np.ndarray | None:
    """Each token id's share of the training tokens the run reads: every dataset's counts
    (jaxlm.prepare's) as shares, weighted by the mixture; None if a dataset has no counts."""
    counts = [ds.token_counts() for ds in self.datasets]
    if not counts or any(c is None for c in counts):
      return None
    total = sum(self.weights)
    return sum(w / total * c / max(c.sum(), 1) for w, c in zip(self.weights, counts))


def parse_mixture(text: str, zero: bool = False) -> list[tuple[str, float]]:
  """'web:0.7,books:0.3' -> [('web', 0.7), ('books', 0.3)]: prepared dataset directories and
  positive weights (normalised by Grain's mix); zero=True (a stage of a staged mixture) allows
  weights of 0, the stage's weights still adding up to more than 0."""
  out = []
  for item in filter(None, (i.strip() for i in text.split(','))):
    path, _, weight = item.rpartition(':')
    try:
      value = float(weight)
    except ValueError:
      value = None
    if (not path or value is None or not (value >= 0 if zero else value > 0)
        or not np.isfinite(value)):
      raise UserError(f'config field data.mixture={text!r} is invalid at {item!r}: expected '
                      'comma-separated <prepared dataset directory>:<'
                      f'{"weight >= 0" if zero else "positive weight"}> items.')
    if not is_prepared(path):
      raise UserError(f'config field data.mixture names {path!r}, which is not a prepared dataset '
                      '(no manifest.json there); prepare it with python -m jaxlm.prepare or fix '
                      'the name.')
    out.append((path, value))
  if len({p for p, _ in out}) != len(out):
    raise UserError(f'config field data.mixture={text!r} names a dataset twice; give each once.')
  if not sum(w for _, w in out) > 0:
    raise UserError(f'config field data.mixture={text!r} has weights that add up to 0; give at '
                    'least one a positive weight.')
  return out


def parse_stages(text: str) -> tuple[list[str], list[tuple[int, list[float]]]]:
  """'web:0.9,code:0.1@0; web:0.6,code:0.4@8000' -> the datasets (in order of first mention)
  and each stage's (first step, weights of those datasets, 0 where the stage leaves one out):
  Levanter's weight stages. A mixture without ';' or '@' is one stage from step 0."""
  if ';' not in text and '@' not in text:
    pairs = parse_mixture(text)
    return [p for p, _ in pairs], [(0, [w for _, w in pairs])]
  stages = []
  for part in filter(None, (p.strip() for p in text.split(';'))):
    mixture, at, step = part.rpartition('@')
    if not at or not step.strip().isdigit():
      raise UserError(f'config field data.mixture={text!r} is invalid at {part!r}: each stage is '
                      '<dataset>:<weight>,...@<first step>, stages separated by ";".')
    stages.append((int(step), parse_mixture(mixture, zero=True)))
  steps = [s for s, _ in stages]
  if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
    raise UserError(f'config field data.mixture={text!r} has stages starting at steps {steps}; '
                    'the first must start at 0 and each later one after the one before.')
  names = list(dict.fromkeys(p for _, pairs in stages for p, _ in pairs))
  weights = [[dict(pairs).get(p, 0.0) for p in names] for _, pairs in stages]
  unused = [p for i, p in enumerate(names) if not any(w[i] for w in weights)]
  if unused:
    raise UserError(f'config field data.mixture={text!r} gives {unused[0]!r} a weight of 0 in '
                    'every stage; leave it out or give it a weight.')
  return names, [(s, w) for s, w in zip(steps, weights)]


def workdir_settings(cfg: ConfigDict) -> Settings:
  """How a source given to training is prepared in the workdir."""
  d = cfg.data
  return Settings(source=d.corpus, tokenizer=d.tokenizer, tokenizer_path=d.tokenizer_path,
                  vocab_size=d.tokenizer_vocab_size, text_field=d.text_field,
                  val_fraction=d.val_fraction, val_tail=d.val_split == 'tail',
                  seqio_module=d.seqio_module, data_dir=d.tfds_data_dir)


def workdir_dataset(cfg: ConfigDict, workdir) -> str:
  """Where the config's source is prepared in the workdir (see the module docstring)."""
  settings = workdir_settings(cfg)
  key = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
  if not is_tf_source(cfg.data.corpus):
    for f in corpus_files(cfg.data.corpus):
      size, mtime = file_stamp(f)
      key.update(f'{f if paths.is_url(f) else f.absolute()}\0{size}\0{mtime}\0'.encode())
  return str(paths.path(workdir) / 'data' / f'{describe(cfg.data.corpus)}-{key.hexdigest()[:10]}')


def open_run_data(cfg: ConfigDict, workdir: Path) -> RunData:
  """The run's datasets, preparing a source into the workdir first if it is not there yet (or
  cannot be read: preparation resumes, and rewrites what is missing or damaged)."""
  d = cfg.data
  if d.mixture:
    names, stages = parse_stages(d.mixture)
    run = _checked([Prepared(p) for p in names], stages[-1][1], cfg)
    return run._replace(stages=tuple(stages) if len(stages) > 1 else ())
  if is_prepared(d.corpus):
    return _checked([Prepared(d.corpus)], [1.0], cfg)
  path = workdir_dataset(cfg, workdir)
  try:
    prepared = Prepared(path)
    if 'token_counts' in prepared.manifest:  # (else prepared before jaxlm counted tokens)
      return _checked([prepared], [1.0], cfg)
  except UserError as e:
    if is_prepared(path):
      print(f'The prepared data in {path} cannot be used ({e}); preparing it again.', flush=True)
  print(f'Preparing {d.corpus or "the shipped corpus"} -> {path}', flush=True)
  prepare_to(workdir_settings(cfg), path, workers=0)
  return _checked([Prepared(path)], [1.0], cfg)


def open_run_data_at(paths: Sequence[Path], weights: Sequence[float], cfg: ConfigDict) -> RunData:
  return _checked([Prepared(p) for p in paths], list(weights), cfg)


def _checked(datasets: list[Prepared], weights: list[float], cfg: ConfigDict) -> RunData:
  """One tokenizer for all: the datasets' must agree, and with data.tokenizer_path if set."""
  tokenizer = datasets[0].tokenizer
  for ds in datasets[1:]:
    if ds.tokenizer.fingerprint != tokenizer.fingerprint:
      raise UserError(f'the prepared datasets {datasets[0].directory} and {ds.directory} were '
                      'made with different tokenizers; prepare them with the same one '
                      '(--tokenizer_path) to mix them.')
  if cfg.data.tokenizer_path and cfg.data.tokenizer in ('sentencepiece', 'huggingface'):
    wanted = (SentencePieceTokenizer if cfg.data.tokenizer == 'sentencepiece' else
              HuggingFaceTokenizer)(paths.path(cfg.data.tokenizer_path))
    if wanted.fingerprint != tokenizer.fingerprint:
      raise UserError(f'the prepared dataset {datasets[0].directory} was made with another '
                      f'tokenizer than data.tokenizer_path={cfg.data.tokenizer_path}; prepare it '
                      'with that model, or leave data.tokenizer_path empty to use its own.')
  return RunData(tokenizer, datasets, weights)


def train_batches(run: RunData, cfg: ConfigDict, length: int, host_rows: Sequence[int]):
  """This host's rows of every training batch of the run (see pipeline.TrainBatches)."""
  # pylint: disable-next=import-outside-toplevel
  from jaxlm.data.pipeline import TrainBatches, train_rows
  d = cfg.data
  sources = train_rows([ds.train for ds in run.datasets], packing=d.packing, length=length,
                       eos=document_start(run.tokenizer), seed=cfg.seed, stride=d.stride,
                       max_docs=d.max_docs_per_row)
  return TrainBatches(sources, run.weights, cfg.train.batch_size, host_rows, workers=d.workers,
                      stages=run.stages)


class EvalStream(NamedTuple):
  """Text to score as one stream (see pipeline.document_stream) and its UTF-8 bytes: arrays
  (`tokens`, `weights`, `documents`), or for a validation split a pipeline.DocumentStream in
  `tokens` (weights and documents None), which reads only the windows a host scores."""
  tokens: np.ndarray
  weights: np.ndarray | None
  bytes: int
  documents: np.ndarray | None = None  # each token's document (1, 2, ...; 0: padding)


def has_targets(stream: EvalStream) -> bool:
  """Whether a stream has a token to predict."""
  if stream.weights is None:  # a DocumentStream
    return stream.tokens.targets > 0
  return len(stream.tokens) > 1 and bool(stream.weights[1:].any())


def eval_stream(docs: Sequence[np.ndarray], n_bytes: int, tokenizer: Tokenizer, packing: str,
                length: int) -> EvalStream:
  """`n_bytes` is the text's size (0: not counted); without an end-of-sequence id the unscored
  first token of each document does not count. A packing run (windows of `length`) scores
  documents alone."""
  from jaxlm.data.pipeline import document_stream  # pylint: disable=import-outside-toplevel
  start = document_start(tokenizer)
  tokens, weights, documents = document_stream(docs, start, length if packing == 'pack' else 0)
  if start is None and n_bytes:
    n_bytes -= sum(len(tokenizer.decode([int(d[0])]).encode()) for d in docs if len(d))
  return EvalStream(tokens, weights, n_bytes, documents)


class _Splits:
  """The first documents of several splits as one sequence of documents: fetch(ids) reads
  {id: token ids} from the splits that hold them."""

  def __init__(self, parts: Sequence[tuple[Split, int]]):
    self.parts = list(parts)
    self.bases = np.concatenate([[0], np.cumsum([n for _, n in parts])]).astype(np.int64)

  def lengths(self) -> np.ndarray:
    return np.concatenate([split.lengths[:n] for split, n in self.parts] or [np.zeros(0)])

  def __call__(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
    out = {}
    for (split, n), base in zip(self.parts, self.bases):
      local = [int(i) - int(base) for i in ids if base <= i < base + n]
      if local:
        out.update({i + int(base): doc for i, doc in split.docs(local).items()})
    return out


def validation_stream(run: RunData, cfg: ConfigDict, length: int, limit: int = 0,
                      dataset: int | None = None) -> EvalStream:
  """The validation documents of every dataset (or of one), in order; with limit > 0 only about
  that many tokens (training's periodic validation over train.eval_batches). Documents are read
  when the windows that hold them are scored, and by the hosts that score those windows."""
  from jaxlm.data.pipeline import DocumentStream  # pylint: disable=import-outside-toplevel
  chosen = run.datasets if dataset is None else [run.datasets[dataset]]
  parts, tokens = [], 0
  for ds in chosen:
    lengths = ds.validation.lengths.astype(np.int64)
    n = len(lengths)
    if limit:  # as many documents as hold the tokens still wanted
      left = max(limit - tokens, 1)
      n = min(n, int(np.searchsorted(np.cumsum(lengths + 1), left)) + 1)
    parts.append((ds.validation, n))
    tokens += int(lengths[:n].sum())
  fetch = _Splits(parts)
  start = document_start(run.tokenizer)
  stream = DocumentStream(fetch.lengths(), fetch, start,
                          length if cfg.data.packing == 'pack' else 0)
  n_bytes = sum(ds.validation.bytes for ds in chosen) if not limit else 0
  if start is None and n_bytes:  # (characters: each document's first token is context only)
    for a in range(0, int(fetch.bases[-1]), 4096):
      got = fetch(range(a, min(a + 4096, int(fetch.bases[-1]))))
      n_bytes -= sum(len(run.tokenizer.decode([int(d[0])]).encode()) for d in got.values()
                     if len(d))
  return EvalStream(stream, None, n_bytes)


def text_stream(texts: Sequence[str], tokenizer: Tokenizer, packing: str,
                length: int) -> EvalStream:
  """Texts (each a document) to score."""
  docs = [np.asarray(tokenizer.encode(t), np.int32) for t in texts]
  return eval_stream(docs, sum(len(t.encode('utf-8')) for t in texts), tokenizer, packing,
                     length)


def eval_batches(*args, **kwargs):
  """See pipeline.eval_batches (Grain and the pipeline load only when batches are asked for, so
  that jaxlm.prepare's worker processes start without them)."""
  from jaxlm.data.pipeline import eval_batches as batches  # pylint: disable=import-outside-toplevel
  return batches(*args, **kwargs)


def stream_arrays(stream: EvalStream) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(tokens, weights, documents) of a whole stream, in memory (a DocumentStream reads every
  document)."""
  if stream.weights is not None:
    return stream.tokens, stream.weights, stream.documents
  return stream.tokens.read([(0, len(stream.tokens))])[0]


def stream_source(stream: EvalStream):
  """What eval_batches reads of a stream: its DocumentStream, or its arrays as one."""
  if stream.weights is None:
    return stream.tokens
  from jaxlm.data.pipeline import ArrayStream  # pylint: disable=import-outside-toplevel
  return ArrayStream(stream.tokens, stream.weights, stream.documents)


__all__ = ['EvalStream', 'Prepared', 'RunData', 'Split', 'Tokenizer', 'corpus_files',
           'eval_batches', 'has_targets', 'is_prepared', 'open_run_data', 'read_text',
           'stream_arrays', 'stream_source', 'text_stream', 'train_batches', 'validation_stream']
