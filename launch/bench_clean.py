"""jaxlm.clean against the same datatrove pipeline written by hand: wall time, documents/s and MB/s
per stage, and the peak memory of the MinHash stages, on a web-like corpus with planted duplicates
(launch/web_corpus.py), for each recipe and worker count, side by side in one run.

  python launch/bench_clean.py --size_mb=64 --workers=1,2 --recipes=minimal,fineweb

`fineweb` runs without its language step (no model is shipped). The hand-written pipeline is what
a datatrove user would write for the same recipe: one reader, the same filters and formatters with
exclusion writers, datatrove's exact deduplication (ExactDedup*) and its four MinHash stages
(whose filter keeps the cluster member datatrove's union-find picks), writing the kept documents
per task. jaxlm adds the global input order, the choice of the kept member, the tallies and the
outputs written one per input file with fixed gzip headers: its overhead is the difference.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'launch'))

import web_corpus  # noqa: E402  pylint: disable=wrong-import-position

FINEWEB_STEPS = 'extract,gopher_repetition,gopher_quality,c4_quality,fineweb_quality,minhash,pii'


class Peak:
  """Samples the resident memory of a process and its children every 50 ms, per stage."""

  def __init__(self, pid: int):
    self.process, self.stage, self.peaks = psutil.Process(pid), 'start', {}
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()

  def _run(self):
    while not self.done.is_set():
      try:
        procs = [self.process] + self.process.children(recursive=True)
        rss = sum(p.memory_info().rss for p in procs if p.is_running())
      except psutil.Error:
        rss = 0
      self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)
      time.sleep(0.05)


def run_jaxlm(inputs: Path, out: Path, recipe: str, workers: int) -> dict:
  args = [sys.executable, '-m', 'jaxlm.clean', f'--input={inputs}', f'--output={out}',
          f'--recipe=configs/clean/{recipe}.py', f'--tasks={workers}', f'--workers={workers}']
  if recipe == 'fineweb':
    args.append(f'--recipe.steps={FINEWEB_STEPS}')
  start = time.perf_counter()
  p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
  peak = Peak(p.pid)
  stages = {}
  for line in p.stdout:
    name = line.split(':')[0]
    if ' task(s) in ' in line:
      stages[name] = line.strip()
      peak.stage = f'after {name}'
  p.wait()
  peak.done.set()
  if p.returncode:
    raise SystemExit(f'jaxlm.clean failed ({p.returncode})')
  wall = time.perf_counter() - start
  # The peak while a stage ran is recorded under the stage before it ('after <previous>').
  names = list(stages)
  minhash = [f'after {names[i - 1]}' for i, n in enumerate(names) if n.startswith('minhash') and i]
  return dict(wall=wall, stages=stages, minhash_peak=max(peak.peaks.get(k, 0) for k in minhash)
              if minhash else 0)


def hand_pipeline(inputs: Path, out: Path, recipe: str, workers: int) -> dict:
  """The same recipe as a plain datatrove pipeline (what one would write without jaxlm)."""
  # pylint: disable=import-outside-toplevel
  from datatrove.executor import LocalPipelineExecutor
  from datatrove.pipeline import filters, formatters
  from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                        MinhashDedupFilter, MinhashDedupSignature)
  from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter,
                                                    ExactDedupSignature, ExactFindDedups)
  from datatrove.pipeline.dedup.minhash import MinhashConfig
  from datatrove.pipeline.extractors import Trafilatura
  from datatrove.pipeline.readers import JsonlReader, WarcReader
  from datatrove.pipeline.writers import JsonlWriter
  from datatrove.utils.hashing import HashConfig

  def excl(step):
    return JsonlWriter(str(out / 'removed' / step))

  def reader(folder, pattern):
    if pattern.endswith('warc.gz'):
      return WarcReader(str(folder), glob_pattern=pattern)
    return JsonlReader(str(folder), glob_pattern=pattern)

  pattern = next(inputs.iterdir()).name.split('.', 1)[1]
  pattern = f'*.{pattern}'
  minhash = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1,
                          hash_config=HashConfig(precision=64))
  if recipe == 'minimal':
    first = [reader(inputs, pattern), formatters.FTFYFormatter()]
  else:
    first = [reader(inputs, pattern), Trafilatura(favour_precision=True, timeout=1.0,
                                                  deduplicate=False),
             filters.GopherRepetitionFilter(exclusion_writer=excl('gopher_repetition')),
             filters.GopherQualityFilter(exclusion_writer=excl('gopher_quality')),
             filters.C4QualityFilter(filter_no_terminal_punct=False,
                                     exclusion_writer=excl('c4_quality')),
             filters.FineWebQualityFilter(exclusion_writer=excl('fineweb_quality'))]
  stages = []
  if recipe == 'minimal':
    exact = ExactDedupConfig(content_getter=lambda doc: doc.text)
    stages.append(first + [JsonlWriter(str(out / 'filtered'))])
    stages.append([JsonlReader(str(out / 'filtered')),
                   ExactDedupSignature(str(out / 'exact_sigs'), config=exact)])
    stages.append([ExactFindDedups(str(out / 'exact_sigs'), str(out / 'exact_dups'),
                                   config=exact)])
    stages.append([JsonlReader(str(out / 'filtered')),
                   ExactDedupFilter(str(out / 'exact_dups'), config=exact,
                                    exclusion_writer=excl('exact_dedup')),
                   JsonlWriter(str(out / 'exact'))])
    source = out / 'exact'
  else:
    stages.append(first + [JsonlWriter(str(out / 'filtered'))])
    source = out / 'filtered'
  tail = [] if recipe == 'minimal' else [formatters.PIIFormatter()]
  stages += [
      [JsonlReader(str(source)), MinhashDedupSignature(str(out / 'sigs'), config=minhash)],
      [MinhashDedupBuckets(str(out / 'sigs'), str(out / 'buckets'), config=minhash)],
      [MinhashDedupCluster(str(out / 'buckets'), str(out / 'clusters'), config=minhash)],
      [JsonlReader(str(source)), MinhashDedupFilter(str(out / 'clusters'),
                                                   exclusion_writer=excl('minhash')),
       *tail, JsonlWriter(str(out / 'kept'))]]
  tasks = [workers] * len(stages)
  tasks[-3], tasks[-2] = minhash.num_buckets, 1
  if recipe == 'minimal':
    tasks[2] = 1
  start = time.perf_counter()
  saved = sys.stderr
  with open(out.parent / f'{out.name}.log', 'w') as log:  # datatrove's task logs
    sys.stderr = log
    try:
      for i, (pipeline, n) in enumerate(zip(stages, tasks)):
        LocalPipelineExecutor(pipeline, tasks=n, workers=min(workers, n), start_method='fork',
                              logging_dir=str(out / 'logs' / str(i))).run()
    finally:
      sys.stderr = saved
  return dict(wall=time.perf_counter() - start)


def run_hand(inputs: Path, out: Path, recipe: str, workers: int) -> dict:
  """hand_pipeline in a process of its own, timed from its start like jaxlm.clean's."""
  start = time.perf_counter()
  subprocess.run([sys.executable, __file__, '--hand', str(inputs), str(out), recipe,
                  str(workers)], check=True, cwd=ROOT)
  return dict(wall=time.perf_counter() - start)


def main() -> None:
  if sys.argv[1:2] == ['--hand']:  # (run_hand's process)
    inputs, out, recipe, workers = sys.argv[2:]
    hand_pipeline(Path(inputs), Path(out), recipe, int(workers))
    return
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size_mb', type=float, default=64)
  parser.add_argument('--files', type=int, default=8, help='input files (tasks split by file)')
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--recipes', default='minimal,fineweb')
  args = parser.parse_args()
  tmp = Path(tempfile.mkdtemp(prefix='bench_clean_'))
  try:
    corpora = {}
    for kind, suffix in (('jsonl', 'jsonl.gz'), ('warc', 'warc.gz')):
      folder = tmp / kind
      for i in range(args.files):
        web_corpus.write(folder / f'part{i:03d}.{suffix}', args.size_mb / args.files, seed=i)
      corpora[kind] = folder
    size = sum(p.stat().st_size for p in corpora['jsonl'].iterdir())
    print(f'corpus: {args.size_mb:g} MB of text in {args.files} files '
          f'({size / 2**20:.1f} MiB as gzip JSONL; WARC for fineweb)', flush=True)
    rows = []
    for recipe in args.recipes.split(','):
      inputs = corpora['jsonl' if recipe == 'minimal' else 'warc']
      for workers in (int(w) for w in args.workers.split(',')):
        for who in ('datatrove', 'jaxlm'):
          out = tmp / f'{recipe}-{workers}-{who}'
          r = (run_jaxlm if who == 'jaxlm' else run_hand)(inputs, out, recipe, workers)
          rows.append((recipe, workers, who, r))
          line = f'{recipe:8s} workers={workers} {who:9s} {r["wall"]:7.1f} s'
          if who == 'jaxlm':
            line += f'  MinHash peak {r["minhash_peak"] / 2**20:,.0f} MiB'
          print(line, flush=True)
          if who == 'jaxlm':
            for stage in r['stages'].values():
              print(f'    {stage}', flush=True)
          shutil.rmtree(out, ignore_errors=True)
    print('\nrecipe    workers  datatrove (s)  jaxlm (s)  overhead')
    for recipe, workers, who, r in rows:
      if who == 'jaxlm':
        base = next(x for rr, w, ww, x in rows if (rr, w, ww) == (recipe, workers, 'datatrove'))
        print(f'{recipe:9s} {workers:7d}  {base["wall"]:13.1f}  {r["wall"]:9.1f}  '
              f'{100 * (r["wall"] / base["wall"] - 1):+7.1f}%')
    print(json.dumps([dict(recipe=a, workers=b, who=c, wall=d['wall']) for a, b, c, d in rows]))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
  main()
