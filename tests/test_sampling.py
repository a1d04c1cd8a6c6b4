"""Decoding: the KV cache reproduces the full forward pass; sampling is reproducible and bounded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import resolved_model
from jaxlm import sampling
from jaxlm.errors import UserError
from jaxlm.model import Transformer


def _model(variant):
  m = resolved_model(variant)
  model = Transformer(m, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  return m, model, graphdef, nnx.to_pure_dict(params)


@pytest.mark.parametrize('variant', ['llama', 'gpt2'])
def test_kv_cache_decoding_equals_full_forward(variant):
  m, model, _, _ = _model(variant)
  rng = np.random.default_rng(0)
  seq = jnp.asarray(rng.integers(0, m.vocab_size, (2, 12)), jnp.int32)
  full = model(seq).astype(jnp.float32)  # [2, 12, V]
  # Row 0 has a 5-token prompt, row 1 a 3-token prompt left-padded to 5.
  lengths = jnp.array([5, 3])
  prompts = jnp.stack([seq[0, :5], jnp.concatenate([jnp.zeros(2, jnp.int32), seq[1, :3]])])
  pad = 5 - lengths
  cache = model.init_cache(2, 5 + 7)
  logits, cache = sampling.prefill(model, prompts, pad, cache, 5 + 7)
  np.testing.assert_allclose(logits[0], full[0, :5], atol=1e-5)
  np.testing.assert_allclose(logits[1, 2:], full[1, :3], atol=1e-5)
  for i in range(7):  # feed the true continuation of each row, one token per step
    tokens = jnp.array([seq[0, 5 + i], seq[1, 3 + i]])
    step_logits, cache = sampling.decode_step(model, tokens, jnp.int32(5 + i), pad, cache,
                                              5 + 7)
    np.testing.assert_allclose(step_logits[0], full[0, 5 + i], atol=1e-5)
    np.testing.assert_allclose(step_logits[1], full[1, 3 + i], atol=1e-5)


def test_greedy_generation_matches_argmax_of_full_forward():
  m, model, graphdef, params = _model('llama')
  prompt = [3, 1, 4, 1, 5]
  out = sampling.generate(graphdef, params, m, [prompt], max_new_tokens=6, temperature=0.0)[0]
  seq = list(prompt)
  for _ in range(6):
    seq.append(int(jnp.argmax(model(jnp.array([seq]))[0, -1])))
  assert out == seq[len(prompt):]


def test_sampling_is_reproducible_and_respects_limits():
  m, _, graphdef, params = _model('gpt2')
  prompts = [[1, 2, 3], [4, 5]]
  kw = dict(max_new_tokens=8, temperature=1.0, top_k=5, top_p=0.9, vocab_limit=40)
  a = sampling.generate(graphdef, params, m, prompts, seed=1, **kw)
  b = sampling.generate(graphdef, params, m, prompts, seed=1, **kw)
  c = sampling.generate(graphdef, params, m, prompts, seed=2, **kw)
  assert a == b and a != c
  assert all(len(r) == 8 and all(0 <= t < 40 for t in r) for r in a)


def test_stops_at_end_of_sequence():
  m, _, graphdef, params = _model('llama')
  first = sampling.generate(graphdef, params, m, [[7]], max_new_tokens=6, temperature=0.0)[0]
  eos = first[2]  # pretend the third greedy token is the end-of-sequence id
  out = sampling.generate(graphdef, params, m, [[7]], max_new_tokens=6, temperature=0.0,
                          eos_id=eos)[0]
  assert out == first[:first.index(eos)]


def test_top_k_and_top_p_filtering():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  draws = lambda **kw: {int(sampling.sample_logits(logits, jax.random.PRNGKey(i), **kw)[0])
                        for i in range(200)}
  assert draws(temperature=1.0, top_k=2, top_p=1.0) == {0, 1}
  assert draws(temperature=1.0, top_k=0, top_p=0.7) == {0, 1}
  assert draws(temperature=1.0, top_k=0, top_p=0.4) == {0}
  assert draws(temperature=0.0, top_k=0, top_p=1.0) == {0}


def test_bad_generation_arguments():
  m, _, graphdef, params = _model('llama')
  with pytest.raises(UserError, match='max_new_tokens'):
    sampling.generate(graphdef, params, m, [[1]], max_new_tokens=m.max_seq_len)
  with pytest.raises(UserError, match='temperature'):
    sampling.generate(graphdef, params, m, [[1]], max_new_tokens=2, temperature=-1.0)
