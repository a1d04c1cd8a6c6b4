"""The text pipeline: corpus files -> tokens -> train/validation split -> Grain windows -> batches.

The corpus is tokenized once (each file a document, separated by the tokenizer's end-of-sequence
id when it has one) and cached as a .npy array. Training reads windows of L+1 tokens from that
stream through a Grain `MapDataset`: shuffled with the seed, reshuffled each epoch, sharded over
hosts and batched. Its iterator state is a small dict, saved with every checkpoint. Evaluation
covers every validation token exactly once, padding and masking the last partial window.
"""

import glob
import hashlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

import grain
import numpy as np

from jaxlm.data.tokenizers import Tokenizer
from jaxlm.errors import UserError

SHIPPED_CORPUS = Path(__file__).with_name('tinyshakespeare.txt')

Batch = dict[str, np.ndarray]


def corpus_files(pattern: str) -> list[Path]:
  """'' -> the shipped corpus; else a file, a directory (every file below it) or a glob."""
  if not pattern:
    return [SHIPPED_CORPUS]
  path = Path(pattern).expanduser()
  if path.is_file():
    return [path]
  if path.is_dir():
    files = sorted(p for p in path.rglob('*') if p.is_file() and not p.name.startswith('.'))
  else:
    files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
  if not files:
    raise UserError(f'config field data.corpus={pattern!r} matches no file; give a UTF-8 text '
                    'file, a directory or a glob (or leave it empty for the shipped corpus).')
  return files


def read_text(path: Path) -> str:
  """A file's text; bytes that are not UTF-8 are an error that names the file and the offset."""
  data = path.read_bytes()
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text (byte {e.start} is {data[e.start:e.start + 1]!r}); '
                    're-encode it as UTF-8 or leave it out of the corpus.') from None


def tokenize_texts(names: Sequence[str], texts: Sequence[str], tokenizer: Tokenizer,
                   cache_dir: Path) -> np.ndarray:
  """Documents (named, e.g. by file name) as one token stream (int32), cached under `cache_dir`
  by name, content and tokenizer."""
  key = hashlib.sha256(tokenizer.fingerprint.encode())
  for name, t in zip(names, texts):
    key.update(name.encode() + b'\0' + t.encode() + b'\0')
  cache = Path(cache_dir) / f'tokens-{key.hexdigest()[:16]}.npy'
  if cache.exists():
    return np.load(cache)
  eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  tokens = np.fromiter((i for t in texts for i in tokenizer.encode(t) + eos), dtype=np.int32)
  cache.parent.mkdir(parents=True, exist_ok=True)
  tmp = cache.with_name(cache.name + '.tmp.npy')
  np.save(tmp, tokens)
  os.replace(tmp, cache)
  return tokens


def split_tokens(tokens: np.ndarray, val_fraction: float,
                 seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The first (1 - val_fraction) of the stream trains, the rest validates (as in nanoGPT)."""
  if len(tokens) < seq_len + 1:
    raise UserError(
        f'the corpus has {len(tokens)} tokens, fewer than one sequence of '
        f'model.max_seq_len+1={seq_len + 1}; use a larger corpus or a shorter model.max_seq_len.')
  n_val = int(len(tokens) * val_fraction)
  return check_splits(tokens[:len(tokens) - n_val], tokens[len(tokens) - n_val:], seq_len)


def check_splits(train: np.ndarray, val: np.ndarray,
                 seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Training needs one whole window of L+1 tokens, validation at least one target."""
  if len(train) < seq_len + 1:
    raise UserError(
        f'the training split has {len(train)} tokens, fewer than one sequence of '
        f'model.max_seq_len+1={seq_len + 1}; use a larger corpus, a smaller data.val_fraction or '
        'a shorter model.max_seq_len.')
  if len(val) < 2:
    raise UserError(f'the validation split has {len(val)} tokens; raise data.val_fraction '
                    'or use a larger corpus.')
  return train, val


class Windows:
  """A random-access source of windows tokens[i*stride : i*stride + length]."""

  def __init__(self, tokens: np.ndarray, length: int, stride: int):
    self.tokens, self.length, self.stride = tokens, length, stride

  def __len__(self) -> int:
    return (len(self.tokens) - self.length) // self.stride + 1

  def __getitem__(self, i: int) -> np.ndarray:
    start = i * self.stride
    return self.tokens[start:start + self.length]


def _to_batch(windows: np.ndarray) -> Batch:
  """[B, L+1] windows -> inputs, targets (shifted by one) and a mask of ones."""
  return dict(inputs=windows[:, :-1], targets=windows[:, 1:],
              mask=np.ones(windows[:, 1:].shape, np.float32))


def train_iterator(tokens: np.ndarray, seq_len: int, global_batch: int, *, stride: int, seed: int,
                   rows: Sequence[int] | None = None) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of this host's rows of the [global_batch, seq_len]
  training batches.

  Windows are shuffled globally with `seed` (a new order each epoch); global batch j is windows
  j*B .. j*B+B-1 of that order, whatever the number of hosts, and a host reads only its `rows`
  of it (default: all; see sharding.host_rows).
  """
  rows = np.arange(global_batch) if rows is None else np.asarray(rows)
  windows = grain.MapDataset.source(Windows(tokens, seq_len + 1, stride or seq_len))
  windows = windows.shuffle(seed=seed).repeat()
  per_host = len(rows)
  ds = grain.MapDataset.range(sys.maxsize).map(
      lambda i: windows[(i // per_host) * global_batch + int(rows[i % per_host])])
  return iter(ds.batch(per_host, drop_remainder=True).map(_to_batch))


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, *,
                 weights: np.ndarray | None = None, max_batches: int = 0,
                 rows: Sequence[int] | None = None) -> Iterator[Batch]:
  """This host's `rows` (default: all) of [batch_size, seq_len] batches that predict every token
  of `tokens` but the first exactly once. The last window and the last batch are padded with
  mask 0.

  `weights` [len(tokens)] (default all 1) is the mask of each token as a target: 0 for tokens
  that are only context, such as the end-of-sequence ids between documents. With max_batches > 0
  only the first max_batches batches are produced.
  """
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  n_targets = len(tokens) - 1
  n_windows = -(-n_targets // seq_len)
  n_batches = -(-n_windows // batch_size)
  if max_batches:
    n_batches = min(n_batches, max_batches)
  for b in range(n_batches):
    inputs = np.zeros((len(rows), seq_len), np.int32)
    targets = np.zeros((len(rows), seq_len), np.int32)
    mask = np.zeros((len(rows), seq_len), np.float32)
    for i, r in enumerate(rows):
      start = (b * batch_size + int(r)) * seq_len
      n = max(0, min(seq_len, n_targets - start))
      inputs[i, :n] = tokens[start:start + n]
      targets[i, :n] = tokens[start + 1:start + 1 + n]
      mask[i, :n] = 1 if weights is None else weights[start + 1:start + 1 + n]
    yield dict(inputs=inputs, targets=targets, mask=mask)
