"""Data: tokenizer round trips, corpus reading errors, windows, eval coverage, Grain iterators."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import TINY_TEXT, tiny_config
from jaxlm import data
from jaxlm.data import pipeline
from jaxlm.data.tokenizers import (ByteTokenizer, CharTokenizer, SentencePieceTokenizer,
                                   load_tokenizer, train_sentencepiece)
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


def test_sentencepiece_errors(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    SentencePieceTokenizer(tmp_path / 'missing.model')
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(UserError, match='is not a SentencePiece model'):
    SentencePieceTokenizer(tmp_path / 'junk.model')
  (tmp_path / 'small.txt').write_text('abc\n')
  with pytest.raises(UserError, match='Vocabulary size too high.*change the vocabulary size'):
    train_sentencepiece([tmp_path / 'small.txt'], tmp_path / 'x.model', vocab_size=5000)


def test_tokenizer_is_built_once_and_cached(tmp_path, corpus_file):
  cfg = ConfigDict(dict(tokenizer='sentencepiece', tokenizer_path='', tokenizer_vocab_size=300))
  texts = [corpus_file.read_text()]
  first = load_tokenizer(cfg, [corpus_file], texts, tmp_path / 'tok')
  mtime = (tmp_path / 'tok' / 'spm.model').stat().st_mtime_ns
  second = load_tokenizer(cfg, [corpus_file], texts, tmp_path / 'tok')
  assert first.fingerprint == second.fingerprint
  assert (tmp_path / 'tok' / 'spm.model').stat().st_mtime_ns == mtime
  assert load_tokenizer(cfg, [], None, tmp_path / 'tok').fingerprint == first.fingerprint  # readers
  # Identified by content: the same vocabulary trained elsewhere (other paths in the file).
  copy = tmp_path / 'elsewhere' / 'corpus.txt'
  copy.parent.mkdir()
  copy.write_text(texts[0])
  again = load_tokenizer(cfg, [copy], texts, tmp_path / 'tok2')
  assert again.fingerprint == first.fingerprint
  files = [tmp_path / d / 'spm.model' for d in ('tok', 'tok2')]
  assert files[0].read_bytes() != files[1].read_bytes()  # (the files record the paths)


def test_a_cached_tokenizer_of_other_settings_is_never_reused_silently(tmp_path, corpus_file):
  cfg = ConfigDict(dict(tokenizer='sentencepiece', tokenizer_path='', tokenizer_vocab_size=300))
  texts = [corpus_file.read_text()]
  first = load_tokenizer(cfg, [corpus_file], texts, tmp_path / 'tok')
  cfg.tokenizer_vocab_size = 320
  with pytest.raises(UserError, match=r'built from data.tokenizer_vocab_size=300 \(now 320\)'):
    load_tokenizer(cfg, [corpus_file], texts, tmp_path / 'tok')
  with pytest.raises(UserError, match='built from another corpus'):
    load_tokenizer(ConfigDict(dict(cfg, tokenizer_vocab_size=300)), [corpus_file],
                   [texts[0] + 'more'], tmp_path / 'tok')
  rebuilt = load_tokenizer(cfg, [corpus_file], texts, tmp_path / 'tok', replace_stale=True)
  assert rebuilt.vocab_size == 320 != first.vocab_size
  chars = ConfigDict(dict(cfg, tokenizer='char'))
  load_tokenizer(chars, [], ['abc'], tmp_path / 'tok')
  with pytest.raises(UserError, match='another corpus'):
    load_tokenizer(chars, [], ['abd'], tmp_path / 'tok')


def test_corpus_files_and_read_errors(tmp_path):
  assert pipeline.corpus_files('') == [pipeline.SHIPPED_CORPUS]
  assert pipeline.SHIPPED_CORPUS.stat().st_size > 1_000_000
  (tmp_path / 'a.txt').write_text('a')
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'b.txt').write_text('b')
  assert len(pipeline.corpus_files(str(tmp_path))) == 2
  assert len(pipeline.corpus_files(str(tmp_path / '*.txt'))) == 1
  with pytest.raises(UserError, match='matches no file'):
    pipeline.corpus_files(str(tmp_path / 'nothing*.txt'))
  (tmp_path / 'bad.bin').write_bytes(b'ok\xff\xfe')
  with pytest.raises(UserError, match=r'bad.bin is not UTF-8 text \(byte 2'):
    pipeline.read_text(tmp_path / 'bad.bin')


def test_load_corpus_rejects_empty_and_short_corpora(tmp_path):
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  (tmp_path / 'empty.txt').write_text('')
  cfg.data.corpus = str(tmp_path / 'empty.txt')
  with pytest.raises(UserError, match='holds no text'):
    data.load_corpus(cfg, tmp_path / 'run')
  (tmp_path / 'short.txt').write_text('To be, or not')
  cfg.data.corpus = str(tmp_path / 'short.txt')
  with pytest.raises(UserError, match='the corpus has 13 tokens, fewer than one sequence'):
    data.load_corpus(cfg, tmp_path / 'run')
  (tmp_path / 'val.txt').write_text('To be, or not to be')
  cfg.data.corpus = str(tmp_path / 'val.txt')
  with pytest.raises(UserError, match='the validation split has 1 tokens'):
    data.load_corpus(cfg, tmp_path / 'run')


def test_tokens_are_cached_and_documents_separated(tmp_path):
  files = ['a.txt', 'b.txt']
  tokens = pipeline.tokenize_texts(files, ['ab', 'cd'], ByteTokenizer(), tmp_path / 'cache')
  assert tokens.tolist() == [97, 98, 256, 99, 100, 256]  # end-of-sequence after each document
  assert len(list((tmp_path / 'cache').glob('tokens-*.npy'))) == 1
  again = pipeline.tokenize_texts(files, ['ab', 'cd'], ByteTokenizer(), tmp_path / 'cache')
  np.testing.assert_array_equal(tokens, again)


def test_windows_pack_the_stream():
  tokens = np.arange(20)
  w = pipeline.Windows(tokens, 5, 4)
  assert len(w) == 4 and w[0].tolist() == [0, 1, 2, 3, 4] and w[3].tolist() == [12, 13, 14, 15, 16]
  assert len(pipeline.Windows(tokens, 5, 1)) == 16


def test_train_iterator_is_deterministic_and_resumable():
  tokens = np.arange(1000, dtype=np.int32)
  it = data.train_iterator(tokens, 8, 4, stride=0, seed=3)
  batches = [next(it) for _ in range(40)]  # several epochs of 124 windows / 4
  b = batches[0]
  assert b['inputs'].shape == (4, 8) and (b['targets'] == b['inputs'] + 1).all()
  assert b['mask'].all()
  first_epoch = np.concatenate([x['inputs'][:, 0] for x in batches[:31]])
  assert len(set(first_epoch.tolist())) == 124  # each window once per epoch
  it2 = data.train_iterator(tokens, 8, 4, stride=0, seed=3)
  for _ in range(17):
    next(it2)
  state = it2.get_state()
  it3 = data.train_iterator(tokens, 8, 4, stride=0, seed=3)
  it3.set_state(state)
  for i in range(17, 40):
    np.testing.assert_array_equal(next(it3)['inputs'], batches[i]['inputs'])
  other = data.train_iterator(tokens, 8, 4, stride=0, seed=4)
  assert not np.array_equal(next(other)['inputs'], batches[0]['inputs'])


def test_hosts_read_their_rows_of_the_same_global_batches():
  """Whatever the rows a host holds, they are its rows of the one-host global batch."""
  tokens = np.arange(1000, dtype=np.int32)
  whole = data.train_iterator(tokens, 8, 4, stride=0, seed=0)
  halves = [data.train_iterator(tokens, 8, 4, stride=0, seed=0, rows=r) for r in ([0, 1], [2, 3])]
  odd = data.train_iterator(tokens, 8, 4, stride=0, seed=0, rows=[1, 3])
  for _ in range(40):  # past the end of the first epoch (31 batches)
    want = next(whole)['inputs']
    np.testing.assert_array_equal(np.concatenate([next(h)['inputs'] for h in halves]), want)
    np.testing.assert_array_equal(next(odd)['inputs'], want[[1, 3]])


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
