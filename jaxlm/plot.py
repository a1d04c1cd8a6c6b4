"""Draw a run's curves to a PNG: loss (train and validation), perplexity, learning rate, tokens/s,
and the downstream tasks of train.eval_tasks when the run has them.

  python -m jaxlm.plot --workdir=runs/base [--output=curves.png]
  python -m jaxlm.plot --workdir=runs/lstm_char,runs/shakespeare_char --x=time \
      --output=compare.png        # several runs on the same axes, against training time

--x=time puts the seconds spent in training steps on the horizontal axis (the logged step time
times the steps it covers, added up: compilation, evaluation and checkpoints are left out), so
runs of different speeds compare at equal compute time.
"""

import io
from pathlib import Path

from absl import flags

from jaxlm import cli, metrics, paths
from jaxlm.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run\'s workdir, or several separated '
                               'by commas to draw them together.', required=True)
_OUTPUT = flags.DEFINE_string('output', '', 'PNG to write (default: <workdir>/curves.png; needed '
                              'with several workdirs).')
_X = flags.DEFINE_enum('x', 'step', ['step', 'time'], 'Horizontal axis: the step, or the seconds '
                       'spent in training steps.')


def plot(workdirs: list[Path], output: Path, x: str = 'step') -> Path:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  every = {w: metrics.read_metrics(w) for w in workdirs}
  tasks = any(split.startswith('tasks/') for series in every.values() for split in series)
  fig, axes = plt.subplots(3 if tasks else 2, 2, figsize=(11, 10.5 if tasks else 7))
  for i, workdir in enumerate(workdirs):
    series = every[workdir]
    train, val = series.get('train', {}), series.get('val', {})
    if not train.get('loss') and not val.get('loss'):
      raise UserError(f'{workdir / "metrics.jsonl"} holds no loss yet; train (past one log step) '
                      'first.')
    if x == 'time' and not train.get('step_time'):
      raise UserError(f'{workdir / "metrics.jsonl"} has no step times to put on a time axis; '
                      'use --x=step.')
    elapsed = metrics.training_seconds(train)
    name = f'{workdir.name} ' if len(workdirs) > 1 else ''
    panels = [('loss', [('train', train.get('loss')), ('validation', val.get('loss'))],
               'nats/token'),
              ('perplexity', [('validation', val.get('perplexity'))], ''),
              ('learning rate', [('train', train.get('lr'))], ''),
              ('throughput', [('train', train.get('tokens_per_s'))], 'tokens/s')]
    if tasks:  # train.eval_tasks (lm-eval): accuracies, and perplexities on a log scale
      found = [(split[len('tasks/'):] + ' ' + metric, points)
               for split, values in sorted(series.items()) if split.startswith('tasks/')
               for metric, points in values.items()]
      panels += [('downstream tasks', [(n, p) for n, p in found if 'perplexity' not in n], ''),
                 ('downstream perplexity', [(n, p) for n, p in found if 'perplexity' in n],
                  'log scale')]
    for ax, (title, lines, unit) in zip(axes.ravel(), panels):
      for label, points in lines:
        points = points if x == 'step' else metrics.at_training_time(points, elapsed)
        if points:
          xs, values = zip(*points)
          style = {}  # several runs: a colour per run, validation dashed
          if len(workdirs) > 1:
            style = dict(color=f'C{i}', linestyle='--' if label == 'validation' else '-')
          ax.plot(xs, values, label=name + label, marker='o' if len(points) < 30 else None,
                  **style)
      ax.set_title(title)
      ax.set_xlabel('step' if x == 'step' else 'seconds in training steps')
      ax.set_ylabel(unit)
      if unit == 'log scale' and ax.lines:
        ax.set_yscale('log')
      ax.grid(alpha=0.3)
      if ax.get_legend_handles_labels()[0]:
        ax.legend()
  fig.suptitle(', '.join(str(w) for w in workdirs))
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
  cli.require_output(_OUTPUT, is_file=True)
  workdirs = [paths.path(w.strip()) for w in _WORKDIR.value.split(',') if w.strip()]
  cli.require(_OUTPUT, len(workdirs) == 1 or bool(_OUTPUT.value),
              'a .png to write when several workdirs are drawn')
  output = paths.path(_OUTPUT.value) if _OUTPUT.value else workdirs[0] / 'curves.png'
  out = plot(workdirs, output, _X.value)
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main)
