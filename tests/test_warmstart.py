"""config.init_from=<a jaxlm workdir>: a new run starts from the newest checkpoint's parameters
(step 0, fresh optimizer) with the trained model's architecture, on its own mesh. Starting from a
Hugging Face directory, and from a workdir made by jaxlm.convert import-hf, is in test_hf.py."""

import jax
import numpy as np
import pytest

from jaxlm import trainer
from jaxlm.errors import UserError
from jaxlm.restore import load_trained
from tiny import tiny_config


@pytest.mark.slow
def test_init_from_a_trained_workdir(tmp_path):
  """Run A (GPT-2-style, data parallel over 8 devices) trains 6 steps with a checkpoint at 3 and
  6. Run B names A's workdir in init_from with a Llama-style config, 8 positions instead of 16,
  and an fsdp x tensor mesh: B takes A's architecture, keeps its own context and computation
  fields, and its first state is step 0 with A's step-6 parameters (learned positions cropped),
  laid out as B's mesh asks, and zero Adam moments."""
  a = tiny_config('gpt2', workdir=str(tmp_path / 'a'))
  a.model.dropout = 0.1
  trainer.run(a)
  trained = load_trained(a.workdir)
  assert trained.step == 6

  b = tiny_config('llama', workdir=str(tmp_path / 'b'))
  b.init_from = a.workdir
  b.model.max_seq_len, b.model.dropout = 8, 0.0
  b.mesh.data, b.mesh.fsdp, b.mesh.tensor = 1, 4, 2
  t = trainer.Trainer(b)
  try:
    for key, value in trained.model_cfg.items():
      expected = dict(max_seq_len=8, dropout=0.0).get(key, value)
      assert t.model_cfg[key] == expected, key
    state = t.restore_or_init()
    assert int(state.step) == 0
    want = dict(trained.params, pos_embed=trained.params['pos_embed'][:8])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 jax.device_get(want))
    got_shardings = jax.tree.map(lambda x: x.sharding.spec, state.params)
    assert got_shardings == jax.tree.map(lambda s: s.spec, t.setup.shardings.params)
    assert any(spec and 'tensor' in str(spec) for spec in jax.tree.leaves(
        got_shardings, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert moments and all(not np.any(jax.device_get(x)) for x in moments)
  finally:
    t.close()


@pytest.mark.slow
def test_init_from_errors_name_what_to_change(tmp_path):
  """A missing or wrong init_from, another tokenizer (the message names the settings that give
  the right one, and those settings work), and a context longer than the learned positions:
  one sentence each, raised before anything is trained."""
  a = tiny_config('gpt2', workdir=str(tmp_path / 'a'))
  a.train.steps, a.train.eval_every, a.train.sample_tokens = 2, 100, 0
  trainer.run(a)

  def start(**fields):
    b = tiny_config('llama', workdir=str(tmp_path / 'b'))
    b.init_from = a.workdir
    for key, value in fields.items():
      section, _, name = key.rpartition('__')
      (b[section] if section else b)[name] = value
    trainer.Trainer(b).close()

  with pytest.raises(UserError, match='is neither a Hugging Face model directory'):
    start(init_from=str(tmp_path / 'nothing'))
  assert not (tmp_path / 'b' / 'data').exists()  # refused before the data was prepared
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  with pytest.raises(UserError, match='has no checkpoint yet'):
    start(init_from=str(tmp_path / 'empty'))
  with pytest.raises(UserError, match='longer than the 16 positions'):
    start(model__max_seq_len=32)
  with pytest.raises(UserError, match=r"is not the one the weights .* data\.corpus='(.*)'") as e:
    start(data__tokenizer='byte')
  prepared = e.value.args[0].split("data.corpus='")[1].split("'")[0]
  start(data__tokenizer='byte', data__corpus=prepared)  # the data it was trained on: accepted
