"""Masked LM's masking, varied by unit and by position, on the shipped corpus: each masking
trains the same model for the same steps, two seeds each, and is scored at one common setting.

  python launch/masking_study.py --out=/tmp/masking [--seeds=0,1] [--phase=train,bench]

Models: the Transformer encoder of configs/mlm_base.py (SentencePiece tokens, ratio 30% -> 15%)
and the bidirectional LSTM of configs/bilstm_char.py (characters, 15%), each for --steps. The
maskings: token by token (BERT), whole words, SpanBERT's spans of whole words, and token by
token with a linear position profile (slope 1: a document's end hidden three times as often as
its start), each uniform over the vocabulary; the Transformer also with frequency weighting
(alpha 0.5). Every run is scored by jaxlm.eval on the whole validation split at the common
evaluation setting (mlm.eval_masking='fixed': 15% of the tokens, token by token, from the run's
seed), so the maskings compare on the same hidden tokens. Phase 'bench' then times each
masking's train step with jaxlm.bench, one after another on an otherwise idle machine, so that
step times compare side by side (training runs' own step times include evaluation's pauses).
Writes <out>/masking_study.json, <out>/masking_study.md (the table) and <out>/masking_study.png
(validation loss over the steps, a panel per model). Every figure is measured.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'launch'))
from case_study import evaluate, log_of, parameters, train  # noqa: E402  pylint: disable=C0413

MODELS = [('Transformer encoder', 'configs/mlm_base.py'),
          ('bidirectional LSTM', 'configs/bilstm_char.py')]
MASKINGS = [  # (name, flags, models)
    ('token', [], 'all'),
    ('word', ['--config.mlm.unit=word'], 'all'),
    ('span', ['--config.mlm.unit=span'], 'all'),
    ('token, linear profile', ['--config.mlm.position_profile=linear',
                               '--config.mlm.position_slope=1.0'], 'all'),
    ('token, frequency-weighted', ['--config.mlm.token_weighting=frequency'],
     'Transformer encoder'),
]


def runs(seeds: list[int]):
  for m, (model, config) in enumerate(MODELS):
    for k, (masking, flags, models) in enumerate(MASKINGS):
      if models in ('all', model):
        for seed in seeds:
          yield f'{m}{k}_seed{seed}', model, config, masking, flags, seed


def bench(config: str, flags: list[str], out: Path) -> float:
  """The median train step time of jaxlm.bench (seconds), its batches random token ids."""
  cmd = [sys.executable, '-m', 'jaxlm.bench', f'--config={config}', *flags, '--what=train',
         '--steps=30', f'--json={out}', f'--config.workdir={out.parent / "bench_workdir"}']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
  return json.loads(out.read_text())['train']['step_ms_median'] / 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--out', required=True, help='A directory for the runs and results.')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--steps', type=int, default=500, help='Training steps of every run.')
  parser.add_argument('--phase', default='train,bench',
                      help="'train' (the runs), 'bench' (step times), or both.")
  args = parser.parse_args()
  from jaxlm import metrics  # pylint: disable=import-outside-toplevel
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = out / 'masking_study.json'
  rows = json.loads(results.read_text()) if results.exists() else []
  phases = args.phase.split(',')
  if 'train' in phases:
    done = {r['run'] for r in rows}
    for run, model, config, masking, flags, seed in runs([int(s) for s in args.seeds.split(',')]):
      if run in done:
        continue
      workdir = out / run
      eval_every = max(args.steps // 5, 1)
      train(config, flags, workdir, args.steps, seed, max(args.steps // 50, 1), eval_every)
      validation = evaluate(workdir)
      curve = [(s, v) for s, v in metrics.read_metrics(workdir)['val']['loss']]
      rows.append(dict(run=run, model=model, config=config, masking=masking, flags=flags,
                       seed=seed, steps=args.steps,
                       params=parameters(log_of(workdir).read_text()),
                       validation_loss=validation['loss'], validation_tokens=validation['tokens'],
                       curve=curve))
      results.write_text(json.dumps(rows, indent=1))
      print(f'{model}, {masking}, seed {seed}: validation loss {validation["loss"]:.4f}',
            flush=True)
  if 'bench' in phases:
    times = {}
    for m, (model, config) in enumerate(MODELS):
      for k, (masking, flags, models) in enumerate(MASKINGS):
        if models in ('all', model):
          times[model, masking] = bench(config, flags, out / f'bench_{m}{k}.json')
          print(f'{model}, {masking}: step {times[model, masking] * 1e3:.1f} ms', flush=True)
    for r in rows:
      r['bench_step_time_s'] = times.get((r['model'], r['masking']))
    results.write_text(json.dumps(rows, indent=1))
  (out / 'masking_study.md').write_text(table(rows))
  draw(rows, out / 'masking_study.png')
  print(table(rows))


def table(rows: list[dict]) -> str:
  lines = ['| model | masking | parameters | steps | validation loss (seeds) | mean | '
           'train step (jaxlm.bench) |', '| --- | --- | --- | --- | --- | --- | --- |']
  for model, _ in MODELS:
    for masking, _, _ in MASKINGS:
      group = [r for r in rows if r['model'] == model and r['masking'] == masking]
      if not group:
        continue
      losses = [r['validation_loss'] for r in group]
      step = group[0].get('bench_step_time_s')
      lines.append(f"| {model} | {masking} | {group[0]['params']} | {group[0]['steps']} | "
                   + ' / '.join(f'{x:.4f}' for x in losses) + f' | {statistics.mean(losses):.4f} | '
                   + (f'{step * 1e3:.1f} ms |' if step else '- |'))
  return '\n'.join(lines) + '\n'


def draw(rows: list[dict], output: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(MODELS), figsize=(12, 4.5))
  for ax, (model, _) in zip(axes, MODELS):
    for colour, (masking, _, _) in enumerate(MASKINGS):
      for r in (r for r in rows if r['model'] == model and r['masking'] == masking):
        xs, ys = zip(*r['curve'])
        ax.plot(xs, ys, color=f'C{colour}', linestyle='-' if r['seed'] == 0 else '--',
                label=f'{masking}, seed {r["seed"]}')
    ax.set_title(f'{model}: masked-token loss at the common setting')
    ax.set_xlabel('step')
    ax.set_ylabel('validation loss (nats/token)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(output, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  main()
