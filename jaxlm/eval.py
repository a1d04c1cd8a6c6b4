"""Evaluate a checkpoint: loss, perplexity and bits per byte, and BLEU / chrF of generations.

  python -m jaxlm.eval --workdir=runs/base                   # the run's validation split
  python -m jaxlm.eval --workdir=runs/base --text='essays/*.txt' --step=250
  python -m jaxlm.eval --workdir=runs/base --references=pairs.jsonl --max_new_tokens=32
  python -m jaxlm.eval --workdir=runs/base --tasks=shakespeare_cloze,shakespeare_last_word

The run's config and tokenizer come from the checkpoint; the parameters are restored onto the
devices this machine has. `--references` is a JSONL file of {"prompt": ..., "reference": ...}
lines: greedy continuations of the prompts are scored against the references with sacrebleu.
Results are printed and written to <workdir>/eval/<step>.json and TensorBoard (<workdir>/tb).
The evaluation is deterministic. It scores text: every token of the text is predicted once,
end-of-document predictions (which stand for no text) are not counted, and bits per byte divide
the nats by the UTF-8 bytes of the scored text itself. The validation split is the prepared one
the run trained beside (each dataset's too, for a mixture); documents see each other only if the
run concatenated them (data.packing='concat').

`--tasks` runs EleutherAI's lm-evaluation-harness on the checkpoint instead (jaxlm/harness.py and
harness_tasks.py, the `eval` extra): lm-eval's tasks, jaxlm's examples (jaxlm/tasks) and those
of --include_path, their datasets read from disk, never downloaded. It prints lm-eval's table and writes lm-eval's
results dict to <workdir>/eval/<step>-tasks.json (a later run at the same step adds its tasks)
and each task's metrics to metrics.jsonl and TensorBoard (split tasks/<task>).
"""

import json
import os
from pathlib import Path

from absl import flags

from jaxlm import cli, objectives, paths
from jaxlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
_TEXT = flags.DEFINE_string('text', '', 'UTF-8 text file, directory or glob to evaluate instead '
                            'of the validation split.')
_REFERENCES = flags.DEFINE_string('references', '', 'JSONL of {"prompt", "reference"} pairs for '
                                  'BLEU and chrF.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens generated per prompt for BLEU.')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Sequences per batch (default: the run\'s '
                              'micro-batch, train.batch_size / train.grad_accum).')
_TASKS = flags.DEFINE_list('tasks', [], 'lm-eval tasks to run instead (comma-separated names).')
_INCLUDE = flags.DEFINE_string('include_path', '', 'Directories of further lm-eval task YAML '
                               'files (comma-separated), besides jaxlm/tasks.')
_FEWSHOT = flags.DEFINE_integer('num_fewshot', None, 'Few-shot examples per task (lm-eval\'s '
                                'default: the task\'s).')
_LIMIT = flags.DEFINE_float('limit', None, 'Documents per task (< 1: a fraction of them).')


def read_pairs(path: str) -> tuple[list[str], list[str]]:
  prompts, references = [], []
  try:
    lines = paths.path(path).read_text(encoding='utf-8').splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f'cannot read --references={path} ({e}); give a UTF-8 JSONL file.') from None
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      pair = json.loads(line)
      prompts.append(str(pair['prompt']))
      references.append(str(pair['reference']))
    except (ValueError, KeyError, TypeError):
      raise UserError(f'line {i} of {path} is not a JSON object with "prompt" and "reference"; '
                      'fix that line.') from None
  if not prompts:
    raise UserError(f'{path} holds no {{"prompt", "reference"}} line; add some.')
  return prompts, references


def _previous(out: Path) -> dict:
  """The results already in `out` ({} if none)."""
  if not out.exists():
    return {}
  try:
    return json.loads(out.read_text())
  except ValueError:
    raise UserError(f'{out} is not JSON; move it away (nothing was written).') from None


def _write_json(out: Path, value: dict) -> None:
  """Writes to a temporary name and renames: an interrupted write never leaves a truncated
  file (on a bucket, one object write: whole or absent)."""
  out.parent.mkdir(parents=True, exist_ok=True)
  if paths.is_url(out):
    out.write_text(json.dumps(value, indent=2))
    return
  tmp = out.with_name(out.name + '.tmp')
  tmp.write_text(json.dumps(value, indent=2))
  os.replace(tmp, out)


def write_results(out: Path, results: dict) -> None:
  """Merges `results` into the JSON file `out`: the evaluations already in it stay."""
  _write_json(out, {**_previous(out), **results})


# lm-eval's result sections keyed by task: a later evaluation of other tasks at the same step
# adds to them.
_BY_TASK = ('results', 'configs', 'versions', 'n-shot', 'higher_is_better', 'n-samples',
            'group_subtasks')


def write_task_results(out: Path, results: dict) -> None:
  """lm-eval's results dict to `out`, merged task by task with an earlier evaluation of the
  same step."""
  from lm_eval.utils import handle_non_serializable  # pylint: disable=import-outside-toplevel
  new = json.loads(json.dumps(results, default=handle_non_serializable))
  old = _previous(out)
  _write_json(out, {**new, **{key: {**old.get(key, {}), **new.get(key, {})}
                              for key in _BY_TASK}})


def run(workdir: str, step: int | None, text: str, references: str, max_new_tokens: int,
        batch_size: int) -> dict:
  import jax

  from jaxlm import data, evaluation, metrics, sharding
  from jaxlm.restore import load_trained

  pairs = read_pairs(references) if references else None  # a bad file fails before any work
  r = load_trained(workdir, step, batch_size)
  objective = r.objective
  if references and not objective.generates:
    raise UserError(f'{workdir} holds a model trained with train.objective={objective.name!r}, '
                    'which does not generate; --references (BLEU) needs one trained with '
                    f'{objectives.generating()}.')
  batch_sh = sharding.batch_sharding(r.mesh, r.rules)
  eval_step = r.eval_step
  packing, length = r.cfg.data.packing, r.model_cfg.max_seq_len
  if text:
    files = data.corpus_files(text)
    streams = {f'text:{text}': data.text_stream([data.read_text(f) for f in files], r.tokenizer,
                                                packing, length)}
  elif not r.data.datasets:
    raise UserError(f'{workdir} holds an imported model, which has no validation split; give '
                    '--text=<files> to evaluate it on.')
  else:
    streams = {'validation': data.validation_stream(r.data, r.cfg, length)}
    if len(r.data.datasets) > 1:  # a mixture: each dataset's validation split on its own too
      for i, ds in enumerate(r.data.datasets):
        streams[f'validation:{ds.name}'] = data.validation_stream(r.data, r.cfg, length,
                                                                  dataset=i)
  results = {}
  for name, stream in streams.items():
    if not data.has_targets(stream):
      raise UserError(f'the {name} text has no token to predict; evaluate a longer text.')
    result = evaluation.loss_over(eval_step, r.params, stream, r.cfg, batch_sh)
    results[name] = objective.report(result, stream.bytes)
  if references:
    prompts, refs = pairs
    hyps = evaluation.continuations(r.graphdef, r.params, r.model_cfg, r.tokenizer, prompts,
                                    max_new_tokens=max_new_tokens,
                                    batch_size=r.cfg.train.batch_size, temperature=0.0,
                                    prefix_lm=objective.prefix_lm)
    results['references'] = dict(evaluation.bleu_and_chrf(hyps, refs), pairs=len(prompts))
  out = r.workdir / 'eval' / f'{r.step}.json'
  if jax.process_index() == 0:  # one host writes the results
    write_results(out, results)
    writer = metrics.MetricWriter(r.workdir)
    for key, values in results.items():
      writer.write(r.step, values, f'eval/{key}')
    writer.close()
  return dict(step=r.step, path=str(out), results=results,
              devices=metrics.devices_text())


def run_tasks(workdir: str, step: int | None, tasks: list[str], include_path: str,
              num_fewshot: int | None, limit: float | None, batch_size: int) -> dict:
  """lm-eval's tasks on a checkpoint (see the module docstring)."""
  import jax

  from jaxlm import lm_eval_plugin, metrics
  lm_eval_plugin.offline()
  try:
    from jaxlm import harness_tasks  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError('--tasks needs EleutherAI\'s lm-evaluation-harness: pip install '
                    '"jaxlm[eval]" (or -e ".[eval]").') from None
  from jaxlm.restore import load_trained
  manager = harness_tasks.tasks_to_run(tasks, include_path)  # bad names fail before loading
  r = load_trained(workdir, step, batch_size)
  results = harness_tasks.evaluate_tasks(r, tasks, manager=manager, num_fewshot=num_fewshot,
                                         limit=limit, batch_size=batch_size or 16)
  out = r.workdir / 'eval' / f'{r.step}-tasks.json'
  if jax.process_index() == 0:  # one host writes the results
    write_task_results(out, results)
    writer = metrics.MetricWriter(r.workdir)
    for task, values in harness_tasks.task_metrics(results).items():
      writer.write(r.step, values, f'tasks/{task}')
    writer.close()
  from lm_eval.utils import make_table  # pylint: disable=import-outside-toplevel
  return dict(step=r.step, path=str(out), table=make_table(results),
              devices=metrics.devices_text())


def main(argv: list[str]) -> None:
  cli.require(_WORKDIR, bool(_WORKDIR.value.strip()), "a training run's workdir")
  cli.require_location(_WORKDIR, _TEXT, _REFERENCES)
  cli.require(_STEP, _STEP.value is None or _STEP.value >= 0, 'a checkpoint step >= 0')
  cli.require(_MAX_NEW, _MAX_NEW.value >= 1, 'at least 1 token')
  cli.require(_BATCH, _BATCH.value >= 0, '0 (the run\'s micro-batch) or a positive number')
  cli.require(_LIMIT, _LIMIT.value is None or _LIMIT.value > 0,
              'a positive number of documents per task (or a fraction below 1)')
  cli.require(_FEWSHOT, _FEWSHOT.value is None or _FEWSHOT.value >= 0, 'a number >= 0')
  if _TASKS.value:
    cli.require(_TASKS, not (_TEXT.value or _REFERENCES.value),
                'given alone: --text and --references are other evaluations')
    out = run_tasks(_WORKDIR.value, _STEP.value, _TASKS.value, _INCLUDE.value, _FEWSHOT.value,
                    _LIMIT.value, _BATCH.value)
    print(f'checkpoint {out["step"]} on {out["devices"]}')
    print(out['table'])
    print(f'wrote {out["path"]}')
    return
  cli.require(_INCLUDE, not _INCLUDE.value, 'given with --tasks only')
  out = run(_WORKDIR.value, _STEP.value, _TEXT.value, _REFERENCES.value, _MAX_NEW.value,
            _BATCH.value)
  print(f'checkpoint {out["step"]} on {out["devices"]}')
  for name, values in out['results'].items():
    shown = ' | '.join(f'{k} {v:.4f}' if isinstance(v, float) and not v.is_integer()
                       else f'{k} {int(v)}' for k, v in values.items())
    print(f'step {out["step"]} | {name} | {shown}')
  print(f'wrote {out["path"]}')


if __name__ == '__main__':
  cli.run(main)
