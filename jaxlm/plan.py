"""The memory planner: what one device holds during a train step, from the config and the mesh,
before anything is compiled. `jaxlm.compile --plan` prints it beside XLA's own figure.

Per device, in bytes:
- params, optimizer: the float32 parameters and AdamW's two moments, each array divided as its
  sharding divides it (exact: these are the train state's own shapes and shardings);
- gradients: float32 like the parameters; twice with train.grad_accum > 1 (the running sum and the
  micro-batch's own);
- batch: the step's token batch (inputs, targets, mask) over the batch axes;
- activations: what the backward pass keeps per layer for one micro-batch under model.remat
  (every layer), plus one layer's working set while it is differentiated;
- loss: the output head's chunk of float32 logits and its gradient buffers;
- weights: the parameters as the layers use them, gathered over the fsdp axis and cast to the
  compute dtype: one layer's, twice (the next is fetched while one computes), and the head's.
The activation terms count each tensor a layer keeps in the compute dtype (see
`families.Family.activation_bytes`);
XLA fuses some of them away and keeps a few float32 copies, so they are an estimate, which the
tests hold to within 15% of XLA's total for three configs.
"""

import math
from typing import Any

import jax
from ml_collections import ConfigDict

from jaxlm import families, metrics, sharding

def _device_bytes(tree: Any) -> int:
  """Bytes per device of a tree of ShapeDtypeStructs with shardings (a shard of each)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * x.dtype.itemsize
  return total


def plan(cfg: ConfigDict, model_cfg: ConfigDict, mesh: jax.sharding.Mesh, rules: sharding.Rules,
         abstract_state: Any, fused_attention: bool) -> dict[str, int]:
  """The planned bytes per device of each part of a train step (see the module docstring), and
  their 'total'. `abstract_state` is the TrainState of ShapeDtypeStructs with their shardings."""
  m, t = model_cfg, cfg.train
  sizes = dict(mesh.shape)
  shards = lambda logical: math.prod(sizes.get(a, 1) for a in dict(rules).get(logical, ()))
  batch_shards = shards('activation_batch')
  tensor = sizes.get('tensor', 1)
  micro = t.batch_size // t.grad_accum
  b, L = micro / batch_shards, m.max_seq_len
  p = families.DTYPE_BYTES[m.dtype]
  out = dict(params=_device_bytes(abstract_state.params),
             optimizer=_device_bytes(abstract_state.opt_state))
  out['gradients'] = out['params'] * (2 if t.grad_accum > 1 else 1)
  out['batch'] = int(t.batch_size * L * 12 / batch_shards)  # int32 inputs, targets; float32 mask
  kept, every, scores = families.of(m).activation_bytes(m, m.remat, fused_attention, tensor)
  probs = b * L * L * scores  # attention's kept float32 scores and probabilities, per layer
  layers = m.num_layers
  saved_probs = probs * (layers if m.remat == 'none' else 1)
  out['activations'] = int(b * L * (kept * layers + 2 * every) + saved_probs)
  chunk = t.loss_chunk if t.loss_chunk and t.loss_chunk < L else L
  V = m.vocab_size / (tensor if m.vocab_size % tensor == 0 else 1)
  head_grad = m.embed_dim * V * 4 / shards('embed')
  # Per chunk: the float32 logits, probabilities and their gradient; the hidden states' gradient
  # for the whole micro-batch and the head's float32 gradient sum.
  out['loss'] = int(3 * b * chunk * V * 4 + b * L * m.embed_dim * p + head_grad)
  head = m.vocab_size * m.embed_dim
  per_layer = (metrics.param_count(m) - head * (1 if m.tie_embeddings else 2)) / m.num_layers
  out['weights'] = int((2 * per_layer + head) * p / tensor)
  out['total'] = sum(out.values())
  return out


def report(planned: dict[str, int], compiled_total: int | None = None) -> str:
  gib = lambda x: f'{x / 2**30:,.2f} GiB'
  parts = ', '.join(f'{k} {gib(v)}' for k, v in planned.items() if k != 'total')
  line = f'planned per device: {parts} = {gib(planned["total"])}'
  if compiled_total:
    line += f' ({planned["total"] / compiled_total:.2f} of the compiled step)'
  return line
