"""A human-evaluation study of two shipped-corpus runs, rated end to end in a real browser.

  python launch/rate_study.py [--workdir=runs/rate_study] [--steps=100,500] [--out=docs/rate_study]

Trains the default model (configs/base.py) to the last of --steps with a checkpoint at each (or
reuses the workdir), writes prompts from the validation end of the shipped corpus, runs
`jaxlm.rate generate` on the two checkpoints, serves the study, and has two scripted raters vote
on every item in headless Chromium (Debian's package, driven by Playwright) through the same page
people use: one with the mouse, one with the keyboard. It takes the screenshot in docs/ and runs
`jaxlm.rate report`.

The raters are scripts, not people: each scores a continuation by the share of its words that
occur in the training corpus (fluency) and the share of its word pairs that do (accuracy), and
prefers the higher total; the second rater flips a fifth of its verdicts at random. Their report
shows that the pipeline (blinding, storage, unblinding, statistics) works on real generations; it
is not a human judgement of the models.

The browser driving (Rater, serve) is shared with tests/test_rate.py.
"""

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jaxlm import cluster

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / 'jaxlm' / 'data' / 'tinyshakespeare.txt'
SCORES = ('fluency_left', 'accuracy_left', 'fluency_right', 'accuracy_right')
KEYS = {'left': 'a', 'right': 'b', 'tie': 't', 'both_bad': 'x'}


def chromium() -> str | None:
  """Debian's chromium (JAXLM_CHROMIUM overrides), or None."""
  import shutil  # pylint: disable=import-outside-toplevel
  return os.environ.get('JAXLM_CHROMIUM') or shutil.which('chromium') or shutil.which(
      'chromium-browser')


def serve(study: Path, port: int, log: Path, token: str | None = None,
          env: dict | None = None) -> subprocess.Popen:
  """`jaxlm.rate serve` in a process of its own, returned once it answers."""
  cmd = [sys.executable, '-m', 'jaxlm.rate', 'serve', f'--study={study}', f'--port={port}']
  if token:
    cmd.append(f'--token={token}')
  process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, 'a'),
                             stderr=subprocess.STDOUT)
  url = f'http://127.0.0.1:{port}/healthz' + (f'?token={token}' if token else '')
  deadline = time.time() + 60
  while True:
    if process.poll() is not None:
      raise RuntimeError(f'the server ended: {log.read_text()[-2000:]}')
    try:
      with urllib.request.urlopen(url, timeout=2) as r:
        if r.status == 200:
          return process
    except OSError:
      if time.time() > deadline:
        raise
      time.sleep(0.1)


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
  process.send_signal(sig)
  process.wait(30)


class Rater:
  """One rater in one browser context: signs in, reads an item, votes with mouse or keyboard."""

  def __init__(self, page, url: str):
    self.page, self.url = page, url

  def sign_in(self, name: str) -> None:
    self.page.goto(self.url)
    self.page.fill('#name', name)
    self.page.click('button[type=submit]')
    self.page.wait_for_selector('#progress, #done')

  def reload(self) -> None:
    self.page.goto(self.url)
    self.page.wait_for_selector('#progress, #done')

  def done(self) -> bool:
    return self.page.locator('#done').count() > 0

  def read(self) -> dict:
    """What the page shows: position (1-based), total, prompt, reference, left, right."""
    position, total = map(int, re.findall(r'\d+', self.page.inner_text('#progress')))
    reference = self.page.locator('#reference')
    return dict(position=position, total=total, prompt=self.page.inner_text('#prompt'),
                reference=reference.inner_text() if reference.count() else None,
                left=self.page.inner_text('#output-left'),
                right=self.page.inner_text('#output-right'))

  def fill(self, choice: str, scores: dict, keyboard: bool = False, comment: str = '') -> None:
    if keyboard:
      for name in SCORES:  # digits fill the highlighted score, in this order
        self.page.keyboard.press(str(scores[name]))
      self.page.keyboard.press(KEYS[choice])
    else:
      for name in SCORES:
        self.page.check(f'input[name={name}][value="{scores[name]}"]')
      self.page.check(f'input[name=choice][value={choice}]')
    if comment:
      self.page.fill('#comment', comment)
      self.page.keyboard.press('Escape')

  def submit(self, keyboard: bool = False, wait: bool = True) -> None:
    """Sends the vote; with wait, returns once the next item (the confirmation) is shown."""
    before = self.page.inner_text('#progress')
    if keyboard:
      self.page.keyboard.press('Enter')
    else:
      self.page.click('#submit', no_wait_after=not wait)
    if wait:
      self.wait_next(before)

  def wait_next(self, before: str) -> None:
    self.page.wait_for_function(
        'b => document.querySelector("#done") || (document.querySelector("#progress") && '
        'document.querySelector("#progress").innerText !== b)', arg=before)

  def vote(self, choice: str, scores: dict, keyboard: bool = False, comment: str = '') -> None:
    self.fill(choice, scores, keyboard, comment)
    self.submit(keyboard)


def lexicon_judge(corpus_text: str, noise: float = 0.0, seed: int = 0):
  """A scripted rater: fluency from the share of words seen in the corpus, accuracy from the share
  of word pairs seen; the verdict prefers the higher sum (a tie within 0.05, both bad below 0.8);
  `noise` is the chance of a verdict drawn at random instead."""
  words = re.findall(r"[a-z']+", corpus_text.lower())
  vocab, pairs = set(words), set(zip(words, words[1:]))
  rng = random.Random(seed)

  def shares(text: str) -> tuple[float, float]:
    w = re.findall(r"[a-z']+", text.lower())
    if len(w) < 2:
      return 0.0, 0.0
    return (sum(x in vocab for x in w) / len(w),
            sum(p in pairs for p in zip(w, w[1:])) / (len(w) - 1))

  def judge(item: dict) -> tuple[str, dict]:
    (fl, al), (fr, ar) = shares(item['left']), shares(item['right'])
    score = lambda share: max(1, min(5, 1 + round(4 * share)))  # noqa: E731
    scores = dict(fluency_left=score(fl), accuracy_left=score(al), fluency_right=score(fr),
                  accuracy_right=score(ar))
    left, right = fl + al, fr + ar
    if max(left, right) < 0.8:
      choice = 'both_bad'
    elif abs(left - right) < 0.05:
      choice = 'tie'
    else:
      choice = 'left' if left > right else 'right'
    if rng.random() < noise:
      choice = rng.choice(list(KEYS))
    return choice, scores
  return judge


def prompts_from_corpus(n: int) -> list[str]:
  """The first line of n speeches spread over the corpus's last tenth (its validation split),
  with the speaker's name: 'NAME:\\nfirst line\\n'."""
  text = CORPUS.read_text()
  tail = text[int(len(text) * 0.9):]
  speeches = re.findall(r'\n\n([A-Z][A-Za-z ]+:\n[^\n]+\n)', tail)
  step = len(speeches) / n
  return [speeches[int(i * step)] for i in range(n)]


def _run(*args: str) -> None:
  print('$', ' '.join(args), flush=True)
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--workdir', default='runs/rate_study')
  parser.add_argument('--steps', default='100,500')
  parser.add_argument('--prompts', type=int, default=16)
  parser.add_argument('--repeat_share', type=float, default=0.25)
  parser.add_argument('--out', default='docs/rate_study')
  parser.add_argument('--screenshot', default='docs/rate_page.png')
  args = parser.parse_args()
  steps = [int(s) for s in args.steps.split(',')]
  workdir, out = ROOT / args.workdir, ROOT / args.out
  if not all((workdir / 'checkpoints' / str(s)).is_dir() for s in steps):
    _run('-m', 'jaxlm.train', '--config=configs/base.py', f'--config.workdir={workdir}',
         f'--config.train.steps={max(steps)}', f'--config.checkpoint.every={min(steps)}',
         f'--config.checkpoint.keep={max(steps) // min(steps) + 1}')
  study = workdir.parent / f'{workdir.name}-study'
  if not (study / 'study.db').is_file():
    prompts = workdir.parent / f'{workdir.name}-prompts.jsonl'
    import json  # pylint: disable=import-outside-toplevel
    prompts.write_text(''.join(json.dumps(dict(prompt=p)) + '\n'
                               for p in prompts_from_corpus(args.prompts)))
    runs = ','.join(f'{args.workdir}@{s}' for s in steps)  # as given: the report names them
    _run('-m', 'jaxlm.rate', 'generate', f'--runs={runs}',
         f'--prompts={prompts}', f'--out={study}', '--max_new_tokens=96',
         f'--repeat_share={args.repeat_share}', '--seed=0')
  from playwright.sync_api import sync_playwright  # pylint: disable=import-outside-toplevel
  port = cluster.free_port()
  server = serve(study, port, workdir.parent / f'{workdir.name}-serve.log')
  corpus = CORPUS.read_text()
  raters = [('rater-mouse', lexicon_judge(corpus, 0.0, 1), False),
            ('rater-keys', lexicon_judge(corpus, 0.2, 2), True)]
  try:
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=chromium(), headless=True)
      for i, (name, judge, keyboard) in enumerate(raters):
        page = browser.new_context(viewport=dict(width=1280, height=900)).new_page()
        rater = Rater(page, f'http://127.0.0.1:{port}/')
        rater.sign_in(name)
        votes = 0
        while not rater.done():
          choice, scores = judge(rater.read())
          rater.fill(choice, scores, keyboard)
          if i == 0 and votes == 1 and args.screenshot:
            page.screenshot(path=str(ROOT / args.screenshot), full_page=True)
          rater.submit(keyboard)
          votes += 1
        print(f'{name}: {votes} votes', flush=True)
      browser.close()
  finally:
    with contextlib.suppress(Exception):
      kill(server, signal.SIGTERM)
  _run('-m', 'jaxlm.rate', 'report', f'--study={study}', f'--out={out}')


if __name__ == '__main__':
  main()
