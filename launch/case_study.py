"""The LSTM case study: each LSTM model against its Transformer counterpart on the shipped corpus,
at about equal parameters (0.80-0.82M) and in equal training time on this machine, two seeds each.

  python launch/case_study.py --out=/tmp/case_study [--seconds=60] [--seeds=0,1]

Three pairs, one objective each (the presets' docstrings give the architectures):
  causal LM:        configs/lstm_char.py          against configs/shakespeare_char.py
  masked LM (15%):  configs/bilstm_char.py        against the same Transformer as an encoder
  span corruption:  configs/lstm_seq2seq_char.py  against the same Transformer as a prefix LM
For each model a calibration run measures its step time (the median of its logged step times
after the first); its runs then take the steps that fill --seconds of training time, so each
one's warm-up and cosine schedule end where its time does. Every run is scored by jaxlm.eval on
the whole validation split (the objective's loss: next-token, masked-token at 15% with a fixed
seed, or span targets). Runs go one at a time, each on the whole machine. Writes
<out>/case_study.json, <out>/case_study.md (the table) and <out>/case_study.png (validation loss
against seconds in training steps, a panel per objective). Every figure is measured; none is
copied from elsewhere.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRANSFORMER = 'configs/shakespeare_char.py'
MODELS = [  # (name, objective, config, extra flags)
    ('LSTM', 'causal LM', 'configs/lstm_char.py', []),
    ('Transformer', 'causal LM', TRANSFORMER, []),
    ('bidirectional LSTM', 'masked LM', 'configs/bilstm_char.py', []),
    ('Transformer encoder', 'masked LM', TRANSFORMER,
     ['--config.model.causal=False', '--config.train.objective=mlm',
      '--config.train.sample_tokens=0']),
    ('LSTM encoder-decoder', 'span corruption', 'configs/lstm_seq2seq_char.py', []),
    ('Transformer prefix LM', 'span corruption', TRANSFORMER, ['--config.train.objective=span']),
]


def train(config: str, extra: list[str], workdir: Path, steps: int, seed: int,
          log_every: int, eval_every: int) -> None:
  cmd = [sys.executable, '-m', 'jaxlm.train', f'--config={config}', *extra,
         f'--config.workdir={workdir}', f'--config.seed={seed}', f'--config.train.steps={steps}',
         f'--config.train.log_every={log_every}', f'--config.train.eval_every={eval_every}',
         f'--config.checkpoint.every={steps}', '--config.train.sample_tokens=0']
  log = log_of(workdir)
  workdir.parent.mkdir(parents=True, exist_ok=True)
  with open(log, 'w') as out:
    if subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode:
      raise SystemExit(f'{" ".join(cmd)} failed; see {log}')


def log_of(workdir: Path) -> Path:
  """Where train writes the output of the run in workdir."""
  return workdir.with_name(workdir.name + '.log')


def parameters(log: str) -> str:
  """The parameter count a training run prints at its start ('0.82M')."""
  found = re.search(r'\| ([0-9.]+[KMB]?) parameters \|', log)
  return found.group(1) if found else '?'


def evaluate(workdir: Path) -> dict:
  cmd = [sys.executable, '-m', 'jaxlm.eval', f'--workdir={workdir}']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f'{" ".join(cmd)} failed:\n{result.stderr[-2000:]}')
  newest = max((workdir / 'eval').glob('*.json'), key=lambda p: int(p.stem))
  return json.loads(newest.read_text())['validation']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--out', required=True, help='A new directory for the runs and results.')
  parser.add_argument('--seconds', type=float, default=60.0,
                      help='Training seconds per run (the Transformer recipe takes about 60).')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--calibration_steps', type=int, default=150)
  args = parser.parse_args()
  from jaxlm import metrics  # pylint: disable=import-outside-toplevel
  out = Path(args.out)
  if out.exists() and any(out.iterdir()):
    raise SystemExit(f'--out={out} is not empty; give a new directory.')
  seeds = [int(s) for s in args.seeds.split(',')]
  rows = []
  for i, (name, objective, config, extra) in enumerate(MODELS):
    calibration = out / f'{i}_calibration'
    train(config, extra, calibration, args.calibration_steps, 0, 25, args.calibration_steps)
    series = metrics.read_metrics(calibration)['train']
    step_time = statistics.median(t for _, t in series['step_time'][1:])
    steps = max(int(args.seconds / step_time), 1)
    for seed in seeds:
      workdir = out / f'{i}_seed{seed}'
      train(config, extra, workdir, steps, seed, max(steps // 40, 1), max(steps // 8, 1))
      series = metrics.read_metrics(workdir)
      elapsed = metrics.training_seconds(series['train'])
      validation = evaluate(workdir)
      rows.append(dict(
          model=name, objective=objective, config=config, flags=extra, seed=seed, steps=steps,
          params=parameters(log_of(workdir).read_text()),
          calibrated_step_time_s=step_time, training_seconds=elapsed[max(elapsed)],
          median_tokens_per_s=statistics.median(v for _, v in series['train']['tokens_per_s']),
          validation_loss=validation['loss'], validation_tokens=validation['tokens'],
          curve=metrics.at_training_time(series['val']['loss'], elapsed)))
      print(f'{name} ({objective}) seed {seed}: {steps} steps, '
            f'{rows[-1]["training_seconds"]:.1f} s, validation loss {validation["loss"]:.4f}',
            flush=True)
  (out / 'case_study.json').write_text(json.dumps(rows, indent=1))
  (out / 'case_study.md').write_text(table(rows))
  draw(rows, out / 'case_study.png')
  print(table(rows))


def table(rows: list[dict]) -> str:
  lines = ['| objective | model | parameters | steps | training seconds | median tokens/s | '
           'validation loss (seeds) | mean |', '| --- | --- | --- | --- | --- | --- | --- | --- |']
  for name, objective, _, _ in MODELS:
    runs = [r for r in rows if r['model'] == name and r['objective'] == objective]
    if not runs:
      continue
    losses = [r['validation_loss'] for r in runs]
    seconds = ' / '.join(f"{r['training_seconds']:.1f}" for r in runs)
    speed = statistics.median(r['median_tokens_per_s'] for r in runs)
    each = ' / '.join(f'{x:.4f}' for x in losses)
    lines.append(f"| {objective} | {name} | {runs[0]['params']} | {runs[0]['steps']} | "
                 f'{seconds} | {speed:,.0f} | {each} | {statistics.mean(losses):.4f} |')
  return '\n'.join(lines) + '\n'


def draw(rows: list[dict], output: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  objectives = list(dict.fromkeys(objective for _, objective, _, _ in MODELS))
  fig, axes = plt.subplots(1, len(objectives), figsize=(15, 4.5))
  for ax, objective in zip(axes, objectives):
    names = [name for name, o, _, _ in MODELS if o == objective]
    for colour, name in enumerate(names):
      for r in (r for r in rows if r['model'] == name and r['objective'] == objective):
        xs, ys = zip(*r['curve'])
        ax.plot(xs, ys, color=f'C{colour}', linestyle='-' if r['seed'] == 0 else '--',
                label=f'{name}, seed {r["seed"]}')
    ax.set_title(objective)
    ax.set_xlabel('seconds in training steps')
    ax.set_ylabel('validation loss (nats/token)')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(output, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  main()
