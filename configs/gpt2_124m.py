"""GPT-2 small (124M): 12 layers, 12 heads, width 768, context 1024, vocabulary 50304.

The shape of nanoGPT's GPT-2 reproduction, for real hardware: bf16 compute with float32 master
weights, attention 'auto' (cuDNN flash attention on a GPU, splash on a TPU), AdamW lr 6e-4 with
2000 warm-up steps and cosine decay over 600k steps to 6e-5, beta2 0.95, weight decay 0.1, batch 480 x 1024 tokens (~0.5M, as GPT-2) in 20
micro-batches of 24 sequences: nanoGPT fits 12 per 40 GB GPU, so 24 should fit one 80 GB GPU (an
estimate, not measured); on N GPUs divide train.grad_accum by N.
Prepare a large corpus once (`python -m jaxlm.prepare --source=... --output=prepared/web
--vocab_size=50257`, or --tokenizer_path for an existing model) and point data.corpus at the
prepared directory; data.workers=2 reads batches in worker processes.
"""

from jaxlm.configs import base


def get_config():
  c = base.get_config()
  c.workdir = 'runs/gpt2_124m'

  m = c.model
  m.num_layers, m.num_heads, m.num_kv_heads, m.embed_dim = 12, 12, 0, 768
  m.max_seq_len = 1024
  m.vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 128, as nanoGPT does.
  m.norm, m.position, m.mlp = 'layernorm', 'learned', 'gelu'
  m.use_bias, m.tie_embeddings = True, True
  m.dtype, m.attention, m.remat = 'bfloat16', 'auto', 'none'
  m.scan_unroll = 0  # 12 layers unrolled: no stacked per-layer buffers to slice and update

  c.xla_flags = base.GPU_XLA_FLAGS
  c.train.loss_chunk = 256  # the vocabulary is large: never hold the whole batch's logits

  c.data.tokenizer_vocab_size = 50257

  t = c.train
  t.steps, t.batch_size, t.grad_accum = 600_000, 480, 20
  t.log_every, t.eval_every, t.eval_batches = 100, 2000, 100
  t.sample_tokens = 0

  o = c.optim
  o.lr, o.min_lr, o.warmup_steps = 6e-4, 6e-5, 2000
  o.b2, o.weight_decay = 0.95, 0.1

  c.checkpoint.every = 2000
  return c
