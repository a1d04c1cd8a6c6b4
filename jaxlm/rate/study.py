"""A human-evaluation study on disk: one SQLite file, `<study>/study.db`, holding the systems (runs
and their provenance), the prompts, every generation, the items to rate, and the votes.

The items are the pairs to judge: for every prompt and sample, every pair of systems once. Each
rater sees them in an order of their own (drawn from the study's seed and the rater's name), with
left and right drawn per (item, rater, showing); a share of the items (`repeat_share`) comes back
once, later, for self-agreement. The order is a pure function of the study and the name, so a
restarted server, or a rater on another day, continues at the first position without a vote.

Votes: one transaction each (WAL mode, synchronous=FULL), so a vote the page was told is stored is
on disk, and a killed server loses nothing. A vote names its position in the rater's order; a
second vote for the same position (a form sent twice) stores nothing.
"""

import contextlib
import dataclasses
import json
import random
import sqlite3
import time
from pathlib import Path

from jaxlm.errors import UserError

DB = 'study.db'
CHOICES = ('left', 'right', 'tie', 'both_bad')
SCORES = ('fluency_left', 'accuracy_left', 'fluency_right', 'accuracy_right')
MAX_NAME = 64
MAX_COMMENT = 4000

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE systems (id INTEGER PRIMARY KEY, run TEXT NOT NULL, step INTEGER NOT NULL,
                      provenance TEXT NOT NULL);
CREATE TABLE prompts (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL, reference TEXT);
CREATE TABLE outputs (prompt_id INTEGER NOT NULL REFERENCES prompts(id), sample INTEGER NOT NULL,
                      system_id INTEGER NOT NULL REFERENCES systems(id), seed INTEGER NOT NULL,
                      text TEXT NOT NULL, PRIMARY KEY (prompt_id, sample, system_id));
CREATE TABLE items (id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL, sample INTEGER NOT NULL,
                    system_a INTEGER NOT NULL, system_b INTEGER NOT NULL);
CREATE TABLE votes (rater TEXT NOT NULL, position INTEGER NOT NULL, item_id INTEGER NOT NULL,
                    repeat INTEGER NOT NULL, left_system INTEGER NOT NULL,
                    right_system INTEGER NOT NULL,
                    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad')),
                    fluency_left INTEGER NOT NULL, accuracy_left INTEGER NOT NULL,
                    fluency_right INTEGER NOT NULL, accuracy_right INTEGER NOT NULL,
                    comment TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (rater, position));
"""


@dataclasses.dataclass(frozen=True)
class Showing:
  """One position in a rater's order: which item, whether it is the second showing, and whether
  the item's first system (system_a) is on the left."""
  item_id: int
  repeat: bool
  a_left: bool


@dataclasses.dataclass(frozen=True)
class Page:
  """What the page shows at one position: never a system, a run or a step."""
  position: int
  total: int
  prompt: str
  reference: str | None
  left: str
  right: str


def connect(path: Path) -> sqlite3.Connection:
  db = sqlite3.connect(path, timeout=30, isolation_level=None)  # transactions stated explicitly
  db.execute('PRAGMA journal_mode=WAL')
  db.execute('PRAGMA synchronous=FULL')  # a committed vote is on disk, not only in the OS cache
  db.execute('PRAGMA foreign_keys=ON')
  return db


def create(directory: Path, *, systems: list[dict], prompts: list[dict],
           outputs: dict[tuple[int, int, int], tuple[int, str]], meta: dict) -> None:
  """Writes a new study into `directory` (which must not exist): systems [{run, step,
  provenance}], prompts [{prompt, reference}], outputs {(prompt index, sample, system index):
  (seed, text)}, meta (settings, seed, repeat_share, samples_per_prompt). Written under a
  temporary name and renamed, so a study directory is always whole."""
  samples = int(meta['samples_per_prompt'])
  assert len(systems) >= 2 and prompts and samples >= 1
  directory = Path(directory)
  partial = directory.with_name(f'.{directory.name}.partial')
  if partial.exists():
    for f in partial.iterdir():
      f.unlink()
  partial.mkdir(parents=True, exist_ok=True)
  db = connect(partial / DB)
  try:
    db.executescript(_SCHEMA)
    db.execute('BEGIN')
    db.executemany('INSERT INTO meta VALUES (?, ?)',
                   [(k, json.dumps(v)) for k, v in meta.items()])
    db.executemany('INSERT INTO systems VALUES (?, ?, ?, ?)',
                   [(i, s['run'], s['step'], json.dumps(s['provenance'], sort_keys=True))
                    for i, s in enumerate(systems)])
    db.executemany('INSERT INTO prompts VALUES (?, ?, ?)',
                   [(i, p['prompt'], p.get('reference')) for i, p in enumerate(prompts)])
    db.executemany('INSERT INTO outputs VALUES (?, ?, ?, ?, ?)',
                   [(p, k, s, seed, text) for (p, k, s), (seed, text) in sorted(outputs.items())])
    items = [(p, k, a, b) for p in range(len(prompts)) for k in range(samples)
             for a in range(len(systems)) for b in range(a + 1, len(systems))]
    db.executemany('INSERT INTO items VALUES (?, ?, ?, ?, ?)',
                   [(i, *item) for i, item in enumerate(items)])
    db.execute('COMMIT')
  finally:
    db.close()
  (partial / 'study.json').write_text(json.dumps(
      dict(meta, systems=[{k: s[k] for k in ('run', 'step')} for s in systems],
           prompts=len(prompts), items=len(items)), indent=1, sort_keys=True) + '\n')
  partial.rename(directory)


def check_name(name: str) -> str:
  """A rater's name as stored: stripped, 1 to MAX_NAME printable characters."""
  name = (name or '').strip()
  if not name or len(name) > MAX_NAME or not name.isprintable():
    raise UserError(f'a rater name is 1 to {MAX_NAME} printable characters; type another.')
  return name


class Study:
  """An existing study, opened for serving or reporting."""

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    self.path = self.directory / DB
    if not self.path.is_file():
      what = 'does not exist' if not self.directory.exists() else f'holds no {DB}'
      raise UserError(f'--study={directory} {what}; give the --out directory of a finished '
                      '`jaxlm.rate generate`.')
    try:
      with self.opened() as db:
        self.meta = {k: json.loads(v) for k, v in db.execute('SELECT key, value FROM meta')}
        self.items = db.execute('SELECT id, prompt_id, sample, system_a, system_b FROM items '
                                'ORDER BY id').fetchall()
    except sqlite3.DatabaseError as e:
      raise UserError(f'{self.path} is not a readable study ({e}); give the --out directory of a '
                      'finished `jaxlm.rate generate`.') from None
    self.repeat_share = float(self.meta.get('repeat_share', 0.0))
    self.seed = int(self.meta.get('seed', 0))
    self._orders: dict[str, list[Showing]] = {}

  def connect(self) -> sqlite3.Connection:
    return connect(self.path)

  @contextlib.contextmanager
  def opened(self):
    """A connection for the block; closing it rolls back a transaction left open."""
    db = self.connect()
    try:
      yield db
    finally:
      db.close()

  def order(self, rater: str) -> list[Showing]:
    """The rater's positions: every item once, in an order drawn from (seed, name), with
    round(repeat_share x items) of them (at most all but two) shown a second time, later, with
    two other items in between at least. Sides are drawn per showing."""
    if rater not in self._orders:
      rng = random.Random(f'jaxlm.rate:{self.seed}:{rater}')  # str seeds hash with SHA-512
      ids = [item[0] for item in self.items]
      rng.shuffle(ids)
      order = [Showing(i, False, rng.random() < 0.5) for i in ids]
      # repeats come from all but the last two items, so two others can lie in between
      eligible = ids[:max(len(ids) - 2, 0)]
      for i in rng.sample(eligible, min(round(self.repeat_share * len(ids)), len(eligible))):
        first = next(p for p, s in enumerate(order) if s.item_id == i)
        order.insert(rng.randint(first + 3, len(order)), Showing(i, True, rng.random() < 0.5))
      self._orders[rater] = order
    return self._orders[rater]

  def next_position(self, db: sqlite3.Connection, rater: str) -> int:
    """The first position without a vote (votes are stored in order, so the count of them)."""
    return db.execute('SELECT COUNT(*) FROM votes WHERE rater = ?', (rater,)).fetchone()[0]

  def _sides(self, showing: Showing) -> tuple[int, int]:
    """The systems on the left and on the right at this showing."""
    _, _, _, a, b = self.items[showing.item_id]
    return (a, b) if showing.a_left else (b, a)

  def page(self, db: sqlite3.Connection, rater: str, position: int) -> Page | None:
    order = self.order(rater)
    if position >= len(order):
      return None
    showing = order[position]
    _, prompt_id, sample, _, _ = self.items[showing.item_id]
    prompt, reference = db.execute('SELECT prompt, reference FROM prompts WHERE id = ?',
                                   (prompt_id,)).fetchone()
    text = dict(db.execute('SELECT system_id, text FROM outputs WHERE prompt_id = ? AND '
                           'sample = ?', (prompt_id, sample)).fetchall())
    left, right = self._sides(showing)
    return Page(position, len(order), prompt, reference, text[left], text[right])

  def vote(self, rater: str, position: int, choice: str, scores: dict[str, int],
           comment: str) -> bool:
    """Stores one vote in one transaction. True if stored; False if this position already has
    a vote (the same form sent twice). A position ahead of the rater's next one is refused."""
    if choice not in CHOICES:
      raise UserError(f'the choice {choice!r} is not one of {", ".join(CHOICES)}.')
    if set(scores) != set(SCORES) or not all(
        isinstance(v, int) and 1 <= v <= 5 for v in scores.values()):
      raise UserError('score fluency and accuracy from 1 to 5 on both sides.')
    if len(comment) > MAX_COMMENT:
      raise UserError(f'a comment is at most {MAX_COMMENT} characters; shorten it.')
    order = self.order(rater)
    with self.opened() as db:  # closed without COMMIT: the transaction is rolled back
      db.execute('BEGIN IMMEDIATE')  # one writer at a time; others wait (busy timeout)
      done = self.next_position(db, rater)
      if position < done:
        return False
      if position != done or position >= len(order):
        raise UserError(f'position {position} is not the next one to rate ({done}); reload the '
                        'page.')
      showing = order[position]
      left, right = self._sides(showing)
      db.execute('INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
                 (rater, position, showing.item_id, int(showing.repeat), left, right, choice,
                  *(scores[k] for k in SCORES), comment, time.time()))
      db.execute('COMMIT')
      return True

  def systems(self) -> list[dict]:
    with self.opened() as db:
      return [dict(id=i, run=run, step=step, provenance=json.loads(p)) for i, run, step, p in
              db.execute('SELECT id, run, step, provenance FROM systems ORDER BY id')]

  def votes(self) -> list[dict]:
    """Every vote, unblinded: the item's prompt and systems, and which system won (None for a
    tie or both bad)."""
    with self.opened() as db:
      db.row_factory = sqlite3.Row
      rows = [dict(r) for r in db.execute(
          'SELECT v.*, i.prompt_id, i.sample, i.system_a, i.system_b FROM votes v '
          'JOIN items i ON i.id = v.item_id ORDER BY v.created, v.rater, v.position')]
    for r in rows:
      r['winner'] = {'left': r['left_system'], 'right': r['right_system']}.get(r['choice'])
    return rows
