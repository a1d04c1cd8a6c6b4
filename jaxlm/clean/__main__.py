"""Cleans a corpus before it is tokenized, on datatrove: extraction, quality filters, exact and
near deduplication, decontamination, with every removed document kept with its reason.

  python -m jaxlm.clean --input='crawl/*.warc.gz,web/*.jsonl.gz' --output=clean/web \
      [--recipe=configs/clean/minimal.py --recipe.minhash.num_buckets=20] [--tasks=4 --workers=2] \
      [--decontaminate=shakespeare_cloze,my_task.yaml] [--dedup_against=clean/old] \
      [--sample=0.01 --seed=0] [--dry_run] [--executor=local|slurm|ray]
  python -m jaxlm.clean report --output=clean/web
  python -m jaxlm.prepare --source=clean/web/kept --output=prepared/web

Inputs: text files (each one document), JSONL (.jsonl, .jsonl.gz, .json.gz, .ndjson; the text in
--text_field) and web archives (.warc, .warc.gz: the HTML of each response, for the `extract`
step). The kept documents go to <output>/kept/ (gzip JSONL: id, text, metadata), each removed one
to <output>/removed/<step>/ with its rule; clean.json records the recipe and the counts, and
jaxlm.prepare copies it into the prepared data's settings. Lines or files that are not UTF-8 (or
not JSON, or without the text field) are not refused: they are counted and kept under
removed/read/ with their rule. The outputs do not depend on --tasks or --workers, and a run
killed at any point resumes where it was (finished tasks are skipped) with the same bytes.
"""

import json
import sys
from pathlib import Path

from absl import flags

from jaxlm import cli
from jaxlm.errors import UserError

# configs/clean/minimal.py from the repository root, else the copy installed with jaxlm.
_MINIMAL = 'configs/clean/minimal.py'
if not Path(_MINIMAL).is_file():
  from jaxlm.configs import clean as _recipes  # pylint: disable=ungrouped-imports
  _MINIMAL = str(Path(_recipes.__file__).with_name('minimal.py'))
RECIPE = cli.ConfigFlag(default=_MINIMAL, name='recipe')
_INPUT = flags.DEFINE_list('input', [], 'Files, directories or globs (comma-separated): text, '
                           'JSONL (.jsonl, .jsonl.gz) or web archives (.warc, .warc.gz).')
_OUTPUT = flags.DEFINE_string('output', '', 'The output directory (kept/, removed/, clean.json); '
                              'report: the cleaned output to report on.')
_TEXT_FIELD = flags.DEFINE_string('text_field', 'text', 'The JSONL field that holds the text.')
_TASKS = flags.DEFINE_integer('tasks', 1, 'datatrove tasks per stage (the inputs are split by '
                              'file); the outputs are the same for any number.')
_WORKERS = flags.DEFINE_integer('workers', 0, 'Tasks run at once (local: processes); 0: one '
                                'on this machine, no limit on slurm or ray.')
_EXECUTOR = flags.DEFINE_enum('executor', 'local', ['local', 'slurm', 'ray'],
                              "datatrove's executor: processes on this machine, SLURM jobs "
                              '(one per stage, each depending on the one before) or Ray.')
_SLURM_PARTITION = flags.DEFINE_string('slurm_partition', '', 'slurm: the partition.')
_SLURM_TIME = flags.DEFINE_string('slurm_time', '4:00:00', 'slurm: the time limit per task.')
_SAMPLE = flags.DEFINE_float('sample', 1.0, 'The share of the input documents to clean, chosen '
                             'by a hash of (seed, document id): read what a recipe does first.')
_SEED = flags.DEFINE_integer('seed', 0, 'Of --sample.')
_DEDUP_AGAINST = flags.DEFINE_string('dedup_against', '', 'An earlier jaxlm.clean output: '
                                     'documents of this corpus that duplicate one kept there '
                                     'are removed (nothing is removed from it).')
_DECONTAMINATE = flags.DEFINE_list('decontaminate', [], 'lm-eval task names or task YAML files: '
                                   'documents sharing an n-gram with a task document go.')
_INCLUDE_PATH = flags.DEFINE_string('include_path', '', 'Directories of lm-eval task YAML files '
                                    '(besides jaxlm/tasks) for --decontaminate.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the steps and stages, run nothing.')


def input_files(patterns: list[str]) -> list[str]:
  """Every file named, in the order given (a directory or glob in sorted order), once each."""
  # pylint: disable=import-outside-toplevel
  from jaxlm import paths
  from jaxlm.data.sources import corpus_files
  cli.require(_INPUT, bool(patterns), 'files, directories or globs of text, JSONL or WARC')
  files: list[str] = []
  for pattern in patterns:
    if paths.is_url(pattern):
      raise UserError(f'--input names {pattern}, on a bucket; jaxlm.clean reads local (or '
                      'mounted) files: copy them here, or mount the bucket.')
    try:
      found = corpus_files(pattern) if pattern.strip() else []
    except UserError:
      found = []
    if not found:
      raise UserError(f'--input names {pattern!r}, which matches no file; give files, '
                      'directories or globs of text, JSONL or WARC files.')
    files += [str(p) for p in found if str(p) not in files]
  return files


def reference_files(value: str) -> list[str]:
  if not value:
    return []
  root = Path(value).expanduser()
  record = root / 'clean.json'
  if not record.is_file() or not json.loads(record.read_text()).get('complete'):
    raise UserError(f'--dedup_against={value} is not a complete jaxlm.clean output (no complete '
                    'clean.json there); give the --output of a finished cleaning run.')
  return [str(p) for p in sorted((root / 'kept').glob('*.jsonl.gz'))]


def task_documents(tasks: list[str], include_path: str) -> list[tuple[str, int, str, str]]:
  """(task, document number, prompt, answer) of every evaluation document of the tasks, read
  through lm-eval from local datasets; a YAML path adds its directory to the task search."""
  # pylint: disable=import-outside-toplevel
  from jaxlm import harness_tasks
  names, paths = [], [p for p in include_path.split(',') if p]
  for t in tasks:
    if t.endswith(('.yaml', '.yml')):
      path = Path(t).expanduser()
      if not path.is_file():
        raise UserError(f'--decontaminate names the task file {t}, which does not exist; give '
                        'an lm-eval task name or the path of a task YAML file.')
      import yaml
      try:
        name = yaml.safe_load(path.read_text().replace('!function', '')).get('task')
      except Exception:  # pylint: disable=broad-except  # YAML's many errors
        name = None
      if not isinstance(name, str):
        raise UserError(f'the task file {t} has no `task:` name that can be read; fix the file.')
      names.append(name)
      if str(path.parent) not in paths:
        paths.append(str(path.parent))
    else:
      names.append(t)
  manager = harness_tasks.tasks_to_run(names, ','.join(paths), what='--decontaminate')
  from lm_eval.tasks import get_task_dict
  try:
    loaded = get_task_dict(names, manager)
  except OSError as e:
    raise UserError(f'lm-eval could not load the tasks {", ".join(names)} ({e}); their datasets '
                    'must be on this machine (see README, "Downstream tasks").') from None
  out = []

  def walk(d):
    for key, value in d.items():
      if isinstance(value, dict):
        walk(value)
        continue
      name = getattr(key, 'group_name', key) if not isinstance(key, str) else key
      for number, doc in enumerate(value.eval_docs):
        query = str(value.doc_to_text(doc) or '')
        target = value.doc_to_target(doc)
        if value.OUTPUT_TYPE == 'multiple_choice':
          choices = value.doc_to_choice(doc)
          targets = target if isinstance(target, list) else [target]
          answers = [choices[t] if isinstance(t, int) else str(t) for t in targets]
        else:
          answers = [str(t) for t in (target if isinstance(target, list) else [target])]
        for answer in answers:
          out.append((name, number, query, answer))
  walk(loaded)
  return out


def clean() -> None:
  # pylint: disable=import-outside-toplevel
  from jaxlm.clean import recipe as recipes
  from jaxlm.clean import run
  cli.require(_OUTPUT, bool(_OUTPUT.value.strip()), 'the output directory')
  cli.require_local(_OUTPUT)
  cli.require_output(_OUTPUT)
  cli.require(_TASKS, _TASKS.value >= 1, 'at least 1')
  cli.require(_WORKERS, _WORKERS.value >= 0, '0 (the default) or more')
  cli.require(_SAMPLE, 0 < _SAMPLE.value <= 1, 'a share in (0, 1]')
  name, steps = recipes.read(RECIPE.value, tuple(_DECONTAMINATE.value))
  files = input_files(_INPUT.value)
  output = Path(_OUTPUT.value).expanduser()
  for step in steps:
    if step.name == 'language':
      model = step.params['model']
      if not model or not Path(model).expanduser().is_file():
        raise UserError(f'the language step needs a fastText model file (lid.176.bin or '
                        f'GlotLID), and --recipe.language.model={model!r} is '
                        f'{"not given" if not model else "no file"}; give its path, or drop the '
                        'step from --recipe.steps (nothing is downloaded).')
    if step.name == 'decontaminate' and not _DECONTAMINATE.value:
      raise UserError('the recipe has the step decontaminate but --decontaminate names no task; '
                      'give the lm-eval tasks (names or YAML files) to decontaminate against.')
  if _EXECUTOR.value == 'slurm' and not _SLURM_PARTITION.value:
    raise UserError('--executor=slurm needs --slurm_partition (and --slurm_time); give them.')
  references = reference_files(_DEDUP_AGAINST.value)
  if references and not any(s.is_dedup for s in steps):
    raise UserError('--dedup_against needs a deduplication step (exact_dedup or minhash) in the '
                    'recipe; add one to --recipe.steps.')
  if _DEDUP_AGAINST.value and Path(_DEDUP_AGAINST.value).resolve() == output.resolve():
    raise UserError('--dedup_against is the --output itself; give an earlier cleaning run.')
  request = run.Request(
      inputs=files, output=output, recipe_name=name, steps=steps, text_field=_TEXT_FIELD.value,
      sample=_SAMPLE.value, seed=_SEED.value,
      dedup_against=str(Path(_DEDUP_AGAINST.value).resolve()) if _DEDUP_AGAINST.value else '',
      decontaminate=tuple(_DECONTAMINATE.value), include_path=_INCLUDE_PATH.value,
      tasks=_TASKS.value, workers=_WORKERS.value, executor=_EXECUTOR.value,
      slurm=dict(partition=_SLURM_PARTITION.value, time=_SLURM_TIME.value,
                 venv=str(Path(sys.prefix) / 'bin' / 'activate')
                 if (Path(sys.prefix) / 'bin' / 'activate').is_file() else ''))
  from loguru import logger  # datatrove's logger: its warnings while the stages are built
  logger.remove()
  logger.add(sys.stderr, level='ERROR')
  stages = run.plan(request, references)
  if _DRY_RUN.value:
    print(run.describe(request, stages))
    return
  settings = json.loads(json.dumps(request.settings()))  # (as it reads back)
  record_path = output / 'clean.json'
  fresh, existed = not record_path.exists(), output.exists()
  if record_path.exists():
    record = json.loads(record_path.read_text())
    if {k: record.get(k) for k in settings} != settings:
      raise UserError(f'{output} holds the results of another cleaning (another recipe, other '
                      f'inputs or settings: see {record_path}); give a new --output, or the same '
                      'settings to resume it.')
    if record.get('complete'):
      print(f'{output} is already complete (see {record_path}); nothing to do.')
      return
  elif output.exists() and any(output.iterdir()):
    raise UserError(f'--output={output} is a directory that holds other files; give a new or '
                    'empty directory.')
  plan_path = output / 'work' / 'plan.json'
  if plan_path.exists() and json.loads(plan_path.read_text())['tasks'] != request.tasks:
    tasks = json.loads(plan_path.read_text())['tasks']
    raise UserError(f'{output} holds an unfinished run with --tasks={tasks}; resume it with '
                    f'--tasks={tasks} (the tasks split the work, so they cannot change midway).')
  if 'decontaminate' in [s.name for s in steps]:
    from jaxlm.clean.steps import build_decontamination_index
    docs = task_documents(list(_DECONTAMINATE.value), _INCLUDE_PATH.value)
    p = next(s for s in steps if s.name == 'decontaminate').params
    per_task = build_decontamination_index(output / 'work' / 'decontaminate', docs,
                                           p['n_grams'], p['find_query_ngrams'])
    print('decontaminating against ' + ', '.join(f'{t} ({n:,} {p["n_grams"]}-grams)'
                                                 for t, n in per_task.items()))
  from jaxlm.data.tokenizers import atomic_write
  atomic_write(record_path, (json.dumps(settings, indent=1) + '\n').encode())
  atomic_write(plan_path, json.dumps(dict(tasks=request.tasks)).encode())
  for step in steps:
    if step.name == 'minhash':
      print(recipes.describe(step))
  try:
    run.execute(request, stages)
  except UserError:
    if fresh:  # a bad input found while reading (a damaged file): leave no half-made output
      import shutil
      for name in ('kept', 'removed', 'work', 'logs'):
        shutil.rmtree(output / name, ignore_errors=True)
      record_path.unlink(missing_ok=True)
      if not existed and not any(output.iterdir()):
        output.rmdir()
    raise
  if request.executor != 'local':
    print(f'submitted {len(stages)} stages ({request.executor}); {record_path} is complete when '
          'the last one (finish) has run.')
    return
  from jaxlm.clean import report
  print(report.table(json.loads(record_path.read_text())))
  print(f'kept: {output / "kept"}; removed: {output / "removed"}; report: python -m '
        f'jaxlm.clean report --output={output}')


def main(argv: list[str]) -> None:
  if len(argv) > 2 or (len(argv) == 2 and argv[1] != 'report'):
    raise UserError(f'unexpected arguments {argv[1:]}; give `report` or nothing (then --flags).')
  if len(argv) == 2:
    from jaxlm.clean import report  # pylint: disable=import-outside-toplevel
    cli.require(_OUTPUT, bool(_OUTPUT.value.strip()), 'a cleaned output directory')
    report.main(Path(_OUTPUT.value).expanduser())
    return
  clean()


if __name__ == '__main__':
  cli.run(main, positional=True, config=RECIPE)
