"""The LSTM case study's three models: the language model (model.kind='lstm': causal,
segment-aware), the bidirectional encoder ('bilstm') and the encoder -> context -> decoder
('lstm_seq2seq'): what each reads, parameter counts, sharded training equal to one device,
decoding with a carried state as the whole sequence does, and resumable runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import build_training, random_batch
from jaxlm import sampling
from jaxlm.config import check_model, resolve_model
from jaxlm.configs import base
from jaxlm.errors import UserError
from jaxlm.state import build_model
from tiny import tiny_config

VOCAB = 61


def lstm_config(kind='lstm', **fields):
  cfg = tiny_config()
  cfg.model = base.get_config().model
  m = cfg.model
  m.kind, m.num_layers, m.embed_dim, m.max_seq_len, m.vocab_multiple = kind, 2, 32, 16, 8
  for key, value in fields.items():
    m[key] = value
  return cfg


def model(kind='lstm', **fields):
  return build_model(resolve_model(lstm_config(kind, **fields).model, VOCAB), nnx.Rngs(0))


def tokens(shape=(2, 16), seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, shape), jnp.int32)


def changed(x, t):
  return x.at[:, t].set((x[:, t] + 1) % VOCAB)


def test_the_lstm_is_causal_and_restarts_at_a_new_segment():
  """Changing token t leaves every output before t as it was and changes those from t on; with
  segments, the second segment's outputs equal the second segment run alone."""
  lstm, x = model(), tokens()
  diff = np.abs(np.asarray(lstm(x) - lstm(changed(x, 9)))).max(-1)
  assert (diff[:, :9] == 0).all() and (diff[:, 9:] > 1e-6).all(), diff
  segments = jnp.asarray([[1] * 6 + [2] * 10] * 2)
  packed = lstm(x, segment_ids=segments)
  np.testing.assert_allclose(packed[:, 6:], lstm(x[:, 6:]), atol=1e-6)
  np.testing.assert_allclose(packed[:, :6], lstm(x[:, :6]), atol=1e-6)


def test_the_bidirectional_lstm_reads_both_ways_and_keeps_documents_apart():
  """Changing token t changes every output, before t and after it; packed documents see nothing
  of each other in either direction (each equals the document run alone, to 1e-5)."""
  bilstm, x = model('bilstm'), tokens()
  diff = np.abs(np.asarray(bilstm(x) - bilstm(changed(x, 9)))).max(-1)
  assert (diff > 1e-6).all(), diff
  segments = jnp.asarray([[1] * 6 + [2] * 7 + [3] * 3] * 2)
  packed = bilstm(x, segment_ids=segments)
  for start, end in ((0, 6), (6, 13), (13, 16)):
    np.testing.assert_allclose(packed[:, start:end], bilstm(x[:, start:end]), atol=1e-5)


def _seq2seq_logits(net, prefix):
  return jax.jit(lambda x: net.logits(net.features(x, prefix=prefix)[0]))


@pytest.mark.parametrize('attention', ['', 'luong'])
def test_the_decoder_reads_its_inputs_in_order_and_the_whole_input(attention):
  """Rows of inputs 6 and 9 tokens long: changing a decoder input changes only the decoder's
  outputs from there on; changing any input token (the one the decoder starts from too)
  changes every decoder output (positions prefix - 1 .. L - 1)."""
  net, x, prefix = model('lstm_seq2seq', decoder_attention=attention), tokens(), jnp.asarray([6, 9])
  logits = _seq2seq_logits(net, prefix)
  base_out = logits(x)
  for t in (10, 13):
    diff = np.abs(np.asarray(logits(changed(x, t)) - base_out)).max(-1)
    assert (diff[:, :t] == 0).all() and (diff[:, t:] > 1e-7).all(), (t, diff)
  for t in range(9):
    diff = np.abs(np.asarray(logits(changed(x, t)) - base_out)).max(-1)
    for row, p in enumerate((6, 9)):
      if t < p:  # an input token of this row: every decoder output changes
        assert (diff[row, p - 1:] > 1e-7).all(), (t, row, diff[row])
      else:  # a decoder input: those from t on
        assert (diff[row, :t] == 0).all() and (diff[row, t:] > 1e-7).all(), (t, row, diff[row])


@pytest.mark.parametrize('kind,attention', [('lstm_seq2seq', ''), ('lstm_seq2seq', 'luong'),
                                            ('transformer', '')])
def test_stepwise_decoding_equals_the_teacher_forced_forward(kind, attention):
  """Two prompts of 3 and 7 tokens, left-padded into one batch, prefilled as prefix-LM inputs
  and then decoded a token at a time with the carried state (the encoder-decoder) or the KV
  cache (a Transformer prefix LM): each step's logits equal the full forward of the row with
  its prompt as the prefix, to 1e-5; greedy generation picks their argmax."""
  from conftest import resolved_model
  if kind == 'transformer':
    m = resolved_model('llama')
  else:
    m = resolve_model(lstm_config(kind, decoder_attention=attention).model, VOCAB)
  net = build_model(m, nnx.Rngs(1))
  prompts, new = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 2]], 5
  rows = [p + [int(t) for t in np.random.default_rng(len(p)).integers(0, VOCAB, new)]
          for p in prompts]
  P, S = 7, 7 + new
  padded = jnp.asarray([[0] * (P - len(p)) + p for p in prompts], jnp.int32)
  pad = jnp.asarray([P - len(p) for p in prompts])
  prefill = jax.jit(lambda cache: sampling.prefill(net, padded, pad, cache, S, prefix_lm=True))
  decode = jax.jit(lambda token, slot, cache: sampling.decode_step(net, token, slot, pad, cache,
                                                                   S))
  logits, cache = prefill(net.init_cache(2, S))
  steps = [logits[:, -1]]
  for i in range(new - 1):
    token = jnp.asarray([r[len(p) + i] for r, p in zip(rows, prompts)], jnp.int32)
    logits, cache = decode(token, jnp.int32(P + i), cache)
    steps.append(logits)
  for row, (r, p) in enumerate(zip(rows, prompts)):
    full = net.logits(net.features(jnp.asarray([r]), prefix=jnp.asarray([len(p)]))[0])[0]
    np.testing.assert_allclose(np.stack([s[row] for s in steps]), full[len(p) - 1:-1],
                               atol=1e-5, rtol=0)
  graphdef, params = nnx.split(net, nnx.Param)
  got = sampling.generate(graphdef, nnx.to_pure_dict(params), m, prompts, max_new_tokens=4,
                          temperature=0.0, prefix_lm=True)
  for prompt, generated in zip(prompts, got):  # the decoder reads left to right (test above)
    h, _ = net.features(jnp.asarray([prompt + generated]), prefix=jnp.asarray([len(prompt)]))
    assert generated == np.argmax(net.logits(h)[0, len(prompt) - 1:-1], -1).tolist()


@pytest.mark.parametrize('kind,fields', [
    ('lstm', {}), ('lstm', {'tie_embeddings': False}), ('bilstm', {}),
    ('bilstm', {'tie_embeddings': False}), ('lstm_seq2seq', {}),
    ('lstm_seq2seq', {'decoder_attention': 'luong', 'tie_embeddings': False})])
def test_parameter_counts_are_the_analytic_formula(kind, fields):
  """The model's parameters number what families.py counts: per layer 8D^2 + 4D an LSTM; twice
  that and the 2D x D projection a bidirectional layer; a decoder layer's LSTM and its two 2D x D
  bridges; 3 D^2 for attention; V x D embedding and the head when untied."""
  from jaxlm import metrics
  D, N = 32, 2
  m = resolve_model(lstm_config(kind, **{'tie_embeddings': True, **fields}).model, VOCAB)
  V = m.vocab_size
  lstm = 8 * D * D + 4 * D
  layer = {'lstm': lstm, 'bilstm': 2 * lstm + 2 * D * D,
           'lstm_seq2seq': 2 * lstm + 2 * D * D + lstm + 4 * D * D}[kind]
  expected = N * layer + V * D * (1 if m.tie_embeddings else 2) + 3 * D * D * bool(
      m.decoder_attention)
  abstract = nnx.eval_shape(lambda: build_model(m, nnx.Rngs(0)))
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert actual == expected == metrics.param_count(m)


def test_the_lstm_overfits_one_batch():
  """Adam on one batch of random tokens: the loss falls from about log(V) to near 0."""
  cfg = lstm_config()
  cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay = 1e-2, 0, 0.0
  cfg.optim.schedule, cfg.train.steps = 'constant', 300
  _, setup, step, batch_sh = build_training(cfg, 1, VOCAB)
  state, batch = setup.init(), jax.device_put(random_batch(8, 16, VOCAB), batch_sh)
  losses = []
  for _ in range(300):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[0] > 3.5 and losses[-1] < 0.3, (losses[0], losses[-1])


@pytest.mark.parametrize('kind,objective,shape', [
    ('lstm', 'causal', (8, 1, 1)), ('lstm', 'causal', (2, 4, 1)), ('bilstm', 'mlm', (2, 2, 2)),
    ('lstm_seq2seq', 'span', (2, 2, 2))])
def test_sharded_lstm_training_equals_one_device(kind, objective, shape):
  """Five steps on 8 devices (data, data x fsdp, or data x fsdp x tensor) log the losses of one
  device within 1e-5: the LSTM with causal LM, the bidirectional LSTM with masked LM, the
  encoder-decoder (with attention) with span corruption."""
  from jaxlm import objectives
  def config():
    cfg = lstm_config(kind, decoder_attention='luong' if kind == 'lstm_seq2seq' else '')
    cfg.train.objective = objective
    return cfg

  def losses(cfg, devices):
    _, setup, step, batch_sh = build_training(cfg, devices, VOCAB)
    state, out = setup.init(), []
    for i in range(5):
      batch = random_batch(8, objectives.window_length(cfg), VOCAB, seed=i)
      state, metrics = step(state, jax.device_put(batch, batch_sh))
      out.append(float(metrics['loss']))
    return np.array(out)
  expected = losses(config(), 1)
  cfg = config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = shape
  np.testing.assert_allclose(losses(cfg, 8), expected, atol=1e-5, rtol=0)
  assert expected[-1] < expected[0]


def test_generation_with_a_carried_state_equals_rerunning_the_sequence():
  """Greedy decoding (two prompts of different lengths, left-padded into one batch) picks, at
  every step, the argmax of the model run over the whole sequence so far."""
  cfg = lstm_config()
  m = resolve_model(cfg.model, VOCAB)
  lstm = build_model(m, nnx.Rngs(3))
  graphdef, params = nnx.split(lstm, nnx.Param)
  prompts = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 2]]
  got = sampling.generate(graphdef, nnx.to_pure_dict(params), m, prompts, max_new_tokens=6,
                          temperature=0.0)
  for prompt, new in zip(prompts, got):
    sequence = list(prompt)
    for _ in range(6):
      logits = lstm(jnp.asarray([sequence], jnp.int32))[0, -1]
      sequence.append(int(jnp.argmax(logits)))
    assert new == sequence[len(prompt):]


def test_transformer_fields_on_an_lstm_are_one_sentence():
  cfg = lstm_config()
  check_model(cfg.model)
  cfg.model.num_heads = 8
  with pytest.raises(UserError, match=r"model.num_heads=8 is a Transformer's; an LSTM"):
    check_model(cfg.model)


@pytest.mark.slow
@pytest.mark.parametrize('kind,objective', [('lstm', 'causal'), ('bilstm', 'mlm'),
                                            ('lstm_seq2seq', 'prefix')])
def test_a_run_killed_resumes_bit_for_bit_and_evaluates(tmp_path, kind, objective):
  """Each LSTM family (with dropout, whose keys must resume too; the encoder-decoder with
  attention) killed with SIGKILL after a committed checkpoint and run again logs the losses of an
  uninterrupted run, bit for bit. jaxlm.eval scores it (the decoder's targets for the
  encoder-decoder, with BLEU and chrF against --references), and jaxlm.generate continues a
  prompt from the models that generate. The bidirectional LSTM's masked LM hides whole words,
  the end of each document more, and frequent characters less (issue #30's settings resume
  too)."""
  import json
  import signal
  import harness
  model = lstm_config(kind, dropout=0.1, decoder_attention='luong' if kind == 'lstm_seq2seq'
                      else '').model.to_dict()
  config = tmp_path / 'cfg.py'
  (tmp_path / 'corpus.txt').write_text(harness.SHIPPED.read_text()[:20_000])  # eval reads it all
  config.write_text('\n'.join([
      'from ml_collections import ConfigDict', 'from tiny import tiny_config', '', '',
      'def get_config():', '  c = tiny_config()', f'  c.model = ConfigDict({model!r})',
      f"  c.data.corpus = {str(tmp_path / 'corpus.txt')!r}",
      f'  c.train.objective = {objective!r}', '  c.checkpoint.every = 2',
      *(["  c.mlm.unit, c.mlm.position_profile = 'word', 'buckets'",
         "  c.mlm.position_weights, c.mlm.token_weighting = (1, 2), 'frequency'"]
        if objective == 'mlm' else []),
      '  c.train.sample_tokens = 0', '  c.cpu_devices = 2', '  return c', '']))
  cmd = lambda work: harness.command(f'--config={config}', f'--config.workdir={work}')
  ref = harness.run_forked(cmd(tmp_path / 'ref'))
  assert ref.returncode == 0, ref.stderr[-3000:]
  expected = {step: v[-1] for step, v in harness.logged_losses(tmp_path / 'ref').items()}
  assert sorted(expected) == list(range(1, 7))
  work, log = tmp_path / 'killed', tmp_path / 'killed.log'
  p = harness.start(cmd(work), log)
  saved = lambda: harness.last_step(work) >= 3 and (work / 'checkpoints' / '2').is_dir()
  harness.wait_until(saved, p, log=log)  # past a committed checkpoint, before the end
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert harness.last_step(work) < 6
  result = harness.run_forked(cmd(work))
  assert result.returncode == 0 and 'Resuming from step' in result.stdout, result.stderr[-3000:]
  got = harness.logged_losses(work)
  assert sorted(got) == sorted(expected)
  for step, values in got.items():
    assert all(v == expected[step] for v in values), (step, values, expected[step])
  references = tmp_path / 'pairs.jsonl'
  references.write_text('{"prompt": "First", "reference": " Citizen"}\n')
  extra = [f'--references={references}', '--max_new_tokens=4'] if objective == 'prefix' else []
  result = harness.run_forked(harness.command(f'--workdir={work}', *extra, module='jaxlm.eval'))
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((work / 'eval' / '6.json').read_text())
  assert saved['validation']['loss'] > 0
  assert ('bits_per_byte' in saved['validation']) == (objective == 'causal')
  if objective == 'prefix':
    assert 0 <= saved['references']['chrf'] <= 100 and saved['references']['pairs'] == 1
  result = harness.run_forked(harness.command(f'--workdir={work}', '--prompt=First',
                                              '--max_new_tokens=5', module='jaxlm.generate'))
  if objective == 'mlm':
    assert result.returncode == 2 and 'does not continue a prompt' in result.stderr
  else:
    assert result.returncode == 0 and 'First' in result.stdout, result.stderr[-3000:]
