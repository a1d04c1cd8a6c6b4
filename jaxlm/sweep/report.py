"""`launch/sweep.py report --root=<dir>`: one row per point of a sweep (or trial of a search),
read from the points' own metrics.jsonl and state, sorted by the metric with the best point
marked and crashed points last; printed, and written as report.md, report.csv and report.png
(the metric against each swept field, and every point's validation loss curve)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

from jaxlm.errors import UserError
from jaxlm.sweep import state
from jaxlm.sweep.points import Point

METRICS = ('val_loss', 'best_val_loss', 'bits_per_byte')
COLUMNS = ('point', 'state', 'step', 'val_loss', 'best_val_loss', 'bits_per_byte',
           'tokens_per_s', 'mfu', 'wall_s', 'delta')


def read_records(workdir: Path) -> list[dict[str, Any]]:
  path = workdir / 'metrics.jsonl'
  out = []
  if path.exists():
    for line in path.read_text(errors='replace').splitlines():
      try:
        out.append(json.loads(line))
      except ValueError:  # a line cut short by a kill
        continue
  return out


def row(root: Path, point: Point) -> dict[str, Any]:
  """A point's figures from its metrics.jsonl: the last validation (a resumed run logs steps again:
  the latest record of each step wins), the best, and the median training speed."""
  records = read_records(root / point.name)
  val = {r['step']: r for r in records if r.get('split') == 'val'}
  train = [r for r in records if r.get('split') == 'train']
  st = state.get(root, point.name)
  last = val[max(val)] if val else {}
  median = lambda key: (statistics.median(r[key] for r in train if key in r)
                        if any(key in r for r in train) else None)
  return dict(point=point.name, overrides=point.as_dict(), state=st['state'],
              step=train[-1]['step'] if train else 0, val_loss=last.get('loss'),
              best_val_loss=min((r['loss'] for r in val.values()), default=None),
              bits_per_byte=last.get('bits_per_byte'), tokens_per_s=median('tokens_per_s'),
              mfu=median('mfu'), wall_s=st.get('wall_s'), error=st.get('error'),
              curve=sorted((s, r['loss']) for s, r in val.items()))


def table(root: Path, points: list[Point], metric: str = 'val_loss',
          baseline: str = '') -> list[dict[str, Any]]:
  """Rows sorted by `metric` (lowest first), points without it after, crashed points last; the
  best finished point marked `best`; `delta` the metric minus the baseline point's (the first
  point of the sweep unless named)."""
  if not points:
    raise UserError('the sweep has no points yet; run it first.')
  rows = [row(root, p) for p in points]
  names = [r['point'] for r in rows]
  if baseline and baseline not in names:
    raise UserError(f'--baseline={baseline} is not a point of the sweep; give one of '
                    f'{", ".join(names)}.')
  base = next(r for r in rows if r['point'] == (baseline or names[0]))
  for r in rows:
    ok = r[metric] is not None and base[metric] is not None
    r['delta'] = r[metric] - base[metric] if ok else None
    r['baseline'] = r is base
  rank = lambda r: (r['state'] == 'crashed', r[metric] is None,
                    r[metric] if r[metric] is not None else 0.0)
  rows.sort(key=rank)
  finished = [r for r in rows if r['state'] == 'finished' and r[metric] is not None]
  for r in rows:
    r['best'] = bool(finished) and r is finished[0]
  return rows


def _fmt(key: str, value: Any) -> str:
  if value is None:
    return '-'
  if key in ('tokens_per_s',):
    return f'{value:,.0f}'
  if key == 'mfu':
    return f'{100 * value:.1f}%'
  if key == 'wall_s':
    return f'{value:.0f}'
  if key == 'delta':
    return f'{value:+.4f}'
  if isinstance(value, float):
    return f'{value:.4f}'
  return str(value)


def cells(r: dict[str, Any]) -> list[str]:
  name = r['point'] + (' *' if r['best'] else '') + (' (baseline)' if r['baseline'] else '')
  st = r['state'] + (f' at step {r["step"]}' if r['state'] == 'crashed' else '')
  return [name, st] + [_fmt(k, r[k]) for k in COLUMNS[2:]]


def markdown(rows: list[dict[str, Any]], metric: str) -> str:
  head = ['point', 'state', 'step', 'val loss', 'best val loss', 'bits/byte', 'tokens/s', 'MFU',
          'wall s', f'delta {metric}']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  lines += ['| ' + ' | '.join(cells(r)) + ' |' for r in rows]
  crashed = [r for r in rows if r['state'] == 'crashed']
  notes = [f'- {r["point"]}: crashed at step {r["step"]}: {r["error"]}' for r in crashed]
  return '\n'.join(lines + ([''] + notes if notes else [])) + '\n'


def text(rows: list[dict[str, Any]]) -> str:
  head = ['point', 'state', 'step', 'val_loss', 'best', 'bpb', 'tok/s', 'MFU', 'wall_s', 'delta']
  body = [cells(r) for r in rows]
  widths = [max(len(x) for x in col) for col in zip(head, *body)]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                   for line in [head, *body])


def write_csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(['point', *fields, *COLUMNS[1:], 'best', 'baseline', 'error'])
  for r in rows:
    writer.writerow([r['point'], *(r['overrides'].get(f, '') for f in fields),
                     *('' if r[k] is None else r[k] for k in COLUMNS[1:]),
                     int(r['best']), int(r['baseline']), r['error'] or ''])
  return out.getvalue()


def _number(value: str) -> float | None:
  try:
    return float(value)
  except ValueError:
    return None


def plot(rows: list[dict[str, Any]], fields: list[str], metric: str, output: Path) -> None:
  """The metric against each swept field (one panel each; a log axis for a numeric field spanning
  more than a factor of 10), and every point's validation loss curve on one panel."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = len(fields) + 1
  fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
  for ax, field in zip(axes[0], fields):
    scored = [r for r in rows if r[metric] is not None]
    values = [r['overrides'].get(field, '') for r in scored]
    numbers = [_number(v) for v in values]
    numeric = all(n is not None for n in numbers) and numbers
    if numeric:
      xs = numbers
      if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale('log')
    else:
      labels = sorted(set(values))
      xs = [labels.index(v) for v in values]
      ax.set_xticks(range(len(labels)), labels)
    for x, r in zip(xs, scored):
      ax.scatter(x, r[metric], color='tab:red' if r['state'] == 'crashed' else 'tab:blue',
                 marker='*' if r['best'] else 'o', s=120 if r['best'] else 30, zorder=3)
    ax.set_xlabel(field)
    ax.set_ylabel(metric.replace('_', ' '))
    ax.grid(alpha=0.3)
  ax = axes[0][-1]
  for r in rows:
    if r['curve']:
      steps, losses = zip(*r['curve'])
      ax.plot(steps, losses, marker='.', label=r['point'] + (' (crashed)' if r['state'] ==
                                                             'crashed' else ''))
  ax.set_xlabel('step')
  ax.set_ylabel('validation loss')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  state.atomic_write(output, buffer.getvalue())


def write(root: Path, points: list[Point], metric: str = 'val_loss',
          baseline: str = '') -> list[dict[str, Any]]:
  if metric not in METRICS:
    raise UserError(f'--metric={metric} is not one of {", ".join(METRICS)}; give one.')
  rows = table(root, points, metric, baseline)
  fields = sorted({f for p in points for f, _ in p.overrides})
  swept = [f for f in fields if len({p.as_dict().get(f) for p in points}) > 1]
  state.atomic_write(root / 'report.md', markdown(rows, metric).encode())
  state.atomic_write(root / 'report.csv', write_csv(rows, fields).encode())
  plot(rows, swept, metric, root / 'report.png')  # a panel for each field that varies
  return rows
