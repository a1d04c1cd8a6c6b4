"""Model invariants: shapes, causality, the analytic parameter count, RoPE, and learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import resolved_model
from jaxlm import metrics
from jaxlm.loss import cross_entropy
from jaxlm.model import Transformer
from jaxlm.model.attention import rope, rope_frequencies
from jaxlm.state import init_params

VARIANTS = ['llama', 'gpt2']


def build(variant, **overrides):
  m = resolved_model(variant, **overrides)
  return m, Transformer(m, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('variant', VARIANTS)
def test_shapes_and_dtypes(variant):
  m, model = build(variant)
  tokens = jnp.zeros((3, m.max_seq_len), jnp.int32)
  logits = model(tokens)
  assert logits.shape == (3, m.max_seq_len, m.vocab_size) and logits.dtype == jnp.float32
  h, cache = model.features(tokens)
  assert h.shape == (3, m.max_seq_len, m.embed_dim) and cache is None
  _, model16 = build(variant, dtype='bfloat16')
  assert model16(tokens).dtype == jnp.bfloat16


@pytest.mark.parametrize('variant', VARIANTS)
def test_causality(variant):
  """Changing token t never changes the outputs at positions before t."""
  m, model = build(variant)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, m.vocab_size, (2, m.max_seq_len)), jnp.int32)
  base = model(tokens)
  for t in (0, 5, m.max_seq_len - 1):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % m.vocab_size)
    out = model(changed)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize('variant,overrides', [
    ('llama', {}), ('gpt2', {}), ('llama', dict(use_bias=True, tie_embeddings=True)),
    ('gpt2', dict(use_bias=False, tie_embeddings=False, num_kv_heads=2)),
])
def test_parameter_count_is_analytic(variant, overrides):
  m, model = build(variant, **overrides)
  actual = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert actual == metrics.param_count(m)


def test_parameters_carry_logical_axes():
  _, model = build('gpt2')
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata()['out_sharding']
    assert len(axes) == var[...].ndim, path
    if path[0] == 'blocks':
      assert axes[0] == 'layers', path


def test_rope_is_a_rotation_with_relative_phase():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 2, 8))
  pos = jnp.arange(5)[None]
  r = rope(x, pos, rope_frequencies(x.shape[-1], 10000.0))
  np.testing.assert_allclose(jnp.linalg.norm(r, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  np.testing.assert_allclose(rope(x, pos * 0, rope_frequencies(x.shape[-1], 1e4)), x, rtol=1e-6)
  # <rope(q, i), rope(k, j)> depends only on i - j.
  q, k = x[:, :1], x[:, 1:2]
  f = rope_frequencies(q.shape[-1], 1e4)
  dot = lambda i, j: jnp.sum(rope(q, jnp.array([[i]]), f) * rope(k, jnp.array([[j]]), f))
  np.testing.assert_allclose(dot(3, 1), dot(7, 5), rtol=1e-4)


@pytest.mark.parametrize('variant', VARIANTS)
def test_tiny_model_overfits_a_batch(variant):
  m = resolved_model(variant)
  params = init_params(m, jax.random.PRNGKey(0))
  graphdef, _ = nnx.split(Transformer(m, rngs=nnx.Rngs(0)), nnx.Param)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, m.vocab_size, (4, 17)), jnp.int32)
  batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=jnp.ones((4, 16)))
  tx = optax.adam(1e-2)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p)(batch['inputs'])
    total, _, count = cross_entropy(logits, batch['targets'], batch['mask'])
    return total / count

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  opt = tx.init(params)
  first = None
  for _ in range(150):
    params, opt, loss = step(params, opt)
    first = first if first is not None else float(loss)
  assert first > 3.5 and float(loss) < 0.1, (first, float(loss))


def test_dropout_needs_a_key_and_changes_outputs():
  m, model = build('llama', dropout=0.5)
  tokens = jnp.zeros((2, 8), jnp.int32)
  np.testing.assert_array_equal(model(tokens), model(tokens))  # no key: deterministic
  a = model(tokens, dropout_key=jax.random.PRNGKey(1))
  b = model(tokens, dropout_key=jax.random.PRNGKey(2))
  assert not np.allclose(a, b)
