"""The muP coordinate check (Yang et al., Tensor Programs V, figure 1 and appendix D.1): train a
Transformer a few steps at several widths and record how large its activations are (the mean
absolute value of a coordinate) after each step. Under muP (model.parametrization='mup') the
sizes stay flat as the width grows; in the standard parametrisation those after the first update
grow with the width, which is why its best learning rate moves.

The models are jaxlm's own, trained by its own train step (optimizer, muP rates and all) on byte
windows of the shipped corpus; only the widths (model.embed_dim, the head count fixed, so the
head dimension grows with it) differ. `launch/coord_check.py` draws the figure.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.data.sources import SHIPPED_CORPUS

EOS = 256  # the byte tokenizer's


def corpus_batches(batch_size: int, length: int, seed: int) -> np.ndarray:
  """An endless supply of [batch_size, length + 1] byte windows of the shipped corpus."""
  data = np.frombuffer(SHIPPED_CORPUS.read_bytes(), np.uint8).astype(np.int32)
  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(data) - length - 1, batch_size)
    yield np.stack([data[s:s + length + 1] for s in starts])


def activations(model: nnx.Module, tokens: jax.Array) -> dict[str, jax.Array]:
  """The mean |x| of each layer's output: the embedding, every block (the residual stream after
  it), and the logits, over a batch of tokens [B, L]."""
  x = model.embed(tokens)
  out = {'embedding': jnp.mean(jnp.abs(x))}
  graphdef, stacked = nnx.split(model.blocks)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  for i in range(model.num_layers):
    block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
    x, _ = block(x, positions, None)
    out[f'block {i + 1}'] = jnp.mean(jnp.abs(x))
  out['logits'] = jnp.mean(jnp.abs(model(tokens)))
  return out


def coordinate_check(cfg: ConfigDict, widths: Sequence[int], steps: int,
                     seed: int = 0) -> dict[int, dict[str, list[float]]]:
  """{width: {layer: [mean |x| at init, after step 1, ..., after `steps`]}} for `cfg` (its model
  and optimizer; train.batch_size, model.max_seq_len) at each width, on the same batches."""
  # pylint: disable=import-outside-toplevel  (the build pulls in the whole training stack)
  from jaxlm import sharding
  from jaxlm.build import build
  from jaxlm.mesh import skip_absent_tpu
  from jaxlm.objectives import Vocab
  skip_absent_tpu()  # (before JAX starts: no libtpu noise on a host without a TPU)
  out = {}
  for width in widths:
    c = ConfigDict(cfg.to_dict())
    c.model.embed_dim = width
    built = build(c, Vocab(257, EOS, EOS), jax.devices()[:1])
    state = built.setup.init()
    measure = jax.jit(lambda params, tokens: activations(nnx.merge(built.graphdef, params),
                                                         tokens))
    batch_sharding = sharding.batch_sharding(built.mesh, built.rules)
    batches = corpus_batches(c.train.batch_size, c.model.max_seq_len, seed)
    probe = jnp.asarray(next(corpus_batches(c.train.batch_size, c.model.max_seq_len, seed + 1)))
    sizes: dict[str, list[float]] = {}
    for step in range(steps + 1):
      for name, value in measure(state.params, probe[:, :-1]).items():
        sizes.setdefault(name, []).append(float(value))
      if step < steps:
        tokens = next(batches)
        batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:],
                     mask=np.ones(tokens[:, 1:].shape, np.float32))
        state, _ = built.train_step(state, jax.device_put(batch, batch_sharding))
    out[width] = sizes
  return out

