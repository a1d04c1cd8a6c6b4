"""The LSTM baseline (model.kind='lstm'): causal, segment-aware, trainable, sharded like the
Transformer, resumable, and decoding with a carried state as the whole sequence does."""

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


def lstm_config(**fields):
  cfg = tiny_config()
  cfg.model = base.get_config().model
  m = cfg.model
  m.kind, m.num_layers, m.embed_dim, m.max_seq_len, m.vocab_multiple = 'lstm', 2, 32, 16, 8
  for key, value in fields.items():
    m[key] = value
  return cfg


def model(**fields):
  return build_model(resolve_model(lstm_config(**fields).model, VOCAB), nnx.Rngs(0))


def test_the_lstm_is_causal_and_restarts_at_a_new_segment():
  """Changing token t leaves every output before t as it was and changes those from t on; with
  segments, the second segment's outputs equal the second segment run alone."""
  lstm = model()
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 16)), jnp.int32)
  changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % VOCAB)
  diff = np.abs(np.asarray(lstm(tokens) - lstm(changed))).max(-1)
  assert (diff[:, :9] == 0).all() and (diff[:, 9:] > 1e-6).all(), diff
  segments = jnp.asarray([[1] * 6 + [2] * 10] * 2)
  packed = lstm(tokens, segment_ids=segments)
  np.testing.assert_allclose(packed[:, 6:], lstm(tokens[:, 6:]), atol=1e-6)
  np.testing.assert_allclose(packed[:, :6], lstm(tokens[:, :6]), atol=1e-6)


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


@pytest.mark.parametrize('shape', [(8, 1, 1), (2, 4, 1)])
def test_sharded_lstm_training_equals_one_device(shape):
  """Five steps on 8 devices (data, or data x fsdp) log the losses of one device within 1e-5."""
  def losses(cfg, devices):
    _, setup, step, batch_sh = build_training(cfg, devices, VOCAB)
    state, out = setup.init(), []
    for i in range(5):
      batch = jax.device_put(random_batch(8, 16, VOCAB, seed=i), batch_sh)
      state, metrics = step(state, batch)
      out.append(float(metrics['loss']))
    return np.array(out)
  expected = losses(lstm_config(), 1)
  cfg = lstm_config()
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
def test_a_resumed_lstm_run_repeats_its_losses(tmp_path):
  """A 6-step run with checkpoints at 3 and 6, its newest checkpoint removed (as if killed after
  step 3), resumed in a new process: the same losses for steps 4-6, bit for bit; jaxlm.eval and
  jaxlm.generate work on it."""
  import json
  import shutil
  import harness
  model = lstm_config(dropout=0.1).model.to_dict()  # dropout: its keys must resume too
  config = tmp_path / 'cfg.py'
  config.write_text('\n'.join([
      'from ml_collections import ConfigDict', 'from tiny import tiny_config', '', '',
      'def get_config():', '  c = tiny_config()', f'  c.model = ConfigDict({model!r})',
      '  c.cpu_devices = 2', '  return c', '']))
  train = lambda run=harness.run: run(harness.command(f'--config={config}',
                                                     f'--config.workdir={tmp_path / "run"}'))
  result = train(harness.run_forked)  # the resume below runs in a process of its own
  assert result.returncode == 0, result.stderr[-3000:]
  shutil.rmtree(tmp_path / 'run' / 'checkpoints' / '6')
  result = train()
  assert result.returncode == 0 and 'Resuming from step 3' in result.stdout, result.stderr[-3000:]
  losses = harness.logged_losses(tmp_path / 'run')
  for step in (4, 5, 6):
    assert len(losses[step]) == 2 and losses[step][0] == losses[step][1], losses
  result = harness.run_forked(harness.command(f'--workdir={tmp_path / "run"}',
                                              module='jaxlm.eval'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / 'run' / 'eval' / '6.json').read_text())['validation']['loss'] > 0
  result = harness.run_forked(harness.command(f'--workdir={tmp_path / "run"}', '--prompt=First',
                                              '--max_new_tokens=5', module='jaxlm.generate'))
  assert result.returncode == 0 and 'First' in result.stdout, result.stderr[-3000:]
