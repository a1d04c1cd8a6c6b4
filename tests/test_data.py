"""Data: tokenizer round trips, corpus reading errors, the run's prepared data, eval coverage."""

import json

import numpy as np
import pytest

from conftest import TINY_TEXT, tiny_config
from jaxlm import data
from jaxlm.data import sources
from jaxlm.data.tokenizers import (ByteTokenizer, CharTokenizer, SentencePieceTokenizer,
                                   build_tokenizer, encode_arrays, open_tokenizer,
                                   train_sentencepiece)
from jaxlm.errors import UserError

SAMPLES = ['Hello, world!\n', '  two  spaces\tand a tab\n\n', 'ÆØÅ — naïve café 日本 🙂', '']


def test_char_tokenizer_round_trip_and_unknown_character(tmp_path):
  tok = CharTokenizer.from_texts([TINY_TEXT])
  assert tok.decode(tok.encode(TINY_TEXT)) == TINY_TEXT
  tok.save(tmp_path / 'chars.json')
  again = CharTokenizer.load(tmp_path / 'chars.json')
  assert again.encode('First') == tok.encode('First') and again.fingerprint == tok.fingerprint
  with pytest.raises(UserError, match="'Z' is not in the character vocabulary"):
    tok.encode('Zebra')


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  for s in SAMPLES:
    assert tok.decode(tok.encode(s)) == s
  assert tok.eos_id == 256 and tok.vocab_size == 257


@pytest.fixture(scope='module')
def spm_model(tmp_path_factory):
  d = tmp_path_factory.mktemp('spm')
  (d / 'corpus.txt').write_text(TINY_TEXT + 'naïve café\n')
  return train_sentencepiece([d / 'corpus.txt'], d / 'spm.model', vocab_size=400)


def test_sentencepiece_round_trip(spm_model):
  tok = SentencePieceTokenizer(spm_model.path)
  assert tok.vocab_size == 400 and tok.eos_id == 2
  for s in SAMPLES + [TINY_TEXT]:
    assert tok.decode(tok.encode(s)) == s  # byte fallback covers what the vocabulary does not
  assert len(tok.encode(TINY_TEXT)) < len(TINY_TEXT) / 3  # it does compress


def test_encode_arrays_are_encode_as_int32(spm_model):
  """Preparation encodes texts a batch at a time into arrays (SentencePiece's own batch call,
  bytes as a view of the UTF-8): the ids are `encode`'s, text by text, as int32."""
  texts = SAMPLES + [TINY_TEXT, '\x00\x7f\u0080\uffff']
  for tok in [ByteTokenizer(), SentencePieceTokenizer(spm_model.path),
              CharTokenizer.from_texts(texts)]:
    arrays = encode_arrays(tok, texts)
    assert len(arrays) == len(texts)
    for text, ids in zip(texts, arrays):
      assert ids.dtype == np.int32 and ids.tolist() == tok.encode(text), (tok, text)


def test_sentencepiece_errors(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    SentencePieceTokenizer(tmp_path / 'missing.model')
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(UserError, match='is not a SentencePiece model'):
    SentencePieceTokenizer(tmp_path / 'junk.model')
  (tmp_path / 'small.txt').write_text('abc\n')
  with pytest.raises(UserError, match='Vocabulary size too high.*change the vocabulary size'):
    train_sentencepiece([tmp_path / 'small.txt'], tmp_path / 'x.model', vocab_size=5000)


def test_built_tokenizers_reopen_and_are_identified_by_content(tmp_path, corpus_file):
  texts = [corpus_file.read_text()]
  first = build_tokenizer(tmp_path / 'tok', 'sentencepiece', texts, 300)
  assert open_tokenizer(tmp_path / 'tok', 'sentencepiece').fingerprint == first.fingerprint
  again = build_tokenizer(tmp_path / 'tok2', 'sentencepiece', texts, 300)  # trained elsewhere
  assert again.fingerprint == first.fingerprint
  assert build_tokenizer(tmp_path / 'tok3', 'sentencepiece', texts, 320).fingerprint != \
      first.fingerprint
  copied = build_tokenizer(tmp_path / 'tok4', 'sentencepiece', [], 0, str(first.path))
  assert copied.fingerprint == first.fingerprint and copied.path.parent == tmp_path / 'tok4'
  chars = build_tokenizer(tmp_path / 'tok', 'char', ['abc', 'cd'], 0)
  assert chars.vocab_size == 4 and open_tokenizer(tmp_path / 'tok', 'char').encode('dc') == [3, 2]
  with pytest.raises(UserError, match=r'the tokenizer .*chars.json is missing'):
    open_tokenizer(tmp_path / 'none', 'char')


def test_corpus_files_and_read_errors(tmp_path):
  assert sources.corpus_files('') == [sources.SHIPPED_CORPUS]
  assert sources.SHIPPED_CORPUS.stat().st_size > 1_000_000
  (tmp_path / 'a.txt').write_text('a')
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'b.txt').write_text('b')
  assert len(sources.corpus_files(str(tmp_path))) == 2
  assert len(sources.corpus_files(str(tmp_path / '*.txt'))) == 1
  with pytest.raises(UserError, match='matches no file'):
    sources.corpus_files(str(tmp_path / 'nothing*.txt'))
  (tmp_path / 'bad.bin').write_bytes(b'ok\xff\xfe')
  with pytest.raises(UserError, match=r'bad.bin is not UTF-8 text \(byte 2'):
    sources.read_text(tmp_path / 'bad.bin')


def test_run_data_rejects_empty_and_short_corpora(tmp_path):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  (tmp_path / 'empty.txt').write_text('')
  cfg.data.corpus = str(tmp_path / 'empty.txt')
  with pytest.raises(UserError, match='holds no text'):
    data.open_run_data(cfg, tmp_path / 'run')
  (tmp_path / 'short.txt').write_text('To be, or not to')  # 16 characters: 15 train, 1 validation
  cfg.data.corpus = str(tmp_path / 'short.txt')
  run = data.open_run_data(cfg, tmp_path / 'run')
  with pytest.raises(UserError, match='has 15 tokens, fewer than one sequence'):
    data.train_batches(run, cfg, 16, range(8))
  (tmp_path / 'val.txt').write_text('To be, or')  # 10% of 9 characters: none
  cfg.data.corpus = str(tmp_path / 'val.txt')
  with pytest.raises(UserError, match='the validation split of .* is empty'):
    data.open_run_data(cfg, tmp_path / 'run')


def test_a_source_is_prepared_once_into_the_workdir_and_anew_when_it_changes(tmp_path):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text(TINY_TEXT)
  cfg.data.corpus = str(corpus)
  first = data.open_run_data(cfg, tmp_path / 'run').datasets[0]
  stream = [t for i in range(len(first.train.lengths)) for t in first.train.doc(i)]
  val = [t for i in range(len(first.validation.lengths)) for t in first.validation.doc(i)]
  assert first.tokenizer.decode(stream + val) == TINY_TEXT  # the last 10% validates (tail)
  assert len(val) == int(len(TINY_TEXT) * 0.1)
  mtime = (first.directory / 'manifest.json').stat().st_mtime_ns
  again = data.open_run_data(cfg, tmp_path / 'run').datasets[0]
  assert again.directory == first.directory and again.fingerprint == first.fingerprint
  assert (first.directory / 'manifest.json').stat().st_mtime_ns == mtime  # not prepared again
  corpus.write_text(TINY_TEXT + 'More.\n')
  changed = data.open_run_data(cfg, tmp_path / 'run').datasets[0]
  assert changed.directory != first.directory and (first.directory / 'manifest.json').exists()
  cfg.data.val_split = 'documents'  # one document: nothing to hold out by documents
  with pytest.raises(UserError, match='split of .* is empty'):
    data.open_run_data(cfg, tmp_path / 'run')


@pytest.mark.parametrize('n,seq,batch,hosts', [(101, 8, 4, 1), (100, 8, 4, 1), (9, 8, 4, 1),
                                               (257, 16, 4, 2)])
def test_eval_batches_count_every_token_once(n, seq, batch, hosts):
  tokens = np.arange(n, dtype=np.int32) * 7 % 13
  targets, count = [], 0
  for host in range(hosts):
    rows = range(host * batch // hosts, (host + 1) * batch // hosts)
    for b in data.eval_batches(tokens, seq, batch, rows=rows):
      assert b['inputs'].shape == (batch // hosts, seq)
      count += int(b['mask'].sum())
      targets.append(b)
  assert count == n - 1
  # The counted (input, target) pairs are exactly the consecutive pairs of the stream.
  pairs = sorted((int(i), int(t)) for b in targets
                 for i, t, m in zip(b['inputs'].ravel(), b['targets'].ravel(), b['mask'].ravel())
                 if m)
  assert pairs == sorted(zip(tokens[:-1].tolist(), tokens[1:].tolist()))


def test_word_starts_mark_the_first_token_of_every_word(tmp_path, spm_model):
  """For each tokenizer kind (character, byte, SentencePiece, byte-level BPE, WordPiece): a text
  of single-spaced words and a newline, encoded and cut before every id the table marks, gives
  exactly its words (each with the whitespace before it; WordPiece drops whitespace), so no word
  is split and no two are joined."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from jaxlm.data.tokenizers import HuggingFaceTokenizer, word_starts
  text = 'Before we proceed any further,\nhear me speak'
  words = text.replace('\n', ' ').split(' ')
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator([TINY_TEXT], trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<|endoftext|>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  bpe.save(str(tmp_path / 'bpe.json'))
  piece = Tokenizer(models.WordPiece(unk_token='[UNK]'))
  piece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  piece.decoder = decoders.WordPiece()
  piece.train_from_iterator([TINY_TEXT], trainers.WordPieceTrainer(
      vocab_size=200, special_tokens=['[UNK]']))
  piece.save(str(tmp_path / 'wordpiece.json'))
  tokenizers = {'char': CharTokenizer.from_texts([TINY_TEXT + text]), 'byte': ByteTokenizer(),
                'sentencepiece': SentencePieceTokenizer(spm_model.path),
                'bpe': HuggingFaceTokenizer(tmp_path / 'bpe.json'),
                'wordpiece': HuggingFaceTokenizer(tmp_path / 'wordpiece.json')}
  for name, tok in tokenizers.items():
    table = word_starts(tok)
    assert table.shape == (tok.vocab_size,) and table.dtype == bool, name
    ids = tok.encode(text)
    cuts = [0] + [i for i in range(1, len(ids)) if table[ids[i]]] + [len(ids)]
    got = [tok.decode(ids[a:b]) for a, b in zip(cuts, cuts[1:])]
    if name == 'wordpiece':  # whitespace is not a token; punctuation is a word of its own
      assert [w.replace(' ', '') for w in got] == \
          'Before we proceed any further , hear me speak'.split(), got
    else:
      assert [w.strip() for w in got] == words, (name, got)
    if tok.eos_id is not None:
      assert table[tok.eos_id], name  # a word never runs across an end-of-sequence


def test_token_frequencies_are_each_datasets_shares_weighted_by_the_mixture():
  class Counted:  # a prepared dataset as RunData sees it
    def __init__(self, counts):
      self.counts = counts

    def token_counts(self):
      return self.counts

  run = data.RunData(None, [Counted(np.array([3, 1, 0])), Counted(np.array([0, 0, 5]))], [3, 1])
  np.testing.assert_allclose(run.token_frequencies(), [0.75 * 0.75, 0.75 * 0.25, 0.25])
  assert data.RunData(None, [Counted(np.ones(3)), Counted(None)], [1, 1]).token_frequencies() \
      is None


def test_a_jsonl_line_reads_as_json_reads_it():
  """orjson parses a line; what it refuses goes through json, so every line reads as json reads
  it: NaN elsewhere in the record, a byte-order mark, a repeated key (the last wins), and the
  errors json's path explains."""
  for line, text in [(b'{"text": "a", "score": NaN}\n', 'a'), (b'\xef\xbb\xbf{"text": "b"}', 'b'),
                     (b'{"text": "c", "text": "d"}', 'd'), (b'{"n": 1e999, "text": "e\\u00e9"}',
                                                           'e\u00e9')]:
    assert sources._field(line, 'text', lambda: 'line 1') == text == json.loads(line)['text']
  for line, error in [(b'{"text": "\\ud800"}', 'lone surrogate'), (b'{"text": 3}', 'no text field'),
                      (b'{"text": "x"', 'is not JSON'), (b'{"text": "\xff"}', 'is not UTF-8')]:
    with pytest.raises(UserError, match=error):
      sources._field(line, 'text', lambda: 'line 1')


def test_a_bad_jsonl_line_is_named_by_its_line_or_its_byte(tmp_path):
  """A chunk that starts at the file's beginning names a bad line by its number; one that starts
  part-way (its line numbers unknown) by its byte offset in the file."""
  path = tmp_path / 'docs.jsonl'
  path.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"text": 3}\n')
  for start, where in [(0, f'line 3 of {path}'), (14, f'the line at byte 28 of {path}')]:
    chunk = sources.Chunk(0, (str(path),), start=start, stop=path.stat().st_size - 1)
    with pytest.raises(UserError, match=f"^{where} has no text field 'text'"):
      list(sources.documents(chunk))
