"""jaxlm as an lm-evaluation-harness model: the same per-request scores and generations as
lm-eval's own `hf` backend on the same (imported) model, packing that changes nothing, one
compiled shape, lm-eval's command line, and bad inputs in one sentence."""

import json
import types

import numpy as np
import pytest
import torch
import transformers

from jaxlm import lm_eval_plugin

lm_eval_plugin.offline()  # as jaxlm's commands: before lm-eval (and `datasets`) are imported

# pylint: disable=wrong-import-position
import harness  # noqa: E402
from test_hf import hf_config, llama_tokenizer  # noqa: E402
from tiny import bpe_tokenizer  # noqa: E402

lm_eval = pytest.importorskip('lm_eval')

TASKS = ['shakespeare_cloze', 'shakespeare_last_word', 'shakespeare_rolling',
         'shakespeare_continue']
LIMIT = 8


def _imported(tmp, family):
  """A random tiny transformers model with a byte-level BPE tokenizer (Llama's with <s>), and
  the workdir `jaxlm.convert import-hf` made of it."""
  torch.manual_seed(0)
  # (Llama's vocabulary holds ids past its tokenizer's 302, as Qwen's does: scored like hf's)
  config = hf_config(family, **({'n_positions': 64, 'vocab_size': 300} if family == 'gpt2' else
                                {'max_position_embeddings': 64, 'vocab_size': 320}))
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  model.save_pretrained(tmp / family)
  (llama_tokenizer if family == 'llama' else bpe_tokenizer)(tmp / family)
  result = harness.run_forked(harness.command('import-hf', f'--hf_dir={tmp / family}',
                                              f'--workdir={tmp / (family + "-jaxlm")}',
                                              module='jaxlm.convert'))
  assert result.returncode == 0, result.stderr[-3000:]
  return tmp / family, tmp / (family + '-jaxlm')


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('harness')
  return {family: _imported(tmp, family) for family in ('gpt2', 'llama')}


def _evaluate(model, model_args, tasks=TASKS):
  from jaxlm.harness_tasks import task_manager
  return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks,
                                 task_manager=task_manager('', tasks), limit=LIMIT,
                                 log_samples=True,
                                 bootstrap_iters=0)


def assert_same(theirs, ours, tasks):
  """Every request's response alike: log-likelihoods within 1e-4 (a rolling text's total, a sum
  over its tokens in float32, within 1e-4 + 1e-6 of its size), is_greedy and generated texts
  equal; and each task's metrics equal."""
  for task in tasks:
    a = sorted(theirs['samples'][task], key=lambda d: d['doc_id'])
    b = sorted(ours['samples'][task], key=lambda d: d['doc_id'])
    assert len(a) == len(b) == LIMIT
    for x, y in zip(a, b):
      for rx, ry in zip(x['resps'], y['resps'], strict=True):
        rx, ry = rx[0], ry[0]
        if isinstance(rx, (list, tuple)):  # loglikelihood: (log p, is_greedy)
          assert abs(rx[0] - ry[0]) <= 1e-4, (task, rx, ry)
          assert rx[1] == ry[1], (task, rx, ry)
        elif isinstance(rx, float):  # loglikelihood_rolling: the text's total
          assert abs(rx - ry) <= 1e-4 + 1e-6 * abs(rx), (task, rx, ry)
        else:  # generate_until
          assert rx == ry, (task, rx, ry)
    for metric in ('acc,none', 'acc_norm,none', 'exact_match,none'):
      if metric in theirs['results'][task]:
        assert theirs['results'][task][metric] == ours['results'][task][metric], (task, metric)


class _Shifted:
  """A JaxLM that scores each continuation one token early: the negative control."""

  @staticmethod
  def make():
    from jaxlm.harness import JaxLM

    class Shifted(JaxLM):
      def _loglikelihood_tokens(self, requests, disable_tqdm=False, **kwargs):
        return super()._loglikelihood_tokens(
            [(key, list(c)[:-1], list(c)[-1:] + list(t)[:-1]) for key, c, t in requests],
            disable_tqdm, **kwargs)
    return Shifted


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_every_request_scores_as_the_hf_backend(models, family):
  """A random tiny GPT-2 and a Llama (whose tokenizer starts texts with <s>), imported with
  jaxlm.convert import-hf, on the four example tasks (multiple choice, last word, rolling
  perplexity, generation to a newline): under --model hf and --model jaxlm every per-request
  log-likelihood within 1e-4, is_greedy, accuracies and generations equal. Scoring the
  continuation one token early (negative control) is caught."""
  hf_dir, workdir = models[family]
  theirs = _evaluate('hf', dict(pretrained=str(hf_dir), dtype='float32', device='cpu',
                                batch_size=4))
  ours = _evaluate('jaxlm', dict(workdir=str(workdir)))
  assert_same(theirs, ours, TASKS)
  generated = [d['resps'][0][0] for d in ours['samples']['shakespeare_continue']]
  assert sum(bool(g) for g in generated) >= LIMIT // 2, generated  # not all empty
  if family == 'gpt2':
    from jaxlm.restore import load_trained
    shifted = _Shifted.make()(run=load_trained(str(workdir)))
    with pytest.raises(AssertionError):
      assert_same(theirs, _evaluate(shifted, None, TASKS[:2]), TASKS[:2])


def _windows(n, vocab, length, seed=0):
  """n windows of 2..length+1 tokens, their last 1..all-but-one scored; in fours that share a
  context (a multiple-choice question's answers)."""
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < n:
    context = rng.integers(0, vocab, int(rng.integers(1, length))).tolist()
    for _ in range(4):
      answer = rng.integers(0, vocab, int(rng.integers(1, length + 2 - len(context)))).tolist()
      out.append((context + answer, len(answer)))
  return out[:n]


def test_packing_changes_nothing_and_one_shape_compiles_once(models):
  """200 windows of 2..L+1 tokens, in fours sharing a context: packed several to a row, with the
  shared contexts laid out once (each answer a branch), each scores as alone in a row (within
  1e-5 + 1e-6 of the sum, float32 summation; the same greedy flags); the scorer compiles once
  for all of them, and lays out fewer tokens. Generation over prompts of many lengths compiles
  once per max_gen_toks."""
  from lm_eval.api.instance import Instance
  from jaxlm import sampling
  from jaxlm.harness import JaxLM, Scorer
  from jaxlm.restore import load_trained
  run = load_trained(str(models['gpt2'][1]))
  windows = _windows(200, run.tokenizer.vocab_size, run.model_cfg.max_seq_len)
  make = lambda packed, shared: Scorer(run.graphdef, run.params, run.mesh, run.rules,
                                       run.model_cfg.max_seq_len, 8, packed, shared)
  packed, alone = make(True, True), make(False, False)
  a, b = packed.score(windows), alone.score(windows)
  np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=1e-5, rtol=1e-6)
  assert [g for _, g in a] == [g for _, g in b]
  assert packed.compilations == 1
  laid_out = lambda scorer: sum(len(s) + sum(len(b[1]) for b in bs)
                                for s, bs in scorer._groups(windows))  # pylint: disable=W0212
  assert laid_out(packed) < 0.9 * laid_out(alone)
  model = JaxLM(run=run, batch_size=4)
  before = sampling._generate._cache_size()  # pylint: disable=protected-access
  words = 'First Citizen before we proceed any further hear me speak'.split()
  requests = [Instance('generate_until', {}, (' '.join(words[:k]), {'max_gen_toks': 6}), k)
              for k in range(1, len(words) + 1)]
  free = model.generate_until(requests)
  assert len(free) == len(words)
  assert sampling._generate._cache_size() - before == 1  # pylint: disable=protected-access
  # A stop sequence cuts the greedy text at its first occurrence (and is not part of it).
  text = max(free, key=len)
  assert len(text) >= 4, free
  stop = text[len(text) // 2:len(text) // 2 + 2]
  request = requests[free.index(text)]
  cut = Instance('generate_until', {}, (request.args[0], {'until': [stop], 'max_gen_toks': 6}), 0)
  assert model.generate_until([cut]) == [text[:text.index(stop)]]


def test_encoders_and_unknown_arguments_are_refused_in_one_sentence(capsys):
  """An encoder's run, an unknown --model_args key, no workdir: one sentence each; as lm-eval's
  command line builds the model (create_from_arg_string), the sentence on stderr and exit
  status 2 instead of a traceback."""
  from jaxlm.errors import UserError
  from jaxlm.harness import JaxLM
  from tiny import tiny_config
  cfg = tiny_config()
  cfg.train.objective = 'mlm'
  with pytest.raises(UserError, match=r"train.objective='mlm', whose model has no next-token "):
    JaxLM(run=types.SimpleNamespace(cfg=cfg, workdir='runs/encoder'))
  with pytest.raises(UserError, match='--model_args colour is not an argument of the jaxlm '):
    JaxLM(workdir='x', colour='red')
  with pytest.raises(UserError, match="needs --model_args workdir="):
    JaxLM()
  with pytest.raises(SystemExit) as e:
    JaxLM.create_from_arg_string('workdir=x,colour=red', {'batch_size': 1, 'device': None})
  assert e.value.code == 2
  assert capsys.readouterr().err == ('jaxlm: --model_args colour is not an argument of the jaxlm '
                                     'model; give workdir=<run>, and optionally step=N, '
                                     'batch_size=N, max_gen_toks=N.\n')


def test_lm_eval_command_line_and_jaxlm_eval_tasks(models, tmp_path):
  """lm-eval's own command line runs `--model jaxlm` (registered by jaxlm's .pth line) with the
  scores of simple_evaluate; jaxlm.eval --tasks writes lm-eval's results to
  eval/<step>-tasks.json, adding its tasks to an earlier evaluation's at the same step, and
  their metrics to metrics.jsonl; every bad input is one sentence, exit status 2, the results
  file unchanged."""
  import shutil
  import sys
  from pathlib import Path
  workdir = tmp_path / 'run'
  shutil.copytree(models['gpt2'][1], workdir)
  lm_eval_cli = Path(sys.executable).parent / 'lm_eval'
  out = tmp_path / 'lm_eval_out'
  result = harness.run([str(lm_eval_cli), '--model', 'jaxlm', '--model_args',
                        f'workdir={workdir}', '--tasks', 'shakespeare_cloze', '--include_path',
                        str(harness.ROOT / 'jaxlm' / 'tasks'), '--limit', str(LIMIT),
                        '--output_path', str(out)])
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'shakespeare_cloze' in result.stdout

  run = lambda *args: harness.run_forked(harness.command(f'--workdir={workdir}', *args,
                                                         module='jaxlm.eval'))
  (workdir / 'eval').mkdir()  # an earlier evaluation of another task at this step, kept
  (workdir / 'eval' / '0-tasks.json').write_text(json.dumps(
      {'results': {'earlier_task': {'acc,none': 0.5}}, 'configs': {'earlier_task': {}}}))
  result = run('--tasks=shakespeare_cloze,shakespeare_last_word', f'--limit={LIMIT}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'shakespeare_cloze' in result.stdout and 'shakespeare_last_word' in result.stdout
  saved = json.loads((workdir / 'eval' / '0-tasks.json').read_text())
  assert sorted(saved['results']) == ['earlier_task', 'shakespeare_cloze', 'shakespeare_last_word']
  assert sorted(saved['configs']) == sorted(saved['results'])
  logged = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert {r['split'] for r in logged} >= {'tasks/shakespeare_cloze', 'tasks/shakespeare_last_word'}
  before = harness.digest(workdir / 'eval')
  (tmp_path / 'bad_tasks').mkdir()
  (tmp_path / 'bad_tasks' / 'broken.yaml').write_text('task: broken\noutput_type: [unclosed\n')
  (tmp_path / 'offline').mkdir()  # a task whose dataset is not on this machine
  (tmp_path / 'offline' / 'absent.yaml').write_text(
      'task: absent\ndataset_path: json\ndataset_kwargs:\n  data_files:\n'
      f'    test: {tmp_path / "no_such.jsonl"}\noutput_type: loglikelihood\ntest_split: test\n'
      'doc_to_text: "{{text}}"\ndoc_to_target: "{{text}}"\n')
  for args, message in [
      (['--tasks=broken', f'--include_path={tmp_path / "bad_tasks"}'],
       'broken.yaml does not parse'),
      (['--tasks=shakespeare_cloze', f'--include_path={tmp_path / "nowhere"}'],
       'is not a directory'),
      (['--tasks=shakespeare_cloze', '--step=7'], 'no checkpoint for step 7'),
      (['--tasks=shakespeare_cloze', '--limit=0'], '--limit=0.0 is invalid'),
      (['--tasks=absent', f'--include_path={tmp_path / "offline"}'],
       'their datasets must be on this machine'),
  ]:
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-2000:])
    assert 'Traceback' not in result.stderr, args
  assert harness.digest(workdir / 'eval') == before


def test_training_scores_tasks_on_its_live_parameters_in_two_processes_as_in_one(tmp_path):
  """train.eval_tasks under launch/local.py's two JAX processes (each host feeds half of every
  scoring batch; both run every call): a tiny character model on the shipped corpus logs the
  cloze, last-word and generation tasks at steps 3 and 6 (tasks/<task> in metrics.jsonl, and
  panels on the plot); at step 6 they equal what jaxlm.eval --tasks computes in one process on that
  step's checkpoint: the live parameters were scored, and two hosts give one host's figures."""
  import sys
  tasks = 'shakespeare_cloze,shakespeare_last_word,shakespeare_continue'
  config = harness.write_config(tmp_path / 'cfg.py', **{
      'train.eval_tasks': tasks, 'train.eval_tasks_limit': 6.0, 'train.sample_tokens': 0,
      'mesh.data': 2, 'model.max_seq_len': 64})  # (room for the generation task's 24 tokens)
  work = tmp_path / 'two'
  result = harness.run([sys.executable, 'launch/local.py', '--processes=2', '--',
                        f'--config={config}', f'--config.workdir={work}'])
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  logged = {(r['split'], r['step']): r for r in map(
      json.loads, (work / 'metrics.jsonl').read_text().splitlines())
            if r['split'].startswith('tasks/')}
  assert sorted(logged) == sorted((f'tasks/{t}', s) for t in tasks.split(',') for s in (3, 6))
  result = harness.run_forked(harness.command(f'--workdir={work}', f'--tasks={tasks}',
                                              '--limit=6', module='jaxlm.eval'))
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((work / 'eval' / '6-tasks.json').read_text())['results']
  for task in tasks.split(','):
    for metric, value in logged[f'tasks/{task}', 6].items():
      if metric not in ('step', 'split'):
        assert value == pytest.approx(saved[task][f'{metric},none'], rel=1e-4), (task, metric)
  assert logged['tasks/shakespeare_last_word', 3]['perplexity'] != \
      logged['tasks/shakespeare_last_word', 6]['perplexity']
  result = harness.run_forked(harness.command(f'--workdir={work}', module='jaxlm.plot'))
  assert result.returncode == 0, result.stderr[-3000:]


def test_an_lstm_scores_and_generates_packed_requests_as_alone():
  """The recurrent family (its state restarts at each packed request; a left-padded prompt's
  state starts at its first token): 60 windows score as each alone in a row (within 1e-5), and
  batched greedy generation equals generating each prompt by itself."""
  import jax
  from lm_eval.api.instance import Instance
  from jaxlm import sampling, sharding
  from jaxlm.config import resolve_model
  from jaxlm.data.tokenizers import CharTokenizer
  from jaxlm.harness import JaxLM, Scorer
  from jaxlm.mesh import make_mesh
  from jaxlm.state import init_params, model_parts
  from test_lstm import lstm_config
  from tiny import TINY_TEXT
  cfg = lstm_config()
  tokenizer = CharTokenizer.from_texts([TINY_TEXT])
  model_cfg = resolve_model(cfg.model, tokenizer.vocab_size)
  mesh = make_mesh(cfg, jax.devices()[:1])
  rules = sharding.rules_from_config(cfg.mesh)
  graphdef, _ = model_parts(model_cfg, mesh, rules)
  params = init_params(model_cfg, jax.random.PRNGKey(0))
  make = lambda packed: Scorer(graphdef, params, mesh, rules, model_cfg.max_seq_len, 4, packed)
  windows = _windows(60, tokenizer.vocab_size, model_cfg.max_seq_len, seed=3)
  a, b = make(True).score(windows), make(False).score(windows)
  np.testing.assert_allclose([x for x, _ in a], [x for x, _ in b], atol=1e-5, rtol=0)
  assert [g for _, g in a] == [g for _, g in b]
  run = types.SimpleNamespace(cfg=cfg, model_cfg=model_cfg, tokenizer=tokenizer,
                              graphdef=graphdef, params=params, mesh=mesh, rules=rules,
                              workdir='lstm')
  model = JaxLM(run=run, batch_size=4)
  prompts = ['First', 'You are all resolved', 'Speak']
  got = model.generate_until([Instance('generate_until', {}, (p, {'max_gen_toks': 5}), i)
                              for i, p in enumerate(prompts)])
  alone = [tokenizer.decode(sampling.generate(graphdef, params, model_cfg,
                                              [tokenizer.encode(p)], max_new_tokens=5,
                                              temperature=0.0)[0]) for p in prompts]
  assert got == alone and any(got), (got, alone)
