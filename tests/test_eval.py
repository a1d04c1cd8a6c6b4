"""The eval, generate and plot commands, checked against naive independent computations."""

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import TINY_TEXT, tiny_config
from jaxlm import data, evaluation, sharding, trainer
from jaxlm.errors import UserError
from jaxlm.mesh import make_mesh
from jaxlm.step import jit_eval_step, make_eval_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A tiny trained run (byte tokenizer, so every text can be encoded)."""
  tmp = tmp_path_factory.mktemp('evalrun')
  (tmp / 'corpus.txt').write_text(TINY_TEXT)
  cfg = tiny_config(workdir=str(tmp / 'run'))
  cfg.data.corpus = str(tmp / 'corpus.txt')
  cfg.data.tokenizer = 'byte'
  cfg.train.steps = 4
  cfg.train.eval_samples = 0
  cfg.train.eval_batches = 0  # validation scores the whole split: bits per byte in metrics.jsonl
  trainer.run(cfg)
  return tmp / 'run'


def _restored(run_dir, devices):
  from jaxlm.restore import load_trained
  r = load_trained(str(run_dir))
  cfg = r.cfg
  cfg.mesh.data, cfg.mesh.fsdp = len(devices), 1
  mesh = make_mesh(cfg, devices)
  params = jax.device_put(r.params, sharding.replicated(mesh))
  shardings = jax.tree.map(lambda x: x.sharding, params)
  step = jit_eval_step(make_eval_step(r.graphdef, mesh, r.rules, r.objective), shardings, mesh,
                       r.rules)
  return r, params, step, sharding.batch_sharding(mesh, r.rules)


def naive_nats(r, params, tokens, weights):
  """Sum of -log p(target) window by window, one sequence at a time, in numpy."""
  model = nnx.merge(r.graphdef, params)
  L = r.model_cfg.max_seq_len
  total = 0.0
  for start in range(0, len(tokens) - 1, L):
    inputs = tokens[start:start + L]
    targets = tokens[start + 1:start + 1 + L]
    inputs = inputs[:len(targets)]
    logits = np.asarray(model(inputs[None]), np.float64)[0]
    shifted = logits - logits.max(-1, keepdims=True)  # a stable log-softmax
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    w = weights[start + 1:start + 1 + len(targets)]
    total -= float((logp[np.arange(len(targets)), targets] * w).sum())
  return total


@pytest.mark.parametrize('packing', ['concat', 'pack'])
def test_perplexity_and_bits_per_byte_match_a_naive_loop(run_dir, packing):
  """Concatenated, the documents are one stream cut into windows; packed, each document is
  scored alone, in windows from its own start."""
  r, params, step, batch_sh = _restored(run_dir, jax.devices()[:1])
  texts = ['To be, or not to be: that is the question.', 'Whether tis nobler in the mind. ' * 3]
  stream = data.text_stream(texts, r.tokenizer, packing, r.model_cfg.max_seq_len)
  out = evaluation.loss_over(step, params, stream, r.cfg, batch_sh)
  n_text_tokens = sum(len(t.encode()) for t in texts)  # bytes: one token per byte
  assert out['tokens'] == n_text_tokens  # every token of the text, exactly once
  if packing == 'concat':
    nats = naive_nats(r, params, stream.tokens, stream.weights)
  else:  # each document alone: [eos] + its bytes
    nats = sum(naive_nats(r, params, *data.text_stream([t], r.tokenizer, 'concat', 16)[:2])
               for t in texts)
  np.testing.assert_allclose(out['nats'], nats, rtol=1e-5)
  assert out['perplexity'] == pytest.approx(math.exp(nats / n_text_tokens), rel=1e-5)
  assert stream.bytes == sum(len(t.encode()) for t in texts)
  assert evaluation.bits_per_byte(out['nats'], stream.bytes) == pytest.approx(
      nats / math.log(2) / stream.bytes, rel=1e-5)


TEXTS = ['Gar\u00e7on, caf\u00e9 cr\u00e8me \u2014 \u65e5\u672c\u8a9e!\n', TINY_TEXT[:300],
         'Speak, speak.\n' * 7]


@pytest.fixture(scope='module')
def spm_tokenizer(tmp_path_factory):
  from jaxlm.data.tokenizers import train_sentencepiece
  tmp = tmp_path_factory.mktemp('spm')
  (tmp / 'corpus.txt').write_text(TINY_TEXT + ''.join(TEXTS))
  return train_sentencepiece([tmp / 'corpus.txt'], tmp / 'spm.model', 320)


def test_bits_per_byte_counts_the_bytes_of_the_text(spm_tokenizer):
  """Bytes are those of the text itself, whatever the tokens: many characters per token for
  SentencePiece, multi-byte characters (and their byte-fallback pieces) included."""
  from jaxlm.data.tokenizers import CharTokenizer
  stream = data.text_stream(TEXTS, spm_tokenizer, 'concat', 16)
  assert stream.bytes == sum(len(t.encode()) for t in TEXTS)
  assert int(stream.weights.sum()) < stream.bytes - 100  # far fewer tokens than bytes
  assert (stream.tokens[stream.weights == 0] == spm_tokenizer.eos_id).all()
  chars = CharTokenizer.from_texts(TEXTS)  # no end-of-sequence id: first characters unscored
  stream = data.text_stream(TEXTS, chars, 'concat', 16)
  assert stream.bytes == sum(len(t.encode()) - len(t[0].encode()) for t in TEXTS)
  assert int(stream.weights.sum()) == sum(len(t) - 1 for t in TEXTS)
  assert evaluation.bits_per_byte(100.0, 50) == pytest.approx(100 / math.log(2) / 50)
  with pytest.raises(UserError, match='no text to score'):
    evaluation.bits_per_byte(0.0, 0)


def test_validation_split_scores_text_not_document_ends(spm_tokenizer, tmp_path):
  """The prepared validation split of a corpus of several documents: end-of-sequence targets
  carry no text, so they are not scored, and the bytes are the documents' own."""
  for i, text in enumerate(TEXTS * 3):
    (tmp_path / 'docs' / f'{i}.txt').parent.mkdir(exist_ok=True)
    (tmp_path / 'docs' / f'{i}.txt').write_text(text)
  cfg = tiny_config(workdir=str(tmp_path / 'run'))
  cfg.data.corpus, cfg.data.val_fraction, cfg.data.val_split = (str(tmp_path / 'docs'), 0.5,
                                                                'documents')
  cfg.data.tokenizer, cfg.data.tokenizer_path = 'sentencepiece', str(spm_tokenizer.path)
  run = data.open_run_data(cfg, tmp_path / 'run')
  stream = data.validation_stream(run, cfg, 16)
  tokens, weights, _ = data.stream_arrays(stream)
  eos = spm_tokenizer.eos_id
  assert (tokens == eos).sum() >= 2 and (weights[tokens == eos] == 0).all()
  assert (weights[tokens != eos] == 1).all()
  # Independently: decode each document (identity normalisation makes decoding exact here).
  docs = np.split(tokens, np.flatnonzero(tokens == eos))
  decoded = [spm_tokenizer.decode([t for t in d if t != eos]) for d in docs if len(d)]
  assert all(d in TEXTS for d in decoded)
  assert stream.bytes == sum(len(d.encode()) for d in decoded)


def test_one_device_equals_eight(run_dir):
  tokens = np.frombuffer(TINY_TEXT[:777].encode(), np.uint8).astype(np.int32)  # byte tokens
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    r, params, step, batch_sh = _restored(run_dir, devices)
    stream = data.EvalStream(tokens, np.ones(len(tokens), np.float32), 0)
    results.append(evaluation.loss_over(step, params, stream, r.cfg, batch_sh))
  assert results[0]['tokens'] == results[1]['tokens'] == 776  # 777 tokens: all but the first
  np.testing.assert_allclose(results[0]['nats'], results[1]['nats'], rtol=1e-5)


def test_evaluation_runs_a_micro_batch_at_a_time(run_dir):
  """loss_over feeds the eval step train.batch_size / grad_accum rows at a time, and scores the
  same tokens, with the same total, as with whole batches."""
  tokens = np.frombuffer(TINY_TEXT[:1500].encode(), np.uint8).astype(np.int32)  # byte tokens
  r, params, step, batch_sh = _restored(run_dir, jax.devices())
  results, rows = [], []

  def recording(p, batch):
    rows.append(batch['inputs'].shape[0])
    return step(p, batch)

  for accum in (1, 2):
    r.cfg.train.batch_size, r.cfg.train.grad_accum = 16, accum
    stream = data.EvalStream(tokens, np.ones(len(tokens), np.float32), 0)
    results.append(evaluation.loss_over(recording, params, stream, r.cfg, batch_sh))
  assert set(rows) == {16, 8}
  assert results[0]['tokens'] == results[1]['tokens'] == 1499
  np.testing.assert_allclose(results[0]['nats'], results[1]['nats'], rtol=1e-5)


def test_bleu_and_chrf_are_sacrebleus():
  import sacrebleu
  hyps = ['the cat sat on the mat', 'a quick brown fox']
  refs = ['the cat sat on a mat', 'the quick brown fox']
  out = evaluation.bleu_and_chrf(hyps, refs)
  assert out['bleu'] == sacrebleu.corpus_bleu(hyps, [refs]).score
  assert out['chrf'] == sacrebleu.corpus_chrf(hyps, [refs]).score
  assert evaluation.bleu_and_chrf(refs, refs)['bleu'] == pytest.approx(100.0)


def _cli(module, *args):
  return subprocess.run([sys.executable, '-m', f'jaxlm.{module}', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_eval_command_writes_results(run_dir, tmp_path):
  (tmp_path / 'a.txt').write_text('To be, or not to be.')
  pairs = tmp_path / 'pairs.jsonl'
  pairs.write_text('\n'.join(json.dumps(dict(prompt=p, reference=r)) for p, r in [
      ('First Citizen:\n', 'Before we proceed'), ('All:\n', 'Speak, speak.')]))
  result = _cli('eval', f'--workdir={run_dir}', f'--text={tmp_path}/*.txt',
                f'--references={pairs}', '--max_new_tokens=8')
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((run_dir / 'eval' / '4.json').read_text())
  text = saved[f'text:{tmp_path}/*.txt']
  assert text['tokens'] == len('To be, or not to be.') and text['bits_per_byte'] > 0
  assert 0 <= saved['references']['bleu'] <= 100 and saved['references']['pairs'] == 2
  assert 'bits_per_byte' in result.stdout
  again = _cli('eval', f'--workdir={run_dir}')  # the validation split, same file
  assert again.returncode == 0, again.stderr[-3000:]
  saved2 = json.loads((run_dir / 'eval' / '4.json').read_text())
  assert 'validation' in saved2 and saved2[f'text:{tmp_path}/*.txt'] == text
  # Training's last validation (step 4, the parameters of checkpoint 4) logged the bits per byte
  # jaxlm.eval finds over the same split.
  logged = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
  last = [r for r in logged if r['split'] == 'val'][-1]
  assert last['step'] == 4
  assert last['bits_per_byte'] == pytest.approx(saved2['validation']['bits_per_byte'], rel=1e-6)
  assert last['loss'] == pytest.approx(saved2['validation']['loss'], rel=1e-6)


def test_eval_errors(run_dir, tmp_path):
  from jaxlm import eval as eval_cli
  with pytest.raises(UserError, match='no checkpoint for step 2 .* it has steps 3, 4'):
    eval_cli.run(str(run_dir), 2, '', '', 8, 0)
  with pytest.raises(UserError, match='has no checkpoints directory'):
    eval_cli.run(str(tmp_path), None, '', '', 8, 0)
  import shutil
  shutil.copytree(run_dir, tmp_path / 'copy')
  shutil.rmtree(tmp_path / 'copy' / 'data')
  with pytest.raises(UserError, match=r'the prepared data checkpoint 4 was trained on \(.*\) is '
                                      'missing'):
    eval_cli.run(str(tmp_path / 'copy'), None, '', '', 8, 0)
  (tmp_path / 'bad.jsonl').write_text('{"prompt": "x"}\n')
  with pytest.raises(UserError, match='line 1 of .* is not a JSON object with "prompt" and'):
    eval_cli.run(str(run_dir), None, '', str(tmp_path / 'bad.jsonl'), 8, 0)


def test_generate_command_is_reproducible(run_dir, tmp_path):
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('ROMEO:\nAll:\n')
  args = ('generate', f'--workdir={run_dir}', f'--prompts_file={prompts}', '--max_new_tokens=10',
          '--seed=3', '--top_k=5')
  a, b = _cli(*args), _cli(*args)
  assert a.returncode == 0, a.stderr[-3000:]
  assert a.stdout.split('step ')[0] == b.stdout.split('step ')[0]
  assert 'tokens/s' in a.stdout and a.stdout.startswith('ROMEO:')


def test_plot_writes_a_png(run_dir):
  result = _cli('plot', f'--workdir={run_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  png = (run_dir / 'curves.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000


def test_plot_draws_several_runs_against_training_time(run_dir, tmp_path):
  """--x=time adds up each logged step time over the steps it covers; two workdirs go on one
  figure; several workdirs without --output is one sentence."""
  from jaxlm import metrics  # (not jaxlm.plot: its flags would clash with jaxlm.eval's here)
  elapsed = metrics.training_seconds({'step_time': [(10, 0.1), (20, 0.2), (25, 1.0)]})
  assert elapsed == pytest.approx({0: 0.0, 10: 1.0, 20: 3.0, 25: 8.0})
  assert metrics.at_training_time([(15, 2.5)], elapsed) == [(2.0, 2.5)]
  import shutil
  shutil.copy(run_dir / 'metrics.jsonl', (tmp_path / 'other').mkdir() or tmp_path / 'other')
  out = tmp_path / 'both.png'
  result = _cli('plot', f'--workdir={run_dir},{tmp_path / "other"}', '--x=time', f'--output={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  result = _cli('plot', f'--workdir={run_dir},{tmp_path / "other"}')
  assert result.returncode == 2 and 'when several workdirs are drawn' in result.stderr


@pytest.mark.slow
def test_commands_print_no_tpu_initialisation_noise_without_a_tpu(tmp_path):
  """With libtpu installed (the tpu extra) and JAX_PLATFORMS unset, as a user runs them on a
  host without TPU chips, jaxlm's commands do not start libtpu, so print none of its start-up
  errors (before: lines about TPU_ACCELERATOR_TYPE and worker hostnames, E0000 ..., on every
  command). Any process holding libtpu silences the others on the machine (another test worker
  may), so the first check is whether libtpu is mapped into a process that starts JAX as the
  commands do; then jaxlm.train and jaxlm.eval print no such line."""
  pytest.importorskip('libtpu')
  import harness
  from jaxlm.mesh import tpu_chips
  if tpu_chips():
    pytest.skip('this host has TPU chips')
  # A user's shell: no JAX_PLATFORMS, and none of the TPU_* variables libtpu sets when it starts.
  env = {k: v for k, v in harness.env().items() if k != 'JAX_PLATFORMS' and
         not k.startswith('TPU_')}
  start = ('import jax; from jaxlm.configs import base; from jaxlm.mesh import configure_backend; '
           "configure_backend(base.get_config()); jax.devices(); "
           "print('libtpu' in open('/proc/self/maps').read())")
  result = harness.run([sys.executable, '-c', start], env=env)
  assert result.returncode == 0 and result.stdout.strip() == 'False', result.stdout + result.stderr
  (tmp_path / 'corpus.txt').write_text(TINY_TEXT)  # a small validation split: eval is quick
  config = harness.write_config(tmp_path / 'tiny.py', workdir=str(tmp_path / 'run'),
                                **{'data.corpus': str(tmp_path / 'corpus.txt'), 'train.steps': 1,
                                   'train.sample_tokens': 0})
  for cmd in (harness.command(f'--config={config}'),
              harness.command(f'--workdir={tmp_path / "run"}', module='jaxlm.eval')):
    result = harness.run(cmd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    noise = [l for l in (result.stdout + result.stderr).splitlines()
             if any(mark in l for mark in ('E0000', 'W0000', 'TPU_'))]
    assert not noise, noise
