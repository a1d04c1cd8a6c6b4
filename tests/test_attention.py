"""Attention implementations: each equals a naive per-head loop, with causal masks and packed
segments, forward and backward; and packed segments never see each other in the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import resolved_model
from jaxlm import sharding
from jaxlm.model import Transformer
from jaxlm.model.attention_kernels import attend, reference

ON_GPU = jax.devices()[0].platform == 'gpu'


def naive(q, k, v, segment_ids=None):
  """Per example, per head, per query: softmax over the keys it may see. Float64 numpy."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  B, L, H, E = q.shape
  G = H // k.shape[2]
  out = np.zeros_like(q)
  for b in range(B):
    for h in range(H):
      for i in range(L):
        seen = [j for j in range(i + 1) if segment_ids is None or
                segment_ids[b, j] == segment_ids[b, i]]
        s = np.array([q[b, i, h] @ k[b, j, h // G] for j in seen]) / np.sqrt(E)
        p = np.exp(s - s.max())
        out[b, i, h] = (p / p.sum()) @ v[b, seen, h // G]
  return out


def _qkv(B, L, H, K, E, seed=0):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.normal(size=s), jnp.float32)
               for s in ((B, L, H, E), (B, L, K, E), (B, L, K, E)))


def _segments(B, L):
  ids = np.zeros((B, L), np.int32)
  ids[0, L // 3:] = 1  # two documents packed in row 0, three in row 1
  ids[1, L // 4:] = 1
  ids[1, L // 2:] = 2
  return jnp.asarray(ids)


@pytest.mark.parametrize('packed', [False, True])
def test_reference_equals_naive_loop(packed):
  q, k, v = _qkv(2, 12, 4, 2, 8)
  seg = _segments(2, 12) if packed else None
  out = attend(q, k, v, implementation='xla', segment_ids=seg)
  np.testing.assert_allclose(out, naive(q, k, v, None if seg is None else np.asarray(seg)),
                             atol=1e-5)


IMPLEMENTATIONS = ['splash', pytest.param('cudnn', marks=pytest.mark.skipif(
    not ON_GPU, reason='cuDNN flash attention needs an NVIDIA GPU; none here'))]


@pytest.mark.parametrize('implementation', IMPLEMENTATIONS)
@pytest.mark.parametrize('packed', [False, True])
def test_fused_kernels_equal_the_reference(implementation, packed):
  """splash runs interpreted off TPU; cudnn only where there is a GPU (reported as skipped
  elsewhere, never silently absent)."""
  q, k, v = _qkv(2, 256, 4, 2, 64)
  dtype = jnp.bfloat16 if implementation == 'cudnn' else jnp.float32
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  seg = _segments(2, 256) if packed else None
  f = lambda impl: lambda q, k, v: attend(q, k, v, implementation=impl, segment_ids=seg)
  tol = 2e-2 if dtype == jnp.bfloat16 else 2e-5
  np.testing.assert_allclose(np.asarray(f(implementation)(q, k, v), np.float32),
                             np.asarray(f('xla')(q, k, v), np.float32), atol=tol)
  loss = lambda impl: lambda *x: jnp.sum(f(impl)(*x).astype(jnp.float32) ** 2)
  grads = jax.grad(loss(implementation), argnums=(0, 1, 2))(q, k, v)
  expected = jax.grad(loss('xla'), argnums=(0, 1, 2))(q, k, v)
  for g, e in zip(grads, expected):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32),
                               atol=10 * tol, rtol=10 * tol)


def test_remat_dots_attention_keeps_the_kernel_residuals():
  """With model.remat='dots_attention' the backward pass reads the fused kernel's saved residuals
  instead of running its forward again ('dots' runs it twice), and the gradient is the same."""
  from jax._src.interpreters import partial_eval as pe  # dead-code elimination of a jaxpr
  from jaxlm.model.transformer import REMAT_POLICIES
  r = np.random.default_rng(4)
  x = jnp.asarray(r.normal(size=(2, 128, 16)), jnp.float32)
  w = jnp.asarray(r.normal(size=(16, 3, 2, 8)) / 4, jnp.float32)  # q, k, v: 2 heads of 8

  def layer(x, w):
    o = attend(*jnp.einsum('bld,dthe->tblhe', x, w), implementation='splash')
    return x + o.reshape(*x.shape[:2], -1)

  def run(policy):
    loss = lambda x, w: jnp.sum(jax.checkpoint(layer, policy=policy)(x, w) ** 2)
    f = jax.value_and_grad(loss, argnums=(0, 1))  # the loss's value needs the forward pass
    closed = jax.make_jaxpr(f)(x, w)
    live, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    return f(x, w)[1], str(live).count('pallas_call[')

  (saved, saved_kernels) = run(REMAT_POLICIES['dots_attention'])
  (dots, dots_kernels) = run(REMAT_POLICIES['dots'])
  assert saved_kernels == dots_kernels - 1  # forward, dq, dkv; 'dots' adds a second forward
  want = run(None)[0]
  for a, b, c in zip(saved, dots, want):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, c, rtol=1e-5, atol=1e-5)


def test_splash_under_a_mesh_equals_the_reference():
  """On a (data 2, fsdp 2, tensor 2) mesh splash runs per device under shard_map."""
  mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = (('activation_batch', ('data', 'fsdp')), ('activation_heads', ('tensor',)),
           ('activation_kv_heads', ('tensor',)))
  q, k, v = _qkv(4, 128, 4, 2, 64)
  seg = jnp.concatenate([_segments(2, 128)] * 2)

  @jax.jit
  def run(q, k, v, seg):
    with sharding.use_mesh(mesh, rules):
      return attend(q, k, v, implementation='splash', segment_ids=seg)
  np.testing.assert_allclose(run(q, k, v, seg), attend(q, k, v, implementation='xla',
                                                       segment_ids=seg), atol=2e-5)


@pytest.mark.parametrize('variant', ['llama', 'gpt2'])
def test_packed_documents_do_not_see_each_other(variant):
  m = resolved_model(variant)
  model = Transformer(m, rngs=nnx.Rngs(0))
  r = np.random.default_rng(0)
  tokens = jnp.asarray(r.integers(0, m.vocab_size, (1, 16)), jnp.int32)
  seg = jnp.asarray([[0] * 6 + [1] * 10])
  positions = jnp.asarray([list(range(6)) + list(range(10))])
  packed = model(tokens, positions, segment_ids=seg)
  # The second document alone, from position 0, gives the same outputs as inside the pack...
  alone = model(tokens[:, 6:])
  np.testing.assert_allclose(packed[:, 6:], alone, atol=1e-5)
  # ...and changing the first document leaves it untouched.
  other = tokens.at[0, 2].set((tokens[0, 2] + 1) % m.vocab_size)
  np.testing.assert_array_equal(model(other, positions, segment_ids=seg)[:, 6:], packed[:, 6:])


@pytest.mark.parametrize('implementation,platform,masked,length,head_dim,dtype,expected', [
    ('auto', 'tpu', False, 256, 64, 'bfloat16', 'splash'),
    ('auto', 'tpu', False, 100, 64, 'bfloat16', 'xla'),  # splash needs multiples of 128
    ('auto', 'gpu', False, 100, 64, 'bfloat16', 'cudnn'),
    ('auto', 'gpu', False, 100, 64, 'float32', 'xla'),  # cuDNN's flash attention: 16-bit only
    ('auto', 'gpu', False, 100, 160, 'bfloat16', 'xla'),  # head dim above 128
    ('auto', 'cpu', False, 256, 64, 'bfloat16', 'xla'),
    ('auto', 'tpu', True, 256, 64, 'bfloat16', 'xla'),  # decoding: an explicit mask
    ('cudnn', 'gpu', True, 256, 64, 'bfloat16', 'xla'),
    ('splash', 'tpu', True, 256, 64, 'bfloat16', 'xla'),
    ('cudnn', 'gpu', False, 256, 64, 'float32', 'cudnn'),  # as asked
    ('xla', 'tpu', False, 256, 64, 'bfloat16', 'xla'),
])
def test_the_kernel_per_platform(implementation, platform, masked, length, head_dim, dtype,
                                 expected):
  from jaxlm.model.attention_kernels import kernel_for
  assert kernel_for(implementation, platform, masked=masked, length=length, head_dim=head_dim,
                    dtype=dtype) == expected


def test_masked_calls_take_the_reference_whatever_the_kernel():
  """A decoding mask sent with model.attention='cudnn' or 'splash' runs the reference (on this
  CPU, cuDNN would fail outright; before, masked calls reached it as a dense bias), and 'auto'
  on a CPU is the reference."""
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 1, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32)
  mask = jnp.asarray([[[[True] * 4 + [False] * 2]], [[[False] + [True] * 5]]])
  expected = reference(q, k, v, mask)
  for implementation in ('cudnn', 'splash', 'auto'):
    np.testing.assert_array_equal(attend(q, k, v, implementation=implementation, mask=mask),
                                  expected)
  q = jnp.asarray(rng.normal(size=(2, 6, 4, 8)), jnp.float32)
  np.testing.assert_array_equal(attend(q, k, v, implementation='auto'),
                                attend(q, k, v, implementation='xla'))


def test_cudnn_off_a_gpu_is_one_sentence():
  from jaxlm.errors import UserError
  from jaxlm.model.attention_kernels import kernel_for
  with pytest.raises(UserError, match="model.attention='cudnn' runs on NVIDIA GPUs only, not on"):
    kernel_for('cudnn', 'tpu', masked=False, length=128, head_dim=64, dtype='bfloat16')
