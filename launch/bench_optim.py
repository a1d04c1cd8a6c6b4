"""The optimiser benchmark (issue #26): AdamW with cosine decay, AdamW with warm-up-stable-decay,
Muon with WSD and schedule-free AdamW, each at its best rate of a small sweep, on the shipped
corpus with configs/shakespeare_char.py and configs/base.py, two seeds each.

  python launch/bench_optim.py --out=/tmp/bench_optim [--configs=shakespeare_char,base]
      [--steps=0] [--rates=0.33,1,3] [--seeds=0,1]

For each config and optimiser, seed 0 runs at each rate of --rates (multiples of the config's
optim.lr, optim.min_lr following at a tenth); the rate with the lowest final validation loss
is that optimiser's, and the other seeds run at it. Every run takes the config's steps (or
--steps), validates 8 times on the whole validation split, and runs alone on the machine.
Validation loss is reported at equal steps (the last) and at equal training time: the least
training time (seconds in training steps, compilation and evaluation left out) any optimiser of
that config took, each run's curve interpolated there. Writes <out>/bench_optim.json,
<out>/bench_optim.md (the table) and <out>/bench_optim.png (validation loss against training
seconds, a panel per config). Every figure is measured here.
"""

import argparse
import importlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import case_study  # noqa: E402  (launch/, beside this script: its train runs jaxlm.train logged)

OPTIMIZERS = {  # name -> flags
    'AdamW, cosine': ['--config.optim.name=adamw', '--config.optim.schedule=cosine'],
    'AdamW, WSD': ['--config.optim.name=adamw', '--config.optim.schedule=wsd'],
    'Muon, WSD': ['--config.optim.name=muon', '--config.optim.schedule=wsd'],
    'schedule-free AdamW': ['--config.optim.name=schedule_free_adamw',
                            '--config.optim.schedule=constant'],
}


def result(workdir: Path) -> dict:
  from jaxlm import metrics, plot  # pylint: disable=import-outside-toplevel
  series = plot.read_metrics(workdir)
  elapsed = metrics.training_seconds(series['train'])
  times = [t for _, t in series['train']['step_time'][1:]]
  return dict(val=series['val']['loss'][-1][1], step=series['val']['loss'][-1][0],
              seconds=elapsed[max(elapsed)], step_time=statistics.median(times),
              curve=metrics.at_training_time(series['val']['loss'], elapsed))


def at_time(curve: list, seconds: float) -> float:
  xs, ys = zip(*curve)
  return float(np.interp(seconds, xs, ys))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--out', required=True, help='A new directory for the runs and results.')
  parser.add_argument('--configs', default='shakespeare_char,base')
  parser.add_argument('--steps', type=int, default=0, help='Steps a run (0: the config\'s).')
  parser.add_argument('--rates', default='0.33,1,3', help='Multiples of the config\'s optim.lr.')
  parser.add_argument('--seeds', default='0,1')
  args = parser.parse_args()
  out = Path(args.out)
  if out.exists() and any(out.iterdir()):
    raise SystemExit(f'--out={out} is not empty; give a new directory.')
  seeds = [int(s) for s in args.seeds.split(',')]
  rates = [float(r) for r in args.rates.split(',')]
  rows = []
  for config in args.configs.split(','):
    defaults = importlib.import_module(f'jaxlm.configs.{config}').get_config()
    lr, steps = defaults.optim.lr, args.steps or defaults.train.steps
    path = f'configs/{config}.py'

    def train(flags: list[str], workdir: Path, seed: int, steps=steps, path=path) -> None:
      case_study.train(path, flags, workdir, steps, seed, max(steps // 40, 1),
                       max(steps // 8, 1))
    for name, flags in OPTIMIZERS.items():
      tag = f'{config}_{name.split(",")[0].split()[0].lower()}_{len(rows)}'
      sweep = {}
      for r in rates:
        at = [f'--config.optim.lr={lr * r:.4g}', f'--config.optim.min_lr={lr * r / 10:.4g}']
        workdir = out / f'{tag}_lr{r:g}_seed{seeds[0]}'
        train(flags + at, workdir, seeds[0])
        sweep[r] = (at, result(workdir))
        print(f'{config} {name} lr x{r:g}: val {sweep[r][1]["val"]:.4f}', flush=True)
      best = min(sweep, key=lambda r: sweep[r][1]['val'])
      runs = [sweep[best][1]]
      for seed in seeds[1:]:
        workdir = out / f'{tag}_lr{best:g}_seed{seed}'
        train(flags + sweep[best][0], workdir, seed)
        runs.append(result(workdir))
      rows.append(dict(config=config, optimizer=name, lr=lr * best, sweep={
          str(r): s[1]['val'] for r, s in sweep.items()}, runs=runs))
      print(f'{config} {name}: best lr {lr * best:.4g}, val ' +
            ' / '.join(f'{x["val"]:.4f}' for x in runs), flush=True)
  for config in args.configs.split(','):
    mine = [r for r in rows if r['config'] == config]
    budget = min(statistics.mean(x['seconds'] for x in r['runs']) for r in mine)
    for r in mine:
      r['equal_time_s'] = budget
      r['val_at_equal_time'] = [at_time(x['curve'], budget) for x in r['runs']]
  (out / 'bench_optim.json').write_text(json.dumps(rows, indent=1))
  (out / 'bench_optim.md').write_text(table(rows))
  draw(rows, out / 'bench_optim.png')
  print(table(rows))


def table(rows: list[dict]) -> str:
  lines = ['| config | optimizer | best lr (sweep: val loss) | steps | val loss at the last step '
           '(seeds) | val loss at equal time (s) | ms/step |',
           '| --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    sweep = ', '.join(f'x{k}: {v:.3f}' for k, v in r['sweep'].items())
    last = ' / '.join(f"{x['val']:.4f}" for x in r['runs'])
    timed = ' / '.join(f'{v:.4f}' for v in r['val_at_equal_time'])
    ms = 1e3 * statistics.median(x['step_time'] for x in r['runs'])
    lines.append(f"| {r['config']} | {r['optimizer']} | {r['lr']:.3g} ({sweep}) | "
                 f"{r['runs'][0]['step']} | {last} | {timed} ({r['equal_time_s']:.0f} s) | "
                 f'{ms:.1f} |')
  return '\n'.join(lines) + '\n'


def draw(rows: list[dict], output: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  configs = list(dict.fromkeys(r['config'] for r in rows))
  fig, axes = plt.subplots(1, len(configs), figsize=(6.5 * len(configs), 4.5), squeeze=False)
  for ax, config in zip(axes[0], configs):
    for colour, r in enumerate(r for r in rows if r['config'] == config):
      for seed, x in enumerate(r['runs']):
        xs, ys = zip(*x['curve'])
        ax.plot(xs, ys, color=f'C{colour}', linestyle='-' if seed == 0 else '--',
                label=f"{r['optimizer']} (lr {r['lr']:.2g})" if seed == 0 else None)
    ax.set_title(f'configs/{config}.py')
    ax.set_xlabel('seconds in training steps')
    ax.set_ylabel('validation loss (nats/token)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(output, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  main()
