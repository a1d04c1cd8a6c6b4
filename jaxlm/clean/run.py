"""Plans a cleaning run as datatrove stages and runs them on one of datatrove's executors.

The output directory:

  clean.json               the settings (recipe, inputs, sample), then the counts once complete
  kept/<file>.jsonl.gz     the kept documents of input file <file> (its number), in input order
  removed/<step>/<file>.jsonl.gz   what each step removed, with its rule and (for a duplicate)
                           the id of the kept document of its cluster
  logs/<stage>/            datatrove's logs, stats and completion markers (a re-run skips the
                           finished tasks)
  work/                    intermediate documents and indexes, removed once the run is complete

Stages: `read` (the inputs and every step up to the first deduplication), then per
deduplication `<step>-index` (+ datatrove's MinHash `signatures`, `buckets`, `clusters`),
`<step>-choose` (one task: the first member of each cluster in input order is kept) and
`<step>-apply` (removes the others, then the steps up to the next deduplication), then
`assemble` (writes the outputs) and `finish` (counts, clean.json).
"""

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from jaxlm.clean import dedup
from jaxlm.clean import recipe as recipes
from jaxlm.clean import steps as S
from jaxlm.data.tokenizers import atomic_write
from jaxlm.errors import UserError, stopping_children

FORMAT = 1


@dataclasses.dataclass
class Request:
  """What a cleaning run is asked to do (the flags of jaxlm.clean)."""
  inputs: list[str]
  output: Path
  recipe_name: str
  steps: list[recipes.Step]
  text_field: str = 'text'
  sample: float = 1.0
  seed: int = 0
  dedup_against: str = ''
  decontaminate: tuple[str, ...] = ()
  include_path: str = ''
  tasks: int = 1
  workers: int = 1  # tasks at once; 0: one (local) or no limit (slurm, ray)
  executor: str = 'local'
  slurm: dict = dataclasses.field(default_factory=dict)

  def settings(self) -> dict:
    """Everything the outputs depend on (not the number of tasks or workers)."""
    stamps = [[p, *_stamp(p)] for p in self.inputs]
    return dict(format=FORMAT, recipe=dict(name=self.recipe_name, steps=[
        dict(name=s.name, params=s.params) for s in self.steps]), inputs=stamps,
                text_field=self.text_field, sample=self.sample, seed=self.seed,
                dedup_against=self.dedup_against, decontaminate=list(self.decontaminate))


def _stamp(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


@dataclasses.dataclass
class Stage:
  name: str
  pipeline: list
  tasks: int
  reads: str = ''  # the tally folder of the documents the stage reads (for its speed)


def _segment_steps(steps: list[recipes.Step], work: Path, decont: Path):
  """The document-by-document steps as datatrove pipeline steps, each followed by its tally."""
  out = []
  for step in steps:
    removed = S.writer(str(work / 'removed' / step.name))
    p = dict(step.params)
    if step.name == 'extract':
      block = S.Extract(exclusion_writer=removed, **p)
    elif step.name == 'language':
      block = S.Language(exclusion_writer=removed, **p)
    elif step.name == 'decontaminate':
      block = S.Decontaminate(str(decont), exclusion_writer=removed, **p)
    elif step.name == 'pii':
      block = S.StablePII(**p)
    else:
      cls = recipes._classes()[step.name]  # pylint: disable=protected-access
      takes_writer = 'exclusion_writer' in cls.__init__.__code__.co_varnames
      block = cls(**p, **({'exclusion_writer': removed} if takes_writer else {}))
    out += [block, S.Tally(str(work / 'tally' / step.name))]
  return out


def plan(request: Request, reference_files: list[str]) -> list[Stage]:
  """The stages of a run, in order (each runs after the one before has finished)."""
  # pylint: disable=import-outside-toplevel
  from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                        MinhashDedupSignature)
  from datatrove.pipeline.dedup.minhash import MinhashConfig
  from datatrove.pipeline.readers import JsonlReader
  from datatrove.utils.hashing import HashConfig
  work, n = request.output / 'work', request.tasks
  decont = work / 'decontaminate'
  segments: list[list[recipes.Step]] = [[]]
  dedups: list[recipes.Step] = []
  for step in request.steps:
    if step.is_dedup:
      dedups.append(step)
      segments.append([])
    else:
      segments[-1].append(step)
  read = S.ReadInputs(request.inputs, request.text_field, request.sample, request.seed,
                      removed=str(work / 'removed' / 'read'), errors=str(work / 'errors'))
  stages = [Stage('read', [read, S.Tally(str(work / 'tally' / 'read'))] +
                  _segment_steps(segments[0], work, decont) +
                  [S.writer(str(work / 'docs' / '0'))], n)]
  last_tally = (segments[0][-1].name if segments[0] else 'read')
  for j, step in enumerate(dedups):
    docs = str(work / 'docs' / str(j))
    d = work / step.name

    def reader(docs=docs):
      return JsonlReader(docs, glob_pattern='*.jsonl', compression=None)

    index = [reader()] + ([S.ReadReference(reference_files)] if reference_files else [])
    index.append(dedup.IndexDocuments(str(d / 'index'), exact=step.name == 'exact_dedup'))
    clusters = ''
    if step.name == 'minhash':
      p = step.params
      config = MinhashConfig(n_grams=p['n_grams'], num_buckets=p['num_buckets'],
                             hashes_per_bucket=p['hashes_per_bucket'], seed=p['seed'],
                             hash_config=HashConfig(precision=64))
      index.append(MinhashDedupSignature(str(d / 'signatures'), config=config))
    stages.append(Stage(f'{step.name}-index', index, n, reads=last_tally))
    if step.name == 'minhash':
      stages.append(Stage(f'{step.name}-buckets', [MinhashDedupBuckets(
          str(d / 'signatures'), str(d / 'buckets'), config=config)], p['num_buckets']))
      stages.append(Stage(f'{step.name}-clusters', [MinhashDedupCluster(
          str(d / 'buckets'), str(d / 'clusters'), config=config, save_cluster_id=True)], 1))
      clusters = str(d / 'clusters')
    stages.append(Stage(f'{step.name}-choose', [dedup.ChooseKept(
        str(d / 'index'), str(d / 'chosen'), n, clusters)], 1))
    apply = [reader(), dedup.DropDuplicates(step.name, str(d / 'chosen'),
                                        S.writer(str(work / 'removed' / step.name))),
             S.Tally(str(work / 'tally' / step.name))]
    apply += _segment_steps(segments[j + 1], work, decont)
    apply.append(S.writer(str(work / 'docs' / str(j + 1))))
    stages.append(Stage(f'{step.name}-apply', apply, n, reads=last_tally))
    last_tally = segments[j + 1][-1].name if segments[j + 1] else step.name
  names = ['read'] + [s.name for s in request.steps]
  stages.append(Stage('assemble', [S.Assemble(str(work), str(request.output),
                                              f'docs/{len(dedups)}', names)], n))
  stages.append(Stage('finish', [Finish(str(request.output), names)], 1))
  return stages


class Finish(S.PipelineStep):
  """The last stage: the counts of every step into clean.json (complete), and work/ removed."""
  name = 'finish'
  type = 'jaxlm'

  def __init__(self, output: str, names: list[str]):
    super().__init__()
    self.output, self.names = output, names

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    output = Path(self.output)
    record = json.loads((output / 'clean.json').read_text())
    record['counts'] = count(output, self.names)
    record['complete'] = True
    atomic_write(output / 'clean.json', (json.dumps(record, indent=1) + '\n').encode())
    shutil.rmtree(output / 'work', ignore_errors=True)
    return data


def count(output: Path, names: list[str]) -> list[dict]:
  """Per step: documents and bytes in, removed, out. Removed and the final out are counted from
  the files written; the documents that passed each step come from its tally."""
  rows, previous = [], None
  work = output / 'work'
  for name in names:
    removed = dict(documents=0, bytes=0)
    for path in sorted((output / 'removed' / name).glob('*.jsonl.gz')):
      for row in read_jsonl_gz(path):
        removed['documents'] += 1
        removed['bytes'] += len(row['text'].encode('utf-8'))
    out = S.tally(work / 'tally' / name)
    into = previous or dict(documents=out['documents'] + removed['documents'],
                            bytes=out['bytes'] + removed['bytes'])
    rows.append(dict(step=name, in_documents=into['documents'], in_bytes=into['bytes'],
                     removed_documents=removed['documents'], removed_bytes=removed['bytes'],
                     out_documents=out['documents'], out_bytes=out['bytes']))
    previous = out
  return rows


def read_jsonl_gz(path: Path):
  import gzip  # pylint: disable=import-outside-toplevel
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    for line in f:
      yield json.loads(line)


@contextlib.contextmanager
def _stderr_to(path: Path):
  """datatrove's tasks log at INFO to sys.stderr: while a stage runs, their lines go to a file
  (the process's own stderr, file descriptor 2, stays the terminal: jaxlm's sentences go there)."""
  from loguru import logger  # pylint: disable=import-outside-toplevel
  path.parent.mkdir(parents=True, exist_ok=True)
  saved = sys.stderr
  with open(path, 'a', encoding='utf-8') as f:
    sys.stderr = f
    try:
      yield
    finally:
      sys.stderr = saved
      logger.remove()  # datatrove re-adds a handler on the file after each in-process task
      logger.add(sys.stderr, level='ERROR')


# Started beside a local run: it follows the processes the command starts (task workers,
# datatrove's manager, trafilatura's sandboxes) and kills them if the command dies, even by
# SIGKILL, so that none goes on writing while the command is run again.
_WATCHDOG = r"""
import os, sys, time
import psutil
driver = psutil.Process(int(sys.argv[1]))
seen = {}
while True:
  try:
    for p in driver.children(recursive=True):
      if p.pid != os.getpid():
        seen[p.pid] = p
  except psutil.NoSuchProcess:
    break
  if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
    break
  time.sleep(0.1)
for p in seen.values():
  try:
    p.kill()
  except psutil.Error:
    pass
"""


@contextlib.contextmanager
def _watchdog():
  import subprocess  # pylint: disable=import-outside-toplevel
  dog = subprocess.Popen([sys.executable, '-c', _WATCHDOG, str(os.getpid())],
                         stdin=subprocess.DEVNULL)
  try:
    yield
  finally:
    dog.kill()
    dog.wait()


def executors(request: Request, stages: list[Stage]) -> list:
  """One datatrove executor per stage (SLURM and Ray: each depends on the one before)."""
  # pylint: disable=import-outside-toplevel
  logs = request.output / 'logs'
  made = []
  for stage in stages:
    common = dict(pipeline=stage.pipeline, tasks=stage.tasks,
                  logging_dir=str(logs / stage.name), skip_completed=True)
    if request.executor == 'local':
      from datatrove.executor import LocalPipelineExecutor
      # fork, not datatrove's forkserver: the workers start with datatrove and spaCy imported
      # (the driver runs no thread of its own), about 1.5 s less per stage.
      made.append(LocalPipelineExecutor(workers=min(request.workers or 1, stage.tasks),
                                        start_method='fork', **common))
    elif request.executor == 'slurm':
      from datatrove.executor import SlurmPipelineExecutor
      made.append(SlurmPipelineExecutor(
          job_name=f'clean-{stage.name}', time=request.slurm['time'],
          partition=request.slurm['partition'], workers=request.workers or -1,
          depends=made[-1] if made else None, venv_path=request.slurm.get('venv') or None,
          **common))
    else:
      from datatrove.executor import RayPipelineExecutor
      made.append(RayPipelineExecutor(workers=request.workers or -1,
                                      depends=made[-1] if made else None, **common))
  return made


def describe(request: Request, stages: list[Stage]) -> str:
  lines = [f'recipe {request.recipe_name}: ' + ', '.join(s.name for s in request.steps)]
  lines += [f'  {recipes.describe(s)}' for s in request.steps]
  workers = request.workers or ('1' if request.executor == 'local' else 'no limit')
  lines.append(f'stages ({request.executor} executor, tasks at once: {workers}):')
  for stage in stages:
    blocks = ', '.join(getattr(b, 'name', type(b).__name__) for b in stage.pipeline)
    lines.append(f'  {stage.name}: {stage.tasks} task(s): {blocks}')
  return '\n'.join(lines)


def execute(request: Request, stages: list[Stage]) -> None:
  """Runs the stages in order on this machine (local), or submits them (slurm, ray: the last
  stage, `finish`, completes clean.json when the jobs have run)."""
  made = executors(request, stages)
  logs = request.output / 'logs'
  if request.executor != 'local':
    made[-1].run()  # submits (SLURM) or runs (Ray) every stage through `depends`
    return
  work = request.output / 'work'
  with _watchdog():
    for stage, executor in zip(stages, made):
      _run_stage(stage, executor, logs, work)


def _run_stage(stage: Stage, executor, logs: Path, work: Path) -> None:
  start = time.perf_counter()
  try:
    with stopping_children(), _stderr_to(logs / f'{stage.name}.log'):
      executor.run()
  except Exception as e:  # pylint: disable=broad-except  # a task failed in its worker
    errors = sorted((work / 'errors').glob('*.txt')) if (work / 'errors').is_dir() else []
    if errors:
      raise UserError(errors[0].read_text()) from None
    raise UserError(f'the stage {stage.name} failed ({type(e).__name__}: '
                    f'{" ".join(str(e).split())[:200]}); its log is {logs / stage.name}/logs '
                    '(run the same command again to resume once fixed).') from None
  seconds = max(time.perf_counter() - start, 1e-9)
  line = f'{stage.name}: {stage.tasks} task(s) in {seconds:.1f} s'
  if stage.reads and (work / 'tally' / stage.reads).is_dir():
    t = S.tally(work / 'tally' / stage.reads)
    line += (f', {t["documents"]:,} documents ({t["documents"] / seconds:,.0f}/s), '
             f'{t["bytes"] / 1e6:,.1f} MB ({t["bytes"] / 1e6 / seconds:,.2f} MB/s)')
  elif stage.name == 'read' and (work / 'tally' / 'read').is_dir():
    t = S.tally(work / 'tally' / 'read')
    line += (f', {t["documents"]:,} documents read ({t["documents"] / seconds:,.0f}/s), '
             f'{t["bytes"] / 1e6:,.1f} MB ({t["bytes"] / 1e6 / seconds:,.2f} MB/s)')
  print(line, flush=True)
