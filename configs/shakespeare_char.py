"""nanoGPT's documented CPU recipe for character-level Shakespeare, on jaxlm.

nanoGPT (README, "I only have a macbook"): a GPT with 4 layers, 4 heads, width 128, context 64,
batch 12, 2000 iterations, AdamW lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4,
beta2 0.99, weight decay 0.1 (embeddings included), no dropout, no biases, clipping at 1.0. It
reports a validation loss of 1.88 at step 2000. Windows start at every character offset, as
nanoGPT's random sampling does.
"""

from jaxlm.configs import base


def get_config():
  c = base.get_config()
  c.workdir = 'runs/shakespeare_char'

  m = c.model  # GPT-2 architecture at nanoGPT's CPU size.
  m.vocab_multiple = 1  # 65 characters, unpadded, as in nanoGPT.
  m.num_layers, m.num_heads, m.num_kv_heads, m.embed_dim = 4, 4, 0, 128
  m.max_seq_len = 64
  m.norm, m.position, m.mlp = 'layernorm', 'learned', 'gelu'
  m.use_bias, m.tie_embeddings, m.dropout = False, True, 0.0

  c.data.tokenizer = 'char'
  c.data.stride = 1

  t = c.train
  t.steps, t.batch_size = 2000, 12
  t.log_every, t.eval_every = 50, 250
  t.sample_tokens = 60

  o = c.optim
  o.lr, o.min_lr, o.warmup_steps = 1e-3, 1e-4, 100
  o.b2 = 0.99  # nanoGPT: "make a bit bigger because number of tokens per iter is small".
  o.weight_decay, o.decay_embeddings, o.clip_norm = 0.1, True, 1.0

  c.checkpoint.every = 500
  return c
