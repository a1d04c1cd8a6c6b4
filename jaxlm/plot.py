"""Draw a run's curves to a PNG: loss (train and validation), perplexity, learning rate, tokens/s.

  python -m jaxlm.plot --workdir=runs/base [--output=curves.png]
"""

import io
import json
from pathlib import Path

from absl import flags

from jaxlm import cli, paths
from jaxlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir.', required=True)
_OUTPUT = flags.DEFINE_string('output', '', 'PNG to write (default: <workdir>/curves.png).')


def read_metrics(workdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{split: {metric: [(step, value), ...]}} from <workdir>/metrics.jsonl; a resumed run's
  repeated steps keep their last value."""
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    raise UserError(f'{path} does not exist; give the --workdir of a training run.')
  series: dict[str, dict[str, dict[int, float]]] = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:  # a line cut short when a run was killed
      continue
    split, step = record.pop('split'), record.pop('step')
    for key, value in record.items():
      if isinstance(value, (int, float)):
        series.setdefault(split, {}).setdefault(key, {})[step] = value
  return {split: {k: sorted(v.items()) for k, v in metrics.items()}
          for split, metrics in series.items()}


def plot(workdir: Path, output: Path) -> Path:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  series = read_metrics(workdir)
  train, val = series.get('train', {}), series.get('val', {})
  if not train.get('loss') and not val.get('loss'):
    raise UserError(f'{workdir / "metrics.jsonl"} holds no loss yet; train (past one log step) '
                    'first.')
  panels = [('loss', [('train', train.get('loss')), ('validation', val.get('loss'))], 'nats/token'),
            ('perplexity', [('validation', val.get('perplexity'))], ''),
            ('learning rate', [('train', train.get('lr'))], ''),
            ('throughput', [('train', train.get('tokens_per_s'))], 'tokens/s')]
  fig, axes = plt.subplots(2, 2, figsize=(11, 7))
  for ax, (title, lines, unit) in zip(axes.ravel(), panels):
    for label, points in lines:
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, label=label, marker='o' if len(points) < 30 else None)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    if any(points for _, points in lines):
      ax.legend()
  fig.suptitle(str(workdir))
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, format='png', dpi=100)
  plt.close(fig)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_bytes(image.getvalue())
  return output


def main(argv: list[str]) -> None:
  cli.require(_WORKDIR, bool(_WORKDIR.value.strip()), "a training run's workdir")
  cli.require_location(_WORKDIR, _OUTPUT)
  cli.require(_OUTPUT, not _OUTPUT.value or _OUTPUT.value.endswith('.png'), 'a path ending in .png')
  workdir = paths.path(_WORKDIR.value)
  out = plot(workdir, paths.path(_OUTPUT.value) if _OUTPUT.value else workdir / 'curves.png')
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main)
