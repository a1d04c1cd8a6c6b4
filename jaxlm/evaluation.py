"""Evaluation: perplexity and bits per byte over token streams, and BLEU / chrF of generations.

Shared by the trainer (validation during training) and the eval command. Every token of the text
is counted exactly once (data.document_stream): the stream is cut into windows of L tokens that
are batched, the last window and batch padded and masked, never dropped. Windows do not overlap,
so a token's context starts at its window's start; a run that packs documents has each document
start a window (data.document_stream), so documents never see each other, as in its training.
"""

import math
from typing import Any, Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxlm import data, objectives, sampling, sharding
from jaxlm.data.tokenizers import Tokenizer
from jaxlm.errors import UserError


def sync_each_step() -> bool:
  """Whether to wait for each step before dispatching the next.

  Several CPU devices in one process can deadlock in their all-reduce rendezvous when many steps
  are in flight (JAX 0.10; fixed by 0.12), so there the loops keep one step in flight. Elsewhere
  steps are dispatched ahead and the host syncs only to log.
  """
  return jax.devices()[0].platform == 'cpu' and jax.local_device_count() > 1


def to_global(batch: dict[str, np.ndarray], batch_sharding,
              global_batch: int) -> dict[str, jax.Array]:
  """This host's rows (sharding.host_rows) -> one global array per field, sharded over the
  batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding, v,
                                                    (global_batch, *v.shape[1:]))
          for k, v in batch.items()}


def loss_over(eval_step, params: Any, stream: data.EvalStream, cfg: ConfigDict, batch_sharding,
              *, max_batches: int = 0) -> dict[str, float]:
  """Mean cross-entropy (nats/token) over the weighted targets of a stream, perplexity, the
  number of tokens counted and their summed loss (nats); and for each further view the
  objective scores (objective.eval_views), `<view>_loss` and `<view>_tokens`. Batches are a
  micro-batch of rows (train.batch_size / grad_accum): what the train step runs at once, so
  evaluation fits wherever training does."""
  totals = None
  sync = sync_each_step()
  B = cfg.train.batch_size // cfg.train.grad_accum
  segments = None
  if objectives.of(cfg).eval_rows:  # rows drawn on in the step: their index and extent
    # (a masked LM's token sees its window; packed: its document)
    segments = 'documents' if cfg.data.packing == 'pack' else 'present'
  for batch in data.eval_batches(data.stream_source(stream), objectives.window_length(cfg), B,
                                 max_batches=max_batches, segments=segments,
                                 rows=sharding.host_rows(batch_sharding, B)):
    sums = eval_step(params, to_global(batch, batch_sharding, B))
    # Stays on device: one host sync at the end...
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    if sync:
      jax.block_until_ready(totals)  # ...except where sync_each_step says otherwise.
  out = dict(loss=0.0, perplexity=1.0, tokens=0.0, nats=0.0)  # a stream of no batch
  for name, (total, count) in jax.device_get(totals or {}).items():
    total, count = float(total), float(count)
    loss = total / max(count, 1.0)
    if name:
      out.update({f'{name}_loss': loss, f'{name}_tokens': count})
    else:
      out.update(loss=loss, perplexity=math.exp(min(loss, 80.0)), tokens=count, nats=total)
  return out


def bits_per_byte(nats: float, n_bytes: int) -> float:
  """Total loss in nats over the UTF-8 bytes of the predicted text, in bits: comparable across
  tokenizers, since it does not depend on how many tokens the text became."""
  if n_bytes <= 0:
    raise UserError('there is no text to score (0 bytes); evaluate a non-empty text.')
  return nats / math.log(2) / n_bytes


def bleu_and_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (sacrebleu, its default settings) of generations against references."""
  import sacrebleu  # pylint: disable=import-outside-toplevel
  return dict(bleu=sacrebleu.corpus_bleu(hypotheses, [references]).score,
              chrf=sacrebleu.corpus_chrf(hypotheses, [references]).score)


def continuations(graphdef, params, model_cfg: ConfigDict, tokenizer: Tokenizer,
                  prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
                  **sampling_args) -> list[str]:
  """Generated continuations of text prompts, batch_size prompts at a time."""
  if not prompts:
    raise UserError('there are no prompts to continue.')
  out = []
  for i in range(0, len(prompts), batch_size):
    start = [tokenizer.bos_id] if getattr(tokenizer, 'bos_id', None) is not None else []
    chunk = [start + tokenizer.encode(p) for p in prompts[i:i + batch_size]]
    chunk += [chunk[-1]] * (batch_size - len(chunk))  # fixed shapes: pad the last batch
    rows = sampling.generate(graphdef, params, model_cfg, chunk, max_new_tokens=max_new_tokens,
                             eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size,
                             **sampling_args)
    out += [tokenizer.decode(r) for r in rows[:len(prompts) - i]]
  return out
