"""Human evaluation (jaxlm.rate): the study, the page (Flask's test client and real Chromium), the
statistics against closed forms, and the command's bad inputs."""

import importlib.util
import json
import math
import re
import sqlite3
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest

import harness
from tiny import TINY_TEXT, tiny_config

from jaxlm import cluster
from jaxlm.rate import report as stats
from jaxlm.rate import study as studies

spec = importlib.util.spec_from_file_location('rate_study', harness.ROOT / 'launch' /
                                              'rate_study.py')
rate_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rate_study)

SCRIPT = '<script>alert(1)</script>'
NAMES = ('runs/alpha-model', 'runs/beta-model', 'runs/gamma-model')


def make_study(directory, prompts=6, systems=2, samples=1, repeat_share=0.0, seed=0,
               reference=True):
  """A study written as `generate` writes one, with known texts: system s's output for prompt p,
  sample k is 'S<s> says <p>.<k> ...'; system 0's begin with 'GOOD' (so a blind rater can pick
  it) and system 1's hold a script tag."""
  outputs = {}
  for p in range(prompts):
    for k in range(samples):
      for s in range(systems):
        text = f'S{s} says {p}.{k} <b>bold</b>'
        text = ('GOOD ' + text) if s == 0 else (text + ' ' + SCRIPT if s == 1 else text)
        outputs[p, k, s] = (seed + k, text)
  studies.create(directory, systems=[dict(run=NAMES[s], step=100 * (s + 7),
                                          provenance=dict(workdir=f'/abs/{NAMES[s]}'))
                                     for s in range(systems)],
                 prompts=[dict(prompt=f'Prompt {p}: <i>speak</i>',
                               reference=f'Reference {p}' if reference else None)
                          for p in range(prompts)],
                 outputs=outputs, meta=dict(settings={}, seed=seed, samples_per_prompt=samples,
                                            repeat_share=repeat_share, version=1))
  return studies.Study(directory)


def secret_strings(study):
  """What must never reach a rater: run names, paths, steps."""
  out = []
  for s in study.systems():
    out += [s['run'], s['run'].split('/')[-1], s['provenance']['workdir'], f'@{s["step"]}',
            f'step {s["step"]}', f'"step": {s["step"]}']
  return out


# --- the study: orders, votes -------------------------------------------------------------------

def test_each_rater_sees_every_item_once_in_an_order_of_their_own_with_repeats_later(tmp_path):
  study = make_study(tmp_path / 's', prompts=20, systems=3, repeat_share=0.25)
  items = len(study.items)
  assert items == 20 * 3
  orders = {name: study.order(name) for name in ('ann', 'bob')}
  for order in orders.values():
    first = [s.item_id for s in order if not s.repeat]
    assert sorted(first) == list(range(items))  # every item once
    repeats = [(p, s) for p, s in enumerate(order) if s.repeat]
    assert len(repeats) == round(0.25 * items)
    for p, s in repeats:  # after its first showing, with two other items in between at least
      assert [t.item_id for t in order[:p - 2]].count(s.item_id) == 1
    sides = [s.a_left for s in order]
    assert 0.3 < np.mean(sides) < 0.7
  assert [s.item_id for s in orders['ann']] != [s.item_id for s in orders['bob']]
  assert studies.Study(tmp_path / 's').order('ann') == orders['ann']  # a pure function


def test_a_vote_is_stored_once_in_order_and_unblinded_to_its_systems(tmp_path):
  study = make_study(tmp_path / 's')
  scores = dict(fluency_left=5, accuracy_left=4, fluency_right=2, accuracy_right=1)
  assert study.vote('ann', 0, 'left', scores, 'ok')
  assert not study.vote('ann', 0, 'right', scores, '')  # the same form sent twice
  with pytest.raises(studies.UserError, match='not the next one'):
    study.vote('ann', 2, 'left', scores, '')
  with pytest.raises(studies.UserError, match='from 1 to 5'):
    study.vote('ann', 1, 'left', dict(scores, fluency_left=6), '')
  (vote,) = study.votes()
  showing = study.order('ann')[0]
  _, _, _, a, b = study.items[showing.item_id]
  assert (vote['left_system'], vote['right_system']) == ((a, b) if showing.a_left else (b, a))
  assert vote['winner'] == vote['left_system'] and vote['choice'] == 'left'


# --- the page, through Flask's test client ------------------------------------------------------

def _client(study, token=None):
  from jaxlm.rate.server import create_app
  app = create_app(study, token)
  app.testing = True
  return app.test_client()


def _shown(html):
  """The page's texts, unescaped as a browser shows them."""
  import html as htmllib
  grab = lambda key: htmllib.unescape(re.search(  # noqa: E731
      rf'id="{key}">(.*?)</div>', html, re.S)[1])
  return dict(position=int(re.search(r'name="position" value="(\d+)"', html)[1]),
              left=grab('output-left'), right=grab('output-right'), prompt=grab('prompt'))


def _form(position, choice, token=None, **scores):
  form = dict(position=position, choice=choice, fluency_left=3, accuracy_left=3, fluency_right=3,
              accuracy_right=3, comment='', **({'token': token} if token else {}))
  form.update(scores)
  return form


def test_a_blind_rater_picking_a_system_by_its_text_is_unblinded_to_that_system(tmp_path):
  """Known assignment: system 0's outputs begin with GOOD. A rater who sees only the page picks
  the GOOD side; every stored vote must then name system 0 the winner, whichever side it was on,
  and the report must give it every pairwise win."""
  study = make_study(tmp_path / 's', prompts=8, systems=3, repeat_share=0.25)
  client = _client(study)
  client.post('/rater', data=dict(name='ann'))
  secrets = secret_strings(study)
  pages = []
  while True:
    html = client.get('/rate').get_data(as_text=True)
    pages.append(html)
    if 'id="done"' in html:
      break
    shown = _shown(html)
    choice = ('left' if shown['left'].startswith('GOOD') else 'right'
              if shown['right'].startswith('GOOD') else 'tie')
    assert client.post('/vote', data=_form(shown['position'], choice)).status_code == 303
  for html in pages:
    assert not [s for s in secrets if s in html]
  votes = study.votes()
  assert len(votes) == len(study.order('ann'))
  for v in votes:
    if 0 in (v['system_a'], v['system_b']):
      assert v['winner'] == 0
    else:
      assert v['winner'] is None and v['choice'] == 'tie'
  r = stats.analyse(study.systems(), votes)
  pairs = {(p['a'], p['b']): p for p in r.pairs}
  assert pairs[0, 1]['win_rate_a'] == pairs[0, 2]['win_rate_a'] == 1.0
  assert pairs[1, 2]['win_rate_a'] == 0.5
  assert [b['rank'] for b in r.bradley_terry][0] == 1
  assert r.raters[0]['self_agreement'] == 1.0 and r.raters[0]['repeats'] == 6


def test_model_text_is_escaped_and_the_token_guards_every_request(tmp_path):
  study = make_study(tmp_path / 's')
  client = _client(study, token='s3cret-token')
  assert client.get('/').status_code == 403
  assert client.get('/healthz').status_code == 403
  assert client.get('/?token=wrong-token').status_code == 403
  assert client.post('/rater', data=dict(name='ann')).status_code == 403
  assert client.post('/rater', data=dict(name='ann', token='s3cret-token')).status_code == 303
  html = client.get('/rate?token=s3cret-token').get_data(as_text=True)
  assert SCRIPT not in html and '&lt;script&gt;alert(1)&lt;/script&gt;' in html
  assert '<b>bold</b>' not in html and '<i>speak</i>' not in html
  assert 'value="s3cret-token"' in html  # the page's forms carry it
  position = _shown(html)['position']
  assert client.post('/vote', data=_form(position, 'left')).status_code == 403
  assert study.votes() == []  # a request without the token stores nothing
  assert client.post('/vote', data=_form(position, 'left', token='s3cret-token')
                     ).status_code == 303
  assert len(study.votes()) == 1
  for bad in (_form(position + 1, 'left', token='s3cret-token', fluency_left=0),
              _form(position + 1, 'maybe', token='s3cret-token'),
              _form(position + 5, 'left', token='s3cret-token')):
    response = client.post('/vote', data=bad)
    assert 400 <= response.status_code < 500
    assert len(re.findall(r'id="error">([^<]+)<', response.get_data(as_text=True))) == 1
  assert len(study.votes()) == 1


def test_votes_posted_at_once_by_many_raters_are_all_stored(tmp_path):
  """Eight threads, each a rater posting its votes as fast as it can through the real server
  (werkzeug's threaded server, as `serve` runs it): every vote is stored once."""
  from werkzeug.serving import make_server
  from jaxlm.rate.server import create_app
  study = make_study(tmp_path / 's', prompts=10)
  server = make_server('127.0.0.1', 0, create_app(study), threaded=True)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{server.server_port}'
  errors = []

  from jaxlm.rate.server import COOKIE as rater_cookie

  def rater(name):
    try:
      cookie = f'{rater_cookie}={urllib.parse.quote(name)}'
      for position in range(10):
        request = urllib.request.Request(f'{url}/vote', data=urllib.parse.urlencode(
            _form(position, 'tie')).encode(), headers={'Cookie': cookie})
        with urllib.request.urlopen(request) as r:  # follows the 303 to the next page
          assert r.status == 200
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=rater, args=(f'r{i}',)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  server.shutdown()
  assert not errors, errors
  votes = study.votes()
  assert len(votes) == 80
  assert {(v['rater'], v['position']) for v in votes} == {(f'r{i}', p) for i in range(8)
                                                         for p in range(10)}


# --- statistics against closed forms -----------------------------------------------------------

def test_wilson_interval_and_sign_test_against_closed_forms():
  from scipy import stats as scipy_stats
  for k, n in ((0, 10), (7, 10), (10, 10), (23, 61)):
    ci = scipy_stats.binomtest(k, n).proportion_ci(method='wilson')
    assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
  # 7 of 10: (p + z^2/2n) / (1 + z^2/n) -+ z / (1 + z^2/n) sqrt(p q / n + z^2 / 4n^2)
  assert stats.wilson(7, 10) == pytest.approx((0.3968, 0.8922), abs=5e-5)
  assert stats.sign_test(9, 1) == pytest.approx(2 * (10 + 1) / 2**10)  # two-sided, 9 of 10
  assert stats.sign_test(5, 5) == 1.0


def _vote(a, b, winner, rater='r', item=0, prompt=0, choice=None, repeat=0, left=None, **scores):
  left = a if left is None else left
  choice = choice or ('left' if winner == left else 'right' if winner is not None else 'tie')
  v = dict(rater=rater, item_id=item, prompt_id=prompt, system_a=a, system_b=b, repeat=repeat,
           left_system=left, right_system=b if left == a else a, choice=choice, winner=winner)
  v.update({k: scores.get(k, 3) for k in studies.SCORES})
  return v


def test_bradley_terry_recovers_known_strengths_from_transitive_preferences():
  """Strengths 1, 2, 4: each pair's votes split exactly as the model expects (2:1, 2:1, 4:1),
  so the maximum-likelihood log-strengths are log 1, log 2, log 4 (up to a shift)."""
  votes = []
  for (a, b), (wins_b, wins_a) in {(0, 1): (10, 5), (1, 2): (10, 5), (0, 2): (12, 3)}.items():
    votes += [_vote(a, b, b)] * wins_b + [_vote(a, b, a)] * wins_a
  theta = stats.bradley_terry(3, votes, alpha=1e-9)
  assert theta - theta[0] == pytest.approx(np.log([1, 2, 4]), abs=1e-4)
  ties = [_vote(0, 1, None)] * 4 + [_vote(0, 1, 1)] * 2  # two ties are worth one win each way
  halves = [_vote(0, 1, 1)] * 4 + [_vote(0, 1, 0)] * 2
  assert stats.bradley_terry(2, ties, 1e-9) == pytest.approx(
      stats.bradley_terry(2, halves, 1e-9), abs=1e-4)


def test_krippendorff_alpha_on_the_textbook_example_and_on_votes():
  """Krippendorff (2011), 'Computing Krippendorff's alpha-reliability', four observers and twelve
  units with missing values: nominal 0.743, ordinal 0.815."""
  rows = ['1 2 3 3 2 1 4 1 2 . . .', '1 2 3 3 2 2 4 1 2 5 . 3', '. 3 3 3 2 3 4 2 2 5 1 .',
          '1 2 3 3 2 4 4 1 2 5 1 .']
  table = {f'o{i}': {u: int(x) for u, x in enumerate(row.split()) if x != '.'}
           for i, row in enumerate(rows)}
  assert stats.krippendorff_alpha(table, 'nominal') == pytest.approx(0.743, abs=5e-4)
  assert stats.krippendorff_alpha(table, 'ordinal') == pytest.approx(0.815, abs=5e-4)
  # Through the votes: two raters, five items, verdicts in the item's terms (rater 2 sees the
  # sides swapped): A A B B tie against A B B B tie. Coincidences: o_AA 2, o_AB = o_BA 1,
  # o_BB 4, o_tt 2; n_A 3, n_B 5, n_t 2, n 10: alpha = 1 - 9 x 2 / (2 (15 + 6 + 10)) = 44/62.
  one = ['A', 'A', 'B', 'B', None]
  two = ['A', 'B', 'B', 'B', None]
  votes = []
  for rater, verdicts, swap in (('one', one, False), ('two', two, True)):
    for item, w in enumerate(verdicts):
      winner = {'A': 0, 'B': 1, None: None}[w]
      votes.append(_vote(0, 1, winner, rater=rater, item=item, left=1 if swap else 0))
  assert stats.analyse([dict(run='a', step=1), dict(run='b', step=2)], votes
                       ).agreement['verdict'] == pytest.approx(44 / 62)


def test_position_bias_scores_and_self_agreement():
  votes = ([_vote(0, 1, 0, left=0, fluency_left=5, item=i) for i in range(6)]
           + [_vote(0, 1, 1, left=0, fluency_right=1, item=6 + i) for i in range(2)]
           + [_vote(0, 1, None, choice='both_bad', item=8),
              _vote(0, 1, 0, left=1, item=9, fluency_right=2)])
  votes.append(_vote(0, 1, 0, left=1, item=0, repeat=1))  # item 0 again, sides swapped: same
  votes.append(_vote(0, 1, 1, left=0, item=1, repeat=1))  # item 1 again: changed its mind
  r = stats.analyse([dict(run='a', step=1), dict(run='b', step=2)], votes)
  # First showings: the left side won six (system 0 on the left), the right three (system 1
  # twice, system 0 once), both bad once. Repeats count only for self-agreement.
  assert (r.position['left'], r.position['right'], r.position['even']) == (6, 3, 1)
  assert r.position['left_rate'] == pytest.approx(6.5 / 10)
  assert (r.position['low'], r.position['high']) == pytest.approx(stats.wilson(6.5, 10))
  assert r.position['sign_p'] == pytest.approx(stats.sign_test(6, 3))
  (pair,) = r.pairs
  assert (pair['wins_a'], pair['wins_b'], pair['both_bad'], pair['votes']) == (7, 2, 1, 10)
  assert pair['win_rate_a'] == pytest.approx(7.5 / 10)
  assert pair['sign_p'] == pytest.approx(2 * (36 + 9 + 1) / 2**9)  # 7 of 9, the tie left out
  fluency0 = [5] * 6 + [3] * 3 + [2]  # system 0's fluency: left in nine votes, right in one
  mean, low, high = r.scores[0]['fluency'], r.scores[0]['fluency_low'], r.scores[0]['fluency_high']
  assert mean == pytest.approx(np.mean(fluency0))
  half = 2.2621571627409915 * np.std(fluency0, ddof=1) / math.sqrt(10)  # t(0.975, 9)
  assert (low, high) == pytest.approx((mean - half, mean + half))
  assert r.scores[1]['fluency'] == pytest.approx((3 * 8 + 1 * 2) / 10)
  assert r.raters[0]['repeats'] == 2 and r.raters[0]['self_agreement'] == 0.5


# --- the command --------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny causal run with checkpoints at steps 3 and 6, and a one-step masked-LM encoder."""
  from jaxlm import trainer
  tmp = tmp_path_factory.mktemp('rate')
  (tmp / 'corpus.txt').write_text(TINY_TEXT)
  for name, fields in (('run', {}), ('mlm', {'model.causal': False, 'train.objective': 'mlm',
                                             'train.steps': 1})):
    cfg = tiny_config(workdir=str(tmp / name))
    cfg.data.corpus = str(tmp / 'corpus.txt')
    cfg.data.tokenizer = 'byte'
    cfg.train.eval_samples = cfg.train.sample_tokens = 0
    for field, value in fields.items():
      section, key = field.split('.')
      cfg[section][key] = value
    trainer.run(cfg)
  (tmp / 'prompts.jsonl').write_text(json.dumps(dict(prompt='First Citizen:', reference='Speak'))
                                     + '\n\n' + json.dumps(dict(prompt='MENENIUS:')) + '\n')
  (tmp / 'empty.txt').write_text('\n\n')
  (tmp / 'bad.jsonl').write_text('{"prompt": "a"}\n{"text": "b"}\n')
  return tmp


def test_generate_samples_every_prompt_from_every_run_with_fixed_seeds(runs, tmp_path):
  from jaxlm.evaluation import continuations
  from jaxlm.restore import load_trained
  result = harness.run_forked(harness.command(
      'generate', f'--runs={runs}/run@3,{runs}/run', f'--prompts={runs}/prompts.jsonl',
      f'--out={tmp_path}/study', '--max_new_tokens=12', '--samples_per_prompt=2', '--seed=5',
      '--temperature=0.3', module='jaxlm.rate'))
  assert result.returncode == 0, result.stderr[-3000:]
  study = studies.Study(tmp_path / 'study')
  systems = study.systems()
  assert [(s['run'], s['step']) for s in systems] == [(f'{runs}/run', 3), (f'{runs}/run', 6)]
  assert systems[0]['provenance']['config']['data']['tokenizer'] == 'byte'
  assert systems[1]['provenance']['sampling']['temperature'] == 0.3
  assert len(study.items) == 2 * 2  # prompts x samples x one pair
  with study.opened() as db:
    rows = db.execute('SELECT prompt_id, sample, system_id, seed, text FROM outputs').fetchall()
    prompts = db.execute('SELECT prompt, reference FROM prompts ORDER BY id').fetchall()
  assert prompts == [('First Citizen:', 'Speak'), ('MENENIUS:', None)]
  assert len(rows) == 2 * 2 * 2
  for s, step in enumerate((3, 6)):
    r = load_trained(str(runs / 'run'), step, batch_size=2)
    for k in range(2):
      expected = continuations(r.graphdef, r.params, r.model_cfg, r.tokenizer,
                               ['First Citizen:', 'MENENIUS:'], max_new_tokens=12, batch_size=2,
                               seed=5 + k, temperature=0.3, top_k=0, top_p=1.0)
      got = [text for p, kk, ss, seed, text in sorted(rows) if kk == k and ss == s]
      assert got == expected and all(seed == 5 + k for _, kk, _, seed, _ in rows if kk == k)
  texts = {(p, k, s): t for p, k, s, _, t in rows}  # (a barely trained byte model: most
  assert any(texts[p, k, 0] != texts[p, k, 1] for p, k, _ in texts)  # of the text agrees)
  assert any(texts[p, 0, s] != texts[p, 1, s] for p, _, s in texts)  # the checkpoints and
  # the samples differ somewhere, so a swap of either would show above


BAD = [
    ('missing study', ['serve', '--study={tmp}/nowhere'], 'does not exist'),
    ('report of a missing study', ['report', '--study={tmp}'], 'holds no study.db'),
    ('prompts with no prompt', ['generate', '--runs={tmp}/run@3,{tmp}/run',
                                '--prompts={tmp}/empty.txt', '--out={tmp}/s'], 'holds no prompt'),
    ('prompts line without prompt', ['generate', '--runs={tmp}/run@3,{tmp}/run',
                                     '--prompts={tmp}/bad.jsonl', '--out={tmp}/s'],
     'line 2 of'),
    ('an encoder cannot generate', ['generate', '--runs={tmp}/run,{tmp}/mlm',
                                    '--prompts={tmp}/prompts.jsonl', '--out={tmp}/s'],
     "train.objective='mlm', which does not continue a prompt"),
    ('one system', ['generate', '--runs={tmp}/run', '--prompts={tmp}/prompts.jsonl',
                    '--out={tmp}/s'], 'compares two or more'),
    ('a system twice', ['generate', '--runs={tmp}/run@6,{tmp}/run@6',
                        '--prompts={tmp}/prompts.jsonl', '--out={tmp}/s'], 'a system twice'),
    ('study exists', ['generate', '--runs={tmp}/run@3,{tmp}/run', '--prompts={tmp}/prompts.jsonl',
                      '--out={tmp}/run'], 'already exists'),
    ('not a run', ['generate', '--runs={tmp}/run,{tmp}/nowhere', '--prompts={tmp}/prompts.jsonl',
                   '--out={tmp}/s'], 'has no checkpoints directory'),
    ('flag of another command', ['serve', '--study={tmp}/study', '--runs=a,b'],
     'is a flag of `jaxlm.rate generate`'),
    ('no command', ['--study={tmp}/study'], 'give one command'),
    ('open host without a token', ['serve', '--study={tmp}/study', '--host=0.0.0.0'],
     'is not a loopback address'),
    ('short token', ['serve', '--study={tmp}/study', '--token=abc'], 'shorter than 8'),
    ('port in use', ['serve', '--study={tmp}/study', '--port={port}'], 'is in use'),
    ('report before votes', ['report', '--study={tmp}/study'], 'has no votes yet'),
]


@pytest.mark.parametrize('name,args,message', BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_sentence_and_stores_nothing(runs, name, args, message):
  import socket
  if not (runs / 'study').exists():
    make_study(runs / 'study')
  before = harness.digest(runs)
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    args = [a.format(tmp=runs, port=taken.getsockname()[1]) for a in args]
    harness.assert_one_sentence(harness.run_forked(harness.command(*args, module='jaxlm.rate')),
                                message)
  assert harness.digest(runs) == before, name


def test_report_writes_the_tables_and_the_figure(runs, tmp_path):
  study = make_study(tmp_path / 's', prompts=4, systems=3, repeat_share=0.5)
  for rater in ('ann', 'bob'):
    for position, showing in enumerate(study.order(rater)):
      _, _, _, a, b = study.items[showing.item_id]
      better_left = (a if showing.a_left else b) < (b if showing.a_left else a)
      study.vote(rater, position, 'left' if better_left else 'right',
                 dict(fluency_left=4, accuracy_left=3, fluency_right=2, accuracy_right=2), '')
  result = harness.run_forked(harness.command('report', f'--study={tmp_path}/s',
                                              module='jaxlm.rate'))
  assert result.returncode == 0, result.stderr[-2000:]
  out = tmp_path / 's' / 'report'
  expected = stats.analyse(study.systems(), study.votes(), seed=study.seed)
  md = (out / 'report.md').read_text()
  assert '| S0 | S1 | 8 | 8 | 0 | 0 | 0 | 1.000 [' in md  # lower system ids win every time
  assert f"verdict (nominal) {stats._f(expected.agreement['verdict'])}" in md
  rows = (out / 'bradley_terry.csv').read_text().splitlines()
  assert rows[1].startswith(f'{NAMES[0]}@700,') and rows[1].split(',')[-1] == '1'
  assert (out / 'report.png').stat().st_size > 10_000
  assert 'S0 vs S1: win rate 1.000' in result.stdout


# --- in a real browser ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def browser():
  if rate_study.chromium() is None:
    pytest.skip('no Chromium here: `make test` installs Debian\'s chromium package as root; '
                'install it (apt-get install -y chromium) to run the browser tests')
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=rate_study.chromium(), headless=True)
    yield b
    b.close()


def test_in_chromium_ten_votes_survive_two_kills_and_the_rater_resumes_at_eleven(browser,
                                                                                tmp_path):
  study = make_study(tmp_path / 's', prompts=14)
  port = cluster.free_port()
  log = tmp_path / 'serve.log'
  server = rate_study.serve(study.directory, port, log, env=harness.env())
  dialogs = []
  page = browser.new_context().new_page()
  page.on('dialog', lambda d: (dialogs.append(d.message), d.dismiss()))
  rater = rate_study.Rater(page, f'http://127.0.0.1:{port}/')
  rater.sign_in('Ann')
  seen, secrets = [], secret_strings(study)
  scores = dict(fluency_left=4, accuracy_left=2, fluency_right=3, accuracy_right=5)
  try:
    for i in range(10):
      assert not [s for s in secrets if s in page.content()]  # blind
      shown = rater.read()
      assert shown['position'] == i + 1 and shown['total'] == 14
      assert SCRIPT in shown['left'] + shown['right']  # shown as text, not run
      assert shown['prompt'].endswith('<i>speak</i>')
      seen.append((shown['prompt'], shown['left'], shown['right']))
      rater.vote(['left', 'right', 'tie', 'both_bad'][i % 4], scores, keyboard=i >= 6,
                 comment='fine' if i == 2 else '')
      if i in (5, 9):  # a confirmed vote is on disk: kill -9, start again, reload
        rate_study.kill(server)
        server = rate_study.serve(study.directory, port, log, env=harness.env())
        rater.reload()
    assert rater.read()['position'] == 11
    assert 'Ann' in page.inner_text('#rater')  # the name was asked once
  finally:
    rate_study.kill(server)
  assert not dialogs
  votes = study.votes()
  assert sorted(v['position'] for v in votes) == list(range(10))
  assert len({v['item_id'] for v in votes}) == 10 and len(set(seen)) == 10
  assert [v['choice'] for v in sorted(votes, key=lambda v: v['position'])] == [
      ['left', 'right', 'tie', 'both_bad'][i % 4] for i in range(10)]
  for v in votes:  # the mouse's and the keyboard's scores landed in the right fields
    assert (v['fluency_left'], v['accuracy_left'], v['fluency_right'], v['accuracy_right']) == (
        4, 2, 3, 5)
  assert [v['comment'] for v in votes if v['comment']] == ['fine']
  with sqlite3.connect(study.path) as db:
    assert db.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'


def test_in_chromium_two_raters_voting_at_once_lose_no_vote(browser, tmp_path):
  study = make_study(tmp_path / 's', prompts=5)
  port = cluster.free_port()
  server = rate_study.serve(study.directory, port, tmp_path / 'serve.log', env=harness.env())
  scores = dict(fluency_left=1, accuracy_left=1, fluency_right=5, accuracy_right=5)
  try:
    raters = []
    for name in ('Ann', 'Bob'):
      rater = rate_study.Rater(browser.new_context().new_page(), f'http://127.0.0.1:{port}/')
      rater.sign_in(name)
      raters.append(rater)
    for _ in range(5):
      before = [r.page.inner_text('#progress') for r in raters]
      for r in raters:
        r.fill('right', scores)
      for r in raters:  # both posts in flight together
        r.submit(wait=False)
      for r, b in zip(raters, before):
        r.wait_next(b)
    assert all(r.done() for r in raters)
  finally:
    rate_study.kill(server)
  votes = study.votes()
  assert sorted((v['rater'], v['position']) for v in votes) == [
      (n, p) for n in ('Ann', 'Bob') for p in range(5)]


def test_rating_a_study_with_a_scripted_rater_gives_the_lexicon_rule_s_verdicts():
  judge = rate_study.lexicon_judge('the king is dead long live the king', noise=0.0)
  choice, scores = judge(dict(left='the king is dead', right='xq zzv kkw'))
  assert choice == 'left' and scores['fluency_left'] == 5 and scores['fluency_right'] == 1
  assert judge(dict(left='zz qq', right='xq zzv'))[0] == 'both_bad'
  assert judge(dict(left='the king', right='the king'))[0] == 'tie'
