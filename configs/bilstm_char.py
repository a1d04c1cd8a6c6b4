"""The case study's bidirectional LSTM encoder, trained with masked LM on the shipped Shakespeare
corpus at about the parameters of configs/shakespeare_char.py's Transformer.

Two bidirectional layers of width 150 (a forward and a backward LSTM each, their outputs
concatenated and projected back to 150: 18 D^2 + 8 D parameters a layer) with tied embeddings,
0.82M in all, as lstm_char.py. Masked LM at BERT's constant 15% (80% [MASK], 10% random, 10%
kept). Everything else is the character recipe's: characters, windows of 64 at every offset,
batch 12, AdamW 1e-3 with warm-up and cosine decay. Its Transformer counterpart is the same recipe as an encoder:
`--config=configs/shakespeare_char.py --config.model.causal=False --config.train.objective=mlm`.
"""

from jaxlm.configs import lstm_char


def get_config():
  c = lstm_char.get_config()
  c.workdir = 'runs/bilstm_char'
  c.model.kind, c.model.embed_dim = 'bilstm', 150
  c.train.objective = 'mlm'
  c.train.sample_tokens = 0  # an encoder does not generate
  return c
