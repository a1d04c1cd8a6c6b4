"""The loss: cross-entropy against a naive computation, and the chunked loss equal to the whole."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.loss import chunked_cross_entropy, cross_entropy


def test_cross_entropy_against_naive():
  r = np.random.default_rng(0)
  logits = r.normal(size=(2, 5, 7))
  targets = r.integers(0, 7, (2, 5))
  mask = (r.random((2, 5)) > 0.3).astype(np.float32)
  objective, ce, count = cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                       jnp.asarray(mask), z_loss=1e-2)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  lse = np.log(np.exp(logits).sum(-1))
  assert float(count) == mask.sum()
  np.testing.assert_allclose(ce, (nll * mask).sum(), rtol=1e-5)
  np.testing.assert_allclose(objective, ((nll + 1e-2 * lse**2) * mask).sum(), rtol=1e-5)


@pytest.mark.parametrize('chunk', [1, 4, 8])
def test_chunked_loss_and_gradients_equal_the_whole(chunk):
  r = np.random.default_rng(1)
  h = jnp.asarray(r.normal(size=(3, 8, 6)), jnp.float32)
  w = jnp.asarray(r.normal(size=(6, 11)), jnp.float32)
  targets = jnp.asarray(r.integers(0, 11, (3, 8)))
  mask = jnp.asarray(r.random((3, 8)) > 0.2, jnp.float32)

  def loss(h, w, chunk):
    return chunked_cross_entropy(lambda x: x @ w, h, targets, mask, 1e-3, chunk)[0]
  np.testing.assert_allclose(loss(h, w, chunk), loss(h, w, 0), rtol=1e-6)
  for a, b in zip(jax.grad(loss, (0, 1))(h, w, chunk), jax.grad(loss, (0, 1))(h, w, 0)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_loss_holds_only_one_chunk_of_logits():
  """The compiled chunked loss never allocates a [B, L, V] buffer."""
  h = jnp.zeros((2, 64, 16))
  w = jnp.zeros((16, 1000))
  t = jnp.zeros((2, 64), jnp.int32)
  m = jnp.ones((2, 64))
  f = lambda chunk: jax.jit(jax.grad(lambda h, w: chunked_cross_entropy(
      lambda x: x @ w, h, t, m, 0.0, chunk)[0], (0, 1)))
  full = f(0).lower(h, w).compile().as_text()
  chunked = f(8).lower(h, w).compile().as_text()
  assert 'f32[2,64,1000]' in full
  assert 'f32[2,64,1000]' not in chunked and 'f32[2,8,1000]' in chunked
