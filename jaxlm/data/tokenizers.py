"""Tokenizers: SentencePiece (trained by jaxlm on the corpus), character-level, byte-level, and a
Hugging Face tokenizer.json (through the `tokenizers` library), as used by imported models.

All four share one small interface: `encode(str) -> list[int]`, `decode(ids) -> str`,
`token_bytes(str) -> list[int]` (the UTF-8 bytes of the text each token stands for, for bits per
byte), `vocab_size`, `eos_id` (None when the vocabulary has no end-of-sequence token), `bos_id`
(the beginning-of-sequence token a Hugging Face tokenizer adds before a text, as Llama's do; None
for the others) and `fingerprint` (identifies the vocabulary, so caches and checkpoints can tell
tokenizers apart). Every document starts with `document_start(tokenizer)` in training rows and
evaluation streams, and so does a prompt when there is a beginning-of-sequence token.
`word_starts(tokenizer)` says which ids begin a word (for whole-word masking), and
`encode_arrays(tokenizer, texts)` encodes many texts into int32 arrays the fastest way the
tokenizer has (what data preparation calls).
"""

import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
import sentencepiece as spm

from jaxlm import paths
from jaxlm.errors import UserError


class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int | None
  bos_id: int | None
  fingerprint: str

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_bytes(self, text: str) -> list[int]: ...


def encode_arrays(tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  """Each text's `encode` as an int32 array, through the tokenizer's own `encode_arrays` where it
  has one (SentencePiece encodes a list in one call on this thread, straight into arrays; bytes
  are a view of the UTF-8), else a text at a time."""
  batch = getattr(tokenizer, 'encode_arrays', None)
  if batch is not None:
    return batch(texts)
  return [np.asarray(tokenizer.encode(t), np.int32) for t in texts]


def document_start(tokenizer: Tokenizer) -> int | None:
  """The id each document starts with (and the one that joins documents): the beginning-of-
  sequence token where the tokenizer adds one, so an imported Llama sees what it was trained on;
  else end-of-sequence (GPT-2's way, and jaxlm's own tokenizers'); None without either."""
  bos = getattr(tokenizer, 'bos_id', None)
  return bos if bos is not None else tokenizer.eos_id


# How a token that begins a word is spelt: SentencePiece's and Llama's '▁' for a space, byte-level
# BPE's (GPT-2's) 'Ġ' for a space, 'Ċ' for a newline, 'ĉ' for a tab and 'č' for a carriage return.
_WORD_MARKS = ('\u2581', '\u0120', '\u010a', '\u0109', '\u010d')
_SPACE_BYTES = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20)


def word_starts(tokenizer: Tokenizer) -> np.ndarray:
  """bool [vocab_size]: the ids that begin a word, a table computed once over the vocabulary.

  A word is a token that begins one and the tokens after it up to the next such token, so a
  word carries the whitespace before it, as the pieces of SentencePiece and byte-level BPE do:
  SentencePiece's '▁' pieces (and its whitespace bytes), byte-level BPE's 'Ġ'-led pieces, every
  piece of a WordPiece vocabulary that lacks the continuation prefix ('##'), and whitespace for
  the character and byte tokenizers. Special ids (end-of-sequence, unknown) begin a word too:
  a word never runs across them."""
  if isinstance(tokenizer, ByteTokenizer):
    out = np.zeros(tokenizer.vocab_size, bool)
    out[list(_SPACE_BYTES)] = True
    out[tokenizer.eos_id] = True
    return out
  if isinstance(tokenizer, CharTokenizer):
    return np.array([c.isspace() for c in tokenizer.chars], bool)
  if isinstance(tokenizer, SentencePieceTokenizer):
    sp = tokenizer.sp
    spaces = {f'<0x{b:02X}>' for b in _SPACE_BYTES}
    return np.array([sp.is_control(i) or sp.is_unknown(i) or
                     (piece := sp.id_to_piece(i)).startswith('\u2581') or
                     (sp.is_byte(i) and piece in spaces) for i in range(sp.get_piece_size())],
                    bool)
  backend = tokenizer.backend
  out = np.zeros(tokenizer.vocab_size, bool)
  prefix = getattr(backend.model, 'continuing_subword_prefix', None)
  for token, i in backend.get_vocab(with_added_tokens=True).items():
    if i < len(out):
      out[i] = (not token.startswith(prefix) if type(backend.model).__name__ == 'WordPiece'
                else token.startswith(_WORD_MARKS))
  for i in backend.get_added_tokens_decoder():
    if i < len(out):
      out[i] = True
  return out


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
    self.vocab_size, self.eos_id, self.bos_id = len(chars), None, None
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

  vocab_size, eos_id, bos_id, fingerprint = 257, 256, None, 'byte-v1'

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.frombuffer(t.encode('utf-8'), np.uint8).astype(np.int32) for t in texts]

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(i for i in ids if 0 <= i < 256).decode('utf-8', errors='replace')

  def token_bytes(self, text: str) -> list[int]:
    return [1] * len(text.encode('utf-8'))


# End-of-sequence tokens of common tokenizer.json files, for when no tokenizer_config.json says.
_EOS_NAMES = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<|im_end|>', '<eos>')


class HuggingFaceTokenizer:
  """A Hugging Face tokenizer.json (a file, or a model directory holding one). The end-of-sequence
  token is tokenizer_config.json's eos_token when that file sits beside it, else the first
  special token with a usual end-of-sequence name. Text is encoded without added special
  tokens: documents are joined by end-of-sequence, as for every jaxlm tokenizer."""

  def __init__(self, path):
    from tokenizers import Tokenizer as Backend  # pylint: disable=import-outside-toplevel
    path = paths.path(path)
    if path.is_dir():
      path = path / 'tokenizer.json'
    if not path.is_file():
      raise UserError(f'the tokenizer {path} does not exist; point data.tokenizer_path (or '
                      '--tokenizer_path) at a tokenizer.json or a Hugging Face model directory.')
    data = path.read_bytes()
    try:
      self.backend = Backend.from_str(data.decode('utf-8'))
    except Exception:  # the library raises its own exception type for a malformed file
      raise UserError(f'{path} is not a Hugging Face tokenizer.json; point data.tokenizer_path at '
                      'the tokenizer.json of a model.') from None
    self.path, self.config = path, {}
    if (path.parent / 'tokenizer_config.json').is_file():
      self.config = json.loads((path.parent / 'tokenizer_config.json').read_text())
    eos = self.config.get('eos_token')
    eos = eos.get('content') if isinstance(eos, dict) else eos
    specials = [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]
    eos = eos or next((n for n in _EOS_NAMES if n in specials), None)
    self.eos_id = self.backend.token_to_id(eos) if eos else None
    # The beginning-of-sequence token the tokenizer's post-processor puts before a text (Llama 2
    # and 3: <s>, <|begin_of_text|>), which the model saw first in every training document.
    start = self.backend.encode('', add_special_tokens=True).ids
    special_ids = {self.backend.token_to_id(t) for t in specials}
    self.bos_id = start[0] if start and start[0] in special_ids and start[0] != self.eos_id \
        else None
    self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
    canonical = json.dumps(json.loads(data), sort_keys=True).encode()
    self.fingerprint = f'hf-{_digest(canonical)}-eos{self.eos_id}' + (
        f'-bos{self.bos_id}' if self.bos_id is not None else '')

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self.backend.decode([int(i) for i in ids if 0 <= i < self.vocab_size])

  def token_bytes(self, text: str) -> list[int]:
    """Each token counts the text from the previous token's end to its own (the last to the
    end of the text), so the counts add up to the text's UTF-8 length."""
    ends = [end for _, end in self.backend.encode(text, add_special_tokens=False).offsets]
    out, previous = [], 0
    for i, end in enumerate(ends):
      end = len(text) if i == len(ends) - 1 else max(end, previous)
      out.append(len(text[previous:end].encode('utf-8')))
      previous = end
    return out


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
    self.bos_id = None  # jaxlm's SentencePiece models start documents with end-of-sequence
    self.fingerprint = 'spm-' + _content_digest(data)

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
    # One call for the list, on this thread (the workers are processes), into arrays: no list of
    # Python ints per text, one call's overhead per batch (docs/BENCHMARKS.md: 7% less time than
    # `encode` and a conversion, text by text, on 3 KiB documents; 17% on 180-byte ones).
    return self.sp.encode(list(texts), num_threads=1, return_type='numpy')

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
    atomic_write(output, _without_paths(Path(tmp, 'spm.model').read_bytes()))
  return SentencePieceTokenizer(output)


def _without_paths(model: bytes) -> bytes:
  """A trained model's bytes without what differs between two trainings on the same text: the
  training files' directories, the temporary model prefix and the thread count (SentencePiece
  records them), so that preparing the same corpus twice, or on other machines, gives the same
  file."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  names = [os.path.basename(f) for f in proto.trainer_spec.input]
  del proto.trainer_spec.input[:]
  proto.trainer_spec.input.extend(names)
  proto.trainer_spec.model_prefix = 'spm'
  proto.trainer_spec.ClearField('num_threads')
  return proto.SerializeToString(deterministic=True)


TOKENIZER_FILES = {'char': 'chars.json', 'sentencepiece': 'spm.model',
                   'huggingface': 'tokenizer.json'}


def open_tokenizer(directory: Path, kind: str) -> Tokenizer:
  """The tokenizer of kind 'byte', 'char', 'sentencepiece' or 'huggingface' kept in `directory`
  (a prepared dataset's tokenizer/ folder); a missing one is an error naming the file."""
  if kind == 'byte':
    return ByteTokenizer()
  path = Path(directory) / TOKENIZER_FILES[kind]
  if not path.is_file():
    raise UserError(f'the tokenizer {path} is missing; prepare the data again (or restore the '
                    'file).')
  if kind == 'huggingface':
    return HuggingFaceTokenizer(path)
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
  elif kind == 'huggingface':
    given = HuggingFaceTokenizer(model_path)
    if given.config:  # its end-of-sequence choice travels with it
      atomic_write(directory / 'tokenizer_config.json', json.dumps(given.config).encode())
    atomic_write(directory / 'tokenizer.json', given.path.read_bytes())
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
  """Writes via a temporary file and a rename (locally; a gs:// location directly), so a crash
  never leaves half a file; the temporary name is the attempt's own (process and a random part:
  processes on two hosts may share a pid), so two processes writing one file never share one."""
  if paths.is_url(str(path)):  # a bucket's object appears whole or not at all
    paths.path(str(path)).write_bytes(data)
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp')
  tmp.write_bytes(data)
  os.replace(tmp, path)
