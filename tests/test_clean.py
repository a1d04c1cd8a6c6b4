"""jaxlm.clean: a planted corpus (clean prose from the shipped corpus and documents built to fail
one rule each) through every step; byte identity across task counts and a kill; deduplication
against an earlier output; the chain to prepare and train; the report; the stages; bad inputs."""

import gzip
import io
import json
import os
import random
import re
import signal
import sys
from pathlib import Path

import pytest

import harness

pytest.importorskip('datatrove')

SPEECHES = [b.split('\n', 1)[1] for b in harness.SHIPPED.read_text().split('\n\n') if '\n' in b]
# Prose: speeches of 40 words or more, their verse lines joined, four to a document (paragraphs).
PROSE = [' '.join(b.split('\n')) for b in SPEECHES if len(b.split()) >= 40]
QUIZ = [dict(question='Which river runs beneath the seven bridges of the old harbour town where '
                      'the lantern makers keep their workshops?',
             answer='The river Calder runs beneath them, past the glassworks and the mill.'),
        dict(question='What colour were the sails of the ferry that crossed the northern lake '
                      'each morning?', answer='They were ochre, patched with blue canvas.')]
RECIPE = '''from ml_collections import ConfigDict


def get_config():
  r = ConfigDict()
  r.name = 'planted'
  r.steps = ('extract,language,gopher_repetition,gopher_quality,c4_quality,fineweb_quality,ftfy,'
             'exact_dedup,minhash,pii')
  r.extract = ConfigDict(dict(timeout=5.0))
  r.language = ConfigDict(dict(model={model!r}, languages='en', language_threshold=0.5))
  r.gopher_repetition = ConfigDict()
  r.gopher_quality = ConfigDict()
  r.c4_quality = ConfigDict(dict(filter_no_terminal_punct=False))
  r.fineweb_quality = ConfigDict()
  r.ftfy = ConfigDict()
  r.exact_dedup = ConfigDict()
  r.minhash = ConfigDict(dict(n_grams=5, num_buckets=14, hashes_per_bucket=8, seed=1))
  r.pii = ConfigDict()
  r.decontaminate = ConfigDict(dict(n_grams=13))
  return r
'''


def _doc(i: int) -> str:
  return '\n\n'.join(PROSE[4 * i:4 * i + 4])


def _other_language(rng: random.Random, words: int) -> str:
  """Prose in a made-up language (syllables no English word is made of), for the language step."""
  syllables = ['ka', 'lo', 'mi', 'zu', 'te', 'ran', 'vo', 'shi', 'qua', 'mek', 'tza', 'ul']
  vocab = [''.join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(200)]
  sentences = [' '.join(rng.choice(vocab) for _ in range(12)).capitalize() + '.'
               for _ in range(words // 12)]
  return '\n\n'.join(' '.join(sentences[i:i + 5]) for i in range(0, len(sentences), 5))


def _language_model(path: Path, rng: random.Random) -> None:
  """A tiny fastText language identifier: English verse lines against the made-up language."""
  import fasttext
  lines = [f'__label__en {line}' for s in SPEECHES[:600] for line in s.split('\n')]
  lines += [f'__label__xx {line}' for line in _other_language(rng, 6000).split('. ')]
  rng.shuffle(lines)
  train = path.with_suffix('.txt')
  train.write_text('\n'.join(lines) + '\n')
  fasttext.train_supervised(input=str(train), epoch=5, dim=16, minn=2, maxn=4,
                            verbose=0, thread=1, seed=0).save_model(str(path))


def _short_lines(verse: list[str]) -> list[str]:
  """Lines of five words or more and under 30 characters, each a sentence: they pass Gopher's and
  C4's rules (words, sentences) and fail FineWeb's share of short lines."""
  lines = []
  for line in verse:
    words = []
    for w in line.split():
      w = w.strip(',.;:!?')
      if len(' '.join(words + [w])) > 27:
        break
      words.append(w)
    if len(words) >= 5:
      lines.append(' '.join(words) + '.')
  return lines


def _warc(path: Path, pages: list[tuple[str, str]]) -> None:
  from warcio.statusandheaders import StatusAndHeaders
  from warcio.warcwriter import WARCWriter
  with open(path, 'wb') as f:
    w = WARCWriter(f, gzip=True)
    for url, body in pages:
      headers = StatusAndHeaders('200 OK', [('Content-Type', 'text/html; charset=utf-8')],
                                 protocol='HTTP/1.1')
      w.write_record(w.create_warc_record(url, 'response', payload=io.BytesIO(body.encode()),
                                          http_headers=headers))


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  """The planted corpus: 24 clean documents over four files (JSONL, gzip JSONL, a text file and
  a web archive) and one document per rule, each built to fail that rule and pass the steps
  before it. Returns (inputs, recipe, quiz task, clean ids, planted {id: (step, rule)}, checks)."""
  tmp = tmp_path_factory.mktemp('clean')
  rng = random.Random(0)
  (tmp / 'in').mkdir()
  model = tmp / 'lid.bin'
  _language_model(model, rng)
  recipe = tmp / 'planted.py'
  recipe.write_text(RECIPE.format(model=str(model)))
  quiz = tmp / 'quiz'
  quiz.mkdir()
  (quiz / 'quiz.jsonl').write_text(''.join(json.dumps(q) + '\n' for q in QUIZ))
  (quiz / 'planted_quiz.yaml').write_text(
      'task: planted_quiz\ndataset_path: json\ndataset_kwargs:\n  data_files:\n'
      f'    test: {quiz / "quiz.jsonl"}\noutput_type: generate_until\ntest_split: test\n'
      'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
      'metric_list:\n  - metric: exact_match\n')
  clean = [_doc(i) for i in range(24)]
  words = clean[1].split(' ')
  near = ' '.join(w.upper() if i % 60 == 7 else w for i, w in enumerate(words))
  verse = [line for s in SPEECHES[2000:2200] for line in s.split('\n')]
  planted = {  # text -> (step, rule): each fails its rule and passes every step before it
      'exact': (clean[0], 'exact_dedup', 'exact_dedup:duplicate'),
      'near': (near, 'minhash', 'minhash:duplicate'),
      'other language': (_other_language(rng, 300), 'language', 'language:'),
      'repeated lines': (PROSE[200] + '\n' + '\n'.join(
          ['Buy the finest cloaks in all of Padua at the market today.'] * 30) + '\n' +
          PROSE[201], 'gopher_repetition', 'gopher_repetition:dup_line_frac'),
      'short': (' '.join(PROSE[203].split()[:30]), 'gopher_quality',
                'gopher_quality:gopher_short_doc'),
      'hashes': (' '.join(f'#{w}' if i % 4 == 0 else w for i, w in
                          enumerate(_doc(60).split(' '))), 'gopher_quality',
                 'gopher_quality:gopher_too_many_hashes'),
      'lorem': ('Lorem ipsum dolor sit amet, consectetur adipiscing elit, <script>alert(1)'
                '</script> sed do eiusmod.\n\n' + _doc(61), 'c4_quality',
                'c4_quality:lorem_ipsum'),
      'short lines': ('\n'.join(_short_lines(verse)[:60]), 'fineweb_quality',
                      'fineweb_quality:short_line_ratio'),
      'quiz': (_doc(62) + '\n\n' + QUIZ[0]['question'] + ' ' + QUIZ[0]['answer'],
               'decontaminate', 'decontaminate:planted_quiz'),
  }
  rewritten = {  # kept, with this text changed: (before, after)
      'mojibake': (_doc(63) + '\n\nThe caf\u00c3\u00a9 sold na\u00c3\u00afve pies.',
                   'caf\u00c3\u00a9', 'café'),
      'pii': (_doc(64) + '\n\nWrite to john.doe@university.edu or to 8.8.8.8 today.',
              'john.doe@university.edu', 'email@example.com'),
      # In another file: masked alike whichever task reads it (datatrove would cycle stand-ins
      # over a task's stream, so one task's output would differ from four tasks').
      'pii again': (_doc(66) + '\n\nOr to mary.roe@college.org instead.',
                    'mary.roe@college.org', 'email@example.com'),
  }
  article = _doc(65)
  page = ('<html><head><title>Notes</title><script>var x = 1;</script></head><body><nav>'
          '<a href="/">Home</a> | <a href="/about">About</a></nav><article><h1>Notes</h1>'
          + ''.join(f'<p>{p}</p>' for p in article.split('\n\n')) + '</article><footer>'
          'Copyright</footer></body></html>')
  empty = '<html><head><script>var y = 2;</script></head><body><div></div></body></html>'
  _warc(tmp / 'in' / 'crawl.warc.gz', [('https://example.com/notes', page),
                                       ('https://example.com/empty', empty),
                                       *[(f'https://example.com/notes?copy={i}', page)
                                         for i in range(3)]])
  # Four inputs: JSONL (with a line that is not UTF-8 and one that is not JSON), gzip JSONL, text.
  files = {'a.jsonl': [], 'b.jsonl.gz': [], 'c.jsonl': []}
  names = list(files)
  for i, text in enumerate(clean[:22]):
    files[names[i % 3]].append(text)
  order = list(planted.items()) + list(rewritten.items())
  for i, (_, value) in enumerate(order):
    files[names[i % 3]].append(value[0])
  ids, expected = {}, {}
  for name, texts in files.items():
    path = tmp / 'in' / name
    lines = [json.dumps({'text': t, 'n': k}).encode() + b'\n' for k, t in enumerate(texts)]
    if name == 'a.jsonl':
      lines += [b'{"text": "caf\xe9 au lait"}\n', b'not json at all\n']
    data = b''.join(lines)
    path.write_bytes(gzip.compress(data, mtime=0) if name.endswith('.gz') else data)
    for k, t in enumerate(texts):
      ids.setdefault(t, []).append(f'{path}/{k}')
  (tmp / 'in' / 'd.txt').write_text(clean[22])
  (tmp / 'in' / 'e.txt').write_text(clean[23])
  clean_ids = [i for t in clean[:22] for i in ids[t][:1]] + [f'{tmp}/in/d.txt/0',
                                                             f'{tmp}/in/e.txt/0']
  for key, (text, step, rule) in planted.items():
    expected[ids[text][-1]] = (key, step, rule)
  expected[f'{tmp}/in/a.jsonl/{len(files["a.jsonl"])}'] = ('not utf-8', 'read', 'read:not_utf8')
  expected[f'{tmp}/in/a.jsonl/{len(files["a.jsonl"]) + 1}'] = ('not json', 'read',
                                                               'read:not_json')
  expected[f'{tmp}/in/crawl.warc.gz/1'] = ('empty page', 'extract', 'extract:no_text')
  # (found only if the extraction of a page does not depend on the pages extracted before it)
  for i in range(3):  # (trafilatura's own deduplicate would drop the paragraphs of the third)
    expected[f'{tmp}/in/crawl.warc.gz/{2 + i}'] = (f'copied page {i}', 'exact_dedup',
                                                    'exact_dedup:duplicate')
  checks = {ids[v[0]][0]: (v[1], v[2]) for v in rewritten.values()}
  checks[f'{tmp}/in/crawl.warc.gz/0'] = ('<nav>', article.split('\n\n')[0][:60])
  return dict(tmp=tmp, inputs=str(tmp / 'in'), recipe=recipe, quiz=quiz / 'planted_quiz.yaml',
              clean=clean_ids, expected=expected, checks=checks,
              first={'exact': ids[clean[0]][0], 'near': ids[clean[1]][0],
                     'page': f'{tmp}/in/crawl.warc.gz/0'})


def _clean(*args, extra_env=None):
  """jaxlm.clean in a fork of the harness's warmed-up process (a process of its own)."""
  return harness.run_forked(harness.command(*args, module='jaxlm.clean'), extra_env=extra_env)


def _rows(path: Path) -> list[dict]:
  return [json.loads(line) for f in sorted(path.rglob('*.jsonl.gz'))
          for line in gzip.decompress(f.read_bytes()).decode().splitlines()]


def _outputs(out: Path) -> dict:
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob('*.jsonl.gz'))}


@pytest.fixture(scope='module')
def cleaned(planted):
  """The planted corpus cleaned in one task."""
  out = planted['tmp'] / 'one'
  result = _clean(f'--input={planted["inputs"]}', f'--output={out}',
                  f'--recipe={planted["recipe"]}', f'--decontaminate={planted["quiz"]}')
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result


@pytest.mark.slow
def test_each_planted_document_goes_by_its_rule_and_no_clean_one_goes(planted, cleaned):
  out, result = cleaned
  kept = {r['id']: r for r in _rows(out / 'kept')}
  removed = {r['id']: r for r in _rows(out / 'removed')}
  assert set(planted['clean']) <= set(kept), sorted(set(planted['clean']) - set(kept))
  for doc_id, (what, step, rule) in planted['expected'].items():
    assert doc_id in removed, (what, doc_id)
    r = removed[doc_id]
    assert (r['step'], r['rule'][:len(rule)]) == (step, rule), (what, r['rule'])
  assert set(removed) == set(planted['expected'])  # nothing else removed
  planted_id = {what: doc_id for doc_id, (what, _, _) in planted['expected'].items()}
  assert removed[planted_id['exact']]['duplicate_of'] == planted['first']['exact']
  assert removed[planted_id['near']]['duplicate_of'] == planted['first']['near']
  for i in range(3):
    assert removed[planted_id[f'copied page {i}']]['duplicate_of'] == planted['first']['page']
  quiz = next(r for r in removed.values() if r['step'] == 'decontaminate')
  assert (quiz['contaminated_task'], quiz['contaminated_doc']) == ('planted_quiz', 0)
  for doc_id, (before, after) in planted['checks'].items():
    assert before not in kept[doc_id]['text'] and after in kept[doc_id]['text'], doc_id
  # Documents keep their input order within each file; the metadata names where each came from.
  for f in sorted((out / 'kept').glob('*.jsonl.gz')):
    rows = _rows_of(f)
    assert [r['metadata']['index'] for r in rows] == sorted(r['metadata']['index'] for r in rows)
  assert 'pairs with Jaccard similarity 0.68' in result.stdout
  # Each stage that reads documents says how fast when it ends.
  for stage in ('read', 'exact_dedup-index', 'minhash-apply'):
    assert re.search(rf'^{stage}: 1 task\(s\) in [0-9.]+ s, [0-9,]+ documents( read)? '
                     r'\([0-9,]+/s\), [0-9.]+ MB \([0-9.]+ MB/s\)$', result.stdout, re.M), stage


def _rows_of(f: Path) -> list[dict]:
  return [json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines()]


@pytest.mark.slow
def test_four_tasks_stopped_killed_and_rerun_write_the_same_bytes_as_one(planted, cleaned):
  """--tasks=4 on two workers: stopped with SIGINT once the first stage is done (one line, exit
  130, its task processes gone), run again and killed with SIGKILL in the first deduplication,
  then run to the end: the same kept/ and removed/ files, byte for byte, as one task; and a run
  of the finished output does nothing."""
  import psutil
  out = planted['tmp'] / 'four'
  args = [f'--input={planted["inputs"]}', f'--output={out}', f'--recipe={planted["recipe"]}',
          f'--decontaminate={planted["quiz"]}', '--tasks=4', '--workers=2']
  cmd = harness.command(*args, module='jaxlm.clean')
  for signum, stage in ((signal.SIGINT, 'read'), (signal.SIGKILL, 'exact_dedup-index')):
    log = planted['tmp'] / f'four-{signum}.log'
    p = harness.start(cmd, log)
    marker = out / 'logs' / stage / 'completions'
    harness.wait_until(lambda: marker.is_dir() and any(marker.iterdir()), p, log=log,
                       timeout=120)
    children = psutil.Process(p.pid).children(recursive=True)
    p.send_signal(signum)
    assert p.wait() == (130 if signum == signal.SIGINT else -9)
    if signum == signal.SIGINT:
      assert [line for line in log.read_text().splitlines() if line.startswith('error:')] == [
          'error: stopped by SIGINT before the command finished; what was already saved is '
          'kept: run the same command again to resume (or redo) it.']
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive  # no task process goes on writing after the command ends
  assert not (out / 'kept').exists()
  result = _clean(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _outputs(out) == _outputs(cleaned[0])
  again = _clean(*args)
  assert again.returncode == 0 and 'nothing to do' in again.stdout
  assert _outputs(out) == _outputs(cleaned[0])


@pytest.mark.slow
def test_the_report_counts_what_the_files_hold(cleaned):
  out, _ = cleaned
  result = _clean('report', f'--output={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((out / 'clean.json').read_text())
  counts = {c['step']: c for c in record['counts']}
  kept = _rows(out / 'kept')
  last = record['counts'][-1]  # decontaminate: --decontaminate adds it after the recipe's steps
  assert last['step'] == 'decontaminate' and last['out_documents'] == len(kept)
  assert last['out_bytes'] == sum(len(r['text'].encode()) for r in kept)
  previous = None
  for step, c in counts.items():
    rows = _rows(out / 'removed' / step) if (out / 'removed' / step).is_dir() else []
    assert c['removed_documents'] == len(rows), step
    assert c['removed_bytes'] == sum(len(r['text'].encode()) for r in rows), step
    assert c['in_documents'] == c['removed_documents'] + c['out_documents'], step
    if previous:
      assert c['in_documents'] == previous['out_documents']
    previous = c
  md = (out / 'report.md').read_text()
  assert f'| decontaminate | {last["in_documents"]} | 1 | {len(kept)} |' in md
  assert '| c4_quality:lorem_ipsum | 1 |' in md and '| planted_quiz | 1 | 1 |' in md
  page = (out / 'report.html').read_text()
  assert '<script>alert(1)</script>' not in page and '&lt;script&gt;alert(1)' in page
  assert (out / 'report.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_dedup_against_an_earlier_output_removes_only_from_the_new(planted, cleaned, tmp_path):
  old = cleaned[0]
  before = {p: p.read_bytes() for p in sorted(old.rglob('*')) if p.is_file()}
  kept = _rows(old / 'kept')
  new = tmp_path / 'new.jsonl'
  copy, near, fresh = kept[0], kept[1]['text'].replace(' the ', ' THE '), _doc(70)
  new.write_text(''.join(json.dumps({'text': t}) + '\n' for t in (copy['text'], near, fresh)))
  out = tmp_path / 'out'
  result = _clean(f'--input={new}', f'--output={out}', f'--dedup_against={old}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r['text'] for r in _rows(out / 'kept')] == [fresh]
  removed = {r['id']: r for r in _rows(out / 'removed')}
  assert removed[f'{new}/0']['duplicate_of'] == copy['id']
  assert removed[f'{new}/0']['step'] == 'exact_dedup'
  assert removed[f'{new}/1']['duplicate_of'] == kept[1]['id']
  assert {p: p.read_bytes() for p in sorted(old.rglob('*')) if p.is_file()} == before


@pytest.mark.slow
def test_clean_then_prepare_then_train_names_the_recipe(cleaned, tmp_path):
  out, _ = cleaned
  cfg = harness.write_config(tmp_path / 'cfg.py', workdir=str(tmp_path / 'run'))
  result = harness.run_forked(harness.command(f'--config={cfg}',
                                              f'--config.data.corpus={out / "kept"}',
                                              '--config.train.steps=2'))
  assert result.returncode == 0, result.stderr[-3000:]
  [settings] = list((tmp_path / 'run').rglob('settings.json'))
  record = json.loads(settings.read_text())
  assert record['cleaning']['recipe']['name'] == 'planted'
  assert record['cleaning']['counts'][-1]['out_documents'] == len(_rows(out / 'kept'))


def test_bad_inputs_are_one_sentence_and_change_nothing(planted, tmp_path):
  inputs = f'--input={planted["inputs"]}'
  bad_gz = tmp_path / 'bad.jsonl.gz'
  bad_gz.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-30])
  bad_warc, cut_warc = tmp_path / 'bad.warc.gz', tmp_path / 'cut.warc.gz'
  bad_warc.write_bytes(gzip.compress(b'WARC/1.0\r\nnonsense\r\n\r\n'))
  _warc(cut_warc, [(f'https://example.com/{i}', _doc(i)) for i in range(3)])
  cut_warc.write_bytes(cut_warc.read_bytes()[:-100])  # a download cut short
  recipe = tmp_path / 'bad_param.py'
  recipe.write_text(RECIPE.format(model='x').replace(
      "r.pii = ConfigDict()", "r.pii = ConfigDict(dict(remove_phones=True))"))
  out = tmp_path / 'out'
  cases = [
      ([inputs, f'--output={out}', '--recipe.steps=ftfy,nosuch'], "unknown step 'nosuch'"),
      ([inputs, f'--output={out}', f'--recipe={recipe}'], "unknown parameter 'remove_phones'"),
      ([inputs, f'--output={out}', '--recipe.minhash.bands=3'], "unknown field 'bands'"),
      ([inputs, f'--output={out}', '--recipe=configs/clean/fineweb.py',
        '--recipe.language.model=/no/lid.176.bin'], '--recipe.language.model'),
      ([f'--input={bad_gz}', f'--output={out}'], 'is not a whole gzip file'),
      ([f'--input={bad_warc}', f'--output={out}', '--recipe.steps=ftfy'],
       'is not a whole web archive (record 0 has no WARC header)'),
      ([f'--input={cut_warc}', f'--output={out}', '--recipe.steps=ftfy'],
       'is not a whole web archive'),
      ([inputs, f'--output={out}', '--decontaminate=no_such_task'], 'lm-eval does not know'),
      ([inputs, f'--output={out}', '--sample=0'], '--sample=0.0 is invalid'),
      ([inputs, f'--output={out}', '--recipe=configs/clean/fineweb.py',
        '--recipe.extract.deduplicate=True'], 'recipe.extract.deduplicate=True makes'),
      ([f'--input={tmp_path}/nothing*.jsonl', f'--output={out}'], 'matches no file'),
      ([inputs, f'--output={out}', '--dedup_against=/no/such/output'], 'is not a complete'),
  ]
  for args, message in cases:
    result = _clean(*args)
    harness.assert_one_sentence(result, message)
    assert not out.exists(), message  # (a damaged file found while reading: the run is undone)
  # The output of another recipe: refused, and nothing in it changes.
  done = planted['tmp'] / 'one'
  if (done / 'clean.json').exists():
    before = {p: p.read_bytes() for p in sorted(done.rglob('*')) if p.is_file()}
    result = _clean(inputs, f'--output={done}', '--recipe.steps=ftfy')
    harness.assert_one_sentence(result, 'holds the results of another cleaning')
    assert {p: p.read_bytes() for p in sorted(done.rglob('*')) if p.is_file()} == before


def test_dry_run_and_slurm_submit_the_stages_in_order(planted, tmp_path):
  """--dry_run prints every stage with its tasks and writes nothing. --executor=slurm submits one
  job array per stage through datatrove, each depending on the one before (afterok), with as many
  array tasks as the stage has (sbatch is a stand-in that records what it is given)."""
  out = tmp_path / 'out'
  args = [f'--input={planted["inputs"]}', f'--output={out}', '--tasks=3',
          '--recipe.minhash.num_buckets=4']
  dry = _clean(*args, '--dry_run')
  assert dry.returncode == 0, dry.stderr[-2000:]
  stages = [('read', 3), ('exact_dedup-index', 3), ('exact_dedup-choose', 1),
            ('exact_dedup-apply', 3), ('minhash-index', 3), ('minhash-buckets', 4),
            ('minhash-clusters', 1), ('minhash-choose', 1), ('minhash-apply', 3),
            ('assemble', 3), ('finish', 1)]
  printed = [line.split(':')[0].strip() for line in dry.stdout.splitlines()
             if 'task(s):' in line]
  assert printed == [name for name, _ in stages]
  for name, tasks in stages:
    assert f'  {name}: {tasks} task(s):' in dry.stdout
  assert not out.exists()
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'sbatch.jsonl'
  (bin_dir / 'sbatch').write_text(f'''#!{sys.executable}
import json, sys
from pathlib import Path
log = Path({str(log)!r})
n = 100 + (len(log.read_text().splitlines()) if log.exists() else 0)
log.open('a').write(json.dumps(dict(args=sys.argv[1:-1], script=Path(sys.argv[-1]).read_text(),
                                    id=n)) + '\\n')
print(f'Submitted batch job {{n}}')
''')
  (bin_dir / 'sbatch').chmod(0o755)
  env = dict(PATH=f'{bin_dir}:{os.environ["PATH"]}')
  result = _clean(*args, '--executor=slurm', '--slurm_partition=cpu', extra_env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'submitted 11 stages' in result.stdout
  jobs = [json.loads(line) for line in log.read_text().splitlines()]
  pipelines = [j for j in jobs if 'launch_pickled_pipeline' in j['script']]
  assert len(pipelines) == len(stages)
  previous = None
  for job, (name, tasks) in zip(pipelines, stages):
    assert f'#SBATCH --job-name=clean-{name}\n' in job['script']
    assert f'#SBATCH --array=0-{tasks - 1}\n' in job['script']
    assert '#SBATCH --partition=cpu\n' in job['script']
    if previous is not None:
      assert f'--dependency=afterok:{previous}' in job['args'], (name, job['args'])
    previous = job['id']
  harness.assert_one_sentence(_clean(*args, '--executor=slurm', extra_env=env),
                              '--executor=slurm needs --slurm_partition')


def test_a_sample_is_a_fixed_share_chosen_by_the_seed(tmp_path):
  docs = tmp_path / 'docs.jsonl'
  docs.write_text(''.join(json.dumps({'text': _doc(i)}) + '\n' for i in range(200)))
  kept = {}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    result = _clean(f'--input={docs}', f'--output={tmp_path / name}', '--sample=0.25',
                    f'--seed={seed}', '--recipe.steps=exact_dedup')
    assert result.returncode == 0, result.stderr[-2000:]
    kept[name] = [r['id'] for r in _rows(tmp_path / name / 'kept')]
  assert kept['a'] == kept['b'] != kept['c']
  for ids in kept.values():  # 50 expected; 3 sigma of a binomial(200, 0.25) is 18
    assert 32 <= len(ids) <= 68, len(ids)


def test_every_repeat_goes_and_names_the_first_occurrence_across_files_and_tasks(tmp_path):
  """90 documents in three files, about 30% of them repeats of an earlier one (in the same file
  or another), cleaned by exact deduplication in two tasks: kept are exactly the first occurrences
  in input order, each repeat names the first occurrence's id."""
  rng = random.Random(1)
  texts: list[str] = []
  for i in range(90):
    texts.append(rng.choice(texts) if texts and rng.random() < 0.3 else _doc(100 + i))
  ids = []
  for f in range(3):
    path = tmp_path / f'part{f}.jsonl'
    path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts[30 * f:30 * f + 30]))
    ids += [f'{path}/{k}' for k in range(30)]
  out = tmp_path / 'out'
  result = _clean(f'--input={tmp_path}', f'--output={out}', '--recipe.steps=exact_dedup',
                  '--tasks=2')
  assert result.returncode == 0, result.stderr[-2000:]
  first = {}
  for doc_id, text in zip(ids, texts):
    first.setdefault(text, doc_id)
  assert [r['id'] for r in _rows(out / 'kept')] == list(first.values())
  removed = _rows(out / 'removed' / 'exact_dedup')
  assert len(removed) == len(texts) - len(first) > 10
  assert all(r['duplicate_of'] == first[r['text']] for r in removed)
