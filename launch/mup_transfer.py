"""The muP learning-rate transfer test (issue #26): a grid of learning rates at two widths, in the
standard parametrisation and under muP (base width the smaller), run with launch/sweep.py on
the shipped corpus; the best rate of each width is printed, and the curves are drawn.

  python launch/mup_transfer.py --root=/tmp/mup_transfer [--widths=64,256]
      [--rates=1e-3,2e-3,4e-3,8e-3,1.6e-2,3.2e-2] [--steps=400] [--parallel=2] [--seed=0]

The model is configs/shakespeare_char.py's (4 layers, 4 heads, so the head dimension grows with
the width) with a constant rate after 50 warm-up steps, validated on the whole split at the
end. Under muP the best rate should be the same grid point at both widths; in the standard
parametrisation it moves down as the width grows. Running it again resumes the sweep. Writes
<root>/transfer.png and <root>/transfer.md.
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  parser.add_argument('--root', required=True, help='The sweep root (resumed if it exists).')
  parser.add_argument('--widths', default='64,256')
  parser.add_argument('--rates', default='1e-3,2e-3,4e-3,8e-3,1.6e-2,3.2e-2')
  parser.add_argument('--steps', type=int, default=400)
  parser.add_argument('--parallel', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  widths = [int(w) for w in args.widths.split(',')]
  grid = (f'model.parametrization=standard,mup model.embed_dim={args.widths} '
          f'optim.lr={args.rates}')
  fixed = (f'model.base_width={widths[0]} train.steps={args.steps} train.eval_every={args.steps} '
           f'checkpoint.every={args.steps} optim.schedule=constant optim.warmup_steps=50 '
           f'train.sample_tokens=0 train.log_every=50 seed={args.seed}')
  cmd = [sys.executable, 'launch/sweep.py', '--config=configs/shakespeare_char.py',
         f'--root={args.root}', f'--grid={grid}', f'--set={fixed}', f'--parallel={args.parallel}']
  print(' '.join(cmd), flush=True)
  if subprocess.run(cmd, cwd=ROOT).returncode:
    raise SystemExit('the sweep failed; see its report (launch/sweep.py report).')

  from jaxlm.sweep import state  # pylint: disable=import-outside-toplevel
  from jaxlm.sweep.report import row  # pylint: disable=import-outside-toplevel
  root = Path(args.root)
  results: dict[tuple[str, int], list[tuple[float, float]]] = {}
  for point in state.load(root)[1]:
    o = point.as_dict()
    r = row(root, point)
    if r['val_loss'] is not None:
      results.setdefault((o['model.parametrization'], int(o['model.embed_dim'])), []).append(
          (float(o['optim.lr']), r['val_loss']))
  lines = ['| parametrization | width | best lr | validation loss at each lr |',
           '| --- | --- | --- | --- |']
  for (parametrization, width), pts in sorted(results.items()):
    pts.sort()
    best = min(pts, key=lambda p: p[1])
    lines.append(f'| {parametrization} | {width} | {best[0]:g} | ' +
                 ', '.join(f'{lr:g}: {loss:.4f}' for lr, loss in pts) + ' |')
  (root / 'transfer.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  draw(results, root / 'transfer.png')


def draw(results: dict, output: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for ax, parametrization in zip(axes, ('standard', 'mup')):
    for (p, width), pts in sorted(results.items()):
      if p != parametrization:
        continue
      xs, ys = zip(*sorted(pts))
      ax.plot(xs, ys, marker='o', label=f'width {width}')
      best = min(pts, key=lambda q: q[1])
      ax.scatter([best[0]], [best[1]], s=120, facecolors='none', edgecolors='k')
    ax.set_xscale('log')
    ax.set_title('muP' if parametrization == 'mup' else 'standard parametrisation')
    ax.set_xlabel('learning rate')
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_ylabel('validation loss (nats/character)')
  fig.tight_layout()
  fig.savefig(output, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  main()
