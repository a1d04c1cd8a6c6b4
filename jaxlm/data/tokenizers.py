"""Tokenizers: SentencePiece (trained by jaxlm on the corpus), character-level and byte-level.

All three share one small interface: `encode(str) -> list[int]`, `decode(ids) -> str`,
`token_bytes(str) -> list[int]` (the UTF-8 bytes of the text each token stands for, for bits per
byte), `vocab_size`, `eos_id` (None when the vocabulary has no end-of-sequence token) and
`fingerprint` (identifies the vocabulary, so caches and checkpoints can tell tokenizers apart).
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import sentencepiece as spm

from jaxlm import paths
from jaxlm.errors import UserError


class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int | None
  fingerprint: str

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_bytes(self, text: str) -> list[int]: ...


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


def _content_digest(model: bytes) -> str:
  """A SentencePiece model's identity: its pieces, scores and types and its normaliser, not the
  file's bytes (which also record the training files' paths and thread count), so retraining the
  same vocabulary gives the same fingerprint."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  key = hashlib.sha256(proto.normalizer_spec.SerializeToString(deterministic=True))
  for piece in proto.pieces:
    key.update(piece.SerializeToString(deterministic=True))
  return key.hexdigest()[:16]


class CharTokenizer:
  """One id per distinct character of the corpus, in sorted order (nanoGPT's shakespeare_char)."""

  def __init__(self, chars: str):
    self.chars = chars
    self.index = {c: i for i, c in enumerate(chars)}
    self.vocab_size, self.eos_id = len(chars), None
    self.fingerprint = 'char-' + _digest(chars.encode())

  @classmethod
  def from_texts(cls, texts: Iterable[str]) -> 'CharTokenizer':
    return cls(''.join(sorted(set().union(*map(set, texts)))))

  def encode(self, text: str) -> list[int]:
    try:
      return [self.index[c] for c in text]
    except KeyError as e:
      raise UserError(f'the character {e.args[0]!r} is not in the character vocabulary learnt '
                      'from the corpus; remove it from the text.') from None

  def decode(self, ids: Sequence[int]) -> str:
    return ''.join(self.chars[i] for i in ids if 0 <= i < len(self.chars))

  def token_bytes(self, text: str) -> list[int]:
    self.encode(text)  # the same error for a character outside the vocabulary
    return [len(c.encode('utf-8')) for c in text]

  def save(self, path: Path) -> None:
    atomic_write(path, json.dumps({'chars': self.chars}).encode())

  @classmethod
  def load(cls, path: Path) -> 'CharTokenizer':
    return cls(json.loads(path.read_text())['chars'])


class ByteTokenizer:
  """The 256 UTF-8 byte values, plus id 256 for end-of-sequence."""

  vocab_size, eos_id, fingerprint = 257, 256, 'byte-v1'

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(i for i in ids if 0 <= i < 256).decode('utf-8', errors='replace')

  def token_bytes(self, text: str) -> list[int]:
    return [1] * len(text.encode('utf-8'))


class SentencePieceTokenizer:
  """A trained SentencePiece model (BPE or unigram)."""

  def __init__(self, path: Path):
    path = paths.path(path)
    if not path.is_file():
      raise UserError(f'the SentencePiece model {path} does not exist; train one with '
                      '`python -m jaxlm.tokenizer train` or leave data.tokenizer_path empty.')
    data = path.read_bytes()
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=data)
    except Exception:  # sentencepiece raises RuntimeError or OSError depending on the version
      raise UserError(f'{path} is not a SentencePiece model; point data.tokenizer_path at the '
                      '.model file that `python -m jaxlm.tokenizer train` wrote.') from None
    self.path = path
    self.vocab_size = self.sp.get_piece_size()
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
    self.fingerprint = 'spm-' + _content_digest(data)

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids if 0 <= i < self.vocab_size])

  def token_bytes(self, text: str) -> list[int]:
    """The byte span of each piece in the original text (a character split into byte-fallback
    pieces counts on its first piece), so the spans add up to the text's UTF-8 length."""
    return [piece.end - piece.begin for piece in self.sp.EncodeAsProto(text).pieces]


def train_sentencepiece(files: Sequence[Path], output: Path, vocab_size: int,
                        model_type: str = 'bpe') -> SentencePieceTokenizer:
  """Trains a SentencePiece model on UTF-8 text files and writes it to `output` (a .model file).

  The settings make decoding exactly invert encoding: no Unicode normalisation, whitespace kept
  as it is, and byte fallback for any character outside the vocabulary (newlines included).
  """
  output = Path(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
    try:
      spm.SentencePieceTrainer.train(
          input=[str(f) for f in files], model_prefix=os.path.join(tmp, 'spm'),
          vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
          byte_fallback=True, normalization_rule_name='identity', add_dummy_prefix=False,
          remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
          unk_id=0, bos_id=1, eos_id=2, pad_id=-1, input_sentence_size=2_000_000,
          shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
      reason = str(e).strip().split('] ')[-1]
      raise UserError(f'SentencePiece could not train a {vocab_size}-token vocabulary on '
                      f'{len(files)} file(s) ({reason}); change the vocabulary size '
                      '(data.tokenizer_vocab_size, or --vocab_size of jaxlm.tokenizer).') from None
    os.replace(os.path.join(tmp, 'spm.model'), output)
  return SentencePieceTokenizer(output)


TOKENIZER_FILES = {'char': 'chars.json', 'sentencepiece': 'spm.model'}


def open_tokenizer(directory: Path, kind: str) -> Tokenizer:
  """The tokenizer of kind 'byte', 'char' or 'sentencepiece' kept in `directory` (a prepared
  dataset's tokenizer/ folder); a missing one is an error naming the file."""
  if kind == 'byte':
    return ByteTokenizer()
  path = Path(directory) / TOKENIZER_FILES[kind]
  if not path.is_file():
    raise UserError(f'the tokenizer {path} is missing; prepare the data again (or restore the '
                    'file).')
  return CharTokenizer.load(path) if kind == 'char' else SentencePieceTokenizer(path)


def build_tokenizer(directory: Path, kind: str, texts: Sequence[str], vocab_size: int,
                    model_path: str = '') -> Tokenizer:
  """Makes the tokenizer of a prepared dataset in `directory`: a given SentencePiece model
  (copied in, so the dataset is self-contained), a SentencePiece model trained on `texts`, or
  the character set of `texts`. Byte tokenizers need nothing."""
  directory = Path(directory)
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'sentencepiece' and model_path:
    model = SentencePieceTokenizer(paths.path(model_path))  # the errors for a missing or bad model
    atomic_write(directory / 'spm.model', model.path.read_bytes())
  elif kind == 'char':
    CharTokenizer.from_texts(texts).save(directory / 'chars.json')
  else:
    sample = directory / 'sample.txt'
    directory.mkdir(parents=True, exist_ok=True)
    sample.write_text('\n'.join(texts), encoding='utf-8')
    print(f'Training a {vocab_size}-token SentencePiece vocabulary -> {directory / "spm.model"}',
          flush=True)
    try:
      train_sentencepiece([sample], directory / 'spm.model', vocab_size)
    finally:
      sample.unlink()
  return open_tokenizer(directory, kind)


def atomic_write(path: Path, data: bytes) -> None:
  """Writes via a temporary file and a rename, so a crash never leaves half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, path)
