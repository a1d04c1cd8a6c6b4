"""The loss: cross-entropy against a naive computation, the chunked loss equal to the whole, and
the blockwise loss's own gradient equal to JAX's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.loss import blockwise_cross_entropy, chunked_cross_entropy, cross_entropy


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


def _head_problem(seed=2, dtype=jnp.float32, B=3, L=8, D=6, V=11):
  r = np.random.default_rng(seed)
  h = jnp.asarray(r.normal(size=(B, L, D)), dtype)
  w = jnp.asarray(r.normal(size=(D, V)) / np.sqrt(D), dtype)
  targets = jnp.asarray(r.integers(0, V, (B, L)))
  mask = jnp.asarray(r.random((B, L)) > 0.25, jnp.float32)
  return h, w, targets, mask


@pytest.mark.parametrize('chunk', [0, 1, 4])
@pytest.mark.parametrize('z_loss', [0.0, 1e-2])
def test_blockwise_loss_and_gradients_equal_autodiff(chunk, z_loss):
  """The hand-written gradient (softmax * (1 + 2 z lse) - onehot, masked, through the head) equals
  jax.grad of the plain loss, and the cotangent's scale (3 here) carries through."""
  h, w, targets, mask = _head_problem()

  def reference(h, w):
    return 3.0 * cross_entropy(h @ w, targets, mask, z_loss)[0]

  def blockwise(h, w):
    return 3.0 * blockwise_cross_entropy(h, w, targets, mask, z_loss, chunk, grad_scale=3.0)[0]

  np.testing.assert_allclose(blockwise(h, w), reference(h, w), rtol=1e-6)
  out = blockwise_cross_entropy(h, w, targets, mask, z_loss, chunk)
  ref = cross_entropy(h @ w, targets, mask, z_loss)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  for a, b in zip(jax.grad(blockwise, (0, 1))(h, w), jax.grad(reference, (0, 1))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # A grad_scale that is not the cotangent still gives the right gradient (only rounding moves).
  other = lambda h, w: 3.0 * blockwise_cross_entropy(h, w, targets, mask, z_loss, chunk,
                                                     grad_scale=0.5)[0]
  for a, b in zip(jax.grad(other, (0, 1))(h, w), jax.grad(reference, (0, 1))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_blockwise_cross_entropy_is_not_differentiated():
  h, w, targets, mask = _head_problem()
  g = jax.grad(lambda h: blockwise_cross_entropy(h, w, targets, mask, 1e-2, 4)[1])(h)
  assert not np.any(np.asarray(g))


def test_blockwise_float16_gradients_are_formed_at_the_loss_scale():
  """Float16 gradients far below float16's normal range (a mean over many tokens) survive when
  grad_scale is the loss scale: unscaled, they would flush to zero or lose their digits."""
  h, w, targets, mask = _head_problem(3, B=4, L=16, D=8, V=32)
  tiny = 1e-7  # the objective's weight: every gradient is about 1e-8
  reference = jax.grad(lambda h, w: tiny * cross_entropy(h @ w, targets, mask)[0], (0, 1))(h, w)
  scale = 2.0**16

  def scaled(h, w):
    return scale * tiny * blockwise_cross_entropy(h, w, targets, mask, 0.0, 4,
                                                  grad_scale=scale * tiny)[0]
  got = jax.grad(scaled, (0, 1))(h.astype(jnp.float16), w.astype(jnp.float16))
  for a, b in zip(got, reference):
    assert a.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(a, np.float32) / scale, b, rtol=2e-2, atol=1e-10)


def _head_dots(jaxpr) -> int:
  """The matmuls of a loss's gradient (all are the head's), through scans and custom-gradient
  calls."""
  return sum(1 for line in jaxpr.pretty_print().splitlines() if ' dot_general[' in line)


def test_blockwise_computes_the_head_matmul_three_times_not_four():
  """Forward logits, d/dh and d/dw: three head matmuls; JAX's gradient of the rematerialised
  chunked loss recomputes the logits in the backward pass, a fourth."""
  h, w, targets, mask = _head_problem()
  blockwise = jax.make_jaxpr(jax.grad(lambda h, w: blockwise_cross_entropy(
      h, w, targets, mask, 0.0, 4)[0], (0, 1)))(h, w)
  autodiff = jax.make_jaxpr(jax.grad(lambda h, w: chunked_cross_entropy(
      lambda x: x @ w, h, targets, mask, 0.0, 4)[0], (0, 1)))(h, w)
  assert _head_dots(blockwise) == 3
  assert _head_dots(autodiff) == 4


def test_blockwise_loss_holds_only_one_chunk_of_logits():
  h = jnp.zeros((2, 64, 16))
  w = jnp.zeros((16, 1000))
  t = jnp.zeros((2, 64), jnp.int32)
  m = jnp.ones((2, 64))
  text = jax.jit(jax.grad(lambda h, w: blockwise_cross_entropy(h, w, t, m, 0.0, 8)[0], (0, 1))
                 ).lower(h, w).compile().as_text()
  assert 'f32[2,64,1000]' not in text and 'f32[2,8,1000]' in text
