"""lm-eval's tasks for jaxlm: finding them (jaxlm's examples in jaxlm/tasks, a user's
--include_path, lm-eval's own), evaluating a trained run on them with lm-eval's simple_evaluate
and `harness.JaxLM`, the metrics of its results, and `LiveTasks`, the tasks of train.eval_tasks
on the live parameters of a training run. Nothing is downloaded: a task's dataset must be on disk.
"""

import difflib
import math
import types
from pathlib import Path
from typing import Any, Sequence

from jaxlm.errors import UserError
from jaxlm.harness import JaxLM

TASKS = Path(__file__).parent / 'tasks'  # the example tasks shipped with jaxlm


def task_manager(include_path: str = '', tasks: Sequence[str] = ()):
  """jaxlm's example tasks (jaxlm/tasks), those under `include_path`, and lm-eval's own unless
  all of `tasks` are among the others (indexing lm-eval's 14,000 task files takes seconds)."""
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  paths = [str(TASKS)] + [p for p in include_path.split(',') if p]
  for p in paths[1:]:
    if not Path(p).is_dir():
      raise UserError(f'--include_path={p} is not a directory; give a directory of task YAML '
                      'files.')
  local = TaskManager(include_path=paths, include_defaults=False)
  if tasks and set(tasks) <= set(local.all_tasks):
    return local
  return TaskManager(include_path=paths)


def tasks_to_run(tasks: Sequence[str], include_path: str = '', what: str = '--tasks'):
  """The task manager that holds all of `tasks` (one sentence naming the unknown ones, which
  `what` gave)."""
  manager = task_manager(include_path, tasks)
  known = set(manager.all_tasks)
  missing = [t for t in tasks if t not in known]
  if missing:
    _check_task_files(include_path)  # (lm-eval skips a file it cannot read without a word)
    close = sorted({c for m in missing for c in difflib.get_close_matches(m, known, n=3)})
    where = ', '.join([str(TASKS)] + [p for p in include_path.split(',') if p])
    raise UserError(f'{what} names {", ".join(missing)}, which lm-eval does not know (with the '
                    f'task files in {where})' + (f'; did you mean {", ".join(close)}?' if close
                                                 else '; see `lm_eval ls tasks`, or give '
                                                 '--include_path.'))
  return manager


def _check_task_files(include_path: str) -> None:
  """One sentence for the first task file under --include_path that does not parse."""
  from lm_eval.tasks._yaml_loader import load_yaml  # pylint: disable=import-outside-toplevel
  for root in filter(None, include_path.split(',')):
    for path in sorted(Path(root).rglob('*.yaml')):
      try:
        load_yaml(path, resolve_func=False)
      except Exception as e:  # pylint: disable=broad-except  # YAML's and lm-eval's errors
        reason = ' '.join(str(e).split())[:200]
        raise UserError(f'the task file {path} does not parse ({reason}); fix it or move it out '
                        'of --include_path.') from None


def evaluate_tasks(run: Any, tasks: Sequence[str], *, include_path: str = '', manager=None,
                   num_fewshot: int | None = None, limit: float | None = None,
                   batch_size: int = 16, bootstrap_iters: int = 100_000) -> dict:
  """lm-eval's simple_evaluate of `tasks` on a trained run (restore.TrainedRun, or the live
  parameters of training): lm-eval's results dict. Nothing is downloaded: the datasets must be
  on disk (lm-eval's `dataset_path: json` with local `data_files`, a save_to_disk copy, or a
  `custom_dataset` function, as jaxlm's examples)."""
  import lm_eval  # pylint: disable=import-outside-toplevel
  manager = manager or tasks_to_run(tasks, include_path)
  model = JaxLM(run=run, batch_size=batch_size)
  try:
    results = lm_eval.simple_evaluate(model=model, tasks=list(tasks), task_manager=manager,
                                      num_fewshot=num_fewshot, limit=limit,
                                      bootstrap_iters=bootstrap_iters, log_samples=False)
  except OSError as e:  # a missing file, the Hub unreachable (offline), a dataset not found
    raise UserError(f'lm-eval could not load the tasks {", ".join(tasks)} ({_first_line(e)}); '
                    'their datasets must be on this machine: point each task at a local copy '
                    '(see README, "Downstream tasks").') from None
  return results


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'.rstrip(': ')


def task_metrics(results: dict) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} of lm-eval's results: its numbers, without standard errors."""
  out = {}
  for task, values in results.get('results', {}).items():
    numbers = {k.split(',')[0]: float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and '_stderr' not in k and k != 'sample_len' and math.isfinite(float(v))}
    if numbers:
      out[task] = numbers
  return out


class LiveTasks:
  """train.eval_tasks: lm-eval's tasks on the live parameters of a training run, every
  train.eval_tasks_every steps (no checkpoint round trip); the scoring step compiles once for
  the whole run."""

  def __init__(self, cfg, model_cfg, tokenizer, graphdef, mesh, rules, workdir):
    t = cfg.train
    self.tasks = [name.strip() for name in t.eval_tasks.split(',') if name.strip()]
    self.manager = tasks_to_run(self.tasks, t.eval_tasks_include,  # a bad name fails now
                                'config field train.eval_tasks')
    self.limit = t.eval_tasks_limit or None
    self.run = types.SimpleNamespace(cfg=cfg, model_cfg=model_cfg, tokenizer=tokenizer,
                                     graphdef=graphdef, params=None, mesh=mesh, rules=rules,
                                     workdir=workdir)
    self.model: JaxLM | None = None

  def __call__(self, params: Any) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the tasks on `params`."""
    import lm_eval  # pylint: disable=import-outside-toplevel
    self.run.params = params
    if self.model is None:
      self.model = JaxLM(run=self.run, batch_size=self.run.cfg.train.batch_size)
    self.model.scorer.params = params
    results = lm_eval.simple_evaluate(model=self.model, tasks=self.tasks,
                                      task_manager=self.manager, limit=self.limit,
                                      bootstrap_iters=0, log_samples=False)
    return task_metrics(results)
