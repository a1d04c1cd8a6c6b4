"""The statistics of a study's votes: pairwise win rates, Bradley-Terry, scores, position bias,
agreement.

Comparisons use each rater's first showing of an item; second showings (repeats) are used only for
self-agreement. A tie and 'both bad' count as half a win to each side. Intervals are 95%:
Wilson's for proportions, Student's t for mean scores, percentile bootstrap over prompts for
Bradley-Terry strengths. The fits and tests are scipy's, choix's and krippendorff's.
"""

import collections
import csv
import dataclasses
import io
import math
from pathlib import Path

import numpy as np

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
BOOTSTRAPS = 200
BT_ALPHA = 0.01  # choix's regularisation: finite strengths when one system wins every vote


def wilson(successes: float, n: int) -> tuple[float, float]:
  """Wilson's score interval (95%) for a proportion successes / n (successes may be fractional:
  ties count half)."""
  if n == 0:
    return (math.nan, math.nan)
  p, z2 = successes / n, Z95 ** 2
  centre = (p + z2 / (2 * n)) / (1 + z2 / n)
  half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
  return (centre - half, centre + half)


def sign_test(wins: int, losses: int) -> float:
  """The two-sided sign test's p-value: wins against losses, ties left out."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return 1.0 if wins + losses == 0 else float(stats.binomtest(wins, wins + losses, 0.5).pvalue)


def mean_interval(values) -> tuple[float, float, float]:
  """Mean and Student's t 95% interval."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  x = np.asarray(values, np.float64)
  if len(x) == 0:
    return (math.nan, math.nan, math.nan)
  if len(x) == 1:
    return (float(x[0]), math.nan, math.nan)
  half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
  return (float(x.mean()), float(x.mean() - half), float(x.mean() + half))


def bradley_terry(n_systems: int, votes: list[dict], alpha: float = BT_ALPHA) -> np.ndarray:
  """Bradley-Terry log-strengths (mean 0), fitted by choix's ILSR: a win counts as two
  comparisons won, a tie (or both bad) as one won by each side, so a tie is half a win."""
  import choix  # pylint: disable=import-outside-toplevel
  data = []
  for v in votes:
    a, b = v['system_a'], v['system_b']
    if v['winner'] is None:
      data += [(a, b), (b, a)]
    else:
      loser = b if v['winner'] == a else a
      data += [(v['winner'], loser)] * 2
  theta = choix.ilsr_pairwise(n_systems, data, alpha=alpha, max_iter=10_000)
  return theta - theta.mean()


def krippendorff_alpha(table: dict[str, dict], level: str) -> float:
  """Krippendorff's alpha over {coder: {unit: value}} (units any coder left out are missing);
  NaN when it is undefined (fewer than two values to pair, or a single value in all)."""
  import krippendorff  # pylint: disable=import-outside-toplevel
  units = sorted({u for row in table.values() for u in row}, key=str)
  data = np.array([[row.get(u, np.nan) for u in units] for row in table.values()], np.float64)
  paired = (~np.isnan(data)).sum(0) >= 2
  if len(table) < 2 or not paired.any() or len(np.unique(data[:, paired][~np.isnan(
      data[:, paired])])) < 2:
    return math.nan
  return float(krippendorff.alpha(reliability_data=data[:, paired], level_of_measurement=level))


def _verdict(v: dict) -> int:
  """A vote in the item's own terms (left and right differ between raters): 0 the item's first
  system better, 1 its second, 2 tie, 3 both bad."""
  if v['winner'] is not None:
    return 0 if v['winner'] == v['system_a'] else 1
  return 2 if v['choice'] == 'tie' else 3


@dataclasses.dataclass
class Report:
  systems: list[dict]
  pairs: list[dict]
  scores: list[dict]
  bradley_terry: list[dict] | None
  position: dict
  agreement: dict
  raters: list[dict]
  votes: int


def analyse(systems: list[dict], votes: list[dict], seed: int = 0) -> Report:
  first = [v for v in votes if not v['repeat']]
  pairs = []
  for a in range(len(systems)):
    for b in range(a + 1, len(systems)):
      on = [v for v in first if {v['system_a'], v['system_b']} == {a, b}]
      wins_a = sum(v['winner'] == a for v in on)
      wins_b = sum(v['winner'] == b for v in on)
      ties = sum(v['choice'] == 'tie' for v in on)
      bad = len(on) - wins_a - wins_b - ties
      rate = (wins_a + 0.5 * (ties + bad)) / len(on) if on else math.nan
      low, high = wilson(wins_a + 0.5 * (ties + bad), len(on))
      pairs.append(dict(a=a, b=b, votes=len(on), wins_a=wins_a, wins_b=wins_b, ties=ties,
                        both_bad=bad, win_rate_a=rate, low=low, high=high,
                        sign_p=sign_test(wins_a, wins_b)))
  scores = []
  for s in range(len(systems)):
    row = dict(system=s)
    for what in ('fluency', 'accuracy'):
      values = [v[f'{what}_{side}'] for v in first for side in ('left', 'right')
                if v[f'{side}_system'] == s]
      row[what], row[f'{what}_low'], row[f'{what}_high'] = mean_interval(values)
      row[f'{what}_n'] = len(values)
    scores.append(row)
  bt = None
  if len(systems) > 2 and first:
    theta = bradley_terry(len(systems), first)
    rng = np.random.default_rng(seed)
    prompts = sorted({v['prompt_id'] for v in first})
    by_prompt = {p: [v for v in first if v['prompt_id'] == p] for p in prompts}
    draws = np.array([bradley_terry(len(systems), [v for p in rng.choice(prompts, len(prompts))
                                                   for v in by_prompt[p]])
                      for _ in range(BOOTSTRAPS)])
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    ranks = np.argsort(np.argsort(-theta)) + 1
    bt = [dict(system=s, strength=float(theta[s]), low=float(low[s]), high=float(high[s]),
               rank=int(ranks[s])) for s in range(len(systems))]
  left = sum(v['choice'] == 'left' for v in first)
  right = sum(v['choice'] == 'right' for v in first)
  even = len(first) - left - right
  position = dict(votes=len(first), left=left, right=right, even=even,
                  left_rate=(left + 0.5 * even) / len(first) if first else math.nan,
                  sign_p=sign_test(left, right))
  position['low'], position['high'] = wilson(left + 0.5 * even, len(first))
  agreement = _agreement(first)
  raters = _raters(votes)
  return Report(systems, pairs, scores, bt, position, agreement, raters, len(votes))


def _agreement(first: list[dict]) -> dict:
  """Krippendorff's alpha between raters: the verdict (nominal, in the item's own terms) and the
  fluency and accuracy scores (ordinal, units = (item, system)), over units rated by two or
  more raters."""
  verdicts, scores = {}, {'fluency': {}, 'accuracy': {}}
  for v in first:
    verdicts.setdefault(v['rater'], {})[v['item_id']] = _verdict(v)
    for what, table in scores.items():
      for side in ('left', 'right'):
        table.setdefault(v['rater'], {})[(v['item_id'], v[f'{side}_system'])] = v[f'{what}_{side}']
  shared = sum(n >= 2 for n in collections.Counter(
      unit for row in verdicts.values() for unit in row).values())
  return dict(items_shared=shared, verdict=krippendorff_alpha(verdicts, 'nominal'),
              fluency=krippendorff_alpha(scores['fluency'], 'ordinal'),
              accuracy=krippendorff_alpha(scores['accuracy'], 'ordinal'))


def _raters(votes: list[dict]) -> list[dict]:
  """Per rater: votes, and agreement with themselves on repeated items (share of identical
  verdicts in the item's own terms, and the mean absolute score difference)."""
  out = []
  for name in sorted({v['rater'] for v in votes}):
    mine = [v for v in votes if v['rater'] == name]
    first = {v['item_id']: v for v in mine if not v['repeat']}
    again = [(first[v['item_id']], v) for v in mine if v['repeat'] and v['item_id'] in first]
    same = sum(_verdict(x) == _verdict(y) for x, y in again)
    diff = [abs(_score(x, what, s) - _score(y, what, s)) for x, y in again
            for what in ('fluency', 'accuracy') for s in (x['system_a'], x['system_b'])]
    out.append(dict(rater=name, votes=len(mine), repeats=len(again),
                    self_agreement=same / len(again) if again else math.nan,
                    self_score_diff=float(np.mean(diff)) if diff else math.nan))
  return out


def _score(v: dict, what: str, system: int) -> int:
  return v[f'{what}_left'] if v['left_system'] == system else v[f'{what}_right']


def _f(x: float, digits: int = 3) -> str:
  return 'n/a' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.{digits}f}'


def _p(x: float) -> str:
  """A p-value: four decimals, or two significant digits below 0.001."""
  return f'{x:.2g}' if 0 < x < 1e-3 else _f(x, 4)


def _name(systems: list[dict], s: int) -> str:
  return f"{systems[s]['run']}@{systems[s]['step']}"


def markdown(r: Report) -> str:
  s = r.systems
  lines = [f'# Human evaluation: {r.votes} votes, {len(r.raters)} rater(s), {len(s)} systems', '',
           '| system | run | step |', '|---|---|---|']
  lines += [f'| S{i} | {x["run"]} | {x["step"]} |' for i, x in enumerate(s)]
  lines += ['', '## Pairwise (ties and both-bad count half)', '',
            '| A | B | votes | A wins | B wins | ties | both bad | A win rate [95% Wilson] | '
            'sign test p |', '|---|---|---|---|---|---|---|---|---|']
  lines += [f'| S{p["a"]} | S{p["b"]} | {p["votes"]} | {p["wins_a"]} | {p["wins_b"]} | '
            f'{p["ties"]} | {p["both_bad"]} | {_f(p["win_rate_a"])} [{_f(p["low"])}, '
            f'{_f(p["high"])}] | {_p(p["sign_p"])} |' for p in r.pairs]
  if r.bradley_terry:
    lines += ['', f'## Bradley-Terry (log-strength, mean 0; 95% bootstrap over prompts, '
              f'{BOOTSTRAPS} draws)', '', '| rank | system | strength [95%] |', '|---|---|---|']
    lines += [f'| {b["rank"]} | S{b["system"]} | {_f(b["strength"])} [{_f(b["low"])}, '
              f'{_f(b["high"])}] |' for b in sorted(r.bradley_terry, key=lambda b: b['rank'])]
  lines += ['', '## Scores (1-5, mean [95% t])', '', '| system | fluency | accuracy | n |',
            '|---|---|---|---|']
  lines += [f'| S{x["system"]} | {_f(x["fluency"], 2)} [{_f(x["fluency_low"], 2)}, '
            f'{_f(x["fluency_high"], 2)}] | {_f(x["accuracy"], 2)} [{_f(x["accuracy_low"], 2)}, '
            f'{_f(x["accuracy_high"], 2)}] | {x["fluency_n"]} |' for x in r.scores]
  p = r.position
  lines += ['', '## Position bias', '',
            f'Left side win rate {_f(p["left_rate"])} [{_f(p["low"])}, {_f(p["high"])}] over '
            f'{p["votes"]} votes (left {p["left"]}, right {p["right"]}, even {p["even"]}); sign '
            f'test against 0.5: p = {_p(p["sign_p"])}.']
  a = r.agreement
  lines += ['', '## Agreement', '',
            f'Between raters (Krippendorff\'s alpha over {a["items_shared"]} item(s) rated by two '
            f'or more): verdict (nominal) {_f(a["verdict"])}, fluency (ordinal) '
            f'{_f(a["fluency"])}, accuracy (ordinal) {_f(a["accuracy"])}.', '',
            '| rater | votes | repeats | same verdict on repeat | mean score change on repeat |',
            '|---|---|---|---|---|']
  lines += [f'| {x["rater"]} | {x["votes"]} | {x["repeats"]} | {_f(x["self_agreement"])} | '
            f'{_f(x["self_score_diff"], 2)} |' for x in r.raters]
  return '\n'.join(lines) + '\n'


def csv_text(rows: list[dict]) -> str:
  out = io.StringIO()
  if rows:
    w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator='\n')
    w.writeheader()
    w.writerows(rows)
  return out.getvalue()


def plot(r: Report, path: Path) -> None:
  """Win-rate matrix (row beats column) and mean scores; Bradley-Terry strengths with more than
  two systems."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n = len(r.systems)
  panels = 3 if r.bradley_terry else 2
  fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.0))
  matrix = np.full((n, n), np.nan)
  notes = {}
  for p in r.pairs:
    matrix[p['a'], p['b']], matrix[p['b'], p['a']] = p['win_rate_a'], 1 - p['win_rate_a']
    notes[p['a'], p['b']] = f'{_f(p["win_rate_a"], 2)}\n[{_f(p["low"], 2)}, {_f(p["high"], 2)}]'
    notes[p['b'], p['a']] = (f'{_f(1 - p["win_rate_a"], 2)}\n[{_f(1 - p["high"], 2)}, '
                             f'{_f(1 - p["low"], 2)}]')
  ax = axes[0]
  ax.imshow(matrix, cmap='RdBu', vmin=0, vmax=1)
  for (i, j), text in notes.items():
    ax.text(j, i, text, ha='center', va='center', fontsize=8)
  labels = [f'S{i}' for i in range(n)]
  ax.set_xticks(range(n), labels)
  ax.set_yticks(range(n), labels)
  ax.set_title('win rate of row over column')
  ax = axes[1]
  x = np.arange(n)
  for k, what in enumerate(('fluency', 'accuracy')):
    means = np.array([s[what] for s in r.scores])
    err = np.array([[s[what] - s[f'{what}_low'], s[f'{what}_high'] - s[what]] for s in r.scores])
    ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=np.nan_to_num(err.T), capsize=3, label=what)
  ax.set_xticks(x, labels)
  ax.set_ylim(0, 5.5)
  ax.set_title('mean score (95% t interval)')
  ax.legend(loc='lower right')
  if r.bradley_terry:
    ax = axes[2]
    bt = r.bradley_terry
    ax.errorbar([b['strength'] for b in bt], x, fmt='o', capsize=3,
                xerr=[[b['strength'] - b['low'] for b in bt], [b['high'] - b['strength']
                                                               for b in bt]])
    ax.set_yticks(x, labels)
    ax.invert_yaxis()
    ax.set_title('Bradley-Terry log-strength (95% bootstrap)')
  fig.suptitle(' | '.join(f'S{i} = {_name(r.systems, i)}' for i in range(n)), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(r: Report) -> str:
  """The printed summary: systems, pairs, and (with more than two systems) the ranking."""
  lines = [f'{r.votes} votes from {len(r.raters)} rater(s)']
  lines += [f'  S{i}: {_name(r.systems, i)}' for i in range(len(r.systems))]
  lines += [f'  S{p["a"]} vs S{p["b"]}: win rate {_f(p["win_rate_a"])} [{_f(p["low"])}, '
            f'{_f(p["high"])}] over {p["votes"]} votes ({p["wins_a"]}-{p["wins_b"]}, '
            f'{p["ties"]} ties, {p["both_bad"]} both bad), sign test p = {_p(p["sign_p"])}'
            for p in r.pairs]
  if r.bradley_terry:
    lines += [f'  rank {b["rank"]}: S{b["system"]} {_f(b["strength"])} [{_f(b["low"])}, '
              f'{_f(b["high"])}]' for b in sorted(r.bradley_terry, key=lambda b: b['rank'])]
  for s in r.scores:
    lines.append(f'  S{s["system"]}: fluency {_f(s["fluency"], 2)}, accuracy '
                 f'{_f(s["accuracy"], 2)} (n={s["fluency_n"]})')
  p, a = r.position, r.agreement
  lines.append(f'  left side win rate {_f(p["left_rate"])} [{_f(p["low"])}, {_f(p["high"])}], '
               f'p = {_p(p["sign_p"])}')
  lines.append(f'  agreement (alpha): verdict {_f(a["verdict"])}, fluency {_f(a["fluency"])}, '
               f'accuracy {_f(a["accuracy"])} over {a["items_shared"]} shared item(s)')
  return '\n'.join(lines)


def write(r: Report, out: Path) -> list[Path]:
  """report.md, pairs.csv, scores.csv, raters.csv and report.png in `out`, each written under a
  temporary name and renamed."""
  out.mkdir(parents=True, exist_ok=True)
  def by_name(rows: list[dict], *keys: str) -> list[dict]:  # system indices as run@step
    return [{k: _name(r.systems, v) if k in keys else v for k, v in row.items()} for row in rows]
  named = {'pairs.csv': by_name(r.pairs, 'a', 'b'), 'scores.csv': by_name(r.scores, 'system'),
           'raters.csv': r.raters}
  if r.bradley_terry:
    named['bradley_terry.csv'] = by_name(r.bradley_terry, 'system')
  written = []
  for name, rows in named.items():
    written.append(_replace(out / name, csv_text(rows)))
  written.append(_replace(out / 'report.md', markdown(r)))
  tmp = out / '.report.png.tmp.png'
  plot(r, tmp)
  tmp.replace(out / 'report.png')
  return written + [out / 'report.png']


def _replace(path: Path, text: str) -> Path:
  tmp = path.with_name(f'.{path.name}.tmp')
  tmp.write_text(text)
  tmp.replace(path)
  return path
