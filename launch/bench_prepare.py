"""Benchmark `jaxlm.prepare`: throughput with 1 and 2 workers and peak memory, on a synthetic
JSONL corpus made from the shipped text.

  python launch/bench_prepare.py --size_mb=2048 --tokenizer=byte [--workdir=/tmp/bench_prepare]
  python launch/bench_prepare.py --size_mb=256 --workers=2 --keep=/tmp/prepared  # then:
  python -m jaxlm.bench --config=configs/gpt2_124m.py --what=data --config.data.corpus=/tmp/prepared

The corpus is the shipped corpus's speeches, shuffled with a fixed seed and repeated, one JSONL
line each, until it holds --size_mb MiB. Each worker count prepares it from scratch in its own
output directory; the script prints MiB/s, documents/s, tokens/s and the peak resident memory of
the whole process tree (sampled every 0.1 s with psutil, the sum over the main process and its
workers) and of its largest process. Everything it writes is deleted at the end, except the
dataset of the last worker count when --keep names where to move it (for `jaxlm.bench
--what=data`).
"""

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from absl import flags

from jaxlm import cli

_SIZE = flags.DEFINE_integer('size_mb', 256, 'Size of the synthetic corpus (MiB).')
_TOKENIZER = flags.DEFINE_enum('tokenizer', 'byte', ['byte', 'sentencepiece'], 'As jaxlm.prepare.')
_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Worker counts to compare.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/jaxlm_bench_prepare', 'Scratch directory.')
_CHUNK_MB = flags.DEFINE_float('chunk_mb', 64.0, 'As jaxlm.prepare.')
_KEEP = flags.DEFINE_string('keep', '', 'Move the last prepared dataset here instead of deleting '
                            'it (a new directory).')


def make_corpus(path: Path, size_mb: int) -> int:
  """Writes the synthetic JSONL corpus; returns its number of documents."""
  text = (Path(__file__).resolve().parents[1] / 'jaxlm' / 'data' / 'tinyshakespeare.txt')
  speeches = [s for s in text.read_text(encoding='utf-8').split('\n\n') if s.strip()]
  rng, written, docs = random.Random(0), 0, 0
  with open(path, 'w', encoding='utf-8') as f:
    while written < size_mb * 2**20:
      rng.shuffle(speeches)
      for s in speeches:
        line = json.dumps({'text': s, 'id': docs}) + '\n'
        f.write(line)
        written, docs = written + len(line.encode()), docs + 1
        if written >= size_mb * 2**20:
          break
  return docs


def measure(cmd: list[str]) -> dict:
  """Runs cmd; its wall time and the peak RSS of its process tree (sum) and largest process."""
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
  out = process.stdout.read()
  if process.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed:\n{out[-3000:]}')
  return dict(seconds=seconds, tree_rss_mib=total_peak / 2**20, process_rss_mib=single_peak / 2**20)


def main(argv: list[str]) -> None:
  del argv
  cli.require(_SIZE, _SIZE.value >= 1, 'at least 1 MiB')
  cli.require(_WORKERS, all(w.isdigit() and int(w) >= 1 for w in _WORKERS.value),
              'a comma-separated list of positive worker counts')
  cli.require(_KEEP, not _KEEP.value or not Path(_KEEP.value).exists(),
              'a path that does not exist')
  root = Path(_WORKDIR.value)
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir(parents=True)
  try:
    corpus = root / 'corpus.jsonl'
    docs = make_corpus(corpus, _SIZE.value)
    mib = corpus.stat().st_size / 2**20
    print(f'corpus: {mib:,.0f} MiB, {docs:,} documents ({_TOKENIZER.value} tokenizer, chunks of '
          f'{_CHUNK_MB.value:g} MiB, {psutil.cpu_count()} cores)', flush=True)
    for workers in _WORKERS.value:
      out = root / f'prepared_{workers}'
      r = measure([sys.executable, '-m', 'jaxlm.prepare', f'--source={corpus}', f'--output={out}',
                   f'--tokenizer={_TOKENIZER.value}', f'--workers={workers}',
                   f'--chunk_mb={_CHUNK_MB.value}', '--vocab_size=8192', '--sample_mb=20'])
      manifest = json.loads((out / 'manifest.json').read_text())
      tokens = sum(s['tokens'] for s in manifest['splits'].values())
      print(f'workers {workers}: {r["seconds"]:.1f} s | {mib / r["seconds"]:.1f} MiB/s | '
            f'{docs / r["seconds"]:,.0f} docs/s | {tokens / r["seconds"]:,.0f} tokens/s | peak RSS '
            f'{r["tree_rss_mib"]:,.0f} MiB in all, {r["process_rss_mib"]:,.0f} MiB in the largest '
            'process', flush=True)
      if _KEEP.value and workers == _WORKERS.value[-1]:
        shutil.move(str(out), _KEEP.value)
        print(f'kept the prepared dataset in {_KEEP.value}')
      else:
        shutil.rmtree(out)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main)
