"""Attention implementations behind one interface, chosen by `model.attention`:

- 'auto' (the default): splash on a TPU (lengths a multiple of 128), cuDNN on an NVIDIA GPU
  (bfloat16 or float16, head dim a multiple of 8 up to 128), the XLA reference otherwise.
- 'xla': the reference below, plain einsums and a softmax; any device, any dtype.
- 'cudnn': cuDNN's fused flash attention on NVIDIA GPUs (jax.nn.dot_product_attention).
- 'splash': the Pallas splash-attention kernel for TPUs (interpreted on other devices, which is
  how the CPU tests check it), called per device under shard_map.

All compute softmax(q k^T / sqrt(E)) v, causal (or bidirectional for an encoder), within segments when segment ids are given
(packed sequences: a token sees only earlier tokens of its own document). Shape letters: B batch,
L query length, S key length, H query heads, K kv heads, G = H / K, E head dim.
"""

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxlm import sharding

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash')


def kernel_for(implementation: str, platform: str, *, masked: bool, length: int, head_dim: int,
               dtype) -> str:
  """The kernel ('xla', 'cudnn' or 'splash') that runs one attention call. A call with an
  explicit mask (decoding against a KV cache, a prefix LM) always takes the reference: the fused
  kernels here take causal, full and segment masks, not an arbitrary one. 'auto' picks by the
  platform and where the kernel's constraints hold."""
  if masked or implementation == 'xla':
    return 'xla'
  if implementation == 'cudnn' and platform != 'gpu':
    from jaxlm.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError(f"config field model.attention='cudnn' runs on NVIDIA GPUs only, not on this "
                    f"{platform}; use 'auto' (or 'xla').")
  if implementation != 'auto':
    return implementation
  if platform == 'tpu' and length % 128 == 0:
    return 'splash'
  if (platform == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim % 8 == 0 and head_dim <= 128):
    return 'cudnn'
  return 'xla'


def _platform() -> str:
  """The platform attention runs on: the current mesh's devices (which may be another host's, when
  compiling ahead of time for a TPU topology), else this process's."""
  current = sharding.current()
  device = current[0].devices.flat[0] if current is not None else jax.devices()[0]
  return device.platform


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, implementation: str,
           mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
           causal: bool = True) -> jax.Array:
  """q [B, L, H, E], k and v [B, S, K, E] -> [B, L, H, E].

  Without `mask` the attention is causal (L == S), or bidirectional with causal=False (an
  encoder), restricted to equal `segment_ids` [B, L] when given. A boolean `mask` [B, 1, L, S]
  (True = may attend) replaces both, e.g. for decoding against a KV cache or a prefix LM; such
  calls use the reference (kernel_for).
  """
  implementation = kernel_for(implementation, _platform(), masked=mask is not None,
                              length=q.shape[1], head_dim=q.shape[-1], dtype=q.dtype)
  if mask is None and segment_ids is not None:
    dense = segment_ids[:, :, None] == segment_ids[:, None, :]
    if causal:
      dense &= jnp.tril(jnp.ones(dense.shape[1:], bool))
  else:
    dense = mask
  if implementation == 'cudnn':
    cudnn = lambda q, k, v, dense: jax.nn.dot_product_attention(
        q, k, v, mask=None if dense is None else dense.reshape(
            dense.shape[0], 1, *dense.shape[-2:]),
        is_causal=dense is None and causal, implementation='cudnn')
    return saving_residuals(cudnn)(q, k, v, dense)
  if implementation == 'splash':
    return saving_residuals(functools.partial(splash, causal=causal))(q, k, v, segment_ids)
  return reference(q, k, v, dense, causal)


RESIDUALS = 'attention'


def saving_residuals(fn):
  """fn(q, k, v, extra) with the same value and gradient, whose backward pass reads residuals
  named RESIDUALS (checkpoint_name): the kernel's inputs, output and softmax statistics. A remat
  policy that saves that name (model.remat='dots_attention') keeps them, so the backward pass
  does not run the fused kernel's forward a second time; other policies recompute as before."""
  @jax.custom_vjp
  def wrapped(q, k, v, extra):
    return fn(q, k, v, extra)

  def fwd(q, k, v, extra):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, extra), q, k, v)
    return out, jax.tree.map(lambda r: checkpoint_name(r, RESIDUALS), vjp)

  def bwd(vjp, g):
    return (*vjp(g), None)

  wrapped.defvjp(fwd, bwd)
  return wrapped


def reference(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
              causal: bool = True) -> jax.Array:
  """The XLA reference. mask: None (causal, or none at all with causal=False), [B, L, S] or
  [B, 1, L, S], True = may attend."""
  B, L, H, E = q.shape
  K = k.shape[2]
  q = q.reshape(B, L, K, H // K, E)  # query heads grouped by the kv head they share
  scores = jnp.einsum('blkge,bske->bkgls', q, k).astype(jnp.float32) * E**-0.5
  if mask is not None:
    mask = mask.reshape(B, 1, 1, *mask.shape[-2:])
  elif causal:
    mask = jnp.tril(jnp.ones((L, k.shape[1]), bool))
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgls,bske->blkge', probs, v).reshape(B, L, H, E)


def splash(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None,
           causal: bool = True) -> jax.Array:
  """Splash attention (causal, or bidirectional). Pallas kernels are not partitioned by the compiler, so with a mesh
  the kernel runs per device under shard_map, on its shard of the batch and the heads."""
  current = sharding.current()
  local = functools.partial(_splash_local, causal=causal, interpret=_platform() != 'tpu')
  if current is None:
    return local(q, k, v, segment_ids)
  mesh, rules = current
  head = lambda name: sharding.logical_to_spec(('activation_batch', None, name, None), rules,
                                                mesh)
  q_spec, kv_spec = head('activation_heads'), head('activation_kv_heads')
  if q_spec[2] != kv_spec[2]:  # query heads must be split like the kv heads they share
    q_spec = kv_spec
  seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                     out_specs=q_spec, check_vma=False)
  if segment_ids is None:
    segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
  return fn(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids, causal=True, interpret=True):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as sk)
  B, L, H, E = q.shape
  K = k.shape[2]
  G = H // K
  kernel = _kernel(L, G, interpret, causal)
  # Each kv head with its G query heads is multi-query attention: vmap over batch and kv heads.
  q = (q * E**-0.5).reshape(B, L, K, G, E).transpose(0, 2, 3, 1, 4)  # [B, K, G, L, E]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, L, E]
  if segment_ids is None:
    call = lambda q, k, v: kernel(q, k, v)
    out = jax.vmap(jax.vmap(call))(q, k, v)
  else:
    call = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))
    out = jax.vmap(jax.vmap(call, in_axes=(0, 0, 0, None)))(q, k, v, segment_ids)
  return out.transpose(0, 3, 1, 2, 4).reshape(B, L, H, E)


@functools.lru_cache(maxsize=None)
def _kernel(length: int, groups: int, interpret: bool, causal: bool = True):
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as sk, splash_attention_mask as sm)
  block = 512 if length % 512 == 0 else 128  # config.validate: length is a multiple of 128
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  one = sm.CausalMask((length, length)) if causal else sm.FullMask((length, length))
  mask = sm.MultiHeadMask([one] * groups)
  # The kernel holds its mask tables as arrays and is cached: make them concrete even when the
  # first call is inside a trace, so a later trace never sees another's tracers.
  with jax.ensure_compile_time_eval():
    return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
