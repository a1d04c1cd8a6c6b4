"""Prepare a corpus into ArrayRecord shards of token ids, once, in parallel (see data/prepare.py).

  python -m jaxlm.prepare --source='web/*.jsonl.gz' --output=prepared/web --vocab_size=32000
  python -m jaxlm.prepare --source=books/ --output=prepared/books --tokenizer=byte --val_docs=50
  python -m jaxlm.prepare --source=tfds:my_dataset --tfds_data_dir=/data/tfds --output=prep/x

Then train on it: python -m jaxlm.train --config=... --config.data.corpus=prepared/web

Sources and outputs may be gs:// URLs (see paths.py): a bucket output is prepared in the local
cache and uploaded, the manifest last.

Killed and run again with the same flags, it continues from the chunks already complete.
"""

from absl import flags

from jaxlm import cli

_SOURCE = flags.DEFINE_string('source', '', 'UTF-8 text or JSONL (.jsonl, .jsonl.gz) files: a '
                              'file, a directory or a glob ("" is the shipped corpus); or '
                              'seqio:<task>, tfds:<name>.')
_OUTPUT = flags.DEFINE_string('output', None, 'The prepared dataset directory (or gs:// URL).',
                              required=True)
_TOKENIZER = flags.DEFINE_enum('tokenizer', 'sentencepiece',
                               ['sentencepiece', 'char', 'byte', 'huggingface'],
                               'How text becomes token ids (huggingface: a tokenizer.json given '
                               'by --tokenizer_path).')
_TOKENIZER_PATH = flags.DEFINE_string('tokenizer_path', '', 'An existing SentencePiece model ("" '
                                      'trains one on a sample of the source), or a Hugging Face '
                                      'tokenizer.json or model directory.')
_VOCAB = flags.DEFINE_integer('vocab_size', 8192, 'Size of the SentencePiece model trained.')
_SAMPLE_MB = flags.DEFINE_float('sample_mb', 100.0, 'Text the tokenizer is trained on (MiB).')
_FIELD = flags.DEFINE_string('text_field', 'text', 'The JSONL field that holds the text.')
_VAL_FRACTION = flags.DEFINE_float('val_fraction', 0.01, 'Documents held out for validation.')
_VAL_DOCS = flags.DEFINE_integer('val_docs', 0, 'Hold out the first N documents instead.')
_VAL_TAIL = flags.DEFINE_bool('val_tail', False, 'Hold out the last --val_fraction of every '
                              "document's tokens instead (for a few long texts).")
_SEQIO_MODULE = flags.DEFINE_string('seqio_module', '', 'Module that registers a SeqIO task.')
_TFDS_DIR = flags.DEFINE_string('tfds_data_dir', '', 'Where a TFDS dataset was built (no '
                                'download); "" is TFDS\'s default.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the validation choice.')
_CHUNK_MB = flags.DEFINE_float('chunk_mb', 64.0, 'Input MiB per shard pair (a unit of work).')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Worker processes (0: one per core).')


def main(argv: list[str]) -> None:
  del argv
  cli.require(_OUTPUT, bool(_OUTPUT.value.strip()), 'a directory to write')
  cli.require_location(_SOURCE, _OUTPUT, _TOKENIZER_PATH)
  cli.require_local(_TFDS_DIR)
  cli.require_output(_OUTPUT)
  cli.require(_VOCAB, _VOCAB.value >= 16, 'an integer >= 16')
  cli.require(_SAMPLE_MB, _SAMPLE_MB.value > 0, 'a positive number of MiB')
  cli.require(_VAL_FRACTION, 0 < _VAL_FRACTION.value < 1 or _VAL_DOCS.value > 0,
              'a number strictly between 0 and 1')
  cli.require(_VAL_DOCS, _VAL_DOCS.value >= 0, '0 or a positive number of documents')
  cli.require(_SEED, _SEED.value >= 0, 'a number >= 0')
  cli.require(_CHUNK_MB, _CHUNK_MB.value > 0, 'a positive number of MiB')
  cli.require(_FIELD, bool(_FIELD.value.strip()), 'a field name (not empty)')
  cli.require(_WORKERS, _WORKERS.value >= 0, '0 (one per core) or a positive number')
  cli.require(_VAL_TAIL, not (_VAL_TAIL.value and _VAL_DOCS.value), 'false when --val_docs is set')
  cli.require(_TOKENIZER_PATH, not _TOKENIZER_PATH.value or
              _TOKENIZER.value in ('sentencepiece', 'huggingface'),
              'empty unless --tokenizer=sentencepiece or huggingface')
  cli.require(_TOKENIZER_PATH, bool(_TOKENIZER_PATH.value) or _TOKENIZER.value != 'huggingface',
              'a tokenizer.json (or a model directory holding one) with --tokenizer=huggingface')
  from jaxlm import paths  # pylint: disable=import-outside-toplevel
  from jaxlm.data.prepare import Settings  # pylint: disable=import-outside-toplevel
  from jaxlm.data.staging import prepare_to  # pylint: disable=import-outside-toplevel
  settings = Settings(
      source=_SOURCE.value, tokenizer=_TOKENIZER.value, tokenizer_path=_TOKENIZER_PATH.value,
      vocab_size=_VOCAB.value, sample_mb=_SAMPLE_MB.value, text_field=_FIELD.value,
      val_fraction=_VAL_FRACTION.value, val_docs=_VAL_DOCS.value, val_tail=_VAL_TAIL.value,
      seed=_SEED.value, chunk_mb=_CHUNK_MB.value, seqio_module=_SEQIO_MODULE.value,
      data_dir=_TFDS_DIR.value)
  manifest = prepare_to(settings, _OUTPUT.value, _WORKERS.value)
  for split, c in manifest['splits'].items():
    print(f'{split}: {c["documents"]:,} documents, {c["tokens"]:,} tokens, {c["bytes"]:,} bytes '
          f'in {len(c["shards"])} shard(s)')
  print(f'wrote {paths.path(_OUTPUT.value) / "manifest.json"}')


if __name__ == '__main__':
  cli.run(main)
