"""The optimiser benchmark (issue #26): AdamW with cosine decay, AdamW with warm-up-stable-decay,
Muon with WSD and schedule-free AdamW, each at its best rate of a small sweep, on the shipped
corpus with configs/shakespeare_char.py and configs/base.py, two seeds each.

  python launch/bench_optim.py --out=/tmp/bench_optim [--configs=shakespeare_char,base]
      [--steps=0] [--rates=0.33,1,3] [--seeds=0,1] [--resume]

For each config and optimiser, seed 0 runs at each rate of --rates (multiples of the config's
optim.lr, optim.min_lr following at a tenth); while the best of them is the highest or the
lowest rate, the grid goes one step further that way (its last ratio, at most twice), so a best
rate is not the edge of the grid unless the step past it was worse or diverged. The rate with
the lowest final validation loss is that optimiser's, and the other seeds run at it. Every run
takes the config's steps (or --steps), validates 8 times on the whole validation split, and runs
alone on the machine; a run whose loss becomes non-finite counts as diverged. --resume keeps the
runs of an earlier call in --out that reached their last validation (or diverged) and trains
the others afresh. Validation loss is reported at equal steps (the last) and at equal training
time: the least training time (seconds in training steps, compilation and evaluation left out) any optimiser of
that config took, each run's curve interpolated there. Writes <out>/bench_optim.json,
<out>/bench_optim.md (the table) and <out>/bench_optim.png (validation loss against training
seconds, a panel per config). Every figure is measured here.
"""

import argparse
import importlib
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import case_study  # noqa: E402  (launch/, beside this script: its train runs jaxlm.train logged)
from jaxlm.errors import UserError  # noqa: E402

OPTIMIZERS = {  # name -> flags
    'AdamW, cosine': ['--config.optim.name=adamw', '--config.optim.schedule=cosine'],
    'AdamW, WSD': ['--config.optim.name=adamw', '--config.optim.schedule=wsd'],
    'Muon, WSD': ['--config.optim.name=muon', '--config.optim.schedule=wsd'],
    'schedule-free AdamW': ['--config.optim.name=schedule_free_adamw',
                            '--config.optim.schedule=constant'],
}


DIVERGED = 'diverged'  # written into the workdir of a run whose loss became non-finite


def result(workdir: Path) -> dict:
  from jaxlm import metrics  # pylint: disable=import-outside-toplevel
  if (workdir / DIVERGED).exists():
    return dict(val=math.inf)
  series = metrics.read_metrics(workdir)
  elapsed = metrics.training_seconds(series['train'])
  times = [t for _, t in series['train']['step_time'][1:]]
  return dict(val=series['val']['loss'][-1][1], step=series['val']['loss'][-1][0],
              seconds=elapsed[max(elapsed)], step_time=statistics.median(times),
              curve=metrics.at_training_time(series['val']['loss'], elapsed))


def finished(workdir: Path, steps: int) -> bool:
  """Whether the run in workdir validated at its last step or diverged."""
  from jaxlm import metrics  # pylint: disable=import-outside-toplevel
  if (workdir / DIVERGED).exists():
    return True
  try:
    return metrics.read_metrics(workdir)['val']['loss'][-1][0] == steps
  except (OSError, KeyError, IndexError, ValueError, UserError):
    return False


def grid(rates: list[float], sweep: dict, extensions: int = 2):
  """The rates to try: `rates`, then, while the best so far (the lowest validation loss in
  `sweep`, filled in by the caller) is the highest or the lowest tried, one step of the grid's
  last ratio further that way, at most `extensions` times."""
  yield from rates
  ratio = rates[-1] / rates[-2] if len(rates) > 1 else 3.0
  for _ in range(extensions):
    best = min(sweep, key=lambda r: sweep[r][1]['val'])
    if best == max(sweep):
      yield best * ratio
    elif best == min(sweep):
      yield best / ratio
    else:
      return


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
  parser.add_argument('--resume', action='store_true',
                      help='Keep the finished runs already in --out; train the others.')
  args = parser.parse_args()
  out = Path(args.out)
  if out.exists() and any(out.iterdir()) and not args.resume:
    raise SystemExit(f'--out={out} is not empty; give a new directory, or --resume to keep '
                     'its finished runs.')
  seeds = [int(s) for s in args.seeds.split(',')]
  rates = [float(r) for r in args.rates.split(',')]
  rows = []
  for config in args.configs.split(','):
    defaults = importlib.import_module(f'jaxlm.configs.{config}').get_config()
    lr, steps = defaults.optim.lr, args.steps or defaults.train.steps
    path = f'configs/{config}.py'

    def train(flags: list[str], workdir: Path, seed: int, steps=steps, path=path) -> dict:
      if args.resume and finished(workdir, steps):
        print(f'{workdir.name}: finished in an earlier call, kept', flush=True)
        return result(workdir)
      shutil.rmtree(workdir, ignore_errors=True)  # (a run cut short: trained afresh)
      try:
        case_study.train(path, flags, workdir, steps, seed, max(steps // 40, 1),
                         max(steps // 8, 1))
      except SystemExit:  # a rate too high stops jaxlm.train at the first non-finite loss
        if 'became non-finite' not in case_study.log_of(workdir).read_text():
          raise
        (workdir / DIVERGED).write_text('the loss became non-finite\n')
      return result(workdir)
    for name, flags in OPTIMIZERS.items():
      tag = f'{config}_{name.split(",")[0].split()[0].lower()}_{len(rows)}'
      sweep = {}
      for r in grid(rates, sweep):
        at = [f'--config.optim.lr={lr * r:.4g}', f'--config.optim.min_lr={lr * r / 10:.4g}']
        workdir = out / f'{tag}_lr{r:.3g}_seed{seeds[0]}'
        sweep[r] = (at, train(flags + at, workdir, seeds[0]))
        print(f'{config} {name} lr x{r:.3g}: val {sweep[r][1]["val"]:.4f}', flush=True)
      best = min(sweep, key=lambda r: sweep[r][1]['val'])
      if math.isinf(sweep[best][1]['val']):
        raise SystemExit(f'{config} {name}: every rate diverged; give lower --rates.')
      runs = [sweep[best][1]]
      for seed in seeds[1:]:
        runs.append(train(flags + sweep[best][0], out / f'{tag}_lr{best:.3g}_seed{seed}', seed))
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
    sweep = ', '.join(f'x{float(k):.3g}: ' + ('diverged' if math.isinf(v) else f'{v:.3f}')
                      for k, v in sorted(r['sweep'].items(), key=lambda kv: float(kv[0])))
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
