"""The Llama 3.2 1B shape: 16 layers, width 2048, 32 query heads sharing 8 key/value heads of
dimension 64, SwiGLU width 8192, RoPE theta 500k, a 128,256-token vocabulary and the output head
tied to the embedding (1.24B parameters, as Meta's model). Not modelled: its `llama3` RoPE
scaling, which changes only positions beyond its 8k pretraining context; this preset trains at
2048.

For real hardware: bf16 compute, attention 'auto' (cuDNN on a GPU, splash on a TPU), FSDP over all devices, AdamW lr 3e-4 with
2000 warm-up steps and cosine decay to 3e-5, batch 512 x 2048 tokens (1M). Point data.corpus at
a corpus prepared by `python -m jaxlm.prepare` (with --tokenizer_path, or --vocab_size=128000 to
train a vocabulary on a sample), or at the raw corpus for training to prepare it itself.
"""

from jaxlm.configs import base


def get_config():
  c = base.get_config()
  c.workdir = 'runs/llama_1b'

  m = c.model
  m.num_layers, m.embed_dim, m.mlp_dim = 16, 2048, 8192
  m.num_heads, m.num_kv_heads, m.head_dim = 32, 8, 64
  m.max_seq_len, m.rope_theta = 2048, 500_000.0
  m.vocab_size = 128_256  # Llama 3's 128,000 tokens and 256 reserved special ones.
  m.norm, m.position, m.mlp = 'rmsnorm', 'rope', 'swiglu'
  m.use_bias, m.tie_embeddings = False, True
  m.dtype, m.attention, m.remat, m.scan_unroll = 'bfloat16', 'auto', 'dots', 1

  c.xla_flags = base.GPU_XLA_FLAGS
  c.train.loss_chunk = 256  # the vocabulary is large: never hold the whole batch's logits

  c.data.tokenizer_vocab_size = 128_000  # a vocabulary trained on the corpus fills the regular ids

  t = c.train
  t.steps, t.batch_size = 100_000, 512
  t.log_every, t.eval_every, t.eval_batches = 100, 2000, 50
  t.sample_tokens = 0

  o = c.optim
  o.lr, o.min_lr, o.warmup_steps = 3e-4, 3e-5, 2000
  o.b2, o.weight_decay = 0.95, 0.1

  c.mesh.data, c.mesh.fsdp = 1, -1  # ZeRO-3: shard parameters and optimizer state everywhere.
  c.checkpoint.every = 1000
  return c
