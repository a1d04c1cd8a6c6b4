"""Prepare a corpus into ArrayRecord shards of token ids, once, in parallel (see data/prepare.py).

  python -m jaxlm.prepare --source='web/*.jsonl.gz' --output=prepared/web --vocab_size=32000
  python -m jaxlm.prepare --source=books/ --output=prepared/books --tokenizer=byte --val_docs=50
  python -m jaxlm.prepare --source=tfds:my_dataset --tfds_data_dir=/data/tfds --output=prep/x

Then train on it: python -m jaxlm.train --config=... --config.data.corpus=prepared/web

Sources and outputs may be gs:// URLs (see paths.py): a bucket output is prepared in the local
cache and uploaded, the manifest last.

Killed and run again with the same flags, it continues from the chunks already complete.

Across many machines, with the same flags everywhere (every way gives the same bytes):

  python -m jaxlm.prepare ... --plan             # once: the tokenizer and the chunk plan
  python -m jaxlm.prepare ... --task=$i/$N       # N tasks, anywhere, in any order, re-runnable
  python -m jaxlm.prepare ... --finalize         # once all are done: checks, writes the manifest

(launch/prepare_slurm.sh submits them as SLURM jobs, launch/prepare_k8s.py writes them as one
Kubernetes JobSet), or as one Apache Beam pipeline: --runner=DirectRunner|DataflowRunner|...
followed by `--` and the runner's pipeline options (see data/beam.py).
"""

from absl import flags

from jaxlm import cli
from jaxlm.errors import UserError

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
_WORKERS = flags.DEFINE_integer('workers', 0, 'Worker processes (0: one per CPU this '
                                'process may use).')
_PLAN = flags.DEFINE_bool('plan', False, 'Only make the plan: settings, tokenizer and the chunks '
                          '(the first step of a job array).')
_TASK = flags.DEFINE_string('task', '', 'i/N: prepare the chunks whose index is i modulo N, from '
                            'the plan (a job array task).')
_RUNNER = flags.DEFINE_enum('runner', '', ['', 'DirectRunner', 'DataflowRunner', 'FlinkRunner',
                                           'SparkRunner', 'PrismRunner'],
                            'Prepare as an Apache Beam pipeline on this runner (the extra `beam`); '
                            "the runner's pipeline options follow a `--`.")
_FINALIZE = flags.DEFINE_bool('finalize', False, 'Check that every chunk of the plan is complete '
                              'and write the manifest (the last step of a job array).')


def _task() -> tuple[int, int] | None:
  """--task=i/N as (i, N), None when not given."""
  if not _TASK.value:
    return None
  try:
    i, n = (int(x) for x in _TASK.value.split('/'))
  except ValueError:
    i = n = -1
  cli.require(_TASK, 0 <= i < n, 'i/N with 0 <= i < N, e.g. --task=0/8 (task 0 of 8)')
  return i, n


def main(argv: list[str]) -> None:
  if len(argv) > 1 and not _RUNNER.value:
    raise UserError(f'unexpected arguments {argv[1:]}: only a Beam --runner takes pipeline options '
                    'after `--`; flags take the form --name=value.')
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
  cli.require(_WORKERS, _WORKERS.value >= 0, '0 (one per CPU) or a positive number')
  cli.require(_VAL_TAIL, not (_VAL_TAIL.value and _VAL_DOCS.value), 'false when --val_docs is set')
  cli.require(_TOKENIZER_PATH, not _TOKENIZER_PATH.value or
              _TOKENIZER.value in ('sentencepiece', 'huggingface'),
              'empty unless --tokenizer=sentencepiece or huggingface')
  cli.require(_TOKENIZER_PATH, bool(_TOKENIZER_PATH.value) or _TOKENIZER.value != 'huggingface',
              'a tokenizer.json (or a model directory holding one) with --tokenizer=huggingface')
  task = _task()
  modes = [f for f in ('plan', 'task', 'finalize', 'runner') if flags.FLAGS[f].present and
           flags.FLAGS[f].value]
  if len(modes) > 1:
    raise UserError(f'--{modes[0]} and --{modes[1]} cannot be given together; give one of them '
                    '(a job array runs --plan once, every --task=i/N, then --finalize; a Beam '
                    '--runner does all three).')
  from jaxlm import paths  # pylint: disable=import-outside-toplevel
  from jaxlm.data import prepare  # pylint: disable=import-outside-toplevel
  from jaxlm.data.prepare import Settings  # pylint: disable=import-outside-toplevel
  from jaxlm.data import staging  # pylint: disable=import-outside-toplevel
  settings = Settings(
      source=_SOURCE.value, tokenizer=_TOKENIZER.value, tokenizer_path=_TOKENIZER_PATH.value,
      vocab_size=_VOCAB.value, sample_mb=_SAMPLE_MB.value, text_field=_FIELD.value,
      val_fraction=_VAL_FRACTION.value, val_docs=_VAL_DOCS.value, val_tail=_VAL_TAIL.value,
      seed=_SEED.value, chunk_mb=_CHUNK_MB.value, seqio_module=_SEQIO_MODULE.value,
      data_dir=_TFDS_DIR.value)
  output = _OUTPUT.value
  if _PLAN.value:
    chunks = staging.plan(settings, output)
    print(f'planned {len(chunks)} chunk(s) in {output}/{prepare.PLAN}; now run --task=i/N for '
          'i = 0..N-1, then --finalize')
    return
  if task:
    chunks = staging.task(settings, output, *task, workers=_WORKERS.value)
    print(f'task {task[0]}/{task[1]}: {len(chunks)} chunk(s) complete in {output}')
    return
  if _FINALIZE.value:
    manifest = staging.finalize(settings, output)
  elif _RUNNER.value:
    try:
      from jaxlm.data import beam  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise UserError("--runner needs Apache Beam, an optional extra: pip install "
                      "'jaxlm[beam]'.") from None
    manifest = beam.prepare_beam(settings, output, _RUNNER.value, argv[1:])
  else:
    manifest = staging.prepare_to(settings, output, _WORKERS.value)
  for split, c in manifest['splits'].items():
    print(f'{split}: {c["documents"]:,} documents, {c["tokens"]:,} tokens, {c["bytes"]:,} bytes '
          f'in {len(c["shards"])} shard(s)')
  print(f'wrote {paths.path(_OUTPUT.value) / "manifest.json"}')


if __name__ == '__main__':
  cli.run(main, positional=True)
