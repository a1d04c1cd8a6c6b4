"""Train or try a SentencePiece tokenizer.

  python -m jaxlm.tokenizer train --input='data/*.txt' --vocab_size=8192 --output=tok/spm.model
  python -m jaxlm.tokenizer encode --model=tok/spm.model --text='To be, or not to be'

Training (BPE by default) keeps text exactly recoverable: no normalisation, whitespace as it is,
and byte fallback for unseen characters. Point data.tokenizer_path (or jaxlm.prepare's
--tokenizer_path) at the .model file; or leave it empty and preparation trains one on a sample of
the corpus by itself (data.tokenizer_vocab_size or --vocab_size tokens).
"""

from pathlib import Path

from absl import flags

from jaxlm import cli
from jaxlm.errors import UserError

_INPUT = flags.DEFINE_string('input', '', 'train: UTF-8 text file, directory or glob.')
_VOCAB = flags.DEFINE_integer('vocab_size', 8192, 'train: vocabulary size.')
_OUTPUT = flags.DEFINE_string('output', 'tokenizer/spm.model', 'train: the .model file to write.')
_TYPE = flags.DEFINE_enum('model_type', 'bpe', ['bpe', 'unigram'], 'train: SentencePiece model.')
_MODEL = flags.DEFINE_string('model', '', 'encode: the .model file.')
_TEXT = flags.DEFINE_string('text', '', 'encode: text to tokenize.')


def main(argv: list[str]) -> None:
  from jaxlm.data.sources import corpus_files, read_text
  from jaxlm.data.tokenizers import SentencePieceTokenizer, train_sentencepiece
  cli.require_local(_INPUT, _OUTPUT, _MODEL)
  if argv[1] == 'train':
    cli.require(_VOCAB, _VOCAB.value >= 16, 'an integer >= 16')
    cli.require(_OUTPUT, _OUTPUT.value.endswith('.model'), 'a path ending in .model')
    cli.require_output(_OUTPUT, is_file=True)
    if Path(_OUTPUT.value).exists():
      raise UserError(f'--output={_OUTPUT.value} already exists; give a new path (or delete '
                      'the old model first).')
    files = corpus_files(_INPUT.value)
    for f in files:
      read_text(f)  # Fails early, naming the file, on bytes that are not UTF-8.
    tok = train_sentencepiece(files, _OUTPUT.value, _VOCAB.value, _TYPE.value)
    print(f'wrote {tok.path}: {tok.vocab_size} tokens ({_TYPE.value}) from {len(files)} file(s)')
  else:
    cli.require(_MODEL, bool(_MODEL.value), 'the .model file to encode with')
    tok = SentencePieceTokenizer(_MODEL.value)
    ids = tok.encode(_TEXT.value)
    pieces = [tok.sp.id_to_piece(i) for i in ids]
    print(f'{len(ids)} tokens: {ids}\n{pieces}')


if __name__ == '__main__':
  cli.run(main, commands=('train', 'encode'))
