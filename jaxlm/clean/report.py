"""`jaxlm.clean report`: what each step of a cleaning removed, from the files it wrote.

Printed, and written beside the data as report.md, report.html (corpus text is untrusted: every
piece of it is escaped) and report.png (documents and bytes through the steps).
"""

import collections
import html
import json
from pathlib import Path

from jaxlm.clean.run import read_jsonl_gz
from jaxlm.errors import UserError

SAMPLES = 3  # removed documents shown per rule
SAMPLE_CHARS = 400


def load(output: Path) -> dict:
  record_path = output / 'clean.json'
  if not record_path.is_file():
    raise UserError(f'--output={output} holds no cleaning (no clean.json); give the --output of '
                    'a jaxlm.clean run.')
  record = json.loads(record_path.read_text())
  if not record.get('complete'):
    raise UserError(f'the cleaning in {output} is not complete; run the same jaxlm.clean command '
                    'again to finish it, then report.')
  return record


def removed_rows(output: Path, record: dict) -> dict[str, list[dict]]:
  """Every removed document per step (in input order), from removed/<step>/."""
  steps = ['read'] + [s['name'] for s in record['recipe']['steps']]
  return {step: [row for path in sorted((output / 'removed' / step).glob('*.jsonl.gz'))
                 for row in read_jsonl_gz(path)] for step in steps}


def analyse(output: Path) -> dict:
  record = load(output)
  removed = removed_rows(output, record)
  rules = collections.Counter(row['rule'] for rows in removed.values() for row in rows)
  clusters = collections.Counter()
  for row in removed.get('minhash', []) + removed.get('exact_dedup', []):
    clusters[(row['step'], row['duplicate_of'])] = row['cluster_size']
  sizes = {step: dict(sorted(collections.Counter(
      size for (s, _), size in clusters.items() if s == step).items()))
           for step in ('exact_dedup', 'minhash') if step in removed}
  decont = collections.Counter((row['contaminated_task'], row['contaminated_doc'])
                               for row in removed.get('decontaminate', []))
  per_task = collections.defaultdict(lambda: dict(documents=0, task_documents=0))
  for (task, _), n in decont.items():
    per_task[task]['documents'] += n
    per_task[task]['task_documents'] += 1
  samples = collections.defaultdict(list)
  for rows in removed.values():
    for row in rows:
      if len(samples[row['rule']]) < SAMPLES:
        samples[row['rule']].append(row)
  return dict(record=record, counts=record['counts'], rules=rules.most_common(), sizes=sizes,
              decontamination=dict(per_task), samples=dict(samples))


def _mb(n: int) -> str:
  return f'{n / 1e6:,.3f}'


def table(record: dict) -> str:
  """The per-step counts as a Markdown table."""
  lines = ['| step | documents in | removed | kept | MB in | MB removed | MB out |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for c in record['counts']:
    lines.append(f'| {c["step"]} | {c["in_documents"]:,} | {c["removed_documents"]:,} | '
                 f'{c["out_documents"]:,} | {_mb(c["in_bytes"])} | {_mb(c["removed_bytes"])} | '
                 f'{_mb(c["out_bytes"])} |')
  return '\n'.join(lines)


def markdown(r: dict) -> str:
  rec = r['record']
  out = [f'# Cleaning report: recipe {rec["recipe"]["name"]}', '',
         f'Inputs: {len(rec["inputs"])} file(s); sample {rec["sample"]} (seed {rec["seed"]})'
         + (f'; deduplicated against {rec["dedup_against"]}' if rec['dedup_against'] else '')
         + (f'; decontaminated against {", ".join(rec["decontaminate"])}'
            if rec['decontaminate'] else '') + '.', '',
         '## Documents and bytes through the steps', '', table(rec), '',
         '## Rules that removed most', '', '| rule | documents |', '|---|---:|']
  out += [f'| {_md(rule)} | {n:,} |' for rule, n in r['rules']]
  for step, sizes in r['sizes'].items():
    out += ['', f'## Duplicate clusters ({step}): size histogram', '',
            '| cluster size | clusters |', '|---:|---:|']
    out += [f'| {size} | {n:,} |' for size, n in sizes.items()]
  if r['decontamination']:
    out += ['', '## Decontamination matches per task', '',
            '| task | training documents removed | task documents matched |', '|---|---:|---:|']
    out += [f'| {_md(t)} | {v["documents"]:,} | {v["task_documents"]:,} |'
            for t, v in sorted(r['decontamination'].items())]
  out += ['', '## Removed documents to read', '']
  for rule, rows in r['samples'].items():
    out += [f'### {_md(rule)}', '']
    for row in rows:
      extra = ''.join(f'; {k} {row[k]}' for k in ('duplicate_of', 'contaminated_task',
                                                  'contaminated_doc') if k in row)
      out += [f'- `{_md(row["id"])}`{_md(extra)}:', '', '  ```', *[
          '  ' + line for line in _excerpt(row['text']).replace('`', "'").splitlines()],
              '  ```', '']
  return '\n'.join(out) + '\n'


def _md(text: str) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def _excerpt(text: str) -> str:
  return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + ' [...]'


def page(r: dict) -> str:
  """The report as one HTML page; every string from the corpus or the record is escaped."""
  e = html.escape
  rec = r['record']
  rows = ''.join(
      f'<tr><td>{e(c["step"])}</td><td>{c["in_documents"]:,}</td><td>{c["removed_documents"]:,}'
      f'</td><td>{c["out_documents"]:,}</td><td>{_mb(c["in_bytes"])}</td>'
      f'<td>{_mb(c["removed_bytes"])}</td><td>{_mb(c["out_bytes"])}</td></tr>'
      for c in rec['counts'])
  rules = ''.join(f'<tr><td>{e(rule)}</td><td>{n:,}</td></tr>' for rule, n in r['rules'])
  sizes = ''.join(f'<h2>Duplicate clusters ({e(step)})</h2><table><tr><th>cluster size</th>'
                  '<th>clusters</th></tr>' + ''.join(
                      f'<tr><td>{s}</td><td>{n:,}</td></tr>' for s, n in h.items()) + '</table>'
                  for step, h in r['sizes'].items())
  decont = ''
  if r['decontamination']:
    decont = ('<h2>Decontamination matches per task</h2><table><tr><th>task</th><th>training '
              'documents removed</th><th>task documents matched</th></tr>' + ''.join(
                  f'<tr><td>{e(t)}</td><td>{v["documents"]:,}</td><td>{v["task_documents"]:,}'
                  '</td></tr>' for t, v in sorted(r['decontamination'].items())) + '</table>')
  samples = ''.join(
      f'<h3>{e(rule)}</h3>' + ''.join(
          f'<p><code>{e(row["id"])}</code>' + ''.join(
              f'; {k} <code>{e(str(row[k]))}</code>' for k in
              ('duplicate_of', 'contaminated_task', 'contaminated_doc') if k in row) +
          f'</p><pre>{e(_excerpt(row["text"]))}</pre>' for row in rows)
      for rule, rows in r['samples'].items())
  return (f'<!doctype html><html><head><meta charset="utf-8"><title>Cleaning report: '
          f'{e(rec["recipe"]["name"])}</title><style>body{{font-family:sans-serif;max-width:'
          '60em;margin:auto}}td,th{padding:2px 8px;text-align:right}td:first-child{text-align:'
          'left}pre{white-space:pre-wrap;background:#f4f4f4;padding:4px}</style></head><body>'
          f'<h1>Cleaning report: recipe {e(rec["recipe"]["name"])}</h1>'
          '<img src="report.png" alt="documents and bytes through the steps">'
          '<h2>Documents and bytes through the steps</h2><table><tr><th>step</th><th>documents '
          'in</th><th>removed</th><th>kept</th><th>MB in</th><th>MB removed</th><th>MB out</th>'
          f'</tr>{rows}</table><h2>Rules that removed most</h2><table><tr><th>rule</th>'
          f'<th>documents</th></tr>{rules}</table>{sizes}{decont}<h2>Removed documents to '
          f'read</h2>{samples}</body></html>\n')


def plot(record: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  counts = record['counts']
  names = [c['step'] for c in counts]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, key, label in ((axes[0], 'documents', 'documents'), (axes[1], 'bytes', 'MB')):
    scale = 1e6 if key == 'bytes' else 1
    ax.bar(names, [c[f'out_{key}'] / scale for c in counts], label='out')
    ax.bar(names, [c[f'removed_{key}'] / scale for c in counts],
           bottom=[c[f'out_{key}'] / scale for c in counts], label='removed')
    ax.set_ylabel(label)
    ax.tick_params(axis='x', rotation=45)
    ax.legend()
  fig.suptitle(f'recipe {record["recipe"]["name"]}: through the steps')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(output: Path) -> None:
  r = analyse(output)
  (output / 'report.md').write_text(markdown(r), encoding='utf-8')
  (output / 'report.html').write_text(page(r), encoding='utf-8')
  plot(r['record'], output / 'report.png')
  print(table(r['record']))
  if r['rules']:
    print('rules that removed most: ' + ', '.join(f'{rule} ({n:,})' for rule, n in r['rules'][:8]))
  print(f'wrote {output / "report.md"}, {output / "report.html"}, {output / "report.png"}')
