"""Data: tokenizers, the Grain text pipeline, and SeqIO tasks as a text source."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
from ml_collections import ConfigDict

from jaxlm.data import seqio_source
from jaxlm.data.pipeline import (check_splits, corpus_files, eval_batches, read_text,
                                 split_tokens, tokenize_texts, train_iterator)
from jaxlm.data.tokenizers import Tokenizer, load_tokenizer
from jaxlm.errors import UserError


class Corpus(NamedTuple):
  tokenizer: Tokenizer
  train: np.ndarray  # int32 token ids
  val: np.ndarray


def _read_texts(cfg: ConfigDict, workdir: Path) -> tuple[list[Path], list[str], list[str] | None]:
  """(files SentencePiece trains on, training texts, validation texts or None)."""
  if seqio_source.is_seqio(cfg.data.corpus):
    splits = seqio_source.load_texts(cfg.data)
    texts, val_texts = splits['train'], splits.get('validation')
    name = cfg.data.corpus.replace(':', '-').replace('/', '-')
    files = [workdir / 'cache' / f'{name}.train.txt']  # what SentencePiece trains on
    files[0].parent.mkdir(parents=True, exist_ok=True)
    files[0].write_text('\n'.join(texts), encoding='utf-8')
    return files, texts, val_texts
  files = corpus_files(cfg.data.corpus)
  return files, [read_text(f) for f in files], None


def load_corpus(cfg: ConfigDict, workdir: Path, replace_stale: bool = False) -> Corpus:
  """The config's corpus, tokenized (with the tokenizer built on first use) and split.

  Text files are one stream split by data.val_fraction; a SeqIO task brings its own splits.
  `replace_stale`: see load_tokenizer.
  """
  workdir = Path(workdir)
  files, texts, val_texts = _read_texts(cfg, workdir)
  if not any(texts):
    raise UserError(f'the corpus ({", ".join(map(str, files[:3]))}) holds no text; point '
                    'data.corpus at non-empty UTF-8 files.')
  tokenizer = load_tokenizer(cfg.data, files, texts, workdir / 'tokenizer', replace_stale)
  tokens = tokenize_texts([str(f.name) for f in files] if val_texts is None else
                          [cfg.data.corpus] * len(texts), texts, tokenizer, workdir / 'cache')
  if val_texts is None:
    train, val = split_tokens(tokens, cfg.data.val_fraction, cfg.model.max_seq_len)
  else:
    val = tokenize_texts([cfg.data.corpus + ':validation'] * len(val_texts), val_texts,
                         tokenizer, workdir / 'cache')
    train, val = check_splits(tokens, val, cfg.model.max_seq_len)
  return Corpus(tokenizer, train, val)


def validation_text(cfg: ConfigDict, workdir: Path, corpus: Corpus) -> tuple[np.ndarray, int]:
  """The validation split as text to score: (weights [len(val)], UTF-8 bytes of the text).

  A target counts (weight 1) unless it is an end-of-sequence id, which stands for no text; the
  bytes are those of the counted targets in the original text (Tokenizer.token_bytes), not of
  their decoding.
  """
  tok = corpus.tokenizer
  _, texts, val_texts = _read_texts(cfg, Path(workdir))
  eos = [] if tok.eos_id is None else [0]
  sizes = np.fromiter((b for t in (val_texts if val_texts is not None else texts)
                       for b in tok.token_bytes(t) + eos), np.int64)
  if len(sizes) < len(corpus.val):
    raise UserError('the corpus changed since it was tokenized; evaluate with the corpus the '
                    'run was trained on.')
  sizes = sizes[len(sizes) - len(corpus.val):]
  weights = np.ones(len(corpus.val), np.float32)
  if tok.eos_id is not None:
    weights[corpus.val == tok.eos_id] = 0
  return weights, int((sizes[1:] * weights[1:]).sum())


__all__ = ['Corpus', 'validation_text', 'Tokenizer', 'corpus_files', 'eval_batches', 'load_corpus',
           'load_tokenizer', 'train_iterator']
