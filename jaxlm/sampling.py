"""Autoregressive decoding with a KV cache, under jit with fixed shapes.

Prompts are left-padded to a common length P, run through the model once (the prefill, which
fills cache slots 0..P-1), then one token per step is decoded into slots P, P+1, ... inside a
`jax.lax.while_loop`, so the whole generation is one compiled program. Each row's RoPE / learned
positions start at its first real token. Shape letters: B batch, P prompt length, T new tokens,
S = P + T cache slots, N layers, K kv heads, E head dim, V vocab.
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.errors import UserError


def sample_logits(logits: jax.Array, key: jax.Array, *, temperature: float, top_k: int,
                  top_p: float) -> jax.Array:
  """logits [B, V] -> token ids [B]: greedy at temperature 0, else top-k / nucleus sampling."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest set of tokens whose probability reaches top_p (the first always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _mask(slots: jax.Array, query_slots: jax.Array, pad: jax.Array) -> jax.Array:
  """[B, 1, Q, S]: a query at slot t sees slots pad..t of its row (and always itself, so padding
  queries never attend to nothing)."""
  s = slots[None, None, None, :]
  t = query_slots[None, None, :, None]
  return ((s <= t) & (s >= pad[:, None, None, None])) | (s == t)


def prefill(model: nnx.Module, prompts: jax.Array, pad: jax.Array, cache, slots: int,
            prefix_lm: bool = False):
  """Runs left-padded prompts [B, P] (pad [B] leading pads per row) into cache slots 0..P-1 of
  `slots` (a recurrent model's state instead: its segment starts at the first real token).
  A prefix LM reads the whole prompt as its input (prefix P): a Transformer attends over all of
  it, the LSTM encoder-decoder encodes it and starts decoding at its last token.

  Returns (logits [B, P, V] in float32, cache). Positions start at each row's first real token.
  """
  slots = jnp.arange(slots)
  B, P = prompts.shape
  positions = jnp.maximum(slots[None, :P] - pad[:, None], 0)
  real = (slots[None, :P] >= pad[:, None]).astype(jnp.int32)
  h, cache = model.features(prompts, positions, segment_ids=real,
                            mask=_mask(slots, slots[:P], pad),
                            prefix=jnp.full((B,), P, jnp.int32) if prefix_lm else None,
                            cache=cache, cache_index=jnp.int32(0))
  return model.logits(h).astype(jnp.float32), cache


def decode_step(model: nnx.Module, tokens: jax.Array, slot: jax.Array, pad: jax.Array, cache,
                slots: int):
  """Feeds one token per row [B] at cache slot `slot`; returns (logits [B, V] float32, cache)."""
  slots = jnp.arange(slots)
  h, cache = model.features(tokens[:, None], (slot - pad)[:, None],
                            mask=_mask(slots, slot[None], pad), cache=cache, cache_index=slot)
  return model.logits(h[:, 0]).astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'temperature',
                                             'top_k', 'top_p', 'eos_id', 'vocab_limit',
                                             'prefix_lm'))
def _generate(params: Any, prompts: jax.Array, lengths: jax.Array, key: jax.Array, *,
              graphdef: nnx.GraphDef, max_new_tokens: int, temperature: float, top_k: int,
              top_p: float, eos_id: int | None, vocab_limit: int, prefix_lm: bool) -> jax.Array:
  model = nnx.merge(graphdef, params)
  B, P = prompts.shape
  pad = P - lengths  # [B] left padding of each row
  S = P + max_new_tokens
  cache = model.init_cache(B, S)

  def pick(logits, key):
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
    return sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)

  logits, cache = prefill(model, prompts, pad, cache, S, prefix_lm)
  token = pick(logits[:, -1], jax.random.fold_in(key, 0))

  def cond(carry):
    i, _, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, token, cache, out, done = carry
    if eos_id is not None:
      token = jnp.where(done, eos_id, token)
      done = done | (token == eos_id)
    out = out.at[:, i].set(token)
    logits, cache = decode_step(model, token, P + i, pad, cache, S)
    return i + 1, pick(logits, jax.random.fold_in(key, i + 1)), cache, out, done

  carry = (jnp.int32(0), token, cache, jnp.zeros((B, max_new_tokens), jnp.int32),
           jnp.zeros((B,), bool))
  i, _, _, out, _ = jax.lax.while_loop(cond, body, carry)
  if eos_id is not None:  # Rows stopped early: everything after their end-of-sequence is eos.
    out = jnp.where(jnp.arange(max_new_tokens)[None, :] < i, out, eos_id)
  return out


def generate(graphdef: nnx.GraphDef, params: Any, model_cfg: ConfigDict,
             prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
             vocab_limit: int | None = None, prefix_lm: bool = False,
             prompt_length: int = 0) -> list[list[int]]:
  """Continues each prompt (a list of token ids) by up to max_new_tokens tokens; a prefix LM's
  model (objectives' prefix_lm) reads each prompt whole, as its input.

  Prompts longer than the context allows are cut from the left. Returns the new tokens of each
  row, ending before the first eos_id. `vocab_limit` (the tokenizer's vocabulary) keeps the
  padded ids of the model's vocabulary from ever being sampled. `prompt_length` pads every
  batch's prompts to that length (at most the context less max_new_tokens), so batches of
  prompts of any length run one compiled program; 0 pads to the batch's longest.
  """
  if not 0 < max_new_tokens < model_cfg.max_seq_len:
    raise UserError(f'max_new_tokens={max_new_tokens} must be between 1 and the context length '
                    f'model.max_seq_len-1={model_cfg.max_seq_len - 1}.')
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise UserError('sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 0.')
  budget = model_cfg.max_seq_len - max_new_tokens
  budget = min(budget, prompt_length) if prompt_length else budget
  prompts = [list(p)[-budget:] or [eos_id if eos_id is not None else 0] for p in prompts]
  P = budget if prompt_length else max(len(p) for p in prompts)
  padded = np.zeros((len(prompts), P), np.int32)
  for r, p in enumerate(prompts):
    padded[r, P - len(p):] = p
  lengths = np.array([len(p) for p in prompts], np.int32)
  out = _generate(params, padded, lengths, jax.random.PRNGKey(seed), graphdef=graphdef,
                  max_new_tokens=max_new_tokens, temperature=float(temperature),
                  top_k=int(top_k), top_p=float(top_p), eos_id=eos_id,
                  vocab_limit=int(vocab_limit or model_cfg.vocab_size), prefix_lm=prefix_lm)
  rows = []
  for row in np.asarray(out).tolist():
    rows.append(row[:row.index(eos_id)] if eos_id is not None and eos_id in row else row)
  return rows
