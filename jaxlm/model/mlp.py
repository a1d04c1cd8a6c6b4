"""The feed-forward block: GELU (GPT-2) or SwiGLU (Llama). Shapes: [B, L, D] -> [B, L, F] -> [B, L, D]."""

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from jaxlm.model.layers import Dense, hidden_std, scaled_std


class Mlp(nnx.Module):

  def __init__(self, cfg: ConfigDict, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    D, F = cfg.embed_dim, cfg.mlp_dim
    kw = dict(use_bias=cfg.use_bias, dtype=dtype, rngs=rngs)
    self.gated = cfg.mlp == 'swiglu'
    std = hidden_std(cfg, cfg.init_std)
    self.up = Dense((D,), (F,), ('embed', 'mlp'), std=std, **kw)
    self.gate = Dense((D,), (F,), ('embed', 'mlp'), std=std, **kw) if self.gated else None
    self.down = Dense((F,), (D,), ('mlp', 'embed'),
                      std=hidden_std(cfg, scaled_std(cfg.init_std, cfg.num_layers)), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.gated:  # SwiGLU: silu(x W_gate) * (x W_up)
      h = jax.nn.silu(self.gate(x)) * self.up(x)
    else:  # GPT-2 uses the tanh approximation of GELU.
      h = jax.nn.gelu(self.up(x), approximate=True)
    return self.down(h)
