"""Data: tokenizers and the Grain text pipeline."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
from ml_collections import ConfigDict

from jaxlm.data.pipeline import (corpus_files, eval_batches, read_text, split_tokens,
                                 tokenize_corpus, train_iterator)
from jaxlm.data.tokenizers import Tokenizer, load_tokenizer
from jaxlm.errors import UserError


class Corpus(NamedTuple):
  tokenizer: Tokenizer
  train: np.ndarray  # int32 token ids
  val: np.ndarray


def load_corpus(cfg: ConfigDict, workdir: Path) -> Corpus:
  """The config's corpus, tokenized (with the tokenizer built on first use) and split."""
  files = corpus_files(cfg.data.corpus)
  texts = [read_text(f) for f in files]
  if not any(texts):
    raise UserError(f'the corpus ({", ".join(map(str, files[:3]))}) holds no text; point '
                    'data.corpus at non-empty UTF-8 files.')
  tokenizer = load_tokenizer(cfg.data, files, texts, Path(workdir) / 'tokenizer')
  tokens = tokenize_corpus(files, texts, tokenizer, Path(workdir) / 'cache')
  train, val = split_tokens(tokens, cfg.data.val_fraction, cfg.model.max_seq_len)
  return Corpus(tokenizer, train, val)


__all__ = ['Corpus', 'Tokenizer', 'corpus_files', 'eval_batches', 'load_corpus',
           'load_tokenizer', 'train_iterator']
