"""The seed's case study: an LSTM language model on the shipped Shakespeare corpus, with as many
parameters as configs/shakespeare_char.py's Transformer, trained the same way, to compare the two.

Two LSTM layers of width 224 with tied embeddings: 8 * D^2 + 4 * D parameters a layer (input and
recurrent weights and biases of four gates) and the 65 x D embedding, 0.82M in all, as the 4-layer
width-128 Transformer has. Everything else is the character recipe's: characters, windows of 64
at every offset, batch 12, AdamW 1e-3 with warm-up and cosine decay.
"""

from jaxlm.configs import base, shakespeare_char


def get_config():
  c = shakespeare_char.get_config()
  c.workdir = 'runs/lstm_char'
  transformer = c.model
  c.model = base.get_config().model  # an LSTM leaves the Transformer-only fields at defaults
  m = c.model
  m.kind = 'lstm'
  m.vocab_multiple, m.max_seq_len = transformer.vocab_multiple, transformer.max_seq_len
  m.num_layers, m.embed_dim = 2, 224
  m.tie_embeddings, m.dropout = True, 0.0
  return c
