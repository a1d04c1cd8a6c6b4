"""Benchmark `jaxlm.prepare`: throughput with 1 and 2 workers and peak memory, on a synthetic
JSONL corpus made from the shipped text; and each way of preparing across machines beside the
tokenizer's own ceiling.

  python launch/bench_prepare.py --size_mb=2048 --tokenizer=byte [--workdir=/tmp/bench_prepare]
  python launch/bench_prepare.py --size_mb=256 --workers=2 --keep=/tmp/prepared  # then:
  python -m jaxlm.bench --config=configs/gpt2_124m.py --what=data --config.data.corpus=/tmp/prepared
  python launch/bench_prepare.py --size_mb=256 --tokenizer=huggingface \
      --modes=ceiling,workers:1,workers:2,array:2,beam:2 [--doc_kb=3]

Modes: `workers:W` is one host with W worker processes; `array:N` is a job array, --plan, then N
tasks at once (one worker each), then --finalize, timed from the plan's start to the manifest;
`beam:W` is the Beam pipeline on the DirectRunner with W worker processes (the `beam` extra);
`ceiling` is the tokenizer's encoding of the same texts into arrays, in one process, as prepare
calls it (`encode_arrays` on the same batches), only those calls timed (what one worker could
reach if reading, hashing and writing cost nothing), and each mode's share of ceiling x its
processes is printed. SentencePiece and Hugging Face tokenizers are made once before the modes
(an 8,192-token SentencePiece model, or a byte-level BPE tokenizer.json, trained on a 20 MiB
sample) and given to each by --tokenizer_path, so no mode pays for training.

The corpus is the shipped corpus's speeches, shuffled with a fixed seed and repeated, one JSONL
line each (or, with --doc_kb, consecutive speeches joined into documents of a few KiB, the size
of a web page), until it holds --size_mb MiB. Each worker count prepares it from scratch in its own
output directory; the script prints MiB/s, documents/s, tokens/s, the CPU seconds of the
process tree (user and system) and the peak resident memory of the whole process tree (sampled
every 0.1 s with psutil, the sum over the main process and its workers) and of its largest
process. Everything it writes is deleted at the end, except the
dataset of the last worker count when --keep names where to move it (for `jaxlm.bench
--what=data`).
"""

import json
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from absl import flags

from jaxlm import cli

_SIZE = flags.DEFINE_integer('size_mb', 256, 'Size of the synthetic corpus (MiB).')
_TOKENIZER = flags.DEFINE_enum('tokenizer', 'byte', ['byte', 'sentencepiece', 'huggingface'],
                               'As jaxlm.prepare.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Worker counts to compare (modes workers:W).')
_MODES = flags.DEFINE_list('modes', [], 'ceiling, workers:W, array:N, beam:W (replaces '
                           '--workers when given).')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/jaxlm_bench_prepare', 'Scratch directory.')
_DOC_KB = flags.DEFINE_float('doc_kb', 0, 'Join consecutive speeches into documents of at least '
                             'this many KiB (web pages are a few KiB); 0: one speech each '
                             '(~180 bytes).')
_CHUNK_MB = flags.DEFINE_float('chunk_mb', 64.0, 'As jaxlm.prepare.')
_KEEP = flags.DEFINE_string('keep', '', 'Move the last prepared dataset here instead of deleting '
                            'it (a new directory).')


def make_corpus(path: Path, size_mb: int, doc_kb: float = 0) -> int:
  """Writes the synthetic JSONL corpus; returns its number of documents."""
  text = (Path(__file__).resolve().parents[1] / 'jaxlm' / 'data' / 'tinyshakespeare.txt')
  speeches = [s for s in text.read_text(encoding='utf-8').split('\n\n') if s.strip()]
  rng, written, docs = random.Random(0), 0, 0
  with open(path, 'w', encoding='utf-8') as f:
    while written < size_mb * 2**20:
      rng.shuffle(speeches)
      for s in _joined(speeches, doc_kb):
        line = json.dumps({'text': s, 'id': docs}) + '\n'
        f.write(line)
        written, docs = written + len(line.encode()), docs + 1
        if written >= size_mb * 2**20:
          break
  return docs


def _joined(speeches: list[str], doc_kb: float) -> list[str]:
  """The speeches in order, consecutive ones joined (by a blank line) into documents of at least
  doc_kb KiB each; doc_kb=0: one speech a document."""
  if not doc_kb:
    return speeches
  out, current = [], []
  for s in speeches:
    current.append(s)
    if sum(map(len, current)) >= doc_kb * 1024:
      out.append('\n\n'.join(current))
      current = []
  return out + (['\n\n'.join(current)] if current else [])


def measure(cmd: list[str]) -> dict:
  """Runs cmd; its wall time, the CPU time of its process tree (user and system, of every
  process reaped below it) and the peak RSS of the tree (sum) and of its largest process."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  root, total_peak, single_peak = psutil.Process(process.pid), 0, 0
  while process.poll() is None:
    try:
      tree = [root] + root.children(recursive=True)
      rss = [p.memory_info().rss for p in tree]
      total_peak, single_peak = max(total_peak, sum(rss)), max(single_peak, max(rss))
    except psutil.Error:
      pass
    time.sleep(0.1)
  seconds = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
  out = process.stdout.read()
  if process.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed:\n{out[-3000:]}')
  return dict(seconds=seconds, cpu_seconds=cpu, tree_rss_mib=total_peak / 2**20,
              process_rss_mib=single_peak / 2**20)


def make_tokenizer(root: Path, corpus: Path, kind: str) -> list[str]:
  """The --tokenizer_path flag every mode gets: a SentencePiece model or a byte-level BPE
  tokenizer.json trained once on the first 20 MiB of the corpus (none for bytes)."""
  if kind == 'byte':
    return []
  sample = root / 'sample.txt'
  with open(corpus, encoding='utf-8') as f, open(sample, 'w', encoding='utf-8') as out:
    size = 0
    for line in f:
      text = json.loads(line)['text']
      out.write(text + '\n')
      size += len(text)
      if size > 20 * 2**20:
        break
  if kind == 'sentencepiece':
    from jaxlm.data.tokenizers import train_sentencepiece  # pylint: disable=import-outside-toplevel
    train_sentencepiece([sample], root / 'spm.model', 8192)
    return [f'--tokenizer_path={root / "spm.model"}']
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train([str(sample)], trainers.BpeTrainer(
      vocab_size=8192, special_tokens=['<|endoftext|>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(root / 'tokenizer.json'))
  return [f'--tokenizer_path={root / "tokenizer.json"}']


def ceiling(corpus: Path, kind: str, tokenizer_args: list[str]) -> dict:
  """The tokenizer encoding every text of the corpus into arrays in this process, as prepare
  calls it (`encode_arrays` on the same batches of texts), only those calls timed; each text is
  parsed from its line first (not timed)."""
  # pylint: disable-next=import-outside-toplevel
  from jaxlm.data.chunk import text_batches
  # pylint: disable-next=import-outside-toplevel
  from jaxlm.data.tokenizers import (ByteTokenizer, HuggingFaceTokenizer,
                                     SentencePieceTokenizer, encode_arrays)
  path = tokenizer_args[0].split('=', 1)[1] if tokenizer_args else ''
  tok = {'byte': ByteTokenizer, 'sentencepiece': SentencePieceTokenizer,
         'huggingface': HuggingFaceTokenizer}[kind](*([path] if path else []))

  def texts():  # streamed: with 1 GiB of texts held in memory, the Hugging Face encoder ran
    with open(corpus, encoding='utf-8') as f:  # 30% slower than on each text as it is read
      for line in f:
        yield json.loads(line)['text']
  seconds, tokens = 0.0, 0
  for batch in text_batches(texts()):
    start = time.perf_counter()
    arrays = encode_arrays(tok, batch)
    seconds += time.perf_counter() - start
    tokens += sum(len(a) for a in arrays)
  return dict(seconds=seconds, tokens=tokens)


def run_mode(mode: str, corpus: Path, out: Path, common: list[str]) -> dict:
  """One way of preparing the corpus into `out`: its wall time and peak memory."""
  kind, n = mode.split(':')
  prepare = [sys.executable, '-m', 'jaxlm.prepare', f'--source={corpus}', f'--output={out}',
             *common]
  if kind == 'workers':
    return measure([*prepare, f'--workers={n}'])
  if kind == 'beam':
    return measure([*prepare, '--runner=DirectRunner', '--', f'--direct_num_workers={n}',
                    '--direct_running_mode=multi_processing'])
  script = ' && '.join([  # array: the plan, N tasks at once, then finalize, as one timed tree
      shlex.join([*prepare, '--plan']),
      '{ ' + ' '.join(shlex.join([*prepare, '--workers=1', f'--task={i}/{n}']) + ' &'
                      for i in range(int(n))) + ' wait; }',
      shlex.join([*prepare, '--finalize'])])
  return measure(['bash', '-c', script])


def main(argv: list[str]) -> None:
  del argv
  cli.require(_SIZE, _SIZE.value >= 1, 'at least 1 MiB')
  cli.require(_DOC_KB, _DOC_KB.value >= 0, '0 or more')
  cli.require(_WORKERS, all(w.isdigit() and int(w) >= 1 for w in _WORKERS.value),
              'a comma-separated list of positive worker counts')
  modes = _MODES.value or [f'workers:{w}' for w in _WORKERS.value]
  cli.require(_MODES, all(m == 'ceiling' or (m.partition(':')[0] in ('workers', 'array', 'beam')
                                              and m.partition(':')[2].isdigit()
                                              and int(m.partition(':')[2]) >= 1) for m in modes),
              'ceiling, workers:W, array:N or beam:W, comma-separated')
  cli.require(_KEEP, not _KEEP.value or not Path(_KEEP.value).exists(),
              'a path that does not exist')
  root = Path(_WORKDIR.value)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  try:
    corpus = root / 'corpus.jsonl'
    docs = make_corpus(corpus, _SIZE.value, _DOC_KB.value)
    mib = corpus.stat().st_size / 2**20
    print(f'corpus: {mib:,.0f} MiB, {docs:,} documents of {mib * 2**20 / docs:,.0f} bytes on '
          f'average ({_TOKENIZER.value} tokenizer, chunks of '
          f'{_CHUNK_MB.value:g} MiB, {psutil.cpu_count()} cores)', flush=True)
    tokenizer_args = make_tokenizer(root, corpus, _TOKENIZER.value)
    common = [f'--tokenizer={_TOKENIZER.value}', *tokenizer_args, f'--chunk_mb={_CHUNK_MB.value}',
              '--vocab_size=8192', '--sample_mb=20']
    top = None  # the ceiling's tokens/s
    for mode in modes:
      if mode == 'ceiling':
        r = ceiling(corpus, _TOKENIZER.value, tokenizer_args)
        top = r['tokens'] / r['seconds']
        print(f'ceiling (encode alone, one process): {r["seconds"]:.1f} s | '
              f'{mib / r["seconds"]:.1f} MiB/s | {top:,.0f} tokens/s', flush=True)
        continue
      out = root / f'prepared_{mode.replace(":", "_")}'
      r = run_mode(mode, corpus, out, common)
      manifest = json.loads((out / 'manifest.json').read_text())
      tokens = sum(s['tokens'] for s in manifest['splits'].values())
      share = ''
      if top:
        share = f' | {tokens / r["seconds"] / (top * int(mode.split(":")[1])):.0%} of ceiling x ' \
                f'{mode.split(":")[1]}'
      print(f'{mode}: {r["seconds"]:.1f} s | {mib / r["seconds"]:.1f} MiB/s | '
            f'{docs / r["seconds"]:,.0f} docs/s | {tokens / r["seconds"]:,.0f} tokens/s{share} | '
            f'{r["cpu_seconds"]:.1f} CPU s | peak RSS {r["tree_rss_mib"]:,.0f} MiB in all, '
            f'{r["process_rss_mib"]:,.0f} MiB in the largest process', flush=True)
      if _KEEP.value and mode == modes[-1]:
        shutil.move(str(out), _KEEP.value)
        print(f'kept the prepared dataset in {_KEEP.value}')
      else:
        shutil.rmtree(out)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main)
